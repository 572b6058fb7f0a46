// Backend authoring: forward dispatch, hints, and chained calls (one call's
// output handed to the next).
#include <chrono>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "support/reference.hpp"

#include <doctest/doctest.h>

using namespace support;
using V = std::vector<std::string>;

TEST_CASE("ForwardCall::likely_next is only a hint: a known module, an unknown address or none give the same events") {
  Backend b;
  auto lin = b.module("Linear");
  auto other = b.module("Other");
  ReferenceTracker t(b);
  auto scope = t.track();
  const Values x{b.value(false)};
  int not_a_module = 0;
  for (const modtracker::ModuleRef next :
       {modtracker::ModuleRef{other.get()}, modtracker::ModuleRef{&not_a_module}, modtracker::ModuleRef{}}) {
    ForwardDispatcher::Call call(b.dispatcher(), modtracker::ModuleRef{lin.get()}, ValuesRef{&x}, {}, next);
    call.finish(ValuesRef{&x});
  }
  CHECK(transitions(t) == V{"fw enter Linear", "fw exit Linear", "fw enter Linear", "fw exit Linear", "fw enter Linear",
                            "fw exit Linear"});
  CHECK_FALSE(t.known_fqn(*other));  // a hint names nothing
}

TEST_CASE("a call handed over to the next: the events of finish and a new call, the exit and the enter at one time") {
  Backend b;
  auto first = b.module("First");
  auto second = b.module("Second");
  auto& d = b.dispatcher();
  // first(x) -> y, second(y) -> z; then gradients arrive for z, y, x.
  auto step = [&](bool hand_over, const std::function<void()>& inside_second) {
    const Values x{b.value(true)};
    std::optional<ForwardDispatcher::Call> one(std::in_place, d, ModuleRef{first.get()}, ValuesRef{&x});
    const Values y{b.op(x)};
    std::optional<ForwardDispatcher::Call> two;
    if (hand_over) {
      two.emplace(*one, ValuesRef{&y}, ModuleRef{second.get()}, ValuesRef{&y});
      CHECK_THROWS_WITH_AS(one->finish(ValuesRef{&y}), "modtracker: forward call finished twice", std::logic_error);
    } else {
      one->finish(ValuesRef{&y});
      two.emplace(d, ModuleRef{second.get()}, ValuesRef{&y});
    }
    inside_second();
    const Values z{b.op(y)};
    two->finish(ValuesRef{&z});
    b.backward({z[0], y[0], x[0]});
  };
  const V expected{"fw enter First",  "fw exit First",  "fw enter Second", "fw exit Second",
                   "bw enter Second", "bw exit Second", "bw enter First",  "bw exit First"};
  ReferenceTracker t(b);
  {
    auto scope = t.track();
    step(false, [&] { CHECK(join(t.parents()) == "Global,Second"); });
    CHECK(transitions(t) == expected);
    step(true, [&] { CHECK(join(t.parents()) == "Global,Second"); });
    std::vector<Transition> handed;
    for (const auto& tr : t.drain_transitions()) handed.push_back(tr);
    REQUIRE(handed.size() == 8);
    CHECK(handed[1].time == handed[2].time);  // one clock read for the exit and the enter
    CHECK(handed[1].sequence + 1 == handed[2].sequence);
    CHECK(join(t.parents()) == "Global");
  }
  // Two trackers: each finishes, then each starts (the general path), same events.
  ReferenceTracker t1(b), t2(b);
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
  ReferenceTracker old_t(b), new_t(b);
  auto old_scope = old_t.track();
  ForwardDispatcher::Call one(d, ModuleRef{first.get()}, ValuesRef{&x});
  old_scope.end();  // inside First's forward
  auto new_scope = new_t.track();
  {
    ForwardDispatcher::Call two(one, ValuesRef{&x}, ModuleRef{second.get()}, ValuesRef{&x});
    CHECK(join(new_t.parents()) == "Global,Second");
    two.finish(ValuesRef{&x});
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
  ReferenceTracker t(b);
  t.set_filter([](std::string_view fqn, Module&) {
    if (fqn == "Second") throw std::runtime_error("filter refuses Second");
    return true;
  });
  auto scope = t.track();
  const Values x{b.value(true)};
  ForwardDispatcher::Call one(b.dispatcher(), ModuleRef{first.get()}, ValuesRef{&x});
  const Values y{b.op(x)};
  CHECK_THROWS_WITH_AS(ForwardDispatcher::Call(one, ValuesRef{&y}, ModuleRef{second.get()}, ValuesRef{&y}),
                       "filter refuses Second", std::runtime_error);
  CHECK(join(t.parents()) == "Global");
  CHECK_THROWS_WITH_AS(one.finish(ValuesRef{&y}), "modtracker: forward call finished twice", std::logic_error);
  CHECK_THROWS_AS(ForwardDispatcher::Call(one, ValuesRef{&y}, ModuleRef{second.get()}, ValuesRef{&y}), std::logic_error);
  b.backward({y[0], x[0]});
  CHECK(transitions(t) == V{"fw enter First", "fw exit First", "bw enter First", "bw exit First"});
  CHECK(join(t.parents()) == "Global");
  // A null next module: the previous call ends, the next is refused by name.
  ForwardDispatcher::Call again(b.dispatcher(), ModuleRef{first.get()}, ValuesRef{&x});
  CHECK_THROWS_AS(ForwardDispatcher::Call(again, ValuesRef{&y}, ModuleRef{}, ValuesRef{&y}), std::invalid_argument);
  CHECK(join(t.parents()) == "Global");
}

