// OperatorRecorder: every ATen operator a tracked scope runs (name, thread,
// start and end, input shapes, FLOPs), for a trace that shows operators
// inside their modules' slices. Off unless made: it costs per operator.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <modtracker/libtorch/backend.hpp>

import modtracker.libtorch_tools;  // modtracker, modtracker.backend and modtracker.stats

namespace modtracker::libtorch {

/// One operator call.
struct OperatorCall {
  std::string name;                     ///< "aten::addmm"
  Phase phase = Phase::forward;         ///< backward when autograd's engine ran it
  std::uint32_t thread = 0;             ///< as Transition::thread (the trace's track); 1000 + n for a thread with no transition
  std::chrono::nanoseconds start{}, end{};  ///< the tracker's clock (Transition::time)
  std::string shapes;                   ///< its tensor arguments' shapes: "[8, 4], [3, 4], [3]"
  std::optional<std::uint64_t> flops;   ///< where FlopCounter's formulas count it
};

/// While a scope of the tracker is active, records each ATen operator call
/// (every operator, the ones inside others too: a trace nests them), on any
/// thread, up to `capacity` calls (the rest are counted in dropped()).
class OperatorRecorder final : public TransitionListener {
 public:
  explicit OperatorRecorder(Tracker& tracker, std::size_t capacity = std::size_t{1} << 20);
  OperatorRecorder(const OperatorRecorder&) = delete;
  OperatorRecorder& operator=(const OperatorRecorder&) = delete;
  ~OperatorRecorder();

  /// The calls recorded, in the order they ended.
  [[nodiscard]] std::vector<OperatorCall> calls() const;
  /// Calls not kept: past the capacity.
  [[nodiscard]] std::uint64_t dropped() const;
  /// Forgets every call (a warm-up's, say).
  void reset();

  struct State;

 private:
  // The tracker's calls (TransitionListener): not for users.
  void on_transition(const Transition& t) override;
  void on_scope(bool started) override;
  std::shared_ptr<State> state_;
  Registration listening_;
};

/// Writes each recorded operator call as a slice (category "operator") on
/// its thread's track, inside the slices of the modules it ran in, with its
/// shapes and FLOPs as arguments.
void annotate(ChromeTraceWriter& trace, const OperatorRecorder& operators);

}  // namespace modtracker::libtorch
