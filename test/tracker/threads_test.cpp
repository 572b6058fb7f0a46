// One tracker, module calls on several threads at once, readers on another:
// counts stay exact and ThreadSanitizer (make tsan) stays quiet.
#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <thread>

#include "support/reference.hpp"

#include <doctest/doctest.h>

using namespace support;

TEST_CASE("threads: one tracker sees every thread's calls, parents stays consistent, reads never block") {
  Backend b;
  b.set_grad_mode(false);  // the reference backend's gradients are single-threaded
  auto leaf = b.module("Leaf");
  auto root = b.module("Root", {{"leaf", leaf}});
  ReferenceTracker t(b);
  t.set_diagnostics([](const Diagnostic&) {});  // Root running on two threads at once is a re-entry
  std::atomic<int> hook_calls{0};
  t.register_user_hooks([&](Module&, const Values&) { hook_calls.fetch_add(1, std::memory_order_relaxed); });
  auto scope = t.track();
  constexpr int threads = 4, calls = 2000;
  std::atomic<bool> done{false};
  std::thread reader([&] {
    std::size_t seen = 0;
    while (!done.load()) {
      const auto p = t.parents();
      CHECK(p.contains("Global"));
      seen += p.size();
    }
    CHECK(seen > 0);
  });
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i)
    pool.emplace_back([&] {
      const Values x{b.value(false)};
      for (int c = 0; c < calls; ++c)
        b.call(*root, x, [&](const Values& v) { return b.call(*leaf, v, [](const Values& in) { return in; }); });
    });
  for (auto& th : pool) th.join();
  done = true;
  reader.join();
  CHECK(join(t.parents()) == "Global");
  CHECK(hook_calls.load() == threads * calls * 2);
  std::size_t enters = 0;
  for (const auto& tr : t.drain_transitions()) enters += tr.kind == Kind::enter;
  CHECK(enters == threads * calls * 2);
}

namespace {
// `n` threads calling `leaf` (grad off) over and over until stop() (or the
// end of the scope).
class CallingThreads {
 public:
  CallingThreads(Backend& b, Module& leaf, int n) {
    for (int i = 0; i < n; ++i)
      pool_.emplace_back([&b, &leaf, this] {
        const Values x{b.value(false)};
        while (!stop_.load()) b.call(leaf, x, [](const Values& in) { return in; });
      });
  }
  CallingThreads(const CallingThreads&) = delete;
  CallingThreads& operator=(const CallingThreads&) = delete;
  ~CallingThreads() { stop(); }
  void stop() {
    stop_ = true;
    for (auto& th : pool_)
      if (th.joinable()) th.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> pool_;
};
}  // namespace

TEST_CASE("threads: a scope ended on one thread while others call modules") {
  Backend b;
  b.set_grad_mode(false);
  auto leaf = b.module("Leaf");
  ReferenceTracker t(b);
  t.set_diagnostics([](const Diagnostic&) {});  // Leaf on three threads at once is a re-entry
  auto scope = std::make_unique<ReferenceTracker::Scope>(t.track());
  CallingThreads callers(b, *leaf, 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  scope->end();  // waits for calls inside the tracker to leave
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  callers.stop();
  auto again = t.track();
  CHECK(join(t.parents()) == "Global");
}

TEST_CASE("threads: once a scope has ended, none of its hooks runs or is running, while others call modules") {
  Backend b;
  b.set_grad_mode(false);
  auto leaf = b.module("Leaf");
  ReferenceTracker t(b);
  t.set_diagnostics([](const Diagnostic&) {});
  std::atomic<int> inside{0}, calls{0};
  t.register_user_hooks([&](Module&, const Values&) {
    inside.fetch_add(1);
    calls.fetch_add(1);
    std::this_thread::yield();
    inside.fetch_sub(1);
  });
  CallingThreads callers(b, *leaf, 2);
  int quiet_rounds = 0;
  for (int round = 0; round < 200; ++round) {
    auto scope = t.track();
    while (calls.load() == 0) std::this_thread::yield();  // the hooks do run meanwhile
    scope.end();
    CHECK(inside.load() == 0);  // end() waited for the hooks running on other threads
    calls.store(0);
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    quiet_rounds += calls.load() == 0;  // and no hook started after it
  }
  callers.stop();
  CHECK(quiet_rounds == 200);
}

namespace {
// Calls `outer` with a pre hook of `t` that lets another thread start a scope
// of `other` (which then waits for the hook), gives it time to wait, and runs
// `in_hook`. Returns whether the other thread's scope started (no deadlock:
// a deadlock hangs here, and ctest's timeout fails the test).
bool scope_starts_while_a_hook_runs(Backend& b, Module& outer, ReferenceTracker& t, ReferenceTracker& other,
                                    const std::function<void()>& in_hook) {
  std::atomic<int> stage{0};
  t.register_user_hooks([&](Module& m, const Values&) {
    if (&m != &outer) return;
    stage = 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    in_hook();
  });
  auto scope = t.track();
  std::thread starter([&] {
    while (stage.load() == 0) std::this_thread::yield();
    auto s = other.track();
    stage = 2;
  });
  b.call(outer, {b.value(false)}, [](const Values& v) { return v; });
  starter.join();
  t.clear_user_hooks();
  return stage.load() == 2;
}
}  // namespace

TEST_CASE("threads: a hook that calls tracked modules does not block a scope starting on another thread") {
  Backend b;
  b.set_grad_mode(false);
  auto outer = b.module("Outer");
  auto inner = b.module("Inner");
  ReferenceTracker t(b), late(b);
  // A nested observer call must not wait for the waiting writer.
  CHECK(scope_starts_while_a_hook_runs(b, *outer, t, late, [&] { b.call(*inner, {b.value(false)}); }));
  CHECK(transitions(t) == std::vector<std::string>{"fw enter Outer", "fw enter Inner", "fw exit Inner", "fw exit Outer"});
}

TEST_CASE("threads: many short-lived threads: every call is seen, and scopes start and end after they are gone") {
  Backend b;
  b.set_grad_mode(false);
  auto leaf = b.module("Leaf");
  ReferenceTracker t(b);
  auto scope = std::make_unique<ReferenceTracker::Scope>(t.track());
  for (int i = 0; i < 64; ++i) {  // each thread takes a slot and hands it back when it exits
    std::thread th([&] { b.call(*leaf, {b.value(false)}, [](const Values& in) { return in; }); });
    th.join();
  }
  scope.reset();  // the writer walks the slots of threads long gone
  std::size_t enters = 0;
  for (const auto& tr : t.drain_transitions()) enters += tr.kind == Kind::enter;
  CHECK(enters == 64);
  auto again = t.track();
  b.call(*leaf, {b.value(false)}, [](const Values& in) { return in; });
  CHECK(join(t.parents()) == "Global");
}

TEST_CASE("threads: a hook may start a scope while another thread waits to start one") {
  Backend b;
  b.set_grad_mode(false);
  auto outer = b.module("Outer");
  ReferenceTracker t(b), from_hook(b), from_thread(b);
  std::optional<ReferenceTracker::Scope> hook_scope;
  // A writer inside a read section: the waiting one steps back for it.
  CHECK(scope_starts_while_a_hook_runs(b, *outer, t, from_thread, [&] { hook_scope.emplace(from_hook.track()); }));
  CHECK(from_hook.tracking());
  hook_scope.reset();
}
