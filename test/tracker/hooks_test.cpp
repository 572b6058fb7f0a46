// docs/semantics.md on the reference backend, one test per rule: user hooks,
// the filter, scopes, nested trackers.
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

TEST_CASE("user hooks: a taken slot is rejected and nothing changes, clear_user_hooks empties all") {
  Backend b;
  auto lin = b.module("Linear");
  ReferenceTracker t(b);
  int pre = 0, post = 0;
  t.register_user_hooks([&](Module&, const Values&) { ++pre; });
  CHECK_THROWS_WITH_AS(t.register_user_hooks([&](Module&, const Values&) { pre += 100; },
                                             [&](Module&, const Values&, const Values*) { ++post; }),
                       doctest::Contains("pre_fw"), HooksAlreadySet);
  auto scope = t.track();
  b.call(*lin, {b.value(false)});
  CHECK(pre == 1);
  CHECK(post == 0);  // the rejected call set nothing, not even its free slot
  t.register_user_hooks(no_hook, [&](Module&, const Values&, const Values*) { ++post; });
  b.call(*lin, {b.value(false)});
  CHECK((pre == 2 && post == 1));
  t.clear_user_hooks();
  b.call(*lin, {b.value(false)});
  CHECK((pre == 2 && post == 1));
}

TEST_CASE("filter: only accepted modules call user hooks and appear in transitions") {
  Backend b;
  Seq3 m(b);
  ReferenceTracker t(b);
  int hooks = 0;
  t.register_user_hooks([&](Module&, const Values&) { ++hooks; });
  t.set_filter([](std::string_view fqn, Module& mod) { return fqn.find("net.") == std::string_view::npos || mod.type_name().ends_with("LinearImpl"); });
  auto scope = t.track();
  m.run({b.value(false)});
  CHECK(hooks == 5);  // Seq3, net, and the three Linear layers
  CHECK(t.parents().to_set() == std::set<std::string>{"Global"});
  CHECK(transitions(t) == V{"fw enter Seq3", "fw enter Seq3.net", "fw enter Seq3.net.0", "fw exit Seq3.net.0",
                            "fw enter Seq3.net.2", "fw exit Seq3.net.2", "fw enter Seq3.net.4", "fw exit Seq3.net.4",
                            "fw exit Seq3.net", "fw exit Seq3"});
  t.clear_filter();
  m.run({b.value(false)});
  CHECK(hooks == 12);
}

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

TEST_CASE("user hooks that throw: the caller gets the exception, state stays consistent, next forward works") {
  Backend b;
  auto lin = b.module("Linear");
  ReferenceTracker t(b);
  auto scope = t.track();
  bool fail = true;
  t.register_user_hooks([&](Module&, const Values&) {
    if (fail) throw std::runtime_error("pre hook");
  });
  CHECK_THROWS_WITH(b.call(*lin, {b.value(false)}), "pre hook");
  CHECK(join(t.parents()) == "Global");
  fail = false;
  CHECK_NOTHROW(b.call(*lin, {b.value(false)}));
  t.clear_user_hooks();
  t.register_user_hooks(no_hook, [&](Module&, const Values&, const Values*) { throw std::runtime_error("post hook"); });
  CHECK_THROWS_WITH(b.call(*lin, {b.value(false)}), "post hook");
  CHECK(join(t.parents()) == "Global");
  t.clear_user_hooks();
  t.register_user_hooks(no_hook, no_hook, [&](Module*, const Values&) { throw std::runtime_error("bw hook"); });
  auto x = b.value(true);
  auto y = b.call(*lin, {x});
  std::vector<Diagnostic> diags;
  t.set_diagnostics([&](const Diagnostic& d) { diags.push_back(d); });
  CHECK_THROWS_WITH(b.backward({y[0], x}), "bw hook");
  // The aborted pass never reached its end; the next forward closes it.
  t.clear_user_hooks();
  b.call(*lin, {b.value(false)});
  CHECK(join(t.parents()) == "Global");
  REQUIRE(diags.size() == 1);
  CHECK(diags[0].code == Diagnostic::Code::unfinished_backward);
}

