// What the benchmark's parts share: timing, the row of a LibTorch case, options.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace bench {

using clock_type = std::chrono::steady_clock;

/// The best wall time of `runs` calls of `body`, in microseconds.
inline double best_us(int runs, const std::function<void()>& body) {
  double best = 1e300;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = clock_type::now();
    body();
    best = std::min(best, std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
  }
  return best;
}

/// Plain against tracked, one case and mode.
struct TorchRow {
  int modules, width;
  const char* mode;
  double base_us, tracked_us;
  [[nodiscard]] double overhead_per_module() const { return (tracked_us - base_us) / modules; }
  [[nodiscard]] double ratio() const { return tracked_us / base_us; }
};

struct Options {
  std::string only_mode;  // --mode: one mode only (for profiling)
  int runs = 60;          // --runs: best of how many runs
  int reps = 1;           // --reps: calls per timed run
};

/// Reading the journal, timed on its own (outside the tracked runs: reading
/// is the reader's cost, paid when and where it reads).
struct Journal {
  double ns = 0.0;
  std::uint64_t transitions = 0;
};

// core.cpp: one module's enter and exit on the reference backend, no grad.
double core_ns(bool noop_hooks);
// sequential.cpp: a Sequential of n Linear(d, d), plain LibTorch against the tracked drop-in.
std::vector<TorchRow> sequential_rows(int n, int d, const Options& options, Journal& journal);
// sequential.cpp: the statistics tools over plain tracking, per activation.
double stats_overhead_us_per_activation(int n);

/// A model of n separate Linear(d, d) layers called in a loop, as layer(x) or
/// layer->forward(x): plain torch::nn, the tracked holders with no tracker
/// active, and tracked.
struct CallRow {
  const char* style;
  double plain_us, idle_us, tracked_us;
  int modules;
};
// calls.cpp
std::vector<CallRow> call_rows(int n, int d, const Options& options);

/// A scripted model of n Linear(d, d) called in sequence, a row per mode
/// (`style`: fw_nograd, fwbw): plain, instrumented with no tracker active
/// (idle), instrumented and tracked (script.cpp).
std::vector<CallRow> script_rows(int n, int d, const Options& options);
/// A TorchScript model file (a real model: test/real_models), the rows of
/// script_rows() on an input of `shape`; `modules` is its module calls a forward.
std::vector<CallRow> real_model_rows(const std::string& path, std::vector<std::int64_t> shape, const Options& options);

/// The tools' costs (tools.cpp): ns per allocation+free, per operator, us per training step.
struct ToolCosts {
  double alloc_ns = 0, alloc_tracked_ns = 0;
  double op_ns = 0, op_bare_callback_ns = 0, op_flop_counter_ns = 0, op_profiler_ns = 0;
  double step_us = 0, step_memory_us = 0, step_flops_us = 0, step_both_us = 0, step_bare_callback_us = 0;
  // Backward attribution's share: the FlopCounter by spans (no node callback), and
  // a bare callback on backward nodes alone.
  double step_flops_spans_us = 0, step_bare_node_callback_us = 0;
  double step_all_us = 0;  // memory, FLOPs and backward time, as the demo runs them
  // An operator while a scope has seen no tracked call (the watch), against a
  // bare callback without inputs.
  double op_watch_base_ns = 0, op_bare_no_inputs_ns = 0, op_watch_ns = 0;
  // OperatorRecorder (operators in the trace, off by default): per operator, per training step.
  double op_recorder_ns = 0, step_operators_us = 0;
};
ToolCosts tool_costs(const Options& options);

/// ProfilerScopes: 100 tracked Linear(8, 8) in a tracked Sequential, forward
/// without grad, batch 4; microseconds per forward, best of the rounds.
struct ProfilerScopeCosts {
  double tracked_us = 0, scopes_us = 0;                     // no profiler on
  double profiled_us = 0, profiled_scopes_us = 0;           // LibTorch's profiler on (RecordProfile)
};
ProfilerScopeCosts profiler_scope_costs(const Options& options);

/// Ranks as threads (ranks.cpp): rank 0's gather of a `modules`-row table
/// from `world` ranks, `rounds` times; the allreduce of 72 floats a module,
/// untracked and tracked alternately (medians, and the range of their ratio).
struct RankCosts {
  int world = 0, modules = 0;
  double gather_ms_min = 0, gather_ms_median = 0, gather_ms_max = 0;
  double allreduce_us = 0, allreduce_tracked_us = 0, ratio_min = 0, ratio_max = 0;
};
RankCosts rank_costs(int world, int modules, int rounds);

/// One gather size: `world` ranks as threads, a `modules`-row table each
/// (with FLOPs and memory columns), 1 warm-up gather and `rounds` timed.
struct GatherScale {
  int world = 0, modules = 0;
  double ms_min = 0, ms_median = 0, ms_max = 0;
  std::uint64_t received_bytes = 0;  ///< per gather, by rank 0
  double peak_growth_mb = 0;         ///< the process's peak RSS growth over the gathers (all rank threads)
};
GatherScale gather_scale(int world, int modules, int rounds);

/// A training step with and without a RankGroup whose heartbeat beats every
/// 10 ms (its shortest interval), alternating: microseconds per step.
struct HeartbeatCost {
  double step_us = 0, step_heartbeat_us = 0, ratio_min = 0, ratio_median = 0, ratio_max = 0;
};
HeartbeatCost heartbeat_cost(int rounds);

}  // namespace bench
