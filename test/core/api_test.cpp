// The public surface: concepts, generators with std and range-v3 views, the
// journal's bounds, bad input, and no allocation per enter/exit.
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

#include "support.hpp"

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

// --- concepts: a wrong signature is rejected by name ----------------------------
static_assert(PreForwardHook<void (*)(Module&, const Values&), Backend>);
static_assert(!PreForwardHook<void (*)(Module&), Backend>);                 // missing inputs
static_assert(!PreForwardHook<void (*)(int, const Values&), Backend>);      // not a module
static_assert(PostForwardHook<void (*)(Module&, const Values&, const Values*), Backend>);
static_assert(!PostForwardHook<void (*)(Module&, const Values&), Backend>);  // no output
static_assert(PreBackwardHook<void (*)(Module*, const Values&), Backend>);
static_assert(!PreBackwardHook<void (*)(Module&, const Values&), Backend>);  // module may be gone: pointer
static_assert(PostBackwardHook<void (*)(Module*, const Values&), Backend>);
static_assert(ModuleFilter<bool (*)(std::string_view, Module&), Backend>);
static_assert(!ModuleFilter<void (*)(std::string_view, Module&), Backend>);  // not a predicate
static_assert(TypedBackend<Backend>);
static_assert(!TypedBackend<HookBackend>);
static_assert(std::input_iterator<Generator<Transition>::iterator>);
static_assert(std::ranges::input_range<Generator<Transition>>);
static_assert(std::ranges::view<Generator<Transition>>);

TEST_CASE("transitions: in order, with depth and rising sequence, usable with std and range-v3 views") {
  Backend b;
  auto leaf = b.module("Leaf");
  auto root = b.module("Root", {{"leaf", leaf}});
  ScriptedTracker t(b);
  auto scope = t.track();
  b.call(*root, {b.value(false)}, [&](const Values& x) { return b.call(*leaf, x); });
  std::vector<Transition> all;
  for (const auto& tr : t.transitions()) all.push_back(tr);
  REQUIRE(all.size() == 4);
  CHECK(all[1].fqn == "Root.leaf");
  CHECK(all[1].depth == 1);
  CHECK(all[0].depth == 0);
  CHECK(std::is_sorted(all.begin(), all.end(), [](auto& a, auto& c) { return a.sequence < c.sequence; }));
  CHECK(all[3].time.count() >= all[0].time.count());

  b.call(*root, {b.value(false)}, [&](const Values& x) { return b.call(*leaf, x); });
  V std_enters;
  for (const auto& tr : t.transitions() | std::views::filter([](const Transition& x) { return x.kind == Kind::enter; }))
    std_enters.push_back(std::string(tr.fqn));
  CHECK(std_enters == V{"Root", "Root.leaf"});

  b.call(*root, {b.value(false)}, [&](const Values& x) { return b.call(*leaf, x); });
  auto gen2 = t.transitions();
  const auto exits = gen2 | ranges::views::filter([](const Transition& x) { return x.kind == Kind::exit; }) |
                     ranges::views::transform([](const Transition& x) { return std::string(x.fqn); }) |
                     ranges::to<std::vector>();
  CHECK(exits == V{"Root.leaf", "Root"});
}

