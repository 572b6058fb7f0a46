// Uses the installed package: the LibTorch header alone (it includes
// <torch/torch.h> and imports modtracker).
#include <cstdio>

#include <modtracker/torch.hpp>

int main() {
  namespace lt = modtracker::libtorch;
  lt::nn::Linear layer(4, 2);
  lt::Tracker tracker;
  int pre_bw = 0;
  tracker.register_user_hooks(modtracker::no_hook, modtracker::no_hook,
                              [&](torch::nn::Module*, const lt::Tensors&) { ++pre_bw; });
  auto scope = tracker.track();
  layer(torch::randn({3, 4}, torch::requires_grad())).sum().backward();
  const bool ok = tracker.known_fqn(*layer) == "Linear" && pre_bw == 1 && tracker.parents().size() == 1;
  std::printf("consumer: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
