// ForwardDispatcher: the observer registry and the per-call frame.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <atomic>
#include <exception>
#include <stdexcept>
#include <string>
#include <utility>

#include "backend/sections.hpp"
module modtracker.backend;

namespace modtracker {

namespace {

using detail::ReadSection;
using detail::WriteSection;

// Tracked calls running on this thread: the depth of the next one.
[[gnu::tls_model("initial-exec")]] thread_local std::uint32_t call_depth_on_thread = 0;

// Forward observer calls running on this thread: a scope cannot end inside
// one (the observer may be running further up this thread's stack).
[[gnu::tls_model("initial-exec")]] thread_local std::uint32_t observer_calls_on_thread = 0;

struct InObserver {
  ReadSection section;
  InObserver() { ++observer_calls_on_thread; }
  ~InObserver() { --observer_calls_on_thread; }
  InObserver(const InObserver&) = delete;
  InObserver& operator=(const InObserver&) = delete;
};

}  // namespace

ForwardDispatcher::~ForwardDispatcher() = default;

Registration ForwardDispatcher::add(ForwardObserver& observer) {
  WriteSection lock;  // from inside a hook too: the writer does not wait for its own thread
  if (used_ == max_observers)
    throw std::length_error("modtracker: at most " + std::to_string(max_observers) +
                            " trackers can observe one backend at once");
  const auto generation = next_generation_++;
  slots_[used_++] = Slot{&observer, generation};
  count_.store(used_, std::memory_order_release);
  return Registration([this, generation] { remove(generation); });
}

void ForwardDispatcher::remove(std::uint64_t generation) {
  if (observer_calls_on_thread > 0)  // the observer may be running further up this thread's stack
    throw std::logic_error("modtracker: a tracking scope cannot end inside one of its own hooks");
  WriteSection lock;  // waits for observer calls on other threads
  for (std::uint32_t i = 0; i < used_; ++i) {
    if (slots_[i].generation != generation) continue;
    for (std::uint32_t j = i + 1; j < used_; ++j) slots_[j - 1] = slots_[j];
    slots_[--used_] = Slot{};
    count_.store(used_, std::memory_order_release);
    return;
  }
}

void ForwardDispatcher::children_changed(ModuleRef module) {
  InObserver guard;
  for (std::uint32_t i = 0; i < used_; ++i) slots_[i].observer->children_changed(module);
}

bool ForwardDispatcher::installed(std::uint64_t generation) const noexcept {
  for (std::uint32_t i = 0; i < used_; ++i)
    if (slots_[i].generation == generation) return true;
  return false;
}

void ForwardDispatcher::Call::entered(ForwardObserver* observer, std::uint64_t generation, EnterResult r) noexcept {
  seen_[n_seen_++] = Seen{observer, generation, r.token};
  inputs_read_after_ = inputs_read_after_ || r.reads_inputs_after;
}

ForwardDispatcher::Call::Call(ForwardDispatcher& dispatcher, const ForwardCall& call)
    : dispatcher_(&dispatcher), call_(call) {
  call_.depth = call_depth_on_thread;
  start();
}

ForwardDispatcher::Call::Call(Call& previous, ValuesRef output, const ForwardCall& call)
    : dispatcher_(previous.dispatcher_), call_(call) {
  if (previous.finished_) throw std::logic_error("modtracker: forward call finished twice");
  {
    InObserver guard;
    const auto& d = *dispatcher_;
    // One observer, the one that saw `previous` (the common case): it does
    // both steps. Several: each finishes, then each starts, in their orders.
    if (call_.module && previous.n_seen_ == 1 && d.used_ == 1 && d.slots_[0].generation == previous.seen_[0].generation) {
      previous.finished_ = true;
      call_.depth = --call_depth_on_thread;
      const Seen s = previous.seen_[0];
      previous.n_seen_ = 0;
      entered(s.observer, s.generation, s.observer->exit_and_enter(previous.call_, output, s.token, call_));
      ++call_depth_on_thread;
      return;
    }
  }
  previous.finish(output);
  call_.depth = call_depth_on_thread;
  start();
}

void ForwardDispatcher::Call::start() {
  if (!call_.module) throw std::invalid_argument("modtracker: forward call of a null module");
  auto& dispatcher = *dispatcher_;
  {
    InObserver guard;  // post() below nests in it (read sections are reentrant)
    try {
      for (std::uint32_t i = 0; i < dispatcher.used_; ++i) {
        const Slot slot = dispatcher.slots_[i];
        entered(slot.observer, slot.generation, slot.observer->pre_forward(call_));
      }
    } catch (...) {
      post(ValuesRef{}, true);  // the observers that did enter see a failed forward
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
    post(ValuesRef{}, true);
  } catch (...) {  // the forward's own exception is the one in flight
  }
}

void ForwardDispatcher::Call::finish(ValuesRef output) {
  if (finished_) throw std::logic_error("modtracker: forward call finished twice");
  finished_ = true;
  --call_depth_on_thread;
  post(output, false);
}

void ForwardDispatcher::Call::post(ValuesRef output, bool forward_threw) {
  std::exception_ptr first_error;
  InObserver guard;
  for (auto i = n_seen_; i-- > 0;) {
    const Seen& s = seen_[i];
    if (!dispatcher_->installed(s.generation)) continue;  // its scope ended meanwhile
    try {
      s.observer->post_forward(call_, forward_threw ? ValuesRef{} : output, s.token);
    } catch (...) {
      if (!first_error) first_error = std::current_exception();
    }
  }
  n_seen_ = 0;
  if (first_error && !forward_threw) std::rethrow_exception(first_error);
}

}  // namespace modtracker
