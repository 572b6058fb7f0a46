// ProfilerScopes: module scopes in LibTorch's own profiler
// (torch::autograd::profiler::RecordProfile, torch::profiler): a user-scope
// RecordFunction named by the module's fqn around each of its calls, forward
// and backward, so that the profiler's operators appear inside their modules.
#pragma once

#include <torch/torch.h>

#include <memory>

#include <modtracker/libtorch/backend.hpp>

import modtracker.libtorch;  // modtracker and modtracker.backend

namespace modtracker::libtorch {

/// While it lives, each transition of `tracker` opens (enter) or closes
/// (exit) a RecordFunction of scope USER_SCOPE named "<fqn>" in forward and
/// "<fqn> (backward)" in backward, on the thread of the transition, so that
/// a profiler that records user scopes shows a slice per module call.
/// Backward follows the tracker's backward spans (Python's rule: a span may
/// overlap another without nesting; profilers pair each start with its own
/// end). With no profiler on, a RecordFunction is not started: what remains
/// is the listener's call and the check (docs/performance.md). So a call
/// entered before the profiler started has no slice: start the profiler
/// between steps, outside the model's calls.
class ProfilerScopes final : public TransitionListener {
 public:
  explicit ProfilerScopes(Tracker& tracker);
  ProfilerScopes(const ProfilerScopes&) = delete;
  ProfilerScopes& operator=(const ProfilerScopes&) = delete;
  /// Ends the scopes still open on this thread.
  ~ProfilerScopes();

 private:
  // The tracker's calls (TransitionListener): not for users.
  void on_transition(const Transition& t) override;
  void on_scope(bool started) override;
  Registration listening_;
};

}  // namespace modtracker::libtorch
