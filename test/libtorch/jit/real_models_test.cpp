// Real models from Python, scripted and traced at build time from
// torchvision (test/real_models/generate.py): the calls per module match
// Python's own forward hooks, every module that ran enters backward as
// often, forward and backward nest, no diagnostic is raised, and every
// FLOP has one owner (traced and scripted resnet18 count alike).
#include <torch/script.h>

#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "libtorch/scenarios.hpp"

#include <modtracker/libtorch/jit.hpp>

#include <doctest/doctest.h>

#include "support/nesting.hpp"

namespace {
namespace lt = modtracker::libtorch;
using modtracker::Phase;

const nlohmann::json& manifest() {
  static const auto doc = [] {
    std::ifstream in(std::string(MODTRACKER_REAL_MODELS) + "/counts.json");
    REQUIRE_MESSAGE(in.good(), "no " MODTRACKER_REAL_MODELS "/counts.json: the real-model fixtures were not built (install python3-torchvision: bash cmake/install-deps.sh --test-packages, then reconfigure)");
    return nlohmann::json::parse(in);
  }();
  return doc;
}

struct Run {
  std::map<std::string, std::uint64_t> fw, bw;  // calls per module
  std::vector<std::string> said;                // diagnostics
  std::uint64_t fw_flops = 0, bw_flops = 0;
};

Run run(const std::string& name) {
  const auto& entry = manifest().at(name);
  auto model = torch::jit::load(std::string(MODTRACKER_REAL_MODELS) + "/" + name + ".pt");
  lt::jit::instrument(model);
  model.train();
  Run out;
  lt::Tracker tracker;
  tracker.set_diagnostics([&](const modtracker::Diagnostic& d) { out.said.push_back(d.message); });
  lt::FlopCounter flops(tracker);
  std::vector<modtracker::Transition> ts;
  {
    auto scope = tracker.track();
    torch::manual_seed(0);
    const auto x = torch::randn(entry.at("input").get<std::vector<std::int64_t>>());
    model.forward({x}).toTensor().square().mean().backward();
    for (const auto& t : tracker.drain_transitions()) ts.push_back(t);
  }
  check_nesting(ts, Phase::forward, name);
  check_nesting(ts, Phase::backward, name, /*nested=*/false);  // branches that share an input overlap
  for (const auto& t : ts)
    if (t.kind == modtracker::Kind::enter) ++(t.phase == Phase::forward ? out.fw : out.bw)[std::string(t.fqn)];
  out.fw_flops = flops.total(Phase::forward);
  out.bw_flops = flops.total(Phase::backward);
  for (const auto phase : {Phase::forward, Phase::backward}) {
    std::uint64_t own = 0;
    for (const auto& [fqn, ops] : flops.exclusive_counts(phase))
      for (const auto& [op, n] : ops) own += n;
    CHECK(own == flops.total(phase));
  }
  return out;
}

void check_model(const std::string& name) {
  CAPTURE(name);
  const auto r = run(name);
  const auto python = manifest().at(name).at("forward_calls").get<std::map<std::string, std::uint64_t>>();
  CHECK(r.fw == python);
  // Each module that ran enters backward once per call (its output needs a gradient).
  for (const auto& [fqn, calls] : r.fw) {
    CAPTURE(fqn);
    CHECK(r.bw.contains(fqn));
    if (r.bw.contains(fqn)) CHECK(r.bw.at(fqn) == calls);
  }
  CHECK(r.said == std::vector<std::string>{});
  CHECK(r.fw_flops > 0);
  CHECK(r.bw_flops > 0);
}
}  // namespace

TEST_CASE("real models: resnet18, scripted and traced, as Python's hooks see it, with the same FLOPs") {
  check_model("resnet18");
  check_model("resnet18_traced");
  const auto scripted = run("resnet18"), traced = run("resnet18_traced");
  CHECK(scripted.fw_flops == traced.fw_flops);
  CHECK(scripted.bw_flops == traced.bw_flops);
}

TEST_CASE("real models: mobilenet_v3_small, scripted") { check_model("mobilenet_v3_small"); }

TEST_CASE("real models: densenet121, scripted") { check_model("densenet121"); }

TEST_CASE("real models: a TransformerEncoder, scripted (its attention's out_proj used functionally, no diagnostic)") {
  check_model("encoder");
}

