// Tracking scopes: a scope's start installs the engine as a forward observer
// under a fresh epoch; its end removes it, closes the epoch (gradient
// callbacks left on graphs turn inert) and forgets the calls still running.
module;
#include "tracker/includes.hpp"
module modtracker;
import modtracker.backend;
import :engine;

namespace modtracker::detail {

namespace {
std::mutex epochs_mutex;
Epoch* free_epochs = nullptr;  // ended epochs, for the next scopes
}  // namespace

Epoch& open_epoch(Engine& engine) {
  Epoch* e = nullptr;
  {
    std::lock_guard<std::mutex> lock(epochs_mutex);
    if ((e = free_epochs)) free_epochs = e->next_free;
  }
  if (!e) e = new Epoch;  // lives for the rest of the process (see Epoch)
  e->engine.store(&engine, std::memory_order_seq_cst);
  return *e;
}

void close_epoch(Epoch& epoch) {
  epoch.engine.store(nullptr, std::memory_order_seq_cst);
  epoch.generation.fetch_add(1, std::memory_order_seq_cst);
  {
    WriteSection wait;
  }
  std::lock_guard<std::mutex> lock(epochs_mutex);
  epoch.next_free = free_epochs;
  free_epochs = &epoch;
}

void Engine::start() {
  if (epoch_) throw std::logic_error("modtracker: this tracker is tracking already (one scope at a time)");
  {
    // The gradients' state at the start, for the check at the end.
    std::lock_guard<SpinLock> lock(state_);
    counts_.reset_entries();
    names_.for_each([&](const void* ptr, ModuleInfo& info) {
      if (const auto alive = info.weak_known ? info.weak.lock() : nullptr)
        names_.grad_stamp(info.fqn) = backend_.gradient_stamp(ModuleRef{ptr});
    });
  }
  backend_.scope_starting();
  watch_ = backend_.start_watch();
  seen_call_.store(false, std::memory_order_relaxed);
  auto& epoch = open_epoch(*this);
  epoch_ = &epoch;  // before the observer: other threads' calls read it at once
  epoch_generation_ = epoch.generation.load(std::memory_order_relaxed);
  try {
    observer_ = backend_.dispatcher().add(*this);
  } catch (...) {
    epoch_ = nullptr;
    close_epoch(epoch);
    first_call_seen();  // ends the watch
    backend_.scope_ending();
    throw;
  }
  notify_scope(true);
}

void Engine::first_call_seen() {
  if (!seen_call_.exchange(true)) (void)backend_.stop_watch(watch_);
}

// A child entered outside its parent's call (a method other than forward
// that calls it, or the child used alone on purpose): information, once.
void Engine::say_outside_parent(std::uint32_t fqn, std::uint32_t parent) {
  std::string name, parent_name;
  {
    std::lock_guard<SpinLock> lock(state_);
    name = names_.fqn(fqn);
    parent_name = names_.fqn(parent);
  }
  diagnose({Diagnostic::Code::outside_parent, name,
                 "module '" + name + "' ran outside a call of its parent '" + parent_name +
                     "': its transitions are not nested in '" + parent_name +
                     "' (a method of the parent other than forward that calls it is not a tracked call). If it is "
                     "used alone on purpose, nothing is wrong"});
}

// Once per scope: work done without a tracked call, and parameters that got
// gradients in a scope where their module never entered backward.
void Engine::check_scope_end() {
  if (!seen_call_.exchange(true)) {
    const auto work = backend_.stop_watch(watch_);
    if (!work.empty())
      diagnose_once({Diagnostic::Code::untracked_scope, "",
                     "this tracking scope saw no tracked module call, but " + work +
                         ": the model's modules are not tracked"});
  }
  std::vector<std::pair<std::string, std::shared_ptr<const void>>> candidates;
  std::string layer_roots;
  std::size_t layers = 0;
  {
    std::lock_guard<SpinLock> lock(state_);
    for (const auto id : names_.take_layer_roots()) {
      layer_roots += (layers++ ? ", " : "") + names_.fqn(id);
    }
    names_.for_each([&](const void* ptr, ModuleInfo& info) {
      if (counts_.backward_entries(info.fqn) != 0 || !info.weak_known) return;
      // A framework layer that ran backward used its children's parameters itself.
      if (names_.inside_layer(info.fqn) && counts_.backward_entries(names_.parent_of(info.fqn)) != 0) return;
      auto alive = info.weak.lock();
      if (!alive) return;
      const auto stamp = backend_.gradient_stamp(ModuleRef{ptr});
      if (stamp != 0 && stamp != names_.grad_stamp(info.fqn)) candidates.emplace_back(names_.fqn(info.fqn), std::move(alive));
    });
  }
  if (layers >= 2)
    diagnose_once({Diagnostic::Code::untracked_parent, "",
                   "the layers " + layer_roots +
                       " ran as roots in this scope: the call of the model that holds them was not tracked, so "
                       "its name, its own work and their nesting are missing"});
  for (const auto& [fqn, module] : candidates) {
    if (said(Diagnostic::Code::untracked_child, fqn)) continue;  // said already, at its naming
    if (!backend_.has_nonzero_gradient(ModuleRef{module.get()})) continue;  // zeroed, not computed
    diagnose_once({Diagnostic::Code::untracked_gradients, fqn,
                   "the parameters of '" + fqn + "' received gradients in this scope, but it never entered "
                       "backward: its call was not tracked, or its forward ran outside the scope"});
  }
}

void Engine::stop() {
  if (!epoch_) throw std::logic_error("modtracker: this tracker is not tracking");
  try {
    backend_.scope_ending();
  } catch (...) {  // a hook that throws: the scope still ends
  }
  observer_.remove();  // throws inside one of its own forward hooks: the scope stays
  close_epoch(*std::exchange(epoch_, nullptr));  // waits for gradient callbacks running now
  try {
    check_scope_end();
  } catch (...) {  // a sink that throws: the scope still ends
  }
  notify_scope(false);
  // Calls still running will never report their end to this scope: forget
  // them, and every count but Global's.
  std::vector<ActivationRef> abandoned;  // freed after the lock
  std::lock_guard<SpinLock> lock(state_);
  passes_.clear();
  counts_.reset();
  while (running_) {
    Activation* a = running_;
    unlink_running(*a);
    abandoned.push_back(ActivationRef::adopt(a));
  }
}

}  // namespace modtracker::detail
