// Cheap timestamps for the journal: the TSC on x86-64 (about 10 ns a read
// against 26 ns for steady_clock here), converted to nanoseconds on read.
#pragma once
#include <chrono>
#include <cstdint>
#include <thread>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

namespace modtracker::detail {

inline std::uint64_t ticks() noexcept {
#if defined(__x86_64__)
  return __rdtsc();
#else
  return static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
#endif
}

/// Nanoseconds per tick, measured once per process (about 2 ms).
inline double ns_per_tick() {
#if defined(__x86_64__)
  static const double value = [] {
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    const auto c0 = __rdtsc();
    while (clock::now() - t0 < std::chrono::milliseconds(2)) {
    }
    const auto c1 = __rdtsc();
    const auto t1 = clock::now();
    const double ns = std::chrono::duration<double, std::nano>(t1 - t0).count();
    return c1 > c0 ? ns / static_cast<double>(c1 - c0) : 1.0;
  }();
  return value;
#else
  return 1.0;
#endif
}

}  // namespace modtracker::detail
