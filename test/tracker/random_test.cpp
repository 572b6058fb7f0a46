// Randomized module programs on the reference backend: random trees (shared
// children, containers), random call programs (chains and fan-outs, repeats, recursion,
// exceptions, grad and no-grad inputs, partial and repeated backward passes,
// recomputation in backward, models freed before backward), with the
// contract's invariants checked after every forward and backward.
// MODTRACKER_RANDOM_SEED / MODTRACKER_RANDOM_PROGRAMS choose seed and count.
#include <cstdlib>
#include <random>
#include <sstream>
#include <stdexcept>

#include "support/reference.hpp"

#include <doctest/doctest.h>

#include "support/nesting.hpp"

using namespace support;

namespace {

struct Boom : std::runtime_error {
  Boom() : std::runtime_error("boom") {}
};

/// One random program; `log` is its printable description.
struct RandomProgram {
  std::mt19937_64 rng;
  Backend b;
  std::vector<std::shared_ptr<Module>> modules;  // [0] is the root
  std::vector<Value> created;                    // every value, in creation order
  std::ostringstream log;
  int budget = 0;  // calls left in this forward
  bool fanned = false;  // a forward fanned children out on one input

  explicit RandomProgram(std::uint64_t seed) : rng(seed) {}

  int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
  bool chance(double p) { return std::bernoulli_distribution(p)(rng); }

  void build_tree() {
    const int n = pick(2, 14);
    for (int i = 0; i < n; ++i) {
      const char* types[] = {"torch::nn::LinearImpl", "BlockImpl", "torch::nn::SequentialImpl", "torch::nn::ReLUImpl"};
      modules.push_back(b.module(types[pick(0, 3)]));
      if (i == 0) continue;
      const int parent = pick(0, i - 1);
      auto& p = *modules[static_cast<std::size_t>(parent)];
      p.add(std::to_string(p.children().size()), modules.back());
      log << "tree: " << parent << " <- " << i << "\n";
    }
    // Shared children: a leaf registered under a second parent (no cycles).
    for (int k = pick(0, 2); k > 0; --k) {
      const int leaf = pick(1, n - 1), parent = pick(0, n - 1);
      if (!modules[static_cast<std::size_t>(leaf)]->children().empty() || leaf == parent) continue;
      auto& p = *modules[static_cast<std::size_t>(parent)];
      p.add("shared" + std::to_string(p.children().size()), modules[static_cast<std::size_t>(leaf)]);
      log << "tree: " << parent << " <- " << leaf << " (shared)\n";
    }
  }

  Value op(const Values& in) {
    const bool weight = chance(0.6);  // a parameter that requires grad
    Values args = in;
    if (weight) args.push_back(b.value(true));
    const auto v = b.op(args);
    created.push_back(v);
    return v;
  }

