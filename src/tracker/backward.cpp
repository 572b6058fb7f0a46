// The backward rules (docs/semantics.md, "Backward"): the first gradient of
// an activation's output enters it in backward; the gradients of all its
// inputs that the pass computes exit it; what is still open when the pass
// ends exits then, latest first. An exit first closes the activations that
// ran inside its forward and are still open, so backward nests.
module;
#include "tracker/includes.hpp"
module modtracker;
import modtracker.backend;
import :engine;

namespace modtracker::detail {

// The Activation is the callbacks' context (no allocation), counted in it.
void on_output_gradient(void* activation, ValuesRef grads) {
  auto& act = *static_cast<Activation*>(activation);
  with_epoch(*act.epoch, act.epoch_generation, [&](Engine& e) { e.backward_enter(act, grads); });
}
void on_input_gradients(void* activation, ValuesRef grads) {
  auto& act = *static_cast<Activation*>(activation);
  with_epoch(*act.epoch, act.epoch_generation, [&](Engine& e) { e.backward_exit(act, grads); });
}

Engine::OpenPass* Engine::find_pass(std::uint64_t id) noexcept {
  const auto p = std::find_if(passes_.begin(), passes_.end(), [&](const OpenPass& o) { return o.id == id; });
  return p == passes_.end() ? nullptr : &*p;
}

// The module of an activation if it still exists: the one named at its
// address then (a later module at a reused address is not it).
std::shared_ptr<const void> Engine::live_module(const Activation& act) const {
  std::lock_guard<SpinLock> lock(state_);
  const auto* info = names_.at(act.module);
  if (!info || info->generation != act.module_generation) return nullptr;
  return info->weak.lock();
}

void Engine::backward_enter(Activation& act, ValuesRef grads) {
  const auto pass = backend_.backward_pass();
  if (pass == 0) return;  // a gradient outside any backward pass: nothing to enter
  bool first_of_pass = false;
  {
    std::lock_guard<SpinLock> lock(state_);
    if (act.entered_pass == pass) return;  // "first gradient of any": once per pass
    auto* p = find_pass(pass);
    if (!p) {
      p = &passes_.emplace_back(OpenPass{pass, std::this_thread::get_id(), {}});
      first_of_pass = true;
    }
    act.entered_pass = pass;
    act.backward_rank.store(++p->entered, std::memory_order_relaxed);
    // In a chain the module that ran before this one enters backward next:
    // start loading its count (at 1000 modules it is out of cache).
    prefetch_line(counts_.slot(act.previous_fqn));
    p->open.emplace_back(act);
    counts_.add(act.fqn, Phase::backward);
    if (act.reported) record(Phase::backward, Kind::enter, act.fqn, act.depth, act.method);
  }
  if (first_of_pass) {
    backend_.at_end_of_backward([epoch = act.epoch, generation = act.epoch_generation, pass] {
      with_epoch(*epoch, generation, [&](Engine& e) { e.finish_pass(pass); });
    });
  }
  if (act.reported && may_have_hooks()) {
    if (const auto h = hooks(); h && h->pre_bw) {
      const auto module = live_module(act);
      h->pre_bw(ModuleRef{module.get()}, grads);
    }
  }
}

void Engine::backward_exit(Activation& act, ValuesRef grads) {
  const auto pass = backend_.backward_pass();
  const bool post_hook = act.reported && may_have_hooks() && [&] {
    const auto h = hooks();
    return h && h->post_bw;
  }();
  std::vector<ActivationRef> inner;  // still in backward, but ran inside `act`
  {
    std::lock_guard<SpinLock> lock(state_);
    if (pass == 0 || act.entered_pass != pass || act.exited_pass == pass) return;  // never entered
    act.exited_pass = pass;
    // Modules whose exits wait for the end of the pass (their inputs get no
    // gradient in it) leave first, latest first, so backward stays nested.
    // They entered after `act`: search the open stack from its top (exits are
    // mostly last-in first-out, so this is short).
    if (auto* p = find_pass(pass)) {
      auto& open = p->open;
      const auto at = std::find_if(open.rbegin(), open.rend(), [&](const auto& a) { return a.get() == &act; });
      if (at != open.rend()) {
        const auto index = static_cast<std::size_t>(std::distance(at, open.rend())) - 1;
        for (auto j = open.size(); j-- > index + 1;) {
          if (!act.encloses(*open[j])) continue;
          open[j]->exited_pass = pass;
          inner.push_back(open[j]);
        }
        if (inner.empty() && index + 1 == open.size()) open.pop_back();  // the usual case: it is on top
        else std::erase_if(open, [&](const auto& a) { return a->exited_pass == pass; });
      }
    }
    if (inner.empty() && !post_hook) {  // the usual case: no hook to run first, exit under this lock
      exit_backward_locked(act);
      return;
    }
  }
  for (const auto& a : inner) exit_backward(*a, ValuesRef{});
  exit_backward(act, grads);
}

void Engine::exit_backward_locked(const Activation& act) {
  if (counts_.count(act.fqn, Phase::backward) == 0) return;  // stop() may have cleared it meanwhile
  counts_.sub(act.fqn, Phase::backward);
  if (act.reported) record(Phase::backward, Kind::exit, act.fqn, act.depth, act.method);
}

void Engine::exit_backward(Activation& act, ValuesRef grads) {
  std::exception_ptr hook_error;
  if (act.reported && may_have_hooks()) {
    try {
      if (const auto h = hooks(); h && h->post_bw) {
        const auto module = live_module(act);
        h->post_bw(ModuleRef{module.get()}, grads);
      }
    } catch (...) {
      hook_error = std::current_exception();
    }
  }
  {
    std::lock_guard<SpinLock> lock(state_);
    exit_backward_locked(act);
  }
  if (hook_error) std::rethrow_exception(hook_error);
}

void Engine::finish_pass(std::uint64_t pass) {
  std::vector<ActivationRef> open;
  {
    std::lock_guard<SpinLock> lock(state_);
    auto* p = find_pass(pass);
    if (!p) return;
    open = std::move(p->open);
    std::erase_if(passes_, [&](const OpenPass& o) { return o.id == pass; });
  }
  std::exception_ptr first_error;
  for (auto a = open.rbegin(); a != open.rend(); ++a) {  // deferred exits, latest first
    {
      std::lock_guard<SpinLock> lock(state_);
      if ((*a)->exited_pass == pass) continue;
      (*a)->exited_pass = pass;
    }
    try {
      exit_backward(**a, ValuesRef{});
    } catch (...) {
      if (!first_error) first_error = std::current_exception();
    }
  }
  if (first_error) std::rethrow_exception(first_error);
}

// A pass on this thread that never reached its end (its backward threw, so
// LibTorch ran no end callbacks): its open activations exit now, at the next
// forward on the thread.
void Engine::close_stale_passes() {
  const auto me = std::this_thread::get_id();
  std::erase_if(passes_, [&](OpenPass& p) {
    if (p.thread != me) return false;
    for (auto a = p.open.rbegin(); a != p.open.rend(); ++a) {
      auto& act = **a;
      if (act.exited_pass == p.id) continue;
      act.exited_pass = p.id;
      exit_backward_locked(act);
    }
    return true;
  });
}

}  // namespace modtracker::detail