TEST_CASE("transitions: a full journal drops the oldest and reports how many") {
  Backend b;
  auto lin = b.module("Linear");
  ScriptedTracker t(b, TrackerOptions{.journal_capacity = 4});
  std::vector<Diagnostic> diags;
  t.set_diagnostics([&](const Diagnostic& d) { diags.push_back(d); });
  auto scope = t.track();
  for (int i = 0; i < 5; ++i) b.call(*lin, {b.value(false)});
  CHECK(t.dropped_transitions() == 6);
  std::vector<std::uint64_t> sequences;
  for (const auto& tr : t.transitions()) sequences.push_back(tr.sequence);
  CHECK(sequences == std::vector<std::uint64_t>{6, 7, 8, 9});  // the survivors keep their numbers
  b.call(*lin, {b.value(false)});
  sequences.clear();
  for (const auto& tr : t.transitions()) sequences.push_back(tr.sequence);
  CHECK(sequences == std::vector<std::uint64_t>{10, 11});
  REQUIRE(diags.size() == 1);
  CHECK(diags[0].code == Diagnostic::Code::journal_overflow);
  CHECK(diags[0].message.find("6 transitions dropped") != std::string::npos);
  // Read in part after emptying, then filled past its end again: the order survives.
  b.call(*lin, {b.value(false)});
  for (const auto& tr : t.transitions()) {
    CHECK(tr.sequence == 12);
    break;
  }
  b.call(*lin, {b.value(false)});
  b.call(*lin, {b.value(false)});
  std::vector<std::pair<std::uint64_t, Kind>> rest;
  for (const auto& tr : t.transitions()) rest.emplace_back(tr.sequence, tr.kind);
  CHECK(rest == std::vector<std::pair<std::uint64_t, Kind>>{
                    {14, Kind::enter}, {15, Kind::exit}, {16, Kind::enter}, {17, Kind::exit}});
  CHECK(t.dropped_transitions() == 7);
  CHECK_THROWS_AS(ScriptedTracker(b, TrackerOptions{.journal_capacity = 0}), std::invalid_argument);
}

TEST_CASE("walk: yields (fqn, module) pre-order") {
  Backend b;
  auto root = b.module("NetImpl", {{"a", b.module("A", {{"x", b.module("X")}})}, {"b", b.module("B")}});
  ScriptedTracker t(b);
  V names;
  for (const auto& [fqn, ref] : t.walk(*root)) {
    names.push_back(fqn);
    CHECK(ref);
  }
  CHECK(names == V{"Net", "Net.a", "Net.a.x", "Net.b"});
}