  Values call(Module& m, const Values& in, int depth) {
    return b.call(m, in, [&, depth](const Values& v) {
      Values cur = v;
      if (chance(0.02)) throw Boom();
      // Children in a chain, or fanned out: each reads v, their outputs are combined.
      const bool fan = chance(0.3);
      Values gathered = v;
      for (const auto& [name, child] : m.children()) {
        for (int rep = chance(0.15) ? 2 : 1; rep > 0 && budget > 0; --rep) {
          --budget;
          if (!chance(0.6)) continue;
          if (!fan) {
            cur = call(*child, cur, depth + 1);
          } else {
            fanned = true;
            const auto out = call(*child, v, depth + 1);
            gathered.insert(gathered.end(), out.begin(), out.end());
          }
        }
      }
      if (fan) cur = Values{op(gathered)};
      if (depth < 3 && budget > 0 && chance(0.05)) {
        --budget;
        cur = call(m, cur, depth + 1);  // recursion
      }
      return Values{op(cur)};
    });
  }
};

std::string join_names(const Parents& p) {
  std::string s;
  for (auto n : p) s += (s.empty() ? "" : ",") + std::string(n);
  return s;
}

void run_program(std::uint64_t seed) {
  RandomProgram p(seed);
  p.build_tree();
  ReferenceTracker t(p.b);
  t.set_diagnostics([](const Diagnostic&) {});
  int pre_fw = 0, post_fw = 0, pre_bw = 0, post_bw = 0;
  t.register_user_hooks([&](Module&, const Values&) { ++pre_fw; }, [&](Module&, const Values&, const Values*) { ++post_fw; },
                        [&](Module*, const Values&) { ++pre_bw; }, [&](Module*, const Values&) { ++post_bw; });
  auto scope = t.track();
  std::vector<Transition> all;
  const auto drain = [&] {
    for (const auto& tr : t.drain_transitions()) all.push_back(tr);
  };
  for (int round = p.pick(1, 3); round > 0 && !p.modules.empty(); --round) {
    all.clear();
    p.created.clear();
    p.fanned = false;
    const bool grad = p.chance(0.85);
    p.b.set_grad_mode(grad);
    const Value x = p.b.value(p.chance(0.5));
    p.created.push_back(x);
    p.budget = 40;
    Values out;
    try {
      out = p.call(*p.modules[0], {x}, 0);
    } catch (const Boom&) {
      p.log << "forward threw\n";
    }
    p.b.set_grad_mode(true);
    p.log << "forward grad=" << grad << " x.requires_grad=" << x.requires_grad << " values=" << p.created.size() << "\n";
    const std::string what = "seed " + std::to_string(seed) + "\n" + p.log.str();
    INFO(what);
    REQUIRE(join_names(t.parents()) == "Global");
    drain();
    check_nesting(all, Phase::forward, what);
    if (out.empty()) continue;
    if (p.chance(0.15)) {  // the model is freed before its backward
      p.modules.clear();
      p.log << "modules freed\n";
    }
    for (int pass = p.chance(0.2) ? 2 : 1; pass > 0; --pass) {  // retained graph: passes repeat
      Values arrivals(p.created.rbegin(), p.created.rend());
      std::optional<std::set<std::uint64_t>> computes;
      if (p.chance(0.2)) {  // a partial pass (like autograd::grad)
        computes.emplace();
        for (const auto& v : p.created)
          if (p.chance(0.7)) computes->insert(v.id);
        computes->insert(out[0].id);
      }
      const bool recompute = !p.modules.empty() && p.chance(0.2);
      p.log << "backward partial=" << computes.has_value() << " recompute=" << recompute << "\n";
      std::vector<Transition> bw;
      p.b.backward(arrivals, computes, [&](const Value&) {
        if (recompute && p.chance(0.1)) {
          p.b.call(*p.modules[static_cast<std::size_t>(p.pick(0, static_cast<int>(p.modules.size()) - 1))],
                   {p.b.value(true)});
        }
      });
      const std::string after = "seed " + std::to_string(seed) + "\n" + p.log.str();
      INFO(after);
      REQUIRE(join_names(t.parents()) == "Global");
      REQUIRE_FALSE(t.is_bw());
      for (const auto& tr : t.drain_transitions()) bw.push_back(tr);
      // A partial pass here computes a random subset of the values, which
      // autograd never does (it computes what leads to the asked inputs):
      // after a fan-out, a module entered late may then wait for the pass's
      // end while an earlier one exits, so such spans only balance.
      check_nesting(bw, Phase::backward, after, /*nested=*/!(computes && p.fanned));
      check_nesting(bw, Phase::forward, after);
    }
  }
  REQUIRE(pre_fw == post_fw);
  REQUIRE(pre_bw == post_bw);
}

}  // namespace

TEST_CASE("randomized module programs keep every invariant (reference backend)") {
  const auto seed = env_or("MODTRACKER_RANDOM_SEED", 20261126);
  const auto programs = env_or("MODTRACKER_RANDOM_PROGRAMS", 2000);
  MESSAGE("seed " << seed << ", " << programs << " programs");
  for (std::uint64_t i = 0; i < programs; ++i) run_program(seed + i);
}
