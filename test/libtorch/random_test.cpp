// Randomized module programs on LibTorch: random trees of modules that call
// random children (in a chain, fanned out on one input, or as a graph;
// residual connections, repeats, recursion, exceptions), run with and without
// grad, backward by backward() (retained, repeated) or autograd::grad on
// some inputs, models freed before backward; invariants after every step.
// And a differential check of backward attribution: each Linear's backward
// FLOPs, counted by provenance, against the gradients its own calls need,
// counted here from what each call's input was (docs/semantics.md,
// "Backward attribution"); the modules' backward times sum to the time in
// nodes. MODTRACKER_RANDOM_SEED / MODTRACKER_TORCH_PROGRAMS choose seed and
// count.
#include <chrono>
#include <map>
#include <random>
#include <string>

#include "libtorch/scenarios.hpp"

#include <doctest/doctest.h>

#include "support/nesting.hpp"

using namespace scenarios;

namespace {
struct Boom : std::runtime_error {
  Boom() : std::runtime_error("boom") {}
};

/// A node of a random tree: a Linear(4, 4) and children it calls at random.
struct NodeImpl : torch::nn::Module {
  lt::nn::Linear lin{register_module("lin", lt::nn::Linear(4, 4))};
  std::vector<std::shared_ptr<NodeImpl>> kids;
  std::mt19937_64* rng = nullptr;
  int* budget = nullptr;
  bool* graph = nullptr;  // set when children read other children's outputs
  // Calls of `lin` that built a graph, and of those the ones whose input needed a gradient.
  std::uint64_t lin_calls = 0, lin_grad_inputs = 0;
  void add(const std::shared_ptr<NodeImpl>& kid) {
    register_module("n" + std::to_string(kids.size()), kid);
    kids.push_back(kid);
  }
  bool chance(double p) { return std::bernoulli_distribution(p)(*rng); }
  torch::Tensor forward(torch::Tensor x, int depth) {
    if (chance(0.02)) throw Boom();
    if (torch::GradMode::is_enabled()) ++lin_calls, lin_grad_inputs += x.requires_grad() ? 1 : 0;
    x = lin(x);
    // In a chain (each child reads the last one's output), fanned out (every
    // child reads x; their outputs are summed), or as a graph (each child
    // reads x or an earlier child's output; all are summed); with or without
    // a residual connection around the children.
    const int shape = std::uniform_int_distribution<int>(0, 3)(*rng);  // 0, 1: chain, 2: fan, 3: graph
    const bool residual = chance(0.3);
    const auto entry = x;
    std::vector<torch::Tensor> made{x};
    for (auto& k : kids)
      for (int rep = chance(0.15) ? 2 : 1; rep > 0 && *budget > 0; --rep) {
        if (--*budget, !chance(0.6)) continue;
        const auto at = shape < 2    ? made.size() - 1
                        : shape == 2 ? 0
                                     : std::uniform_int_distribution<std::size_t>(0, made.size() - 1)(*rng);
        if (shape == 3 && at > 0) *graph = true;
        const auto in = made[at];
        made.push_back(torch::tanh(lt::call(*k, in, depth + 1)));
      }
    if (shape < 2) {
      x = made.back();
    } else {
      for (std::size_t i = 1; i < made.size(); ++i) x = x + made[i];
    }
    if (residual) x = x + entry;
    if (depth < 3 && *budget > 0 && chance(0.05)) --*budget, x = lt::call(*this, x, depth + 1);
    return x;
  }
};

std::string names(lt::Tracker& t) {
  std::string s;
  for (auto p : t.parents()) s += (s.empty() ? "" : ",") + std::string(p);
  return s;
}

void run_program(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto chance = [&](double p) { return std::bernoulli_distribution(p)(rng); };
  std::ostringstream log;
  int budget = 0;
  bool graph = false;
  std::vector<std::shared_ptr<NodeImpl>> nodes;
  for (int i = 0, n = pick(1, 8); i < n; ++i) {
    nodes.push_back(std::make_shared<NodeImpl>());
    nodes.back()->rng = &rng;
    nodes.back()->budget = &budget;
    nodes.back()->graph = &graph;
    if (i > 0) {
      const int parent = pick(0, i - 1);
      nodes[static_cast<std::size_t>(parent)]->add(nodes.back());
      log << "tree: " << parent << " <- " << i << "\n";
    }
  }
  lt::Tracker t;
  t.set_diagnostics([](const modtracker::Diagnostic&) {});
  int pre_fw = 0, post_fw = 0, pre_bw = 0, post_bw = 0;
  t.register_user_hooks([&](torch::nn::Module&, const lt::Tensors&) { ++pre_fw; },
                        [&](torch::nn::Module&, const lt::Tensors&, const lt::Tensors*) { ++post_fw; },
                        [&](torch::nn::Module*, const lt::Tensors&) { ++pre_bw; },
                        [&](torch::nn::Module*, const lt::Tensors&) { ++post_bw; });
  lt::FlopCounter flops(t);
  lt::BackwardTimer timer(t);
  auto scope = t.track();
  const auto drain = [&] {
    std::vector<modtracker::Transition> ts;
    for (const auto& tr : t.drain_transitions()) ts.push_back(tr);
    return ts;
  };
  for (int round = pick(1, 2); round > 0 && !nodes.empty(); --round) {
    const bool grad = chance(0.85), x_grad = chance(0.5);
    auto x = torch::randn({2, 4}, torch::requires_grad(x_grad));
    flops.reset();
    for (auto& n : nodes) n->lin_calls = n->lin_grad_inputs = 0;
    budget = 30;
    graph = false;
    torch::Tensor out;
    try {
      torch::AutoGradMode mode(grad);
      out = lt::call(*nodes[0], x, 0);
    } catch (const Boom&) {
      log << "forward threw\n";
    }
    log << "forward grad=" << grad << " x.requires_grad=" << x_grad << "\n";
    const auto what = "seed " + std::to_string(seed) + "\n" + log.str();
    INFO(what);
    REQUIRE(names(t) == "Global");
    check_nesting(drain(), modtracker::Phase::forward, what);
    if (!out.defined() || !out.requires_grad()) continue;
    // Each Linear(4, 4) call on 2 rows: 64 FLOPs per gradient product (its
    // input's, if that needed one; its weight's, if asked for).
    std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> calls;  // lin fqn -> (calls, grad inputs)
    for (const auto& n : nodes)
      if (n->lin_calls) calls[*t.known_fqn(*n->lin)] = {n->lin_calls, n->lin_grad_inputs};
    const bool freed = chance(0.15);
    if (freed) nodes.clear(), log << "model freed\n";
    const auto loss = out.sum();
    const auto timed_before = timer.total();
    std::map<std::string, std::uint64_t> expected;
    if (x_grad && chance(0.3)) {
      log << "autograd::grad wrt x\n";
      (void)torch::autograd::grad({loss}, {x}, {}, /*retain_graph=*/true);
      for (const auto& [fqn, c] : calls) expected[fqn] = 64 * c.second;  // inputs' gradients only
    } else {
      const bool twice = chance(0.2);
      log << "backward" << (twice ? " twice" : "") << "\n";
      loss.backward({}, /*retain_graph=*/twice);
      if (twice) loss.backward();
      for (const auto& [fqn, c] : calls) expected[fqn] = (twice ? 2 : 1) * 64 * (c.first + c.second);
    }
    const auto after = "seed " + std::to_string(seed) + "\n" + log.str();
    INFO(after);
    const auto counted = flops.counts(modtracker::Phase::backward);
    std::uint64_t all = 0;
    for (const auto& [fqn, want] : expected) {
      CAPTURE(fqn);
      std::uint64_t got = 0;
      if (const auto it = counted.find(fqn); it != counted.end())
        for (const auto& [op, n] : it->second) got += n;
      CHECK(got == want);
      all += want;
    }
    CHECK(flops.total(modtracker::Phase::backward) == all);  // no FLOP elsewhere, none lost
    std::chrono::nanoseconds own{};
    for (const auto& [fqn, time] : timer.times()) own += time.exclusive;
    CHECK(own == timer.total());
    CHECK(timer.total() > timed_before);
    REQUIRE(names(t) == "Global");
    REQUIRE_FALSE(t.is_bw());
    // Through a graph a module may wait for its input's gradient while
    // another branch runs: its span then overlaps that branch's.
    check_nesting(drain(), modtracker::Phase::backward, after, /*nested=*/!graph);
  }
  REQUIRE(pre_fw == post_fw);
  REQUIRE(pre_bw == post_bw);
}
}  // namespace

TEST_CASE("randomized module programs keep every invariant (LibTorch)") {
  const auto seed = env_or("MODTRACKER_RANDOM_SEED", 20261126);
  const auto programs = env_or("MODTRACKER_TORCH_PROGRAMS", 300);
  MESSAGE("seed " << seed << ", " << programs << " programs");
  for (std::uint64_t i = 0; i < programs; ++i) run_program(seed + i);
}
