// docs/semantics.md on the reference backend, one test per rule: tracking scopes (src/tracker/scope.cpp): starting, ending, nesting
// trackers, and scopes ended at odd moments.
#include <functional>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/reference.hpp"

#include <doctest/doctest.h>

using namespace support;
using V = std::vector<std::string>;

TEST_CASE("scope: tracking only inside it, ending twice and starting twice are errors") {
  Backend b;
  auto lin = b.module("Linear");
  ReferenceTracker t(b);
  b.call(*lin, {b.value(false)});
  CHECK(transitions(t).empty());
  auto scope = t.track();
  CHECK((t.tracking() && scope.active()));
  CHECK_THROWS_AS((void)t.track(), std::logic_error);
  scope.end();
  CHECK_FALSE((t.tracking() || scope.active()));
  CHECK_THROWS_WITH_AS(scope.end(), "modtracker: tracking scope ended twice", std::logic_error);
  b.call(*lin, {b.value(false)});
  CHECK(transitions(t).empty());
}

TEST_CASE("scope: gradient hooks that fire after the scope ended (or the tracker died) do nothing") {
  Backend b;
  auto lin = b.module("Linear");
  Values y;
  Value x = b.value(true);
  {
    ReferenceTracker t(b);
    auto scope = t.track();
    y = b.call(*lin, {x});
  }
  b.backward({y[0], x});  // must not touch the destroyed tracker
  ReferenceTracker t2(b);
  CHECK(join(t2.parents()) == "Global");
  // A later scope (the ended one's epoch is reused) is not the old graph's:
  // neither another tracker's nor a new scope of the same tracker.
  {
    auto old_scope = t2.track();
    y = b.call(*lin, {x});
  }
  ReferenceTracker t3(b);
  auto other = t3.track();
  auto again = t2.track();
  (void)transitions(t2);
  b.backward({y[0], x});
  CHECK(transitions(t2).empty());
  CHECK(transitions(t3).empty());
  CHECK(join(t2.parents()) == "Global");
  CHECK(join(t3.parents()) == "Global");
}

TEST_CASE("trackers nest: each sees every call while active") {
  Backend b;
  auto lin = b.module("Linear");
  ReferenceTracker outer(b), inner(b);
  auto s1 = outer.track();
  b.call(*lin, {b.value(false)});
  {
    auto s2 = inner.track();
    b.call(*lin, {b.value(false)});
  }
  CHECK(transitions(outer).size() == 4);
  CHECK(transitions(inner).size() == 2);
}

TEST_CASE("a tracking scope cannot be ended from inside one of its own hooks") {
  Backend b;
  auto lin = b.module("Linear");
  ReferenceTracker t(b);
  auto scope = std::make_unique<ReferenceTracker::Scope>(t.track());
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
  ReferenceTracker t(b), late(b);
  std::optional<ReferenceTracker::Scope> late_scope;
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
  ReferenceTracker t(b);
  auto scope = std::make_unique<ReferenceTracker::Scope>(t.track());
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
  ReferenceTracker t(b);
  auto scope = t.track();
  b.call(*lin, {b.value(true)}, [&](const Values& x) {
    scope.end();
    return x;
  });
  CHECK(transitions(t) == V{"fw enter Linear"});
  auto again = t.track();  // nothing of the abandoned call is left behind
  CHECK(join(t.parents()) == "Global");
}
