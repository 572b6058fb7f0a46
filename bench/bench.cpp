// modtracker-bench: the tracker's own cost. Prints a table; --json prints one
// JSON object {"core": {...}, "torch": [...]}. Best of several runs.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <modtracker/torch.hpp>

import modtracker;
import modtracker.backend;
import modtracker.scripted;
import modtracker.stats;

namespace {
using clock_type = std::chrono::steady_clock;
namespace lt = modtracker::libtorch;

double best_us(int runs, const std::function<void()>& body) {
  double best = 1e300;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = clock_type::now();
    body();
    best = std::min(best, std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
  }
  return best;
}

// Core: enter+exit of one module on the scripted backend, no grad.
double core_ns(bool noop_hooks) {
  namespace s = modtracker::scripted;
  s::Backend b;
  b.set_grad_mode(false);
  auto m = b.module("Linear");
  constexpr int n = 100000;
  modtracker::Tracker<s::Backend> t(b, modtracker::TrackerOptions{.journal_capacity = 2 * n});
  if (noop_hooks)
    t.register_user_hooks([](s::Module&, const s::Values&) {}, [](s::Module&, const s::Values&, const s::Values*) {},
                          [](s::Module*, const s::Values&) {}, [](s::Module*, const s::Values&) {});
  auto scope = t.track();
  const s::Values in{b.value(false)};
  const s::Values out{b.value(false)};
  double best = 1e300;
  for (int r = 0; r < 7; ++r) {
    const auto us = best_us(1, [&] {
      for (int i = 0; i < n; ++i) {
        modtracker::ForwardDispatcher::Call call(b.dispatcher(), modtracker::ModuleRef{m.get()},
                                                 modtracker::ValuesRef{&in});
        call.finish(modtracker::ValuesRef{&out});
      }
    });
    best = std::min(best, us);
    for ([[maybe_unused]] const auto& tr : t.drain_transitions()) {
    }
  }
  return best * 1000.0 / n;
}

struct TorchRow {
  int modules, width;
  const char* mode;
  double base_us, tracked_us;
  double overhead_per_module() const { return (tracked_us - base_us) / modules; }
  double ratio() const { return tracked_us / base_us; }
};

// A Sequential of n Linear(d, d): plain LibTorch against the tracked drop-in.
std::string only_mode;  // --mode: run one mode only (for profiling)
int runs = 60;          // --runs: best of how many runs
int reps_option = 1;    // --reps: calls per timed run

// Reading the journal, timed on its own (outside the tracked runs: reading is
// the reader's cost, paid when and where it reads).
double drain_ns = 0.0;
std::uint64_t drained = 0;

std::vector<TorchRow> torch_rows(int n, int d) {
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
  const int reps = reps_option;
  auto drain = [&] {
    const auto t0 = clock_type::now();
    std::uint64_t count = 0;
    for ([[maybe_unused]] const auto& tr : tracker.drain_transitions()) ++count;
    drain_ns += std::chrono::duration<double, std::nano>(clock_type::now() - t0).count();
    drained += count;
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
}  // namespace

int main(int argc, char** argv) {
  bool json = false, core = true;
  std::vector<std::pair<int, int>> cases{{100, 8}, {1000, 8}, {100, 256}};
  for (int i = 1; i < argc; ++i) {
    int n = 0, d = 0;
    if (std::strcmp(argv[i], "--json") == 0) {
      json = true;
    } else if (std::strcmp(argv[i], "--mode") == 0 && i + 1 < argc &&
               (std::strcmp(argv[i + 1], "fw_nograd") == 0 || std::strcmp(argv[i + 1], "fw_grad") == 0 ||
                std::strcmp(argv[i + 1], "fwbw") == 0)) {
      only_mode = argv[++i];
    } else if (std::strcmp(argv[i], "--runs") == 0 && i + 1 < argc && std::atoi(argv[i + 1]) > 0) {
      runs = std::atoi(argv[++i]);  // more runs: steadier minimum, or a longer profile
    } else if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc && std::atoi(argv[i + 1]) > 0) {
      reps_option = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--torch-only") == 0) {
      core = false;
    } else if (std::strcmp(argv[i], "--case") == 0 && i + 1 < argc && std::sscanf(argv[i + 1], "%dx%d", &n, &d) == 2 &&
               n > 0 && d > 0) {
      cases = {{n, d}};  // one Sequential size only, e.g. --case 1000x8
      ++i;
    } else {
      std::fprintf(stderr, "usage: modtracker-bench [--json] [--torch-only] [--case MODULESxWIDTH] [--mode fw_nograd|fw_grad|fwbw] [--runs N] [--reps N]\n");
      return 2;
    }
  }
  at::set_num_threads(1);
  const double no_hooks = core ? core_ns(false) : 0.0;
  const double noop_hooks = core ? core_ns(true) : 0.0;
  std::vector<TorchRow> rows;
  for (auto [n, d] : cases) {
    for (const auto& r : torch_rows(n, d))
      if (only_mode.empty() || only_mode == r.mode) rows.push_back(r);
  }
  const double stats_us = only_mode.empty() ? stats_overhead_us_per_activation(cases.front().first) : 0.0;
  if (json) {
    std::printf("{");
    if (only_mode.empty()) std::printf("\"stats\": {\"overhead_us_per_activation\": %.3f}, ", stats_us);
    if (core)
      std::printf("\"core\": {\"enter_exit_ns_no_hooks\": %.1f, \"enter_exit_ns_noop_hooks\": %.1f}, ", no_hooks,
                  noop_hooks);
    if (drained > 0) std::printf("\"journal_read_ns_per_transition\": %.1f, ", drain_ns / drained);
    std::printf("\"torch\": [");
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const auto& r = rows[i];
      std::printf("%s{\"modules\": %d, \"width\": %d, \"mode\": \"%s\", \"baseline_us\": %.1f, "
                  "\"tracked_us\": %.1f, \"overhead_us_per_module\": %.3f, \"ratio\": %.3f}",
                  i ? ", " : "", r.modules, r.width, r.mode, r.base_us, r.tracked_us, r.overhead_per_module(), r.ratio());
    }
    std::printf("]}\n");
    return 0;
  }
  if (only_mode.empty())
    std::printf("statistics (shapes + per-module table) over plain tracking: %.3f us per activation\n\n", stats_us);
  if (core) {
    std::printf("core (scripted backend, one module enter+exit)\n");
    std::printf("  no user hooks      %8.1f ns\n", no_hooks);
    std::printf("  four no-op hooks   %8.1f ns\n\n", noop_hooks);
  }
  if (drained > 0) std::printf("reading the journal (not in the times below): %.1f ns per transition\n\n", drain_ns / drained);
  std::printf("LibTorch Sequential of Linear(d, d), 1 thread, best of %d runs of %d call%s, alternating\n", runs,
              reps_option, reps_option == 1 ? "" : "s");
  std::printf("%8s %6s %10s %12s %12s %16s %7s\n", "modules", "width", "mode", "baseline_us", "tracked_us",
              "overhead_us/mod", "ratio");
  for (const auto& r : rows)
    std::printf("%8d %6d %10s %12.1f %12.1f %16.3f %7.3f\n", r.modules, r.width, r.mode, r.base_us, r.tracked_us,
                r.overhead_per_module(), r.ratio());
  return 0;
}
