// Uses the installed package: import modtracker; plus the LibTorch header.
#include <torch/torch.h>

#include <cstdio>

import modtracker;
#include <modtracker/torch.hpp>

int main() {
  namespace lt = modtracker::libtorch;
  lt::nn::Linear layer(4, 2);
  lt::Tracker tracker;
  int pre_bw = 0;
  tracker.register_user_hooks(modtracker::no_hook, modtracker::no_hook,
                              [&](torch::nn::Module*, const std::vector<at::Tensor>&) { ++pre_bw; });
  auto scope = tracker.track();
  layer(torch::randn({3, 4}, torch::requires_grad())).sum().backward();
  const bool ok = tracker.known_fqn(*layer) == "Linear" && pre_bw == 1 && tracker.parents().size() == 1;
  std::printf("consumer: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
