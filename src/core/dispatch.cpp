// Registration and ForwardDispatcher: the parts every backend shares.
module;
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <utility>
module modtracker;

namespace modtracker {

void Registration::remove() {
  if (!active()) throw std::logic_error("modtracker: registration removed twice (or never registered)");
  if (auto fn = std::exchange(remove_, nullptr)) {
    if (const auto target = std::exchange(target_, {}).lock()) fn(target.get());
    return;
  }
  std::exchange(generic_, {})();
}

void Registration::reset() noexcept {
  if (!active()) return;
  try {
    remove();
  } catch (...) {  // a destructor must not throw; the remover's state is gone anyway
  }
}

namespace {
// Observer calls running on this thread: removing an observer from inside
// one would wait for itself.
// initial-exec: no __tls_get_addr call on the hot path (we are PIC).
[[gnu::tls_model("initial-exec")]] thread_local int observer_calls_on_thread = 0;
[[gnu::tls_model("initial-exec")]] thread_local std::uint32_t call_depth_on_thread = 0;

struct InObserver {
  InObserver() noexcept { ++observer_calls_on_thread; }
  ~InObserver() { --observer_calls_on_thread; }
};
}  // namespace

ForwardDispatcher::~ForwardDispatcher() = default;

Registration ForwardDispatcher::add(ForwardObserver& observer) {
  std::unique_lock<detail::ReadMostlyLock> lock(mutex_);
  if (used_ == max_observers)
    throw std::length_error("modtracker: at most " + std::to_string(max_observers) +
                            " trackers can observe one backend at once");
  const auto generation = next_generation_++;
  slots_[used_++] = Slot{&observer, generation};
  count_.store(used_, std::memory_order_release);
  return Registration([this, generation] { remove(generation); });
}

void ForwardDispatcher::remove(std::uint64_t generation) {
  if (observer_calls_on_thread > 0)
    throw std::logic_error("modtracker: a tracking scope cannot end inside one of its own hooks");
  std::unique_lock<detail::ReadMostlyLock> lock(mutex_);  // waits for observer calls on other threads
  for (std::uint32_t i = 0; i < used_; ++i) {
    if (slots_[i].generation != generation) continue;
    for (std::uint32_t j = i + 1; j < used_; ++j) slots_[j - 1] = slots_[j];
    slots_[--used_] = Slot{};
    count_.store(used_, std::memory_order_release);
    return;
  }
}

void ForwardDispatcher::children_changed(ModuleRef module) {
  std::shared_lock<detail::ReadMostlyLock> lock(mutex_);
  InObserver guard;
  for (std::uint32_t i = 0; i < used_; ++i) slots_[i].observer->children_changed(module);
}

bool ForwardDispatcher::installed(std::uint64_t generation) const noexcept {
  for (std::uint32_t i = 0; i < used_; ++i)
    if (slots_[i].generation == generation) return true;
  return false;
}

ForwardDispatcher::Call::Call(ForwardDispatcher& dispatcher, ModuleRef module, Payload inputs, ModuleOwner owner)
    : dispatcher_(&dispatcher), call_{module, inputs, call_depth_on_thread, false, owner} {
  if (!module) throw std::invalid_argument("modtracker: forward call of a null module");
  {
    std::shared_lock<detail::ReadMostlyLock> lock(dispatcher.mutex_);
    InObserver guard;
    try {
      for (std::uint32_t i = 0; i < dispatcher.used_; ++i) {
        const Slot slot = dispatcher.slots_[i];
        const auto token = slot.observer->pre_forward(call_);
        seen_[n_seen_++] = Seen{slot.observer, slot.generation, token};
      }
    } catch (...) {
      lock.unlock();
      post(Payload{}, true);  // the observers that did enter see a failed forward
      finished_ = true;
      throw;
    }
  }
  ++call_depth_on_thread;
}

ForwardDispatcher::Call::~Call() {
  if (finished_) return;
  --call_depth_on_thread;
  try {
    post(Payload{}, true);
  } catch (...) {  // the forward's own exception is the one in flight
  }
}

void ForwardDispatcher::Call::finish(Payload output) {
  if (finished_) throw std::logic_error("modtracker: forward call finished twice");
  finished_ = true;
  --call_depth_on_thread;
  post(output, false);
}

void ForwardDispatcher::Call::post(Payload output, bool forward_threw) {
  std::exception_ptr first_error;
  std::shared_lock<detail::ReadMostlyLock> lock(dispatcher_->mutex_);
  InObserver guard;
  for (auto i = n_seen_; i-- > 0;) {
    const Seen& s = seen_[i];
    if (!dispatcher_->installed(s.generation)) continue;  // its scope ended meanwhile
    try {
      s.observer->post_forward(call_, forward_threw ? Payload{} : output, s.token);
    } catch (...) {
      if (!first_error) first_error = std::current_exception();
    }
  }
  n_seen_ = 0;
  if (first_error && !forward_threw) std::rethrow_exception(first_error);
}

}  // namespace modtracker
