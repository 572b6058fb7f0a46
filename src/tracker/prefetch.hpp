// Cache prefetch for the few places where a benchmark showed that loading
// the next step's data early pays (see docs/performance.md). Private.
#pragma once

namespace modtracker::detail {

/// Starts loading the cache line at `p` (any address: nothing is read).
/// Module units call it through here: clang 16 finds __builtin_prefetch
/// ambiguous in a module purview that also sees the x86 intrinsics headers.
inline void prefetch_line(const void* p) noexcept { __builtin_prefetch(p); }

}  // namespace modtracker::detail
