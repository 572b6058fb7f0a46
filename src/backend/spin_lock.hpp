// A tiny test-and-set lock, for state touched for nanoseconds per module
// call (a std::mutex costs twice as much uncontended). Private to the library.
#pragma once
#include <atomic>
#include <thread>

namespace modtracker::detail {

class SpinLock {
 public:
  void lock() noexcept {
    while (flag_.test_and_set(std::memory_order_acquire))
      while (flag_.test(std::memory_order_relaxed)) std::this_thread::yield();
  }
  void unlock() noexcept { flag_.clear(std::memory_order_release); }

 private:
  std::atomic_flag flag_;
};

}  // namespace modtracker::detail
