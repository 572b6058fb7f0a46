// SEMANTICS.md on the scripted backend: one test per rule.
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "support.hpp"

#include <doctest/doctest.h>

using namespace support;
using V = std::vector<std::string>;

namespace {
// Seq3 { net: Sequential(5 layers) }, as in the reference scenarios.
struct Seq3 {
  Backend& b;
  std::shared_ptr<Module> root;
  explicit Seq3(Backend& backend) : b(backend) {
    auto net = b.module("torch::nn::SequentialImpl");
    for (int i = 0; i < 5; ++i) net->add(std::to_string(i), b.module(i % 2 ? "torch::nn::ReLUImpl" : "torch::nn::LinearImpl"));
    root = b.module("Seq3Impl", {{"net", net}});
  }
  std::vector<Value> outs;  // each layer's output, in forward order
  // Linear layers own a weight that requires grad; ReLU layers do not.
  Values run(const Values& x) {
    outs.clear();
    return b.call(*root, x, [&](const Values& in) {
      auto net = root->child("net");
      return b.call(*net, in, [&](const Values& v) {
        Values cur = v;
        for (const auto& [name, layer] : net->children()) {
          const bool linear = layer->type_name().ends_with("LinearImpl");
          cur = b.call(*layer, cur, [&](const Values& i) { return Values{linear ? b.op({i[0], b.value(true)}) : b.op(i)}; });
          outs.push_back(cur[0]);
        }
        return cur;
      });
    });
  }
  /// Gradients from the output back to the input, value by value.
  Values backward_order(const Value& x) const {
    Values order(outs.rbegin(), outs.rend());
    order.push_back(x);
    return order;
  }
};
}  // namespace

TEST_CASE("names: root after its type without namespaces or Impl, children by registration name") {
  CHECK(root_name_from_type("NetImpl") == "Net");
  CHECK(root_name_from_type("torch::nn::LinearImpl") == "Linear");
  CHECK(root_name_from_type("a::b::Foo<c::BarImpl>") == "Foo<c::BarImpl>");
  CHECK(root_name_from_type("Impl") == "Impl");
  Backend b;
  ScriptedTracker t(b);
  Seq3 m(b);
  auto scope = t.track();
  CHECK_FALSE(t.known_fqn(*m.root));  // named lazily, at the first forward
  m.run({b.value(false)});
  CHECK(t.known_fqn(*m.root) == "Seq3");
  CHECK(t.known_fqn(*m.root->child("net")->child("3")) == "Seq3.net.3");
}

TEST_CASE("names: a module registered under two names keeps the first one naming reaches") {
  Backend b;
  auto shared = b.module("Linear");
  auto root = b.module("Net", {{"first", shared}, {"second", shared}});
  ScriptedTracker t(b);
  auto scope = t.track();
  b.call(*root, {b.value(false)}, [&](const Values& x) { return b.call(*shared, x); });
  CHECK(t.known_fqn(*shared) == "Net.first");
  V names;
  for (const auto& [fqn, ref] : t.walk(*root)) names.push_back(fqn);
  CHECK(names == V{"Net", "Net.first"});
}

TEST_CASE("names: a child added after its parent ran is named by type, or below the parent once the backend says so") {
  Backend b;
  auto root = b.module("Net", {{"a", b.module("Linear")}});
  ScriptedTracker t(b);
  auto scope = t.track();
  b.call(*root, {b.value(false)});
  auto late = root->add("late", b.module("ReLU"));
  auto later = root->add("later", b.module("Tanh"));
  b.call(*late, {b.value(false)});  // naming ran before it existed: a root, as in the reference
  CHECK(t.known_fqn(*late) == "ReLU");
  b.dispatcher().children_changed(ModuleRef{root.get()});  // what a tracked container does when it grows
  CHECK(t.known_fqn(*late) == "ReLU");  // the first name wins
  CHECK(t.known_fqn(*later) == "Net.later");
  b.dispatcher().children_changed(ModuleRef{b.module("Unseen").get()});  // not named yet: nothing happens
}

TEST_CASE("names: a new module at a freed module's address is named afresh") {
  Backend b;
  ScriptedTracker t(b);
  auto scope = t.track();
  // Storage of our own, so that the second module surely lands where the first was.
  alignas(Module) static unsigned char storage[sizeof(Module)];
  auto place = [&](const char* type) {
    return b.adopt(std::shared_ptr<Module>(new (storage) Module(type), [](Module* m) { m->~Module(); }));
  };
  auto first = place("FirstImpl");
  b.call(*first, {b.value(false)});
  CHECK(t.known_fqn(*first) == "First");
  first.reset();
  auto second = place("SecondImpl");
  REQUIRE(static_cast<const void*>(second.get()) == static_cast<const void*>(storage));
  CHECK_FALSE(t.known_fqn(*second));  // not the freed one's name
  b.call(*second, {b.value(false)});
  CHECK(t.known_fqn(*second) == "Second");
  CHECK(transitions(t) == V{"fw enter First", "fw exit First", "fw enter Second", "fw exit Second"});
}

