// The LibTorch backend's gradient hooks: registrations, boundaries shared by
// modules, views, pass identity, and the user's own tensor hooks.
#include <array>
#include <atomic>
#include <chrono>
#include <map>
#include <optional>
#include <span>
#include <thread>

#include "libtorch/helpers.hpp"

#include <doctest/doctest.h>

#include "support/nesting.hpp"

using namespace scenarios;
using namespace helpers;

namespace {
using modtracker::GradCallback;
using modtracker::GradientHook;
using modtracker::GradientWait;
using modtracker::GradOrder;
// The backend's gradient hooks, one or two at a time.
std::optional<modtracker::Registration> removable(const lt::Tensors& values, GradientWait wait, GradOrder order,
                                                  GradCallback fn) {
  GradientHook hook{wait, order, std::move(fn)};
  modtracker::Registration handle;
  if (!lt::backend().add_gradient_hooks(modtracker::ValuesRef{&values}, std::span(&hook, 1), &handle)) return std::nullopt;
  return handle;
}
bool kept(const lt::Tensors& values, GradientWait wait, GradOrder order, GradCallback fn) {
  GradientHook hook{wait, order, std::move(fn)};
  return lt::backend().add_gradient_hooks(modtracker::ValuesRef{&values}, std::span(&hook, 1), nullptr);
}
// A first-of-any and an all-of on the same values in one call (a boundary
// between two chained calls).
bool kept_pair(const lt::Tensors& values, GradOrder first_order, GradCallback first, GradOrder all_order, GradCallback all) {
  std::array<GradientHook, 2> hooks{GradientHook{GradientWait::first, first_order, std::move(first)},
                                    GradientHook{GradientWait::all, all_order, std::move(all)}};
  return lt::backend().add_gradient_hooks(modtracker::ValuesRef{&values}, hooks, nullptr);
}
}  // namespace

TEST_CASE("backend registrations: first-of-any and all-of fire once per pass in GradOrder, remove() stops them") {
  const auto leaf = torch::randn({2, 2}, torch::requires_grad());
  const auto mid = leaf * 2;   // a non-leaf edge
  const auto out = mid + leaf;  // leaf reaches out twice
  std::vector<std::string> fired;
  auto on = [&](const char* what) {
    return modtracker::GradCallback([&fired, what](modtracker::ValuesRef p) {
      const auto& grads = *static_cast<const lt::Tensors*>(p.ptr);
      fired.push_back(std::string(what) + ":" + std::to_string(grads.size()));
    });
  };
  using modtracker::GradOrder;
  using modtracker::Kind;
  lt::Tensors outs;
  outs.push(out);
  lt::Tensors ins;
  ins.push(mid);
  ins.push(leaf);
  // Registered against GradOrder: the inner (deeper) entry first, the outer one second.
  auto inner = removable(outs, GradientWait::first, GradOrder{Kind::enter, 1, 1}, on("inner enter"));
  auto outer = removable(outs, GradientWait::first, GradOrder{Kind::enter, 0, 0}, on("outer enter"));
  auto all = removable(ins, GradientWait::all, GradOrder{Kind::exit, 1, 1}, on("all inputs"));
  REQUIRE(inner);
  REQUIRE(outer);
  REQUIRE(all);
  out.sum().backward({}, /*retain_graph=*/true);
  CHECK(fired == std::vector<std::string>{"outer enter:1", "inner enter:1", "all inputs:2"});
  fired.clear();
  outer->remove();
  CHECK_THROWS_AS(outer->remove(), std::logic_error);
  out.sum().backward({}, /*retain_graph=*/true);  // another pass: fires again, without the removed one
  CHECK(fired == std::vector<std::string>{"inner enter:1", "all inputs:2"});
  const auto constant = torch::ones({2});  // requires no grad: nothing to register
  lt::Tensors none;
  none.push(constant);
  CHECK_FALSE(removable(none, GradientWait::first, GradOrder{}, on("never")));
  CHECK_FALSE(kept(none, GradientWait::all, GradOrder{}, on("never")));
}

TEST_CASE("backend boundary registration: first-of-any and all-of on the same tensors, one or several edges") {
  using modtracker::GradOrder;
  using modtracker::Kind;
  std::vector<std::string> fired;
  auto on = [&](const char* what) {
    return modtracker::GradCallback([&fired, what](modtracker::ValuesRef p) {
      const auto& grads = *static_cast<const lt::Tensors*>(p.ptr);
      fired.push_back(std::string(what) + ":" + std::to_string(grads.size()));
    });
  };
  const auto x = torch::randn({2, 2}, torch::requires_grad());
  const auto y = x * 2;  // one edge
  const auto z = x * 3;  // with y: two edges
  lt::Tensors one;
  one.push(y);
  lt::Tensors two;
  two.push(y);
  two.push(z);
  REQUIRE(kept_pair(one, GradOrder{Kind::enter, 0, 0}, on("enter one"), GradOrder{Kind::exit, 0, 1}, on("exit one")));
  REQUIRE(kept_pair(two, GradOrder{Kind::enter, 0, 2}, on("enter two"), GradOrder{Kind::exit, 0, 3}, on("exit two")));
  // z's node runs first (the engine takes later nodes first): "two" enters
  // there, and exits at y, with both gradients, after "one" (GradOrder: of
  // one depth, exits earliest first).
  (y.sum() + z.sum()).backward({}, /*retain_graph=*/true);
  CHECK(fired == std::vector<std::string>{"enter two:1", "exit one:1", "exit two:2", "enter one:1"});
  fired.clear();
  // A pass that computes only y's gradient: z does not block "exit two".
  (void)torch::autograd::grad({y.sum()}, {x}, {}, /*retain_graph=*/true);
  CHECK(fired == std::vector<std::string>{"exit one:1", "exit two:1", "enter two:1", "enter one:1"});
  const auto constant = torch::ones({2});
  lt::Tensors none;
  none.push(constant);
  CHECK_FALSE(kept_pair(none, GradOrder{}, on("never"), GradOrder{}, on("never")));
}

