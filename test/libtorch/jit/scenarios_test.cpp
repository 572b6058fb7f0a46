// The reference scenarios that TorchScript can express, on models scripted
// from Python (test/fixtures/generate.py): the same events as the eager
// scenarios, recorded by the same Recorder.
#include <torch/script.h>

#include "libtorch/scenarios.hpp"

#include <modtracker/libtorch/jit.hpp>

#include <doctest/doctest.h>

using namespace scenarios;

namespace {
torch::jit::Module load(const std::string& name) {
  auto m = torch::jit::load(std::string(MODTRACKER_FIXTURES) + "/" + name);
  lt::jit::instrument(m);
  return m;
}

struct Both {
  lt::Tracker tracker;
  Recorder rec{tracker};
  Both() { recorder = &rec; }
  ~Both() { recorder = nullptr; }
};

/// One scenario's driver, run on an eager model and on its TorchScript form.
template <class Eager, class Drive>
std::pair<json, json> record(const std::string& fixture, Drive drive) {
  json eager, script;
  {
    Both b;
    Eager model;
    drive(b, [&](torch::Tensor x) { return model(std::move(x)); });
    eager = b.rec.events;
  }
  {
    Both b;
    auto model = load(fixture);
    drive(b, [&](torch::Tensor x) { return model.forward({std::move(x)}).toTensor(); });
    script = b.rec.events;
  }
  return {eager, script};
}

torch::Tensor input(std::vector<std::int64_t> shape, bool requires_grad) {
  return torch::randn(shape, torch::requires_grad(requires_grad));
}
}  // namespace

TEST_CASE("jit scenarios: user_hooks on a scripted Bar gives the eager events") {
  const auto [eager, script] = record<Bar>("bar.pt", [](Both& b, auto call) {
    auto scope = b.tracker.track();
    b.rec.hook_all();
    call(input({2, 10}, true)).sum().backward();
  });
  CHECK(script == eager);
  CHECK(script.size() == 8);
  const auto ref = reference("user_hooks")["events"];
  CHECK(json(std::vector<json>(ref.begin(), ref.begin() + 6)) == json(std::vector<json>(script.begin(), script.begin() + 6)));
}

TEST_CASE("jit scenarios: bw_detection, sequential_input_requires_grad, sequential_input_no_grad on a scripted Sequential") {
  for (const bool grad : {true, false}) {
    CAPTURE(grad);
    const auto [eager, script] = record<Seq3>("seq3.pt", [grad](Both& b, auto call) {
      auto scope = b.tracker.track();
      b.rec.hook_all();
      call(input({3, 4}, grad)).sum().backward();
      b.rec.probe("after_backward");
    });
    CHECK(script == eager);
    const auto ref = reference(grad ? "sequential_input_requires_grad" : "sequential_input_no_grad")["events"];
    CHECK(script.size() == ref.size());
    CHECK(json(std::vector<json>(ref.begin(), ref.begin() + 14)) ==
          json(std::vector<json>(script.begin(), script.begin() + 14)));
    CHECK(script.back() == ref.back());
  }
}

TEST_CASE("jit scenarios: no_grad_forward on a scripted Sequential matches the reference") {
  const auto [eager, script] = record<Seq3>("seq3.pt", [](Both& b, auto call) {
    auto scope = b.tracker.track();
    b.rec.hook_all();
    {
      torch::NoGradGuard no_grad;
      call(input({3, 4}, false));
    }
    b.rec.probe("after_forward");
  });
  CHECK(script == reference("no_grad_forward")["events"]);
  CHECK(script == eager);
}

TEST_CASE("jit scenarios: exception_in_forward, post hooks run and parents recover as the exception unwinds") {
  Both b;
  auto model = load("outer.pt");
  auto scope = b.tracker.track();
  b.rec.hook_all();
  try {
    (void)model.forward({input({2, 2}, false)});
  } catch (const std::exception&) {
    b.rec.push("caught", std::nullopt);
  }
  b.rec.probe("after_exception");
  CHECK(b.rec.events == reference("exception_in_forward")["events"]);
}

