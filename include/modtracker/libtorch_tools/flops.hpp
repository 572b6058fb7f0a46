// FlopCounter: FLOPs per module and operator, the C++ counterpart of
// PyTorch's FlopCounterMode, on a tracker's transitions.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <modtracker/libtorch_tools/attribution.hpp>
#include <modtracker/libtorch/backend.hpp>

import modtracker.libtorch;  // modtracker and modtracker.backend

namespace modtracker::libtorch {

/// Counts the FLOPs of the matmul and convolution operators (mm, addmm, bmm,
/// baddbmm, and through them matmul and linear; convolution, _convolution and, per
/// gradient it computes, convolution_backward) while a scope of the tracker
/// is active. A forward operator's FLOPs are credited to every module
/// running at that moment, "Global" included, so a module's count includes
/// its submodules'. A backward operator's go, by default, to the module whose
/// forward made the autograd node it runs in, to that module's ancestors and
/// to "Global" (Attribution::provenance), and count in Phase::backward. Other
/// operators count zero and are listed by name.
class FlopCounter final : public TransitionListener {
 public:
  /// Counts during the tracker's scopes, from now on (before a scope or inside one).
  explicit FlopCounter(Tracker& tracker, Attribution backward = Attribution::provenance);
  FlopCounter(const FlopCounter&) = delete;
  FlopCounter& operator=(const FlopCounter&) = delete;
  ~FlopCounter();

  /// All FLOPs of a phase (what "Global" got).
  [[nodiscard]] std::uint64_t total(Phase phase) const;
  /// fqn -> operator ("aten::mm") -> FLOPs, as FlopCounterMode.get_flop_counts():
  /// inclusive of submodules.
  [[nodiscard]] std::map<std::string, std::map<std::string, std::uint64_t>> counts(Phase phase) const;
  /// The same, each FLOP to one owner only: the innermost module running on
  /// the operator's thread in forward, the node's module in backward (by
  /// provenance, whatever the attribution), "Global" for work outside every
  /// module. Over all fqns they sum to total(phase).
  [[nodiscard]] std::map<std::string, std::map<std::string, std::uint64_t>> exclusive_counts(Phase phase) const;
  /// The FLOPs of one activation, by the sequence number of its exit transition
  /// (0 if it ran no counted operator): for traces.
  [[nodiscard]] std::uint64_t activation_flops(std::uint64_t exit_sequence) const;
  /// Operators that ran while counting and have no formula (they count zero), sorted.
  [[nodiscard]] std::vector<std::string> uncounted_operators() const;
  /// Forgets every count.
  void reset();

  struct State;

 private:
  // The tracker's calls (TransitionListener): not for users.
  void on_transition(const Transition& t) override;
  void on_scope(bool started) override;
  std::shared_ptr<State> state_;
  Registration listening_;
};

}  // namespace modtracker::libtorch
