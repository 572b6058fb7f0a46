// docs/semantics.md on the reference backend, one test per rule: names
// (src/tracker/naming.cpp), name_root, walk().
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

TEST_CASE("names: root after its type without namespaces or Impl, children by registration name") {
  Backend b;
  ReferenceTracker roots(b);
  {
    auto scope = roots.track();
    for (const auto* type : {"NetImpl", "torch::nn::LinearImpl", "a::b::Foo<c::BarImpl>", "Impl", "a::ResNetImpl<Block>"})
      b.call(*b.module(type), {b.value(false)});
  }
  V named;
  for (const auto& tr : roots.drain_transitions())
    if (tr.kind == Kind::enter) named.emplace_back(tr.fqn);
  CHECK(named == V{"Net", "Linear", "Foo<c::BarImpl>", "Impl", "ResNet"});
  ReferenceTracker t(b);
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
  ReferenceTracker t(b);
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
  ReferenceTracker t(b);
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
  ReferenceTracker t(b);
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

TEST_CASE("names: name_root names a root and its subtree, whichever root runs first") {
  Backend b;
  const auto model = [&] { return b.module("Sequential", {{"0", b.module("Linear")}}); };
  auto d = model(), g = model();
  ReferenceTracker t(b);
  std::vector<Diagnostic> diags;
  t.set_diagnostics([&](const Diagnostic& x) { diags.push_back(x); });
  t.name_root(*d, "D");
  t.name_root(*g, "G");
  t.name_root(*g, "G");  // the same name again changes nothing
  auto scope = t.track();
  b.call(*g, {b.value(false)}, [&](const Values& x) { return b.call(*g->child("0"), x); });
  b.call(*d, {b.value(false)}, [&](const Values& x) { return b.call(*d->child("0"), x); });
  CHECK(t.known_fqn(*g) == "G");
  CHECK(t.known_fqn(*d->child("0")) == "D.0");
  CHECK(diags.empty());
  CHECK_THROWS_AS(t.name_root(*d, "Discriminator"), std::logic_error);  // named already: it keeps "D"
  CHECK(t.known_fqn(*d) == "D");
  t.name_root(*d, "D");
  for (const auto* bad : {"", "Global", "a.b"}) CHECK_THROWS_AS(t.name_root(*model(), bad), std::invalid_argument);
  // Without names, the second root of a type is Sequential#2, and that is said.
  ReferenceTracker plain(b);
  plain.set_diagnostics([&](const Diagnostic& x) { diags.push_back(x); });
  auto other = plain.track();
  b.call(*g, {b.value(false)});
  b.call(*d, {b.value(false)});
  CHECK(plain.known_fqn(*d) == "Sequential#2");
  REQUIRE(diags.size() == 1);
  CHECK(diags[0].message.find("name_root()") != std::string::npos);
}

TEST_CASE("walk: yields (fqn, module) pre-order") {
  Backend b;
  auto root = b.module("NetImpl", {{"a", b.module("A", {{"x", b.module("X")}})}, {"b", b.module("B")}});
  ReferenceTracker t(b);
  V names;
  for (const auto& [fqn, ref] : t.walk(*root)) {
    names.push_back(fqn);
    CHECK(ref);
  }
  CHECK(names == V{"Net", "Net.a", "Net.a.x", "Net.b"});
}
