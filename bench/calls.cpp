// Call styles: n separate Linear(d, d) layers called in a loop, as a
// tutorial's model calls its layers, as layer(x) and as layer->forward(x).
// Plain torch::nn holders of the very same modules are the baseline.
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <vector>

#include <modtracker/torch.hpp>

#include "bench.hpp"

namespace bench {
namespace nn = modtracker::libtorch::nn;
namespace lt = modtracker::libtorch;

std::vector<CallRow> call_rows(int n, int d, const Options& options) {
  torch::manual_seed(0);
  std::vector<nn::Linear> tracked;
  std::vector<torch::nn::Linear> plain;  // the same modules, through plain holders
  for (int i = 0; i < n; ++i) {
    tracked.emplace_back(d, d);
    plain.emplace_back(tracked.back().ptr());
  }
  const auto x = torch::randn({4, d});
  torch::NoGradGuard no_grad;  // the calls alone: no graph to record
  lt::Tracker tracker;
  tracker.set_diagnostics([](const modtracker::Diagnostic&) {});  // separate layers are roots, as meant
  auto loop = [&](auto& layers, auto&& call) {
    auto h = x;
    for (auto& layer : layers) h = call(layer, h);
  };
  auto by_call = [](auto& layer, const torch::Tensor& h) { return layer(h); };
  auto by_arrow = [](auto& layer, const torch::Tensor& h) { return layer->forward(h); };
  // Every variant in every round, so that a drifting machine hurts all alike.
  struct Best {
    double plain = 1e300, idle = 1e300, tracked = 1e300;
  } call, arrow;
  for (int r = 0; r < options.runs; ++r) {
    call.plain = std::min(call.plain, best_us(1, [&] { loop(plain, by_call); }));
    arrow.plain = std::min(arrow.plain, best_us(1, [&] { loop(plain, by_arrow); }));
    call.idle = std::min(call.idle, best_us(1, [&] { loop(tracked, by_call); }));
    arrow.idle = std::min(arrow.idle, best_us(1, [&] { loop(tracked, by_arrow); }));
    auto scope = tracker.track();
    call.tracked = std::min(call.tracked, best_us(1, [&] { loop(tracked, by_call); }));
    arrow.tracked = std::min(arrow.tracked, best_us(1, [&] { loop(tracked, by_arrow); }));
    for ([[maybe_unused]] const auto& t : tracker.drain_transitions()) {
    }
  }
  std::vector<CallRow> rows{CallRow{"m(x)", call.plain, call.idle, call.tracked, n},
                            CallRow{"m->forward(x)", arrow.plain, arrow.idle, arrow.tracked, n}};
  return rows;
}

}  // namespace bench
