// docs/semantics.md, "Diagnostics", on the scripted backend: the engine says
// what happened in words of no framework; a backend adds its own advice.
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

TEST_CASE("diagnostics: the engine's words name no framework's API") {
  Backend b;
  ReferenceTracker t(b);
  std::vector<Diagnostic> diags;
  t.set_diagnostics([&](const Diagnostic& d) { diags.push_back(d); });
  auto scope = t.track();
  // Two roots of one type (fqn_collision), a root later found inside a
  // tracked parent (root_inside_module), a module entered twice (reentrant).
  auto first = b.module("Linear"), second = b.module("Linear");
  b.call(*first, {b.value(false)});
  b.call(*second, {b.value(false)});
  auto inner = b.module("Inner");
  b.call(*inner, {b.value(false)});
  auto outer = b.module("Outer", {{"inner", inner}});
  b.call(*outer, {b.value(false)}, [&](const Values& x) { return b.call(*outer, x); });
  std::vector<Diagnostic::Code> codes;
  for (const auto& d : diags) codes.push_back(d.code);
  CHECK(codes == std::vector{Diagnostic::Code::fqn_collision, Diagnostic::Code::root_inside_module,
                             Diagnostic::Code::reentrant_forward});
  for (const auto& d : diags) {
    CAPTURE(d.message);
    for (const auto* word : {"torch", "libtorch", "MODTRACKER_MODULE", "Flatten", "jit::", "TORCH_MODULE"})
      CHECK(d.message.find(word) == std::string::npos);
  }
  REQUIRE_FALSE(diags.empty());
  CHECK(diags[0].message == "two distinct modules would both be named 'Linear'; the later one is 'Linear#2'. "
                            "Usually their parent's call is not tracked, so each became a root; two models of their own "
                            "are told apart by naming each with name_root()");
}

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

