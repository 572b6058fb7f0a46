// The demo's "biggest consumers" (consumers.cpp).
#pragma once

#include <string>
#include <vector>

#include <modtracker/torch.hpp>

namespace demo {

/// The owners of the most FLOPs (each FLOP has one owner: the shares add up
/// to 100 %), the layers that kept the most for backward, the memory peak
/// with its categories, and what the FLOPs count: a line each.
std::vector<std::string> consumers(const modtracker::Statistics& stats, const modtracker::libtorch::FlopCounter& flops,
                     const modtracker::libtorch::MemoryTracker& memory);

}  // namespace demo
