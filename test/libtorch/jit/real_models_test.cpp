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