TEST_CASE("jit scenarios: a traced backbone and a scripted classifier from Python, names and calls") {
  auto backbone = load("backbone_traced.pt");
  auto classifier = load("classifier.pt");
  lt::Tracker t;
  auto scope = t.track();
  std::vector<std::string> seen;
  t.register_user_hooks([&](torch::nn::Module& m, const lt::Tensors&) { seen.push_back(*t.known_fqn(m)); });
  auto features = backbone.forward({torch::randn({2, 3, 8, 8}, torch::requires_grad())}).toTensor();
  CHECK(features.sizes() == torch::IntArrayRef{2, 8});
  auto y = classifier.forward({torch::randn({5, 16})}).toTensor();
  y.sum().backward();
  CHECK(seen == std::vector<std::string>{"Backbone", "Backbone.conv", "Backbone.bn", "Backbone.pool",
                                         "Backbone.flatten", "Classifier", "Classifier.embed",
                                         "Classifier.blocks.0", "Classifier.blocks.0.norm", "Classifier.blocks.0.fc",
                                         "Classifier.blocks.1", "Classifier.blocks.1.norm", "Classifier.blocks.1.fc",
                                         "Classifier.blocks.2", "Classifier.blocks.2.norm", "Classifier.blocks.2.fc",
                                         "Classifier.head", "Classifier.head.0", "Classifier.head.1"});
}

TEST_CASE("jit scenarios: a scripted model's backward work goes to the module whose forward made it") {
  auto classifier = load("classifier.pt");  // embed, 3 x (x + relu(fc(norm(x)))), head: LayerNorm, Linear
  lt::Tracker t;
  std::vector<std::string> said;  // none: its ModuleList's blocks run in the model's forward, as in eager code
  t.set_diagnostics([&](const modtracker::Diagnostic& d) { said.push_back(d.message); });
  lt::FlopCounter flops(t);
  lt::BackwardTimer timer(t);
  {
    auto scope = t.track();
    for (int step = 0; step < 2; ++step) classifier.forward({torch::randn({5, 16})}).toTensor().sum().backward();
  }
  CHECK(said == std::vector<std::string>{});
  const auto counts = flops.counts(modtracker::Phase::backward);
  const auto bw = [&](const std::string& fqn) {
    std::uint64_t n = 0;
    if (const auto it = counts.find(fqn); it != counts.end())
      for (const auto& [op, f] : it->second) n += f;
    return n;
  };
  // 2 FLOPs per multiply-add, 5 rows, 2 steps: the embedding is on data (its weight's gradient only); the others
  // compute their input's gradient and their weight's.
  const std::uint64_t steps = 2, rows = 5;
  CHECK(bw("Classifier.embed") == steps * 2 * rows * 16 * 32);
  for (const auto* fc : {"Classifier.blocks.0.fc", "Classifier.blocks.1.fc", "Classifier.blocks.2.fc"}) {
    CAPTURE(fc);
    CHECK(bw(fc) == steps * 2 * (2 * rows * 32 * 32));
  }
  CHECK(bw("Classifier.blocks.1") == bw("Classifier.blocks.1.fc"));  // its LayerNorm and sum count no FLOPs
  CHECK(bw("Classifier.head.1") == steps * 2 * (2 * rows * 32 * 4));
  CHECK(bw("Classifier") == flops.total(modtracker::Phase::backward));
  std::uint64_t own = 0;
  for (const auto& [fqn, ops] : flops.exclusive_counts(modtracker::Phase::backward))
    for (const auto& [op, n] : ops) own += n;
  CHECK(own == flops.total(modtracker::Phase::backward));
  // The nodes' times and spans: each block's span holds its layers', once per pass.
  std::chrono::nanoseconds sum{};
  for (const auto& [fqn, time] : timer.times()) sum += time.exclusive;
  CHECK(sum == timer.total());
  CHECK(timer.times().at("Classifier.blocks.2.fc").nodes >= 2);
  const auto log = timer.spans();
  std::map<std::string, std::vector<modtracker::Span>> spans;
  for (const auto& s : log.spans()) spans[std::string(s.fqn)].push_back(s);
  REQUIRE(spans["Classifier.blocks.2"].size() == 2);
  REQUIRE(spans["Classifier.blocks.2.fc"].size() == 2);
  for (std::size_t pass = 0; pass < 2; ++pass) {
    CHECK(spans["Classifier.blocks.2"][pass].start <= spans["Classifier.blocks.2.fc"][pass].start);
    CHECK(spans["Classifier.blocks.2.fc"][pass].end <= spans["Classifier.blocks.2"][pass].end);
    CHECK(spans["Classifier.blocks.2.fc"][pass].nested);
  }
}
