// The tracker's surface (src/tracker/tracker.cpp, journal.cpp): transitions
// with std and range-v3 views, the journal's bounds, bad input, and no
// allocation per enter/exit.
#include <algorithm>
#include <chrono>
#include <atomic>
#include <cstdlib>
#include <new>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <vector>

#include <range/v3/view/filter.hpp>
#include <range/v3/view/transform.hpp>
#include <range/v3/range/conversion.hpp>

#include "support/reference.hpp"

#include <doctest/doctest.h>

using namespace support;
using V = std::vector<std::string>;

// --- every heap allocation of this test program is counted --------------------
// (not under ThreadSanitizer, whose runtime owns operator new)
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MODTRACKER_NO_COUNTING_NEW 1
#endif
#endif
namespace {
std::atomic<long> allocations{0};
}
#ifndef MODTRACKER_NO_COUNTING_NEW
void* operator new(std::size_t n) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return ::operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
#endif

TEST_CASE("transitions: in order, with depth and rising sequence, usable with std and range-v3 views") {
  Backend b;
  auto leaf = b.module("Leaf");
  auto root = b.module("Root", {{"leaf", leaf}});
  ReferenceTracker t(b);
  auto scope = t.track();
  b.call(*root, {b.value(false)}, [&](const Values& x) { return b.call(*leaf, x); });
  std::vector<Transition> all;
  for (const auto& tr : t.drain_transitions()) all.push_back(tr);
  REQUIRE(all.size() == 4);
  CHECK(all[1].fqn == "Root.leaf");
  CHECK(all[1].depth == 1);
  CHECK(all[0].depth == 0);
  CHECK(std::is_sorted(all.begin(), all.end(), [](auto& a, auto& c) { return a.sequence < c.sequence; }));
  CHECK(all[3].time.count() >= all[0].time.count());

  b.call(*root, {b.value(false)}, [&](const Values& x) { return b.call(*leaf, x); });
  V std_enters;
  for (const auto& tr : t.drain_transitions() | std::views::filter([](const Transition& x) { return x.kind == Kind::enter; }))
    std_enters.push_back(std::string(tr.fqn));
  CHECK(std_enters == V{"Root", "Root.leaf"});

  b.call(*root, {b.value(false)}, [&](const Values& x) { return b.call(*leaf, x); });
  auto gen2 = t.drain_transitions();
  const auto exits = gen2 | ranges::views::filter([](const Transition& x) { return x.kind == Kind::exit; }) |
                     ranges::views::transform([](const Transition& x) { return std::string(x.fqn); }) |
                     ranges::to<std::vector>();
  CHECK(exits == V{"Root.leaf", "Root"});
}

TEST_CASE("transitions: a full journal drops the oldest and reports how many") {
  Backend b;
  auto lin = b.module("Linear");
  ReferenceTracker t(b, TrackerOptions{.journal_capacity = 4});
  std::vector<Diagnostic> diags;
  t.set_diagnostics([&](const Diagnostic& d) { diags.push_back(d); });
  auto scope = t.track();
  for (int i = 0; i < 5; ++i) b.call(*lin, {b.value(false)});
  CHECK(t.dropped_transitions() == 6);
  std::vector<std::uint64_t> sequences;
  for (const auto& tr : t.drain_transitions()) sequences.push_back(tr.sequence);
  CHECK(sequences == std::vector<std::uint64_t>{6, 7, 8, 9});  // the survivors keep their numbers
  b.call(*lin, {b.value(false)});
  sequences.clear();
  for (const auto& tr : t.drain_transitions()) sequences.push_back(tr.sequence);
  CHECK(sequences == std::vector<std::uint64_t>{10, 11});
  REQUIRE(diags.size() == 1);
  CHECK(diags[0].code == Diagnostic::Code::journal_overflow);
  CHECK(diags[0].message.find("6 transitions dropped") != std::string::npos);
  // Read in part after emptying, then filled past its end again: the order survives.
  b.call(*lin, {b.value(false)});
  for (const auto& tr : t.drain_transitions()) {
    CHECK(tr.sequence == 12);
    break;
  }
  b.call(*lin, {b.value(false)});
  b.call(*lin, {b.value(false)});
  std::vector<std::pair<std::uint64_t, Kind>> rest;
  for (const auto& tr : t.drain_transitions()) rest.emplace_back(tr.sequence, tr.kind);
  CHECK(rest == std::vector<std::pair<std::uint64_t, Kind>>{
                    {14, Kind::enter}, {15, Kind::exit}, {16, Kind::enter}, {17, Kind::exit}});
  CHECK(t.dropped_transitions() == 7);
  CHECK_THROWS_AS(ReferenceTracker(b, TrackerOptions{.journal_capacity = 0}), std::invalid_argument);
}

