// A Sequential of Linear(d, d) layers: plain LibTorch against the tracked
// drop-in, and the statistics tools on top.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

#include <modtracker/torch.hpp>

#include "bench.hpp"

namespace bench {
namespace lt = modtracker::libtorch;

std::vector<TorchRow> sequential_rows(int n, int d, const Options& options, Journal& journal) {
  torch::manual_seed(0);
  torch::nn::Sequential plain;
  lt::nn::Sequential tracked;
  for (int i = 0; i < n; ++i) {
    auto layer = torch::nn::Linear(d, d);
    plain->push_back(layer);
    tracked->push_back(layer);  // same weights: same arithmetic
  }
  const auto x = torch::randn({4, d});
  lt::Tracker tracker;  // the default journal (65536 transitions) holds a run's transitions
  const int reps = options.reps, runs = options.runs;
  const auto& only_mode = options.only_mode;
  auto drain = [&] {
    const auto t0 = clock_type::now();
    std::uint64_t count = 0;
    for ([[maybe_unused]] const auto& tr : tracker.drain_transitions()) ++count;
    journal.ns += std::chrono::duration<double, std::nano>(clock_type::now() - t0).count();
    journal.transitions += count;
  };
  // Baseline and tracked runs alternate, so a drifting machine hurts both alike.
  auto measure = [&](const char* mode, const std::function<void()>& plain_step, const std::function<void()>& tracked_step) {
    if (!only_mode.empty() && only_mode != mode) return TorchRow{n, d, mode, 0, 0};
    double base = 1e300, trk = 1e300;
    for (int r = 0; r < runs; ++r) {
      base = std::min(base, best_us(1, [&] { for (int i = 0; i < reps; ++i) plain_step(); }) / reps);
      auto scope = tracker.track();
      trk = std::min(trk, best_us(1, [&] { for (int i = 0; i < reps; ++i) tracked_step(); }) / reps);
      drain();
    }
    return TorchRow{n, d, mode, base, trk};
  };
  std::vector<TorchRow> rows;
  {
    torch::NoGradGuard no_grad;
    rows.push_back(measure("fw_nograd", [&] { plain->forward(x); }, [&] { tracked->forward(x); }));
  }
  rows.push_back(measure("fw_grad", [&] { plain->forward(x); }, [&] { tracked->forward(x); }));
  rows.push_back(measure("fwbw", [&] { plain->forward(x).sum().backward(); },
                         [&] { tracked->forward(x).sum().backward(); }));
  return rows;
}

// Statistics on (shape recorder + Statistics fed every step) against plain
// tracking, forward+backward of a Sequential of n Linear(8, 8).
double stats_overhead_us_per_activation(int n) {
  torch::manual_seed(0);
  lt::nn::Sequential tracked;
  for (int i = 0; i < n; ++i) tracked->push_back(torch::nn::Linear(8, 8));
  const auto x = torch::randn({4, 8});
  lt::Tracker tracker;
  constexpr int runs = 9, reps = 5;
  double plain = 1e300, with_stats = 1e300;
  std::uint64_t activations = 0;
  for (int r = 0; r < runs; ++r) {
    {
      auto scope = tracker.track();
      plain = std::min(plain, best_us(1, [&] {
        for (int i = 0; i < reps; ++i) {
          tracked->forward(x).sum().backward();
          for ([[maybe_unused]] const auto& t : tracker.drain_transitions()) {
          }
        }
      }) / reps);
    }
    lt::ShapeRecorder shapes;
    modtracker::Statistics stats;
    auto scope = tracker.track();
    with_stats = std::min(with_stats, best_us(1, [&] {
      for (int i = 0; i < reps; ++i) {
        tracked->forward(x).sum().backward();
        stats.consume_all(tracker.drain_transitions());
      }
    }) / reps);
    activations = stats.activations() / reps;
  }
  return (with_stats - plain) / static_cast<double>(activations);
}
}  // namespace bench
