// Attribution: whom the tools (FlopCounter, MemoryTracker) charge backward work to.
#pragma once

#include <cstdint>

namespace modtracker::libtorch {

/// Whom a tool charges backward work to (docs/semantics.md, "Backward attribution").
enum class Attribution : std::uint8_t {
  /// The module whose forward made the autograd node that does the work, and
  /// its ancestors (inclusive). Exact where the graph branches.
  provenance,
  /// Every module whose backward span is open, as Python's FlopCounterMode
  /// and MemTracker do: for comparison with them.
  spans,
};

}  // namespace modtracker::libtorch