TEST_CASE("bad input: null and foreign modules, removed handles, exits without enters") {
  Backend b, other;
  auto foreign = other.module("Linear");
  ReferenceTracker t(b);
  auto scope = t.track();
  CHECK_THROWS_WITH_AS(b.call(*foreign, {}), "modtracker.reference: module not made by this backend",
                       std::invalid_argument);
  CHECK_FALSE(t.known_fqn(*foreign));
  CHECK_THROWS_AS(b.type_name(ModuleRef{}), std::invalid_argument);
  CHECK_THROWS_AS(b.type_name(ModuleRef{foreign.get()}), std::invalid_argument);
  ForwardDispatcher d;
  CHECK_THROWS_AS(ForwardDispatcher::Call(d, ModuleRef{}, ValuesRef{}), std::invalid_argument);
  // An exit without an enter: a call finished twice is refused, parents stay right.
  auto lin = b.module("Linear");
  const Values x{b.value(false)};
  ForwardDispatcher::Call call(b.dispatcher(), ModuleRef{lin.get()}, ValuesRef{&x});
  call.finish(ValuesRef{&x});
  CHECK_THROWS_WITH_AS(call.finish(ValuesRef{&x}), "modtracker: forward call finished twice", std::logic_error);
  CHECK(join(t.parents()) == "Global");
  CHECK(transitions(t) == std::vector<std::string>{"fw enter Linear", "fw exit Linear"});
  Registration r([] {});
  r.remove();
  CHECK_THROWS_AS(r.remove(), std::logic_error);
  auto target = std::make_shared<int>(0);
  {
    Registration cheap(target, [](void* p) { ++*static_cast<int*>(p); });
    CHECK(cheap.active());
  }  // removed at destruction, exactly once
  CHECK(*target == 1);
  Registration orphan(std::weak_ptr<int>(std::make_shared<int>(0)), [](void*) { FAIL("target gone"); });
  CHECK_NOTHROW(orphan.remove());  // the target is gone: nothing to remove
  int attempts = 0;
  Registration refused([&] {
    if (++attempts == 1) throw std::logic_error("not now");
  });
  CHECK_THROWS_AS(refused.remove(), std::logic_error);
  CHECK(refused.active());  // a remover that throws spends nothing: it can be asked again
  refused.remove();
  CHECK_FALSE(refused.active());
  CHECK(attempts == 2);
}

#ifndef MODTRACKER_NO_COUNTING_NEW
TEST_CASE("no heap allocation per enter/exit in steady state") {
  Backend b;
  auto leaf = b.module("Leaf");
  auto root = b.module("Root", {{"leaf", leaf}});
  ReferenceTracker t(b);
  auto scope = t.track();
  b.set_grad_mode(false);
  const Values x{b.value(false)};
  const std::function<Values(const Values&)> body = [&](const Values& v) { return b.call(*leaf, v, [](const Values& in) { return in; }); };
  const std::function<Values(const Values&)> same = [](const Values& in) { return in; };
  Values out;
  out.reserve(4);
  b.call(*root, x, body);  // warm-up: naming, interning
  b.call(*leaf, x, same);  // and the leaf's one diagnostic: it runs outside its parent below
  const auto before = allocations.load();
  for (int i = 0; i < 1000; ++i) b.call(*leaf, x, same);
  const auto per_call = static_cast<double>(allocations.load() - before) / 1000.0;
  // Values returned by the scripted body are copies (one vector each); the
  // tracker itself must add nothing: one allocation per call at most.
  CHECK(per_call <= 1.0);
  CHECK(t.dropped_transitions() == 0);
}
#endif

