// BackwardTimer: backward time per module, by the autograd nodes each
// module's forward made (docs/semantics.md, "Backward attribution").
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <modtracker/libtorch/backend.hpp>

import modtracker.libtorch_tools;  // modtracker, modtracker.backend and modtracker.stats

namespace modtracker::libtorch {

/// One module's backward time, summed over a tracker's scopes.
struct BackwardTime {
  std::chrono::nanoseconds exclusive{};  ///< the time its own autograd nodes ran
  std::chrono::nanoseconds inclusive{};  ///< with its descendants' nodes
  std::uint64_t nodes = 0;               ///< executions of its own nodes
};

/// Times every autograd node that runs while a scope of the tracker is
/// active, and charges it to the module whose forward made the node (and,
/// inclusively, to that module's ancestors). A node run inside another
/// (reentrant backward) is not counted in the outer one. Nodes made outside
/// every module, and gradient accumulation into leaves, are "Global"'s.
class BackwardTimer final : public TransitionListener {
 public:
  explicit BackwardTimer(Tracker& tracker);  // the tracker outlives the timer
  BackwardTimer(const BackwardTimer&) = delete;
  BackwardTimer& operator=(const BackwardTimer&) = delete;
  ~BackwardTimer();

  /// fqn -> its time; "Global" holds the nodes of no module (its exclusive)
  /// and every node (its inclusive).
  [[nodiscard]] std::map<std::string, BackwardTime> times() const;
  /// The time spent in all nodes: the exclusive times summed, Global's included.
  [[nodiscard]] std::chrono::nanoseconds total() const;
  /// Backward spans by the nodes (docs/semantics.md, "Backward attribution"):
  /// per backward pass, a span for each module under each chain of parents
  /// (a layer shared by two parents has one in each) whose forward made a
  /// node that ran in it, from the start of the first such node (its own or
  /// a descendant's) to the end of the last, on the tracker's clock and the
  /// thread that ran them. Its exclusive() is the time of its own nodes.
  /// Spans of one thread that overlap without nesting (branches whose
  /// nodes interleave) have `nested` false. In the order the passes ran;
  /// known once a pass is over (the last node of a module is not known
  /// before). The latest 2^20 are kept.
  [[nodiscard]] SpanLog spans() const;
  /// Forgets every time and span.
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