namespace {
// Trains a plain and an instrumented copy of a model side by side on the
// same data and random numbers (SGD, `steps` steps, tracked): the number of
// steps whose outputs, loss gradients of every parameter and buffers
// (batch norm's running statistics) were all bit-identical.
int identical_steps(const std::string& name, int steps) {
  auto plain = torch::jit::load(std::string(MODTRACKER_REAL_MODELS) + "/" + name + ".pt");
  auto inst = torch::jit::load(std::string(MODTRACKER_REAL_MODELS) + "/" + name + ".pt");
  lt::jit::instrument(inst);
  plain.train();
  inst.train();
  const auto shape = manifest().at(name).at("input").get<std::vector<std::int64_t>>();
  const auto params = [](torch::jit::Module& m) {
    std::vector<torch::Tensor> out;
    for (const auto& p : m.parameters()) out.push_back(p);
    return out;
  };
  torch::optim::SGD opt0(params(plain), 0.05), opt1(params(inst), 0.05);
  lt::Tracker tracker;
  auto scope = tracker.track();
  int identical = 0;
  for (int step = 0; step < steps; ++step) {
    torch::manual_seed(step);
    const auto x = torch::randn(shape);
    std::vector<torch::Tensor> y;
    for (auto* side : {&plain, &inst}) {
      auto& opt = side == &plain ? opt0 : opt1;
      opt.zero_grad();
      torch::manual_seed(1000 + step);  // the same random numbers for both (dropout)
      y.push_back(side->forward({x}).toTensor());
      y.back().square().mean().backward();
    }
    bool same = torch::equal(y[0], y[1]);
    const auto p0 = params(plain), p1 = params(inst);
    for (std::size_t i = 0; i < p0.size(); ++i) same = same && torch::equal(p0[i].grad(), p1[i].grad());
    auto b1 = inst.buffers().begin();
    for (const auto& b : plain.buffers()) same = same && torch::equal(b, *b1++);
    identical += same ? 1 : 0;
    opt0.step();
    opt1.step();
    (void)tracker.drain_transitions();
  }
  return identical;
}
}  // namespace

TEST_CASE("real models: training is bit-identical to the plain model's, batch norm included (resnet18 scripted and traced)") {
  CHECK(identical_steps("resnet18", 3) == 3);
  CHECK(identical_steps("resnet18_traced", 3) == 3);
}

TEST_CASE("real models: a TransformerEncoder in training is bit-identical where the JIT's autodiff subgraphs are not made") {
  // The plain model's optimized plan joins each layer's feed-forward part
  // (several modules) into one prim::DifferentiableGraph, whose dropout is
  // native_dropout; the boundary operators split it into modules, whose
  // dropout is aten::dropout, drawing other random numbers (same
  // distribution). With the graph optimizer off for both (no autodiff
  // subgraphs), training is bit-identical, dropout included.
  {
    torch::jit::GraphOptimizerEnabledGuard no_optimizer(false);
    CHECK(identical_steps("encoder", 4) == 4);
  }
  // Optimized: identical while the executor profiles (its first run), then the masks differ.
  CHECK(identical_steps("encoder", 4) == 1);
}

TEST_CASE("real models: a module whose input comes inside an object of a TorchScript class ends its backward with it") {
  check_model("stateful");
  auto model = torch::jit::load(std::string(MODTRACKER_REAL_MODELS) + "/stateful.pt");
  lt::jit::instrument(model);
  lt::Tracker tracker;
  auto scope = tracker.track();
  for (int run = 0; run < 3; ++run) {
    CAPTURE(run);
    model.forward({torch::randn({2, 8})}).toTensor().sum().backward();
    std::vector<std::string> events;
    for (const auto& t : tracker.drain_transitions())
      events.push_back(std::string(t.phase == Phase::forward ? "fw " : "bw ") +
                       (t.kind == modtracker::Kind::enter ? "enter " : "exit ") + std::string(t.fqn));
    const auto at = [&](const std::string& e) { return std::find(events.begin(), events.end(), e) - events.begin(); };
    // pre's output reaches mix only as Pair.b: its gradient ends mix's backward before pre's begins.
    CHECK(at("bw exit Stateful.mix") < at("bw enter Stateful.pre"));
    CHECK(at("bw enter Stateful.pre") < static_cast<std::ptrdiff_t>(events.size()));
  }
}
