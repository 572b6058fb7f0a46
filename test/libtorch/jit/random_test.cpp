// Differential: random module programs built both as eager modules and as
// TorchScript modules (C++ define()), run alike; their transitions must be
// identical, forward and backward, on every run of the optimizing executor.
// MODTRACKER_RANDOM_SEED / MODTRACKER_JIT_PROGRAMS choose seed and count.
#include <torch/script.h>

#include <random>

#include "libtorch/helpers.hpp"

#include <modtracker/libtorch/jit.hpp>

#include <doctest/doctest.h>

#include "support/nesting.hpp"

using namespace helpers;

namespace {
/// One node of a program: a Linear(4, 4), then calls of its children in a
/// fixed order (repeats allowed), in a chain or fanned out on one input,
/// with or without a residual connection.
struct Spec {
  std::vector<Spec> kids;
  std::vector<int> calls;
  bool fan = false, residual = false;
};

// At most `budget` nodes: LibTorch 1.13's JIT takes time and memory that grow
// steeply with the number of distinct classes inlined into one graph.
Spec random_spec(std::mt19937_64& rng, int depth, int& budget) {
  Spec s;
  const int kids = depth >= 3 ? 0 : std::uniform_int_distribution<int>(0, 3)(rng);
  for (int k = 0; k < kids && budget > 0; ++k) {
    --budget;
    s.kids.push_back(random_spec(rng, depth + 1, budget));
    for (int rep = std::uniform_int_distribution<int>(0, 2)(rng); rep > 0; --rep) s.calls.push_back(k);
  }
  std::shuffle(s.calls.begin(), s.calls.end(), rng);
  s.fan = std::bernoulli_distribution(0.4)(rng);
  s.residual = std::bernoulli_distribution(0.3)(rng);
  return s;
}

struct ProgImpl : torch::nn::Module {
  lt::nn::Linear lin{register_module("lin", lt::nn::Linear(4, 4))};
  std::vector<std::shared_ptr<ProgImpl>> kids;
  const Spec* spec;
  explicit ProgImpl(const Spec& s) : spec(&s) {
    for (std::size_t k = 0; k < s.kids.size(); ++k)
      kids.push_back(register_module("n" + std::to_string(k), std::make_shared<ProgImpl>(s.kids[k])));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = lin(x);
    auto last = x, acc = x;
    for (const int k : spec->calls) {
      if (spec->fan) acc = acc + torch::tanh(lt::call(*kids[k], x));
      else last = torch::tanh(lt::call(*kids[k], last));
    }
    auto out = spec->fan ? acc : last;
    return spec->residual ? out + x : out;
  }
};

torch::jit::Module script_of(const Spec& s, const torch::jit::Module& lin) {
  torch::jit::Module m("Prog");
  auto layer = lin.deepcopy();  // its tensors are copies made under autograd: make them leaves again
  for (const auto& p : layer.named_parameters(false)) layer.setattr(p.name, p.value.detach().requires_grad_());
  m.register_module("lin", layer);
  for (std::size_t k = 0; k < s.kids.size(); ++k) m.register_module("n" + std::to_string(k), script_of(s.kids[k], lin));
  std::string src = "def forward(self, x):\n    x = self.lin.forward(x)\n    last = x\n    acc = x\n";
  for (const int k : s.calls) {
    const auto call = "self.n" + std::to_string(k) + ".forward";
    src += s.fan ? "    acc = acc + torch.tanh(" + call + "(x))\n" : "    last = torch.tanh(" + call + "(last))\n";
  }
  src += std::string("    out = ") + (s.fan ? "acc" : "last") + "\n";
  src += s.residual ? "    return out + x\n" : "    return out\n";
  m.define(src);
  return m;
}

torch::jit::Module lin_prototype() {
  torch::jit::Module lin("Lin");
  lin.register_parameter("weight", torch::randn({4, 4}).requires_grad_(), false);
  lin.register_parameter("bias", torch::randn({4}).requires_grad_(), false);
  lin.define("def forward(self, x):\n    return torch.linear(x, self.weight, self.bias)\n");
  return lin;
}

std::vector<modtracker::Transition> run(lt::Tracker& t, const std::function<torch::Tensor(torch::Tensor)>& f,
                                        bool grad) {
  auto x = torch::randn({2, 4}, torch::requires_grad(grad));
  auto y = f(x);
  y.sum().backward();
  std::vector<modtracker::Transition> out;
  for (const auto& tr : t.drain_transitions()) out.push_back(tr);
  return out;
}

Strings text(const std::vector<modtracker::Transition>& ts) {
  Strings out;
  for (const auto& tr : ts)
    out.push_back(std::string(tr.phase == modtracker::Phase::forward ? "fw " : "bw ") +
                  (tr.kind == modtracker::Kind::enter ? "enter " : "exit ") + std::string(tr.fqn));
  return out;
}
}  // namespace

TEST_CASE("jit random: eager and TorchScript forms of random programs give identical transitions") {
  const auto seed = env_or("MODTRACKER_RANDOM_SEED", 7);
  const auto programs = env_or("MODTRACKER_JIT_PROGRAMS", 60);
  std::mt19937_64 rng(seed);
  const auto lin = lin_prototype();
  for (std::uint64_t p = 0; p < programs; ++p) {
    int budget = 7;
    const auto spec = random_spec(rng, 0, budget);
    auto eager = std::make_shared<ProgImpl>(spec);
    auto script = script_of(spec, lin);
    lt::jit::instrument(script);
    const bool grad = std::bernoulli_distribution(0.7)(rng);
    CAPTURE(seed);
    CAPTURE(p);
    CAPTURE(grad);
    lt::Tracker te, ts;
    for (int r = 0; r < 3; ++r) {
      CAPTURE(r);
      std::vector<modtracker::Transition> a, b;
      {
        auto scope = te.track();
        a = run(te, [&](torch::Tensor x) { return lt::call(*eager, std::move(x)); }, grad);
      }
      {
        auto scope = ts.track();
        b = run(ts, [&](torch::Tensor x) { return script.forward({std::move(x)}).toTensor(); }, grad);
      }
      REQUIRE(text(b) == text(a));
      check_nesting(b, modtracker::Phase::forward, "jit program");
      check_nesting(b, modtracker::Phase::backward, "jit program");
    }
  }
}
