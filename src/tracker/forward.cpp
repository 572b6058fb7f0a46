// The forward rules (docs/semantics.md, "Forward"): enter adds the fqn to
// parents, then pre_fw runs; after the forward, post_fw runs, then exit
// takes it out, also when the forward threw. A call made with grad on
// outside backward gets an Activation, whose backward the engine follows:
// its inputs get the exit hook at entry, its output the entry hook at exit.
module;
#include "tracker/includes.hpp"
module modtracker;
import modtracker.backend;
import :engine;

namespace modtracker::detail {

namespace {
// pre_forward's token: the call's Activation (low bit 1: activations are
// 64-byte aligned), or for a call without one (no grad) its fqn id and
// whether it is reported.
std::uintptr_t token_of(const Activation* act) noexcept { return reinterpret_cast<std::uintptr_t>(act) | 1u; }
std::uintptr_t token_of(std::uint32_t fqn, bool reported) noexcept {
  return (std::uintptr_t{fqn} << 2) | (reported ? 2u : 0u);
}
Activation* activation_in(std::uintptr_t token) noexcept {
  return (token & 1u) ? reinterpret_cast<Activation*>(token & ~std::uintptr_t{1}) : nullptr;
}
std::uint32_t fqn_in(std::uintptr_t token) noexcept { return static_cast<std::uint32_t>(token >> 2); }
bool reported_in(std::uintptr_t token) noexcept { return (token & 2u) != 0; }
}  // namespace

// An enter in progress, across its three steps (before, under and after the
// state lock); exit_and_enter shares them.
struct Engine::PendingEnter {
  explicit PendingEnter(HookBackend& b) : backend(b) {}
  HookBackend& backend;
  // Whether backward runs, asked only if something depends on it (a no-grad
  // forward pays for no engine lookup).
  std::optional<bool> in_bw_known;
  bool in_bw() { return in_bw_known ? *in_bw_known : *(in_bw_known = backend.in_backward()); }
  Activation* act = nullptr;  // not published yet: no atomics needed to fill it
  ActivationRef made;         // frees it if naming throws
  std::uint32_t fqn = 0;
  bool reported = false;
  bool reentered = false;
  std::uint32_t outside = 0;  // the parent it is named under, when that parent is not running
  bool stale = false;
  std::string_view name;  // read under the lock: the names may grow meanwhile
  bool naming_found = false;  // naming left diagnostics to say
  // Once linked, the activation belongs to the list of running forwards (a
  // scope ending meanwhile frees it) and to its exit callback, which the
  // backend takes: two references, counted when it is made.
  GradCallback exit_cb;
  GradOrder exit_order{};
  bool exit_registered = false;  // by a chained call's output registration
};

void Engine::link_running(Activation& a) noexcept {
  a.forward_running = true;
  a.running_prev = nullptr;
  a.running_next = running_;
  if (running_) running_->running_prev = &a;
  running_ = &a;
}

void Engine::unlink_running(Activation& a) noexcept {
  (a.running_prev ? a.running_prev->running_next : running_) = a.running_next;
  if (a.running_next) a.running_next->running_prev = a.running_prev;
  a.running_prev = a.running_next = nullptr;
  a.forward_running = false;
}

EnterResult Engine::pre_forward(const ForwardCall& call) {
  PendingEnter e(backend_);
  begin_enter(call, e);
  {
    std::lock_guard<SpinLock> lock(state_);
    StepClock clock;
    enter_locked(call, e, clock);
  }
  return end_enter(call, e);
}

// With grad on (and outside backward) the call gets an Activation: allocated
// here, filled and linked under the one lock.
void Engine::begin_enter(const ForwardCall& call, PendingEnter& e) {
  if (!call.module) throw std::invalid_argument("modtracker: pre_forward of a null module");
  if (!seen_call_.load(std::memory_order_relaxed)) [[unlikely]] first_call_seen();
  if (!backend_.grad_enabled() || e.in_bw()) return;
  auto* act = make_activation();
  act->refs.store(1, std::memory_order_relaxed);
  e.made = ActivationRef::adopt(act);
  e.act = act;
  act->epoch = epoch_;
  act->epoch_generation = epoch_generation_;
  act->module = call.module.ptr;
  act->depth = call.depth;
  act->end_sequence = ~std::uint64_t{0};
  act->thread = thread_index();
  act->graph_at_enter = backend_.graph_nodes_recorded();
}

void Engine::enter_locked(const ForwardCall& call, PendingEnter& e, StepClock& clock) {
  if (!passes_.empty() && !e.in_bw()) {
    const auto before = passes_.size();
    close_stale_passes();
    e.stale = passes_.size() != before;
  }
  const auto& info = names_.info_for(call, filter_);
  e.naming_found = !pending_.empty();
  e.fqn = info.fqn;
  e.reported = info.reported;
  e.reentered = counts_.active(e.fqn) && !e.in_bw();
  if (!info.root) {
    const auto parent = names_.parent_of(e.fqn);
    if (parent != global_id && counts_.count(parent, Phase::forward) == 0 && !e.in_bw() &&
        names_.first_outside(e.fqn)) [[unlikely]]
      e.outside = parent;
  }
  counts_.add(e.fqn, Phase::forward);
  std::uint16_t method = 0;
  if (call.method) [[unlikely]]
    method = method_id(call.method);
  if (e.reported) record(Phase::forward, Kind::enter, e.fqn, call.depth, method, clock);
  if (e.reentered) e.name = names_.fqn(e.fqn);  // only the diagnostic needs it (a cold string)
  if (auto* act = e.act) {
    act->fqn = e.fqn;
    act->reported = e.reported;
    act->method = method;
    act->module_generation = info.generation;
    act->sequence = activations_++;
    act->previous_fqn = std::exchange(last_activation_fqn_, e.fqn);
    (void)e.made.release();  // from here on the running list's reference
    act->refs.store(2, std::memory_order_relaxed);  // published by the lock's release
    e.exit_order = GradOrder{Kind::exit, act->depth, act->sequence, &act->backward_rank};
    e.exit_cb = GradCallback(act, activation_refs, &on_input_gradients);
    link_running(*act);
  }
  if (call.likely_next) names_.prefetch(call.likely_next);  // its lookup is the next call's first cache miss
}

EnterResult Engine::end_enter(const ForwardCall& call, PendingEnter& e) {
  if (e.naming_found) say_pending();
  if (e.stale)
    diagnose({Diagnostic::Code::unfinished_backward, "",
              "a backward pass ended without running its end callbacks (did it throw?); "
              "its modules left backward when the next forward started"});
  if (e.outside) [[unlikely]]
    say_outside_parent(e.fqn, e.outside);
  if (e.reentered)
    diagnose({Diagnostic::Code::reentrant_forward, std::string(e.name),
              "module '" + std::string(e.name) + "' entered while already active; the module hierarchy may be wrong"});
  EnterResult result{e.act ? token_of(e.act) : token_of(e.fqn, e.reported)};
  try {
    // Kept with the graph: inert once the scope ends.
    if (e.act && !e.exit_registered) {
      GradientHook exit{GradientWait::all, e.exit_order, std::move(e.exit_cb)};
      e.act->inputs_hooked = backend_.add_gradient_hooks(call.inputs, std::span(&exit, 1), nullptr);
    }
    if (e.reported && may_have_hooks()) {
      if (const auto h = hooks()) {
        result.reads_inputs_after = static_cast<bool>(h->post_fw);
        if (h->pre_fw) h->pre_fw(call.module, call.inputs);
      }
    }
  } catch (...) {
    undo_enter(call, e);
    throw;
  }
  return result;
}

// Takes back an enter whose call will not run (its pre work failed).
void Engine::undo_enter(const ForwardCall& call, PendingEnter& e) noexcept {
  ActivationRef dropped;
  std::lock_guard<SpinLock> lock(state_);
  if (e.act && e.act->forward_running) {  // still the list's (the scope may have ended and freed it)
    unlink_running(*e.act);
    dropped = ActivationRef::adopt(e.act);
  }
  if (counts_.count(e.fqn, Phase::forward) > 0) counts_.sub(e.fqn, Phase::forward);
  if (e.reported) record(Phase::forward, Kind::exit, e.fqn, call.depth, call.method ? method_id(call.method) : 0);
}

// Forward exit under the state lock: count - 1 and the journal.
void Engine::exit_forward_locked(std::uint32_t fqn, bool reported, const ForwardCall& call, StepClock& clock) {
  if (fqn == global_id || counts_.count(fqn, Phase::forward) == 0)
    throw std::logic_error("modtracker: forward exit without a matching enter");
  counts_.sub(fqn, Phase::forward);
  if (!reported) return;
  std::uint16_t method = 0;
  if (call.method) [[unlikely]]
    method = method_id(call.method);
  record(Phase::forward, Kind::exit, fqn, call.depth, method, clock);
}

// The whole exit of a call whose post hook does not run, under the state
// lock. Returns the call's activation, if it has one (the running list's
// reference, now the caller's).
ActivationRef Engine::exit_locked(const ForwardCall& call, std::uintptr_t token, StepClock& clock) {
  auto* a = activation_in(token);
  if (!a) {
    exit_forward_locked(fqn_in(token), reported_in(token), call, clock);
    return {};
  }
  if (!a->forward_running) throw std::logic_error("modtracker: post_forward without a matching pre_forward");
  unlink_running(*a);
  auto act = ActivationRef::adopt(a);
  exit_forward_locked(act->fqn, act->reported, call, clock);
  act->end_sequence = activations_;
  return act;
}

// After a call's exit: the first gradient of its output enters it in
// backward. `next`, entered already in a chain, takes that output as its
// inputs: its exit hook goes along in the same backend call.
void Engine::register_output(ActivationRef act, ValuesRef output, PendingEnter* next) {
  if (!act || !output) return;
  const GradOrder order{Kind::enter, act->depth, act->sequence};
  Activation* const a = act.get();  // valid while hooks[0] holds it
  std::array<GradientHook, 2> hooks{
      GradientHook{GradientWait::first, order, GradCallback(act.release(), activation_refs, &on_output_gradient)}};
  std::size_t n = 1;
  if (next) {
    hooks[n++] = GradientHook{GradientWait::all, next->exit_order, std::move(next->exit_cb)};
    next->exit_registered = true;
  }
  const bool added = backend_.add_gradient_hooks(output, std::span(hooks.data(), n), nullptr);
  if (next) next->act->inputs_hooked = added;
  // A call in the backward graph (its inputs require grad, or it recorded
  // nodes of its own) and an output with nothing to follow: its backward
  // cannot be seen (a user type the backend cannot look into).
  if (!added && !backend_.holds_values(output) &&
      (a->inputs_hooked || backend_.graph_nodes_recorded() != a->graph_at_enter)) [[unlikely]] {
    std::string fqn;
    {
      std::lock_guard<SpinLock> lock(state_);
      fqn = names_.fqn(a->fqn);
    }
    diagnose_once({Diagnostic::Code::opaque_output, fqn,
                   "module '" + fqn + "' returned no value that the backend can follow while it is part of the "
                       "backward graph (its inputs require grad, or its forward recorded nodes), so its backward "
                       "cannot be followed"});
  }
}

void Engine::post_forward(const ForwardCall& call, ValuesRef output, std::uintptr_t token) {
  if (!may_have_hooks()) return finish_forward(call, output, token, nullptr);  // the common case: one lock does all
  const auto h = hooks();
  finish_forward(call, output, token, h.get());
}

void Engine::finish_forward(const ForwardCall& call, ValuesRef output, std::uintptr_t token, const ErasedHooks* h) {
  ActivationRef act;
  StepClock clock;
  if (!h || !h->post_fw) {
    {
      std::lock_guard<SpinLock> lock(state_);
      act = exit_locked(call, token, clock);
    }
    return register_output(std::move(act), output);
  }
  // A post hook runs before the exit, outside the lock (if the module is reported).
  std::uint32_t fqn = fqn_in(token);
  bool reported = reported_in(token);
  bool exited = false;
  if (auto* a = activation_in(token)) {
    {
      std::lock_guard<SpinLock> lock(state_);
      if (a->forward_running) {
        if (!a->reported) {
          act = exit_locked(call, token, clock);
          exited = true;
        } else {
          unlink_running(*a);
          act = ActivationRef::adopt(a);  // the list's reference
        }
      }
    }
    if (!act) throw std::logic_error("modtracker: post_forward without a matching pre_forward");
    fqn = act->fqn;
    reported = act->reported;
  }
  if (!exited) {
    std::exception_ptr hook_error;
    if (reported) {
      try {
        h->post_fw(call.module, call.inputs, output);
      } catch (...) {
        hook_error = std::current_exception();
      }
    }
    {
      std::lock_guard<SpinLock> lock(state_);
      exit_forward_locked(fqn, reported, call, clock);
      if (act) act->end_sequence = activations_;
    }
    if (hook_error) std::rethrow_exception(hook_error);
  }
  register_output(std::move(act), output);
}

// A chain's step: one lock and one clock read for a call's exit and the next
// call's enter (the two transitions share a time), and one backend call for
// the hooks on the tensor between them. With user hooks, which run between
// the two, it is post_forward then pre_forward.
EnterResult Engine::exit_and_enter(const ForwardCall& done, ValuesRef output, std::uintptr_t token,
                                   const ForwardCall& next) {
  if (may_have_hooks()) return ForwardObserver::exit_and_enter(done, output, token, next);
  PendingEnter e(backend_);
  ActivationRef act;  // done's, if it has one
  std::exception_ptr enter_error;
  try {
    begin_enter(next, e);
  } catch (...) {  // next does not start; done still ends
    enter_error = std::current_exception();
  }
  {
    std::lock_guard<SpinLock> lock(state_);
    StepClock clock;  // one reading for both transitions
    act = exit_locked(done, token, clock);
    if (!enter_error) {
      try {
        enter_locked(next, e, clock);
      } catch (...) {
        enter_error = std::current_exception();
      }
    }
  }
  try {  // done is finished either way
    const bool between = e.act && !enter_error && output.ptr == next.inputs.ptr;  // done's output is next's input
    register_output(std::move(act), output, between ? &e : nullptr);
  } catch (...) {
    if (!enter_error) undo_enter(next, e);  // next will not run
    throw;
  }
  if (enter_error) std::rethrow_exception(enter_error);
  return end_enter(next, e);
}

}  // namespace modtracker::detail