TEST_CASE("after a backward that threw, every later pass is a pass of its own (no stale pass identity)") {
  using modtracker::GradOrder;
  int fired = 0;
  auto count = [&] { return modtracker::GradCallback([&fired](modtracker::ValuesRef) { ++fired; }); };
  {
    // LibTorch runs no end-of-pass callbacks for a backward that throws.
    const auto x = torch::randn({2, 2}, torch::requires_grad());
    const auto mid = x * 2;
    const auto y = mid * 3;
    lt::Tensors ys;
    ys.push(y);
    REQUIRE(kept(ys, GradientWait::first, GradOrder{}, count()));
    mid.register_hook([](const at::Tensor&) -> at::Tensor { throw std::runtime_error("boom"); });
    CHECK_THROWS_WITH(y.sum().backward(), doctest::Contains("boom"));
    CHECK(fired == 1);
  }
  // New graphs (their graph tasks often at the dead one's address), each run twice.
  int twice = 0;
  for (int i = 0; i < 20; ++i) {
    fired = 0;
    const auto x = torch::randn({2, 2}, torch::requires_grad());
    const auto y = x * 2;
    lt::Tensors ys;
    ys.push(y);
    REQUIRE(kept(ys, GradientWait::first, GradOrder{}, count()));
    y.sum().backward({}, /*retain_graph=*/true);
    y.sum().backward();
    twice += fired == 2;
  }
  CHECK(twice == 20);
}

TEST_CASE("boundary tensors that are views (and a view of a leaf) nest in backward like plain ones") {
  struct HalvesImpl : torch::nn::Module {  // returns two views of one result
    lt::nn::Linear lin{register_module("lin", lt::nn::Linear(4, 4))};
    std::tuple<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) {
      auto y = lin(x);
      return {y.narrow(1, 0, 2), y.narrow(1, 2, 2).t()};
    }
  };
  auto halves = std::make_shared<HalvesImpl>();
  lt::nn::Linear after(2, 2);
  lt::Tracker t;
  auto scope = t.track();
  const auto leaf = torch::randn({3, 4}, torch::requires_grad());
  auto [a, b] = lt::call(*halves, leaf.view({3, 4}));  // the input is a view of a leaf
  auto out = after(a).sum() + b.sum();
  (void)transitions(t);
  out.backward();
  CHECK(transitions(t) == Strings{"bw enter Linear", "bw enter Halves", "bw exit Linear", "bw enter Halves.lin",
                                  "bw exit Halves.lin", "bw exit Halves"});
  CHECK(parents(t) == "Global");
  CHECK(leaf.grad().defined());
}

TEST_CASE("the user's own tensor hooks on a boundary tensor still see the gradient and can change it") {
  torch::manual_seed(0);
  lt::nn::Linear a(3, 3), b(3, 3);
  torch::nn::Linear plain_a(a.ptr()), plain_b(b.ptr());  // the same layers, untracked
  const auto x = torch::randn({2, 3});
  auto step = [&](auto& first, auto& second) {
    auto w = torch::randn({3, 3}, torch::requires_grad());  // a leaf upstream of the boundary
    auto h = first(x.mm(w));
    at::Tensor seen;
    h.register_hook([&](const at::Tensor& g) {  // after the tracker's own hook on h's node
      seen = g.clone();
      return g * 2;
    });
    second(h).sum().backward();
    return std::pair{seen, w.grad()};
  };
  torch::manual_seed(1);
  const auto [plain_seen, plain_grad] = step(plain_a, plain_b);
  lt::Tracker t;
  std::vector<modtracker::Diagnostic> diags;
  t.set_diagnostics([&](const modtracker::Diagnostic& d) { diags.push_back(d); });
  auto scope = t.track();
  torch::manual_seed(1);
  const auto [tracked_seen, tracked_grad] = step(a, b);
  REQUIRE(tracked_seen.defined());
  CHECK(torch::equal(tracked_seen, plain_seen));
  CHECK(torch::equal(tracked_grad, plain_grad));  // doubled by the user's hook in both
  // Two distinct roots of one type: the second is told apart, and said so.
  CHECK(transitions(t) == Strings{"fw enter Linear", "fw exit Linear", "fw enter Linear#2", "fw exit Linear#2",
                                  "bw enter Linear#2", "bw exit Linear#2", "bw enter Linear", "bw exit Linear"});
  REQUIRE(diags.size() == 1);
  CHECK(diags[0].code == modtracker::Diagnostic::Code::fqn_collision);
  CHECK(diags[0].fqn == "Linear#2");
}

