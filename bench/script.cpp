// TorchScript: a scripted model of n Linear(d, d) called in sequence, plain
// against instrumented (no tracker active, and tracked), forward without
// grad and forward+backward. Every variant in every round.
#include <torch/torch.h>
#include <torch/script.h>

#include <algorithm>
#include <string>
#include <vector>

#include <modtracker/torch.hpp>

#include "bench.hpp"

namespace bench {
namespace lt = modtracker::libtorch;

namespace {
torch::jit::Module scripted_chain(int n, int d) {
  // One class for the layers, as Python's scripting gives a ModuleList of
  // nn.Linear (C++ define() of a forward calling many distinct classes takes
  // time and memory exponential in their number in LibTorch 1.13).
  torch::jit::Module proto("Linear");
  proto.register_parameter("weight", (torch::randn({d, d}) * 0.1).requires_grad_(), false);
  proto.register_parameter("bias", torch::zeros({d}).requires_grad_(), false);
  proto.define("def forward(self, x):\n    return torch.linear(x, self.weight, self.bias)\n");
  torch::jit::Module root("Chain");
  std::string src = "def forward(self, x):\n";
  for (int i = 0; i < n; ++i) {
    auto layer = proto.deepcopy();  // its tensors are copies made under autograd: make them leaves again
    for (const auto& p : layer.named_parameters(false)) layer.setattr(p.name, p.value.detach().requires_grad_());
    root.register_module("l" + std::to_string(i), layer);
    src += "    x = self.l" + std::to_string(i) + ".forward(x)\n";
  }
  src += "    return x\n";
  root.define(src);
  return root;
}
}  // namespace

namespace {
// Plain against instrumented (idle, tracked), forward without grad and
// forward+backward, on an input of `shape`: a row per mode, `calls` module
// calls a forward.
std::vector<CallRow> rows_of(torch::jit::Module& plain, torch::jit::Module& inst, std::vector<std::int64_t> shape,
                             int calls, const Options& options) {
  lt::Tracker tracker;
  std::vector<CallRow> rows;
  for (const bool backward : {false, true}) {
    const auto x = torch::randn(shape, torch::requires_grad(backward));
    auto run = [&](torch::jit::Module& m) {
      if (backward) {
        m.forward({x}).toTensor().sum().backward();
      } else {
        torch::NoGradGuard no_grad;
        (void)m.forward({x});
      }
    };
    for (int warm = 0; warm < 5; ++warm) {  // the profiling executor optimizes after its first runs
      run(plain);
      run(inst);
      auto scope = tracker.track();
      run(inst);
      for ([[maybe_unused]] const auto& t : tracker.drain_transitions()) {
      }
    }
    CallRow row{backward ? "fwbw" : "fw_nograd", 1e300, 1e300, 1e300, calls};
    for (int r = 0; r < options.runs; ++r) {
      row.plain_us = std::min(row.plain_us, best_us(1, [&] { run(plain); }));
      row.idle_us = std::min(row.idle_us, best_us(1, [&] { run(inst); }));
      auto scope = tracker.track();
      row.tracked_us = std::min(row.tracked_us, best_us(1, [&] { run(inst); }));
      for ([[maybe_unused]] const auto& t : tracker.drain_transitions()) {
      }
    }
    rows.push_back(row);
  }
  return rows;
}
}  // namespace

std::vector<CallRow> script_rows(int n, int d, const Options& options) {
  torch::manual_seed(0);
  auto plain = scripted_chain(n, d);
  torch::manual_seed(0);
  auto inst = scripted_chain(n, d);
  lt::jit::instrument(inst);
  return rows_of(plain, inst, {4, d}, n, options);
}

std::vector<CallRow> real_model_rows(const std::string& path, std::vector<std::int64_t> shape, const Options& options) {
  auto plain = torch::jit::load(path);  // two loads: two sets of classes, one left as it is
  auto inst = torch::jit::load(path);
  plain.train();
  inst.train();
  lt::jit::instrument(inst);
  int calls = 0;  // module calls in one forward
  {
    lt::Tracker tracker;
    auto scope = tracker.track();
    torch::NoGradGuard no_grad;
    (void)inst.forward({torch::randn(shape)});
    for (const auto& t : tracker.drain_transitions()) calls += t.kind == modtracker::Kind::enter ? 1 : 0;
  }
  return rows_of(plain, inst, std::move(shape), calls, options);
}

}  // namespace bench
