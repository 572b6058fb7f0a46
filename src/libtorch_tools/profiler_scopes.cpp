// ProfilerScopes: a RecordFunction per open module call, per thread.
#include <torch/torch.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include <modtracker/libtorch_tools/profiler_scopes.hpp>

namespace modtracker::libtorch {

namespace {
// The scopes open on this thread: whose, which call (its fqn's interned
// characters and phase), and LibTorch's record of it.
struct Open {
  const ProfilerScopes* owner;
  const char* fqn;
  Phase phase;
  std::unique_ptr<at::RecordFunction> record;
};
thread_local std::vector<Open> open;

void end_all(const ProfilerScopes* owner) {
  for (auto it = open.rbegin(); it != open.rend(); ++it)
    if (it->owner == owner && it->record) it->record->end();
  std::erase_if(open, [owner](const Open& o) { return o.owner == owner; });
}
}  // namespace

ProfilerScopes::ProfilerScopes(Tracker& tracker) { listening_ = tracker.add_listener(*this); }

ProfilerScopes::~ProfilerScopes() {
  listening_ = Registration{};
  end_all(this);
}

void ProfilerScopes::on_transition(const Transition& t) {
  if (t.kind == Kind::enter) {
    auto callbacks = at::getStepCallbacksUnlessEmpty(at::RecordScope::USER_SCOPE);
    if (!callbacks) return;  // no profiler (or no callback for user scopes) is on: nothing to make
    auto record = std::make_unique<at::RecordFunction>(std::move(*callbacks));
    record->before(t.phase == Phase::forward ? std::string(t.fqn) : std::string(t.fqn) + " (backward)");
    open.push_back({this, t.fqn.data(), t.phase, std::move(record)});
    return;
  }
  // The latest open call of this module and phase (names are interned: one address per fqn).
  const auto it = std::find_if(open.rbegin(), open.rend(), [&](const Open& o) {
    return o.owner == this && o.fqn == t.fqn.data() && o.phase == t.phase;
  });
  if (it == open.rend()) return;  // entered while no profiler was on
  it->record->end();
  open.erase(std::next(it).base());
}

void ProfilerScopes::on_scope(bool started) {
  if (!started) end_all(this);
}

}  // namespace modtracker::libtorch