TEST_CASE("parents: a module active twice stays until its last activation ends, the re-entry is reported") {
  Backend b;
  auto rec = b.module("Rec");
  ScriptedTracker t(b);
  std::vector<Diagnostic> diags;
  t.set_diagnostics([&](const Diagnostic& d) { diags.push_back(d); });
  auto scope = t.track();
  std::vector<std::string> seen;
  std::function<Values(const Values&)> body = [&](const Values& x) {
    seen.push_back(join(t.parents()));
    if (seen.size() < 3) return b.call(*rec, x, body);
    return x;
  };
  b.call(*rec, {b.value(false)}, body);
  CHECK(seen == V{"Global,Rec", "Global,Rec", "Global,Rec"});
  CHECK(join(t.parents()) == "Global");
  REQUIRE(diags.size() == 2);
  CHECK(diags[0].code == Diagnostic::Code::reentrant_forward);
  CHECK(diags[0].fqn == "Rec");
}

TEST_CASE("forward: hook order, and a throwing forward still runs post hooks and restores parents") {
  Backend b;
  auto boom = b.module("Boom");
  auto outer = b.module("Outer", {{"boom", boom}});
  ScriptedTracker t(b);
  Log log{t};
  auto scope = t.track();
  log.hook_all();
  bool saw_null_output = false;
  t.clear_user_hooks();
  t.register_user_hooks([&](Module& m, const Values&) { log.add("pre_fw", &m); },
                        [&](Module& m, const Values&, const Values* out) {
                          saw_null_output = out == nullptr;
                          log.add("post_fw", &m);
                        });
  CHECK_THROWS_WITH_AS(b.call(*outer, {b.value(false)},
                              [&](const Values& x) -> Values {
                                return b.call(*boom, x, [](const Values&) -> Values { throw std::runtime_error("boom"); });
                              }),
                       "boom", std::runtime_error);
  CHECK(saw_null_output);
  CHECK(log.lines == V{"pre_fw Outer [Global,Outer]", "pre_fw Outer.boom [Global,Outer,Outer.boom]",
                       "post_fw Outer.boom [Global,Outer,Outer.boom]", "post_fw Outer [Global,Outer]"});
  CHECK(join(t.parents()) == "Global");
}

TEST_CASE("backward: shared boundary values nest (entries outermost first, exits innermost first)") {
  Backend b;
  Seq3 m(b);
  ScriptedTracker t(b);
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
  ScriptedTracker t(b);
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
  ScriptedTracker t(b);
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
  ScriptedTracker t(b);
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
  ScriptedTracker t(b);
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
  ScriptedTracker t(b);
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
  ScriptedTracker t(b);
  auto scope = t.track();
  auto x = b.value(true);
  auto y = b.call(*lin, {x});
  (void)transitions(t);
  b.backward({y[0], x});
  b.backward({y[0], x});
  CHECK(transitions(t) == V{"bw enter Linear", "bw exit Linear", "bw enter Linear", "bw exit Linear"});
}

TEST_CASE("user hooks: a taken slot is rejected and nothing changes, clear_user_hooks empties all") {
  Backend b;
  auto lin = b.module("Linear");
  ScriptedTracker t(b);
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
  ScriptedTracker t(b);
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
  ScriptedTracker t(b);
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
    ScriptedTracker t(b);
    auto scope = t.track();
    y = b.call(*lin, {x});
  }
  b.backward({y[0], x});  // must not touch the destroyed tracker
  ScriptedTracker t2(b);
  CHECK(join(t2.parents()) == "Global");
  // A later scope (the ended one's epoch is reused) is not the old graph's:
  // neither another tracker's nor a new scope of the same tracker.
  {
    auto old_scope = t2.track();
    y = b.call(*lin, {x});
  }
  ScriptedTracker t3(b);
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
  ScriptedTracker outer(b), inner(b);
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
  ScriptedTracker t(b);
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

TEST_CASE("backward: an inner module still waiting for its inputs exits before its enclosing module does") {
  // Found by the randomized programs: in a pass that does not compute the
  // inner module's input gradient, its exit used to wait for the end of the
  // pass, after its parent had already exited.
  Backend b;
  auto inner = b.module("Inner");
  auto root = b.module("Root", {{"inner", inner}});
  ScriptedTracker t(b);
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