TEST_CASE("bad input: null and foreign modules, removed handles, exits without enters") {
  Backend b, other;
  auto foreign = other.module("Linear");
  ScriptedTracker t(b);
  auto scope = t.track();
  CHECK_THROWS_WITH_AS(b.call(*foreign, {}), "modtracker.scripted: module not made by this backend",
                       std::invalid_argument);
  CHECK_FALSE(t.known_fqn(*foreign));
  CHECK_THROWS_AS(b.type_name(ModuleRef{}), std::invalid_argument);
  CHECK_THROWS_AS(b.type_name(ModuleRef{foreign.get()}), std::invalid_argument);
  ForwardDispatcher d;
  CHECK_THROWS_AS(ForwardDispatcher::Call(d, ModuleRef{}, Payload{}), std::invalid_argument);
  // An exit the tracker never entered.
  auto& core = t.core();
  CHECK_THROWS_WITH_AS(core.post_forward(ForwardCall{ModuleRef{foreign.get()}, {}, 0}, Payload{}, 7u << 2),
                       "modtracker: forward exit without a matching enter", std::logic_error);
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

TEST_CASE("GradCallback: from a context and a function, or from any callable") {
  int calls = 0;
  const Values grads{Value{7, true}};
  GradCallback from_lambda([&](Payload p) { calls += static_cast<int>(static_cast<const Values*>(p.ptr)->size()); });
  const auto copy = from_lambda;  // shares the callable
  copy(Payload{&grads});
  from_lambda(Payload{&grads});
  CHECK(calls == 2);
  auto counter = std::make_shared<int>(0);
  const std::weak_ptr<int> watch = counter;
  const int* seen = counter.get();
  GradCallback from_context(counter, [](void* c, Payload) { ++*static_cast<int*>(c); });
  from_context(Payload{});
  CHECK(*counter == 1);
  const auto borrowed = from_context.ref();  // calls the same function on the same context, owning nothing
  counter.reset();  // from_context still owns it
  CHECK_FALSE(watch.expired());
  borrowed(Payload{});
  CHECK(*seen == 2);
  from_context = GradCallback{};
  CHECK(watch.expired());  // the last owner let go
  CHECK_FALSE(GradCallback{});
}

TEST_CASE("HookBackend::keep_boundary by default: the first-of-any, then the all-of, on the same values") {
  Backend b;  // the scripted backend keeps the default
  const Values none{b.value(false)};
  int calls = 0;
  const auto count = [&] { return GradCallback([&](Payload) { ++calls; }); };
  CHECK_FALSE(b.keep_boundary(Payload{&none}, GradOrder{}, count(), GradOrder{}, count()));
  const Values xy{b.value(true), b.value(true)};
  std::vector<std::string> fired;
  auto on = [&](const char* what) { return GradCallback([&fired, what](Payload) { fired.emplace_back(what); }); };
  REQUIRE(b.keep_boundary(Payload{&xy}, GradOrder{Kind::enter, 0, 0}, on("first of any"), GradOrder{Kind::exit, 0, 1},
                          on("all of")));
  b.backward({xy[0], xy[1]});
  CHECK(fired == std::vector<std::string>{"first of any", "all of"});
  CHECK(calls == 0);
}

TEST_CASE("GradCallback: a context that counts its own references") {
  struct Counted {
    int refs = 1;  // the one the first callback adopts
    int calls = 0;
  } c;
  static constexpr ContextRefs refs{[](void* p) noexcept { ++static_cast<Counted*>(p)->refs; },
                                    [](void* p) noexcept { --static_cast<Counted*>(p)->refs; }};
  {
    GradCallback cb(&c, refs, [](void* p, Payload) { ++static_cast<Counted*>(p)->calls; });
    CHECK(c.refs == 1);  // adopted, not counted again
    {
      const GradCallback copy = cb;
      CHECK(c.refs == 2);
      copy(Payload{});
    }
    CHECK(c.refs == 1);
    GradCallback moved = std::move(cb);  // a move hands the reference on
    CHECK(c.refs == 1);
    moved(Payload{});
    cb = moved;  // assigned over the moved-from one
    CHECK(c.refs == 2);
  }
  CHECK(c.refs == 0);
  CHECK(c.calls == 2);
}

TEST_CASE("a tracking scope cannot be ended from inside one of its own hooks") {
  Backend b;
  auto lin = b.module("Linear");
  ScriptedTracker t(b);
  auto scope = std::make_unique<ScriptedTracker::Scope>(t.track());
  t.register_user_hooks([&](Module&, const Values&) { scope->end(); });
  CHECK_THROWS_WITH_AS(b.call(*lin, {b.value(false)}), doctest::Contains("inside one of its own hooks"),
                       std::logic_error);
  CHECK(join(t.parents()) == "Global");
  t.clear_user_hooks();
  CHECK_NOTHROW(b.call(*lin, {b.value(false)}));
  // The refused end lost nothing: the scope is still active and tracking, and ends normally.
  CHECK(scope->active());
  CHECK(t.tracking());
  CHECK(transitions(t) == V{"fw enter Linear", "fw exit Linear", "fw enter Linear", "fw exit Linear"});
  scope->end();
  CHECK_FALSE(t.tracking());
  b.call(*lin, {b.value(false)});
  CHECK(transitions(t).empty());
}

TEST_CASE("a tracker may start inside another tracker's hook: it sees the calls from then on") {
  Backend b;
  auto outer = b.module("Outer");
  auto inner = b.module("Inner");
  ScriptedTracker t(b), late(b);
  std::optional<ScriptedTracker::Scope> late_scope;
  t.register_user_hooks([&](Module& m, const Values&) {
    if (&m == outer.get() && !late_scope) late_scope.emplace(late.track());
  });
  auto scope = t.track();
  b.call(*outer, {b.value(false)}, [&](const Values& v) { return b.call(*inner, v, [](const Values& x) { return x; }); });
  CHECK(late.tracking());
  // It started inside Outer's pre hooks, so it saw Outer's enter too (the
  // dispatcher runs the observers present when it reaches them) and its exit.
  CHECK(transitions(late) == V{"fw enter Outer", "fw enter Inner", "fw exit Inner", "fw exit Outer"});
  CHECK(join(late.parents()) == "Global");
  late_scope.reset();
}

TEST_CASE("a scope may end inside one of its backward hooks: it does not wait for itself, later events do nothing") {
  Backend b;
  auto lin = b.module("Linear");
  ScriptedTracker t(b);
  auto scope = std::make_unique<ScriptedTracker::Scope>(t.track());
  int pre_bw = 0, post_bw = 0;
  t.register_user_hooks(modtracker::no_hook, modtracker::no_hook,
                        [&](Module*, const Values&) {
                          ++pre_bw;
                          scope->end();  // would deadlock if the end waited for this very callback
                        },
                        [&](Module*, const Values&) { ++post_bw; });
  const auto x = b.value(true);
  const auto y = b.call(*lin, {x}, [&](const Values& in) { return Values{b.op(in)}; });
  b.backward({y[0], x});
  CHECK(pre_bw == 1);
  CHECK(post_bw == 0);  // the exit came after the scope ended
  CHECK_FALSE(t.tracking());
  auto again = t.track();
  CHECK(join(t.parents()) == "Global");
}

TEST_CASE("the scope may end inside a module's forward: the pending exit is skipped, not misapplied") {
  Backend b;
  auto lin = b.module("Linear");
  ScriptedTracker t(b);
  auto scope = t.track();
  b.call(*lin, {b.value(true)}, [&](const Values& x) {
    scope.end();
    return x;
  });
  CHECK(transitions(t) == V{"fw enter Linear"});
  auto again = t.track();  // nothing of the abandoned call is left behind
  CHECK(join(t.parents()) == "Global");
}

#ifndef MODTRACKER_NO_COUNTING_NEW
TEST_CASE("no heap allocation per enter/exit in steady state") {
  Backend b;
  auto leaf = b.module("Leaf");
  auto root = b.module("Root", {{"leaf", leaf}});
  ScriptedTracker t(b);
  auto scope = t.track();
  b.set_grad_mode(false);
  const Values x{b.value(false)};
  const std::function<Values(const Values&)> body = [&](const Values& v) { return b.call(*leaf, v, [](const Values& in) { return in; }); };
  const std::function<Values(const Values&)> same = [](const Values& in) { return in; };
  Values out;
  out.reserve(4);
  b.call(*root, x, body);  // warm-up: naming, interning
  const auto before = allocations.load();
  for (int i = 0; i < 1000; ++i) b.call(*leaf, x, same);
  const auto per_call = static_cast<double>(allocations.load() - before) / 1000.0;
  // Values returned by the scripted body are copies (one vector each); the
  // tracker itself must add nothing: one allocation per call at most.
  CHECK(per_call <= 1.0);
  CHECK(t.dropped_transitions() == 0);
}
#endif

TEST_CASE("ForwardCall::next is only a hint: a known module, an unknown address or none give the same events") {
  Backend b;
  auto lin = b.module("Linear");
  auto other = b.module("Other");
  ScriptedTracker t(b);
  auto scope = t.track();
  const Values x{b.value(false)};
  int not_a_module = 0;
  for (const modtracker::ModuleRef next :
       {modtracker::ModuleRef{other.get()}, modtracker::ModuleRef{&not_a_module}, modtracker::ModuleRef{}}) {
    ForwardDispatcher::Call call(b.dispatcher(), modtracker::ModuleRef{lin.get()}, Payload{&x}, {}, next);
    call.finish(Payload{&x});
  }
  CHECK(transitions(t) == V{"fw enter Linear", "fw exit Linear", "fw enter Linear", "fw exit Linear", "fw enter Linear",
                            "fw exit Linear"});
  CHECK_FALSE(t.known_fqn(*other));  // a hint names nothing
}

TEST_CASE("AddressMap: finds what it holds across growth, assign replaces in place, never loses an entry") {
  modtracker::detail::AddressMap<int> map;
  std::vector<int> objects(5000);
  CHECK(map.find(&objects[0]) == nullptr);
  for (int i = 0; i < 5000; ++i) map.assign(&objects[i], i);
  bool all_found = true;
  for (int i = 0; i < 5000; ++i) all_found = all_found && map.find(&objects[i]) && *map.find(&objects[i]) == i;
  CHECK(all_found);
  int outside = 0;
  CHECK(map.find(&outside) == nullptr);
  CHECK(map.assign(&objects[7], -7) == -7);  // a new value at a known address
  CHECK(*map.find(&objects[7]) == -7);
  CHECK(map.size() == 5000);
  long sum = 0;
  std::size_t visited = 0;
  bool keys_given = true;
  map.for_each([&](const void* key, int& v) {
    sum += v;
    ++visited;
    keys_given = keys_given && key == &objects[static_cast<std::size_t>(v < 0 ? -v : v)];
  });
  CHECK(visited == 5000);
  CHECK(keys_given);
  CHECK(sum == 4999L * 5000 / 2 - 7 - 7);
}

TEST_CASE("a call handed over to the next: the events of finish and a new call, the exit and the enter at one time") {
  Backend b;
  auto first = b.module("First");
  auto second = b.module("Second");
  auto& d = b.dispatcher();
  // first(x) -> y, second(y) -> z; then gradients arrive for z, y, x.
  auto step = [&](bool hand_over, const std::function<void()>& inside_second) {
    const Values x{b.value(true)};
    std::optional<ForwardDispatcher::Call> one(std::in_place, d, ModuleRef{first.get()}, Payload{&x});
    const Values y{b.op(x)};
    std::optional<ForwardDispatcher::Call> two;
    if (hand_over) {
      two.emplace(*one, Payload{&y}, ModuleRef{second.get()}, Payload{&y});
      CHECK_THROWS_WITH_AS(one->finish(Payload{&y}), "modtracker: forward call finished twice", std::logic_error);
    } else {
      one->finish(Payload{&y});
      two.emplace(d, ModuleRef{second.get()}, Payload{&y});
    }
    inside_second();
    const Values z{b.op(y)};
    two->finish(Payload{&z});
    b.backward({z[0], y[0], x[0]});
  };
  const V expected{"fw enter First",  "fw exit First",  "fw enter Second", "fw exit Second",
                   "bw enter Second", "bw exit Second", "bw enter First",  "bw exit First"};
  ScriptedTracker t(b);
  {
    auto scope = t.track();
    step(false, [&] { CHECK(join(t.parents()) == "Global,Second"); });
    CHECK(transitions(t) == expected);
    step(true, [&] { CHECK(join(t.parents()) == "Global,Second"); });
    std::vector<Transition> handed;
    for (const auto& tr : t.transitions()) handed.push_back(tr);
    REQUIRE(handed.size() == 8);
    CHECK(handed[1].time == handed[2].time);  // one clock read for the exit and the enter
    CHECK(handed[1].sequence + 1 == handed[2].sequence);
    CHECK(join(t.parents()) == "Global");
  }
  // Two trackers: each finishes, then each starts (the general path), same events.
  ScriptedTracker t1(b), t2(b);
  auto s1 = t1.track();
  auto s2 = t2.track();
  step(true, [&] {
    CHECK(join(t1.parents()) == "Global,Second");
    CHECK(join(t2.parents()) == "Global,Second");
  });
  CHECK(transitions(t1) == expected);
  CHECK(transitions(t2) == expected);
  // With user hooks they run between the exit and the enter, as without a hand-over.
  Log log{t1};
  log.hook_all();
  step(true, [] {});
  CHECK(log.lines == V{"pre_fw First [First,Global]", "post_fw First [First,Global]", "pre_fw Second [Global,Second]",
                       "post_fw Second [Global,Second]", "pre_bw Second [Global,Second] bw",
                       "post_bw Second [Global,Second] bw", "pre_bw First [First,Global] bw",
                       "post_bw First [First,Global] bw"});
}

TEST_CASE("a hand-over across a scope's end or start: the ended scope is left alone, the new one sees the next call") {
  Backend b;
  auto first = b.module("First");
  auto second = b.module("Second");
  auto& d = b.dispatcher();
  const Values x{b.value(false)};
  ScriptedTracker old_t(b), new_t(b);
  auto old_scope = old_t.track();
  ForwardDispatcher::Call one(d, ModuleRef{first.get()}, Payload{&x});
  old_scope.end();  // inside First's forward
  auto new_scope = new_t.track();
  {
    ForwardDispatcher::Call two(one, Payload{&x}, ModuleRef{second.get()}, Payload{&x});
    CHECK(join(new_t.parents()) == "Global,Second");
    two.finish(Payload{&x});
  }
  CHECK(transitions(old_t) == V{"fw enter First"});
  CHECK(transitions(new_t) == V{"fw enter Second", "fw exit Second"});
  CHECK(join(old_t.parents()) == "Global");
  CHECK(join(new_t.parents()) == "Global");
}

TEST_CASE("a hand-over whose next call cannot start: the previous call still ends, and its backward is followed") {
  Backend b;
  auto first = b.module("First");
  auto second = b.module("Second");
  ScriptedTracker t(b);
  t.set_filter([](std::string_view fqn, Module&) {
    if (fqn == "Second") throw std::runtime_error("filter refuses Second");
    return true;
  });
  auto scope = t.track();
  const Values x{b.value(true)};
  ForwardDispatcher::Call one(b.dispatcher(), ModuleRef{first.get()}, Payload{&x});
  const Values y{b.op(x)};
  CHECK_THROWS_WITH_AS(ForwardDispatcher::Call(one, Payload{&y}, ModuleRef{second.get()}, Payload{&y}),
                       "filter refuses Second", std::runtime_error);
  CHECK(join(t.parents()) == "Global");
  CHECK_THROWS_WITH_AS(one.finish(Payload{&y}), "modtracker: forward call finished twice", std::logic_error);
  CHECK_THROWS_AS(ForwardDispatcher::Call(one, Payload{&y}, ModuleRef{second.get()}, Payload{&y}), std::logic_error);
  b.backward({y[0], x[0]});
  CHECK(transitions(t) == V{"fw enter First", "fw exit First", "bw enter First", "bw exit First"});
  CHECK(join(t.parents()) == "Global");
  // A null next module: the previous call ends, the next is refused by name.
  ForwardDispatcher::Call again(b.dispatcher(), ModuleRef{first.get()}, Payload{&x});
  CHECK_THROWS_AS(ForwardDispatcher::Call(again, Payload{&y}, ModuleRef{}, Payload{&y}), std::invalid_argument);
  CHECK(join(t.parents()) == "Global");
}

TEST_CASE("GradOrder: exits before entries, ranked exits latest-entered first and before unranked ones, then depth and sequence") {
  std::atomic<std::uint32_t> first{1}, second{2};
  const GradOrder enter_outer{Kind::enter, 0, 5}, enter_inner{Kind::enter, 1, 6};
  const GradOrder exit_deep{Kind::exit, 3, 1, &first}, exit_shallow{Kind::exit, 1, 2, &second};
  CHECK(fires_before(exit_deep, enter_outer));
  CHECK_FALSE(fires_before(enter_outer, exit_deep));
  // Ranked: the rank decides, not the depth; read when compared.
  CHECK(fires_before(exit_shallow, exit_deep));
  CHECK_FALSE(fires_before(exit_deep, exit_shallow));
  first = 3;
  CHECK(fires_before(exit_deep, exit_shallow));
  // Ranked before unranked, whatever their depths.
  const GradOrder unranked_deep{Kind::exit, 9, 0};
  CHECK(fires_before(exit_shallow, unranked_deep));
  CHECK_FALSE(fires_before(unranked_deep, exit_shallow));
  // Unranked exits: deepest first; of one depth, earliest first.
  const GradOrder a{Kind::exit, 2, 10}, b{Kind::exit, 2, 11}, c{Kind::exit, 1, 3};
  CHECK(fires_before(a, c));
  CHECK(fires_before(a, b));
  CHECK_FALSE(fires_before(b, a));
  // Entries: shallowest first; of one depth, latest first.
  CHECK(fires_before(enter_outer, enter_inner));
  const GradOrder later{Kind::enter, 1, 7};
  CHECK(fires_before(later, enter_inner));
  CHECK_FALSE(fires_before(enter_inner, later));
}
