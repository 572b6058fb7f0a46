// docs/semantics.md on the reference backend, one test per rule: the forward rules (src/tracker/forward.cpp): enter and exit, hook order,
// re-entry.
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

TEST_CASE("parents: a module active twice stays until its last activation ends, the re-entry is reported") {
  Backend b;
  auto rec = b.module("Rec");
  ReferenceTracker t(b);
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
  ReferenceTracker t(b);
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
