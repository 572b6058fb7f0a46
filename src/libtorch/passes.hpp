// Which backward pass runs: LibTorch's graph tasks, numbered. Private to the
// LibTorch backend.
#pragma once
#include <cstdint>

namespace modtracker::libtorch::detail {

/// The id of the backward pass running on this thread (0 outside one); a
/// pass is opened, and its close queued, on first sight.
std::uint64_t current_pass();
/// The pass whose gradient hooks this thread is running (0 outside them).
std::uint64_t firing_pass() noexcept;
/// Sets firing_pass(); returns the value it replaces.
std::uint64_t set_firing_pass(std::uint64_t pass) noexcept;

}  // namespace modtracker::libtorch::detail
