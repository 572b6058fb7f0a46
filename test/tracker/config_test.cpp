// docs/semantics.md, "Diagnostics", on the scripted backend: the engine says
// what happened in words of no framework; a backend adds its own advice.
#include <string>
#include <vector>

#include "support/reference.hpp"

#include <doctest/doctest.h>

using namespace support;

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
