// The README's tour, compiled and run by ctest so that it stays true.
#include <iostream>
#include <modtracker/torch.hpp>  // includes <torch/torch.h>, imports modtracker

namespace nn = modtracker::libtorch::nn;  // was: namespace nn = torch::nn;
namespace lt = modtracker::libtorch;

struct BarImpl : nn::Module {
  nn::Linear foo{register_module("foo", nn::Linear(10, 10))};
  torch::Tensor forward(torch::Tensor x) { return foo->forward(x).relu_(); }
};
MODTRACKER_MODULE(Bar);  // was: TORCH_MODULE(Bar);

int main() {
  Bar bar;
  lt::Tracker tracker;
  tracker.register_user_hooks(
      [&](torch::nn::Module& m, const lt::Tensors&) {                     // pre forward
        std::cout << "fw  " << *tracker.known_fqn(m) << '\n'; },
      modtracker::no_hook,                                                 // post forward: unused
      [&](torch::nn::Module* m, const lt::Tensors&) {                     // pre backward
        std::cout << "bw  " << (m ? *tracker.known_fqn(*m) : "(freed)") << '\n'; });
  auto scope = tracker.track();                      // C++'s `with ModTracker():`
  bar->forward(torch::randn({2, 10}, torch::requires_grad())).sum().backward();
  for (const auto& t : tracker.drain_transitions())  // a coroutine generator, std::ranges/range-v3 friendly
    std::cout << t.sequence << ' ' << t.fqn << '\n';
}
