// Uses the installed package: the LibTorch header alone (it includes
// <torch/torch.h>, imports modtracker and brings the LibTorch tools).
#include <cstdio>

#include <modtracker/libtorch/flops.hpp>  // a 0.2 path: still there
#include <modtracker/libtorch_tools/ranks.hpp>
#include <modtracker/torch.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

import modtracker;  // also by name: the LibTorch header brings it

int main() {
  namespace lt = modtracker::libtorch;
  lt::nn::Linear layer(4, 2);
  lt::Tracker tracker;
  int pre_bw = 0;
  tracker.register_user_hooks(modtracker::no_hook, modtracker::no_hook,
                              [&](torch::nn::Module*, const lt::Tensors&) { ++pre_bw; });
  modtracker::Statistics stats;
  {
    auto scope = tracker.track();
    layer(torch::randn({3, 4}, torch::requires_grad())).sum().backward();
    stats.consume_all(tracker.drain_transitions());
  }
  lt::annotate(stats, tracker, *layer);
  const auto* row = stats.find("Linear");
  bool ok = tracker.known_fqn(*layer) == "Linear" && pre_bw == 1 && tracker.parents().size() == 1 && row &&
            row->fw_calls == 1 && row->bw_calls == 1 && row->params_trainable == 10;
  // A TorchScript model, instrumented.
  torch::jit::Module script("Net");
  script.register_parameter("w", torch::randn({4, 2}).requires_grad_(), false);
  script.define("def forward(self, x):\n    return torch.mm(x, self.w)\n");
  lt::jit::instrument(script);
  {
    auto scope = tracker.track();
    script.forward({torch::randn({3, 4})}).toTensor().sum().backward();
    int transitions = 0;
    for ([[maybe_unused]] const auto& t : tracker.drain_transitions()) ++transitions;
    ok = ok && transitions == 4 && pre_bw == 2;
  }
  // Ranks: a job of one rank gathers its own table.
  lt::RankGroup ranks(c10::make_intrusive<c10d::HashStore>(), 0, 1);
  const auto gathered = ranks.gather(tracker, stats);
  ok = ok && gathered.complete() && gathered.merged->find("Linear")->fw.calls_max == 1;
  std::printf("%s\nconsumer: %s\n", stats.table().c_str(), ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
