// docs/semantics.md on the reference backend, one test per rule: backward.
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

TEST_CASE("backward: shared boundary values nest (entries outermost first, exits innermost first)") {
  Backend b;
  Seq3 m(b);
  ReferenceTracker t(b);
  auto scope = t.track();
  auto x = b.value(true);
  auto out = m.run({x});
  (void)transitions(t);  // the forward part
  b.backward(m.backward_order(x));
  CHECK(transitions(t) == V{"bw enter Seq3", "bw enter Seq3.net", "bw enter Seq3.net.4", "bw exit Seq3.net.4",
                            "bw enter Seq3.net.3", "bw exit Seq3.net.3", "bw enter Seq3.net.2", "bw exit Seq3.net.2",
                            "bw enter Seq3.net.1", "bw exit Seq3.net.1", "bw enter Seq3.net.0", "bw exit Seq3.net.0",
                            "bw exit Seq3.net", "bw exit Seq3"});
  CHECK(join(t.parents()) == "Global");
  CHECK_FALSE(t.is_bw());
}

TEST_CASE("backward: siblings (each with a child) that read one value exit latest-entered first, so they nest") {
  Backend b;
  auto c = b.module("C"), d = b.module("D");
  auto first = b.module("A", {{"c", c}}), second = b.module("B", {{"d", d}});
  auto root = b.module("Root", {{"a", first}, {"b", second}});
  ReferenceTracker t(b);
  auto scope = t.track();
  const auto x = b.value(true);
  Value ya, yb;
  const auto out = b.call(*root, {x}, [&](const Values& v) {
    ya = b.call(*first, v, [&](const Values& w) { return b.call(*c, w); })[0];
    yb = b.call(*second, v, [&](const Values& w) { return b.call(*d, w); })[0];
    return Values{b.op({ya, yb})};
  });
  (void)transitions(t);
  b.backward({out[0], yb, ya, x});  // the later branch first, as an engine runs it
  // Five exits on x's gradient: by depth alone C and D would leave before A.
  CHECK(transitions(t) == V{"bw enter Root", "bw enter Root.b", "bw enter Root.b.d", "bw enter Root.a", "bw enter Root.a.c",
                            "bw exit Root.a.c", "bw exit Root.a", "bw exit Root.b.d", "bw exit Root.b", "bw exit Root"});
  CHECK(join(t.parents()) == "Global");
}

TEST_CASE("backward: exits of modules whose inputs need no grad run at the end, latest first") {
  Backend b;
  Seq3 m(b);
  ReferenceTracker t(b);
  Log log{t};
  auto scope = t.track();
  const auto x = b.value(false);
  m.run({x});
  (void)transitions(t);
  log.hook_all();
  b.backward(m.backward_order(x));
  REQUIRE(log.lines.size() >= 3);
  const V tail(log.lines.end() - 3, log.lines.end());
  CHECK(tail == V{"post_bw Seq3.net.0 [Global,Seq3,Seq3.net,Seq3.net.0] bw", "post_bw Seq3.net [Global,Seq3,Seq3.net] bw",
                  "post_bw Seq3 [Global,Seq3] bw"});
  CHECK(join(t.parents()) == "Global");
}

TEST_CASE("backward: inputs the pass does not compute do not block the exit") {
  Backend b;
  auto lin = b.module("Linear");
  ReferenceTracker t(b);
  auto scope = t.track();
  auto x = b.value(true), w = b.value(true);
  auto y = b.call(*lin, {x, w});
  (void)transitions(t);
  // A pass that computes only x's gradient (like autograd::grad({y}, {x})).
  b.backward({y[0], x}, std::set<std::uint64_t>{y[0].id, x.id});
  CHECK(transitions(t) == V{"bw enter Linear", "bw exit Linear"});
}

TEST_CASE("backward: a module destroyed after its forward gives hooks no module but keeps its fqn in parents") {
  Backend b;
  ReferenceTracker t(b);
  Log log{t};
  auto scope = t.track();
  log.hook_all();
  Values y;
  {
    auto lin = b.module("Linear");
    y = b.call(*lin, {b.value(true)});
  }
  log.lines.clear();
  b.backward({y[0], Value{1, true}});
  CHECK(log.lines == V{"pre_bw null [Global,Linear] bw", "post_bw null [Global,Linear] bw"});
}

TEST_CASE("backward: a forward during backward (recomputation) enters with is_bw and registers nothing") {
  Backend b;
  auto lin = b.module("Linear");
  ReferenceTracker t(b);
  Log log{t};
  auto scope = t.track();
  auto y = b.call(*lin, {b.value(true)});
  log.hook_all();
  const auto before = b.live_registrations();
  b.backward({y[0]}, std::nullopt, [&](const Value&) { b.call(*lin, {b.value(true)}); });
  CHECK(b.live_registrations() == before);
  CHECK(log.lines == V{"pre_bw Linear [Global,Linear] bw", "pre_fw Linear [Global,Linear] bw",
                       "post_fw Linear [Global,Linear] bw", "post_bw Linear [Global,Linear] bw"});
}

TEST_CASE("backward: each pass over a retained graph fires the events again") {
  Backend b;
  auto lin = b.module("Linear");
  ReferenceTracker t(b);
  auto scope = t.track();
  auto x = b.value(true);
  auto y = b.call(*lin, {x});
  (void)transitions(t);
  b.backward({y[0], x});
  b.backward({y[0], x});
  CHECK(transitions(t) == V{"bw enter Linear", "bw exit Linear", "bw enter Linear", "bw exit Linear"});
}

TEST_CASE("backward: an inner module still waiting for its inputs exits before its enclosing module does") {
  // Found by the randomized programs: in a pass that does not compute the
  // inner module's input gradient, its exit used to wait for the end of the
  // pass, after its parent had already exited.
  Backend b;
  auto inner = b.module("Inner");
  auto root = b.module("Root", {{"inner", inner}});
  ReferenceTracker t(b);
  auto scope = t.track();
  const auto x = b.value(true), v = b.value(true);
  Value inner_out;
  const auto out = b.call(*root, {x, v}, [&](const Values&) {
    inner_out = b.call(*inner, {v})[0];
    return Values{b.op({inner_out, x})};
  });
  (void)transitions(t);
  b.backward({out[0], inner_out, x}, std::set<std::uint64_t>{out[0].id, inner_out.id, x.id});
  CHECK(transitions(t) == V{"bw enter Root", "bw enter Root.inner", "bw exit Root.inner", "bw exit Root"});
}
