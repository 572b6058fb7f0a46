// The README's tour, compiled and run by ctest so that it stays true.
#include <iostream>
#include <modtracker/torch.hpp>  // includes <torch/torch.h>, imports modtracker

namespace lt = modtracker::libtorch;

struct BarImpl : torch::nn::Module {
  lt::nn::Linear foo{register_module("foo", lt::nn::Linear(10, 10))};
  torch::Tensor forward(torch::Tensor x) { return foo(x).relu_(); }
};
MODTRACKER_MODULE(Bar);

int main() {
  Bar bar;
  lt::Tracker tracker;
  tracker.register_user_hooks(
      [&](torch::nn::Module& m, const lt::Tensors&) {                     // pre forward
        std::cout << "fw  " << *tracker.known_fqn(m) << '\n'; },
      modtracker::no_hook,                                                 // post forward: unused
      [&](torch::nn::Module* m, const lt::Tensors&) {                     // pre backward
        std::cout << "bw  " << (m ? *tracker.known_fqn(*m) : "(freed)") << '\n'; });
  auto scope = tracker.track();                // C++'s `with ModTracker():`
  bar(torch::randn({2, 10}, torch::requires_grad())).sum().backward();
  for (const auto& t : tracker.drain_transitions())  // a coroutine generator, std::ranges/range-v3 friendly
    std::cout << t.sequence << ' ' << t.fqn << '\n';
}
