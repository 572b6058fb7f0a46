// Backend authoring: gradient callbacks, their order, gradient hooks, and
// what a backend inherits.
#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "support/reference.hpp"

#include <doctest/doctest.h>

using namespace support;

TEST_CASE("GradCallback: from a context and a function, or from any callable") {
  int calls = 0;
  const Values grads{Value{7, true}};
  GradCallback from_lambda([&](ValuesRef p) { calls += static_cast<int>(static_cast<const Values*>(p.ptr)->size()); });
  const auto copy = from_lambda;  // shares the callable
  copy(ValuesRef{&grads});
  from_lambda(ValuesRef{&grads});
  CHECK(calls == 2);
  auto counter = std::make_shared<int>(0);
  const std::weak_ptr<int> watch = counter;
  const int* seen = counter.get();
  GradCallback from_context(counter, [](void* c, ValuesRef) { ++*static_cast<int*>(c); });
  from_context(ValuesRef{});
  CHECK(*counter == 1);
  const auto borrowed = from_context.ref();  // calls the same function on the same context, owning nothing
  counter.reset();  // from_context still owns it
  CHECK_FALSE(watch.expired());
  borrowed(ValuesRef{});
  CHECK(*seen == 2);
  from_context = GradCallback{};
  CHECK(watch.expired());  // the last owner let go
  CHECK_FALSE(GradCallback{});
}

TEST_CASE("add_gradient_hooks: a first-of-any and an all-of on the same values, kept with the graph or removable") {
  Backend b;
  const Values none{b.value(false)};
  int calls = 0;
  const auto count = [&] { return GradCallback([&](ValuesRef) { ++calls; }); };
  std::array<GradientHook, 2> unused{GradientHook{GradientWait::first, {}, count()}, GradientHook{GradientWait::all, {}, count()}};
  CHECK_FALSE(b.add_gradient_hooks(ValuesRef{&none}, unused, nullptr));  // nothing requires grad
  const Values xy{b.value(true), b.value(true)};
  std::vector<std::string> fired;
  auto on = [&](const char* what) { return GradCallback([&fired, what](ValuesRef) { fired.emplace_back(what); }); };
  std::array<GradientHook, 2> both{GradientHook{GradientWait::first, GradOrder{Kind::enter, 0, 0}, on("first of any")},
                                   GradientHook{GradientWait::all, GradOrder{Kind::exit, 0, 1}, on("all of")}};
  REQUIRE(b.add_gradient_hooks(ValuesRef{&xy}, both, nullptr));
  b.backward({xy[0], xy[1]});
  CHECK(fired == std::vector<std::string>{"first of any", "all of"});
  CHECK(calls == 0);
  // Removable: the handle takes both away.
  fired.clear();
  std::array<GradientHook, 2> again{GradientHook{GradientWait::first, GradOrder{Kind::enter, 0, 2}, on("removable first")},
                                    GradientHook{GradientWait::all, GradOrder{Kind::exit, 0, 3}, on("removable all")}};
  Registration handle;
  REQUIRE(b.add_gradient_hooks(ValuesRef{&xy}, again, &handle));
  CHECK(handle.active());
  b.backward({xy[0], xy[1]});
  // Entries latest first (sequence 2 before 0), exits earliest first (1 before 3).
  CHECK(fired == std::vector<std::string>{"removable first", "first of any", "all of", "removable all"});
  handle.remove();
  fired.clear();
  b.backward({xy[0], xy[1]});
  CHECK(fired == std::vector<std::string>{"first of any", "all of"});
}

TEST_CASE("HookBackend's defaults describe a framework without autograd") {
  struct Forward final : HookBackend {
    std::string type_name(ModuleRef) const override { return "Layer"; }
    void for_each_child(ModuleRef, const std::function<void(std::string_view, ModuleRef)>&) const override {}
  } forward;
  CHECK_FALSE(forward.grad_enabled());
  CHECK_FALSE(forward.in_backward());
  CHECK(forward.backward_pass() == 0);
  CHECK(forward.weak(ModuleRef{&forward}).expired());
  const int values = 0;
  std::array<GradientHook, 1> hook{GradientHook{GradientWait::first, {}, GradCallback([](ValuesRef) {})}};
  Registration handle;
  CHECK_FALSE(forward.add_gradient_hooks(ValuesRef{&values}, hook, &handle));
  CHECK_FALSE(handle.active());
  CHECK_THROWS_AS(forward.at_end_of_backward([] {}), std::logic_error);
}

TEST_CASE("GradCallback: a context that counts its own references") {
  struct Counted {
    int refs = 1;  // the one the first callback adopts
    int calls = 0;
  } c;
  static constexpr ContextRefs refs{[](void* p) noexcept { ++static_cast<Counted*>(p)->refs; },
                                    [](void* p) noexcept { --static_cast<Counted*>(p)->refs; }};
  {
    GradCallback cb(&c, refs, [](void* p, ValuesRef) { ++static_cast<Counted*>(p)->calls; });
    CHECK(c.refs == 1);  // adopted, not counted again
    {
      const GradCallback copy = cb;
      CHECK(c.refs == 2);
      copy(ValuesRef{});
    }
    CHECK(c.refs == 1);
    GradCallback moved = std::move(cb);  // a move hands the reference on
    CHECK(c.refs == 1);
    moved(ValuesRef{});
    cb = moved;  // assigned over the moved-from one
    CHECK(c.refs == 2);
  }
  CHECK(c.refs == 0);
  CHECK(c.calls == 2);
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
