// The demo's "biggest consumers" (consumers.cpp).
#pragma once

#include <modtracker/torch.hpp>

namespace demo {

/// Prints the owners of the most FLOPs (each FLOP has one owner: the shares
/// add up to 100 %), the layers that kept the most for backward, and the
/// memory peak with its categories.
void print_consumers(const modtracker::Statistics& stats, const modtracker::libtorch::FlopCounter& flops,
                     const modtracker::libtorch::MemoryTracker& memory);

}  // namespace demo
