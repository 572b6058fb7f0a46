// MemoryTracker: CPU memory per module, phase and category, the C++
// counterpart of PyTorch's MemTracker, on a tracker's transitions.
#pragma once

#include <torch/torch.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <modtracker/libtorch_tools/attribution.hpp>
#include <modtracker/libtorch/backend.hpp>

import modtracker.libtorch;  // modtracker and modtracker.backend

namespace modtracker::libtorch {

/// What a tensor's memory is for, as MemTracker has it.
enum class MemoryCategory : std::uint8_t {
  parameter,        ///< of a module given to track()
  buffer,           ///< of a module given to track()
  gradient,         ///< of those parameters
  optimizer_state,  ///< of an optimizer given to track()
  activation,       ///< allocated in a forward (recomputation included)
  temporary,        ///< allocated in a backward (the gradients of activations)
  other,            ///< allocated outside any module call
};
inline constexpr std::size_t memory_categories = 7;
[[nodiscard]] std::string_view category_name(MemoryCategory c) noexcept;

/// One module in one phase, summed over its activations (storage bytes).
struct ModuleMemory {
  std::uint64_t allocated = 0;  ///< while it ran (its submodules included)
  std::uint64_t freed = 0;      ///< while it ran
  std::uint64_t peak = 0;       ///< live bytes above the level at its entry, the most over its activations
  std::uint64_t kept = 0;       ///< forward: bytes it allocated that are still alive at its exit
  std::uint64_t activations = 0;
};

/// The most live bytes seen, and who was running then.
struct MemoryPeak {
  std::uint64_t bytes = 0;
  std::string fqn;  ///< the innermost module running ("" outside any)
  Phase phase = Phase::forward;
  std::array<std::uint64_t, memory_categories> by_category{};
};

/// Counts every CPU allocation (on every thread) while it lives, through a
/// wrapper of LibTorch's CPU allocator, and attributes bytes to the modules
/// a scope of the tracker runs: in forward to the modules running, in
/// backward by default to the module whose forward made the autograd node
/// that allocates, and its ancestors (Attribution::provenance; a module's
/// backward peak is then the live bytes above the level at its first own
/// allocation in the pass, the most while its own nodes ran). One at a time per process (the allocator has
/// one wrapper). Memory allocated before it was made is not seen, except the
/// parameters, buffers, gradients and optimizer state given to track().
/// Coexists with LibTorch's profiler.
class MemoryTracker final : public TransitionListener {
 public:
  /// Throws std::logic_error if another MemoryTracker lives.
  explicit MemoryTracker(Tracker& tracker, Attribution backward = Attribution::provenance);
  MemoryTracker(const MemoryTracker&) = delete;
  MemoryTracker& operator=(const MemoryTracker&) = delete;
  /// Frees after this reach the original allocator untouched.
  ~MemoryTracker();

  /// Recognize these as parameters, buffers and gradients (the module must
  /// be owned by a std::shared_ptr, as holders own theirs)...
  void track(const torch::nn::Module& module);
  /// ... and this optimizer's state; it must outlive this tracker.
  void track(const torch::optim::Optimizer& optimizer);

  [[nodiscard]] ModuleMemory module(std::string_view fqn, Phase phase) const;
  /// fqn -> {forward, backward}
  [[nodiscard]] std::map<std::string, std::array<ModuleMemory, 2>> modules() const;
  /// Bytes alive now, and by category.
  [[nodiscard]] std::uint64_t live() const;
  [[nodiscard]] std::array<std::uint64_t, memory_categories> live_by_category() const;
  [[nodiscard]] MemoryPeak peak() const;
  /// Live bytes at each transition (time since the tracker was made): the
  /// latest 65536 samples, for a trace's counter track.
  [[nodiscard]] std::vector<std::pair<std::chrono::nanoseconds, std::uint64_t>> timeline() const;
  /// Forgets per-module bytes, the peak and the timeline (live bytes stay).
  void reset();

  struct State;

 private:
  // The tracker's calls (TransitionListener): not for users.
  void on_transition(const Transition& t) override;
  void on_scope(bool started) override;
  State* state_;  // the process's one counting state
  Registration listening_;
};

}  // namespace modtracker::libtorch
