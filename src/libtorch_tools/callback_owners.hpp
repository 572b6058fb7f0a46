// The tools that share one global RecordFunction callback (a plain
// function, so it finds them here): the callback is added with the first
// tool and removed with the last. FlopCounter and OperatorRecorder use it.
#pragma once

#include <ATen/record_function.h>

#include <algorithm>
#include <mutex>
#include <utility>
#include <vector>

#include "backend/spin_lock.hpp"

namespace modtracker::libtorch::detail {

template <class State>
struct CallbackOwners {
  modtracker::detail::SpinLock lock;  // guards all below; the callback holds it while it reads `all`
  std::vector<State*> all;
  at::CallbackHandle callback = 0;

  /// Adds `state`; the first one installs `make()`'s callback. Returns whether it was the first.
  template <class Make>
  bool add(State* state, Make&& make) {
    std::lock_guard<modtracker::detail::SpinLock> guard(lock);
    const bool first = all.empty();
    if (first) callback = at::addGlobalCallback(make());
    all.push_back(state);
    return first;
  }
  /// Removes `state`; the last one takes the callback away.
  void remove(State* state) {
    std::lock_guard<modtracker::detail::SpinLock> guard(lock);
    std::erase(all, state);
    if (all.empty()) at::removeCallback(std::exchange(callback, 0));
  }
};

}  // namespace modtracker::libtorch::detail
