// modtracker-bench: the tracker's own cost. Prints tables; --json prints one
// JSON object. Best of several runs, plain and tracked runs alternating.
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bench.hpp"

namespace {
int usage() {
  std::fprintf(stderr,
               "usage: modtracker-bench [--json] [--torch-only | --tools-only | --script-only | --ranks-only | --ranks-scale | --real-models] [--case MODULESxWIDTH] [--mode fw_nograd|fw_grad|fwbw]\n"
               "                        [--runs N] [--reps N]\n");
  return 2;
}

// Rows of plain / idle / tracked: as JSON (`label`: the row's key, `per`:
// what the overhead is per) and as a table.
void print_json(const std::vector<bench::CallRow>& rows, const char* label, const char* per) {
  std::printf("[");
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& c = rows[i];
    std::printf("%s{\"%s\": \"%s\", \"modules\": %d, \"plain_us\": %.1f, \"idle_us\": %.1f, \"tracked_us\": %.1f, "
                "\"idle_ratio\": %.4f, \"tracked_overhead_us_per_%s\": %.3f}",
                i ? ", " : "", label, c.style, c.modules, c.plain_us, c.idle_us, c.tracked_us, c.idle_us / c.plain_us,
                per, (c.tracked_us - c.plain_us) / c.modules);
  }
  std::printf("]");
}
void print_table(const std::vector<bench::CallRow>& rows, const char* label, const char* overhead) {
  std::printf("%14s %10s %10s %12s %11s %17s\n", label, "plain_us", "idle_us", "tracked_us", "idle/plain", overhead);
  for (const auto& c : rows)
    std::printf("%14s %10.1f %10.1f %12.1f %11.4f %17.3f\n", c.style, c.plain_us, c.idle_us, c.tracked_us,
                c.idle_us / c.plain_us, (c.tracked_us - c.plain_us) / c.modules);
}
}  // namespace

int main(int argc, char** argv) {
  bench::Options options;
  bool json = false, core = true, tools_only = false, script_only = false, ranks_only = false;
  std::vector<std::pair<int, int>> cases{{100, 8}, {1000, 8}, {100, 256}};
  for (int i = 1; i < argc; ++i) {
    int n = 0, d = 0;
    const bool has_value = i + 1 < argc;
    if (std::strcmp(argv[i], "--json") == 0) {
      json = true;
    } else if (std::strcmp(argv[i], "--mode") == 0 && has_value &&
               (std::strcmp(argv[i + 1], "fw_nograd") == 0 || std::strcmp(argv[i + 1], "fw_grad") == 0 ||
                std::strcmp(argv[i + 1], "fwbw") == 0)) {
      options.only_mode = argv[++i];
    } else if (std::strcmp(argv[i], "--runs") == 0 && has_value && std::atoi(argv[i + 1]) > 0) {
      options.runs = std::atoi(argv[++i]);  // more runs: steadier minimum, or a longer profile
    } else if (std::strcmp(argv[i], "--reps") == 0 && has_value && std::atoi(argv[i + 1]) > 0) {
      options.reps = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--ranks-only") == 0) {
      ranks_only = true;
    } else if (std::strcmp(argv[i], "--ranks-scale") == 0) {
      // How a gather grows: 2 to 16 ranks (threads) x 100 to 10,000 modules.
      at::set_num_threads(1);
      std::printf("gather to rank 0, ranks as threads over a HashStore (Gloo over 127.0.0.1), 1 warm-up + 10 rounds\n");
      std::printf("%6s %8s %10s %10s %10s %14s %16s\n", "ranks", "modules", "min_ms", "median_ms", "max_ms",
                  "received_KiB", "peak_growth_MiB");
      std::vector<std::pair<int, int>> sizes;  // --ranks-scale WORLDxMODULES: that size only
      const bool one = i + 1 < argc && std::sscanf(argv[i + 1], "%dx%d", &n, &d) == 2 && n > 1 && d > 0;
      if (one) sizes = {{n, d}};
      for (const int world : {2, 4, 8, 16})
        for (const int modules : {100, 1000, 10000})
          if (!one) sizes.emplace_back(world, modules);
      for (const auto [world, modules] : sizes) {
        const auto g = bench::gather_scale(world, modules, 10);
        std::printf("%6d %8d %10.2f %10.2f %10.2f %14.1f %16.1f\n", g.world, g.modules, g.ms_min, g.ms_median,
                    g.ms_max, static_cast<double>(g.received_bytes) / 1024, g.peak_growth_mb);
        std::fflush(stdout);
      }
      if (one) return 0;
      const auto h = bench::heartbeat_cost(10);
      std::printf("\ntraining step (16 x Linear(64, 64), batch 32) with a heartbeat every 10 ms against none, 10 "
                  "alternating rounds of 50 steps:\n  %.1f us vs %.1f us a step; ratio by round min %.3f median %.3f "
                  "max %.3f\n",
                  h.step_heartbeat_us, h.step_us, h.ratio_min, h.ratio_median, h.ratio_max);
      return 0;
    } else if (std::strcmp(argv[i], "--real-models") == 0) {
      // torchvision's resnet18 and a TransformerEncoder, as the test suite scripts them.
      at::set_num_threads(1);
      const std::string dir = MODTRACKER_REAL_MODELS;
      for (const auto& [name, shape] : std::vector<std::pair<std::string, std::vector<std::int64_t>>>{
               {"resnet18", {2, 3, 64, 64}}, {"encoder", {2, 8, 32}}}) {
        const auto path = dir + "/" + name + ".pt";
        if (!std::ifstream(path)) {
          std::fprintf(stderr, "modtracker-bench: no %s: build the tests first (make test scripts the real models)\n",
                       path.c_str());
          return 1;
        }
        const auto rows = bench::real_model_rows(path, shape, options);
        std::printf("%s, training mode, 1 thread, best of %d runs: plain, instrumented with no tracker (idle), "
                    "tracked (%d module calls a forward)\n", name.c_str(), options.runs, rows.front().modules);
        print_table(rows, "mode", "overhead_us/call");
        for (const auto& r : rows) std::printf("  %s: tracked/plain %.4f\n", r.style, r.tracked_us / r.plain_us);
        std::printf("\n");
      }
      return 0;
    } else if (std::strcmp(argv[i], "--script-only") == 0) {
      script_only = true;
    } else if (std::strcmp(argv[i], "--tools-only") == 0) {
      tools_only = true;
    } else if (std::strcmp(argv[i], "--torch-only") == 0) {
      core = false;
    } else if (std::strcmp(argv[i], "--case") == 0 && has_value && std::sscanf(argv[i + 1], "%dx%d", &n, &d) == 2 &&
               n > 0 && d > 0) {
      cases = {{n, d}};  // one size only, e.g. --case 1000x8
      ++i;
    } else {
      return usage();
    }
  }
  at::set_num_threads(1);
  if (tools_only || script_only || ranks_only) core = false, cases.clear();
  const bool others = !ranks_only;  // the parts that --ranks-only leaves out
  const bool all = options.only_mode.empty();
  const double no_hooks = core ? bench::core_ns(false) : 0.0;
  const double noop_hooks = core ? bench::core_ns(true) : 0.0;
  bench::Journal journal;
  std::vector<bench::TorchRow> rows;
  for (auto [n, d] : cases)
    for (const auto& r : bench::sequential_rows(n, d, options, journal))
      if (all || options.only_mode == r.mode) rows.push_back(r);
  const int call_modules = cases.size() == 1 ? cases.front().first : 1000;
  const auto calls = others && all && !tools_only && !script_only ? bench::call_rows(call_modules, 8, options) : std::vector<bench::CallRow>{};
  const auto script = others && all && !tools_only ? bench::script_rows(100, 8, options) : std::vector<bench::CallRow>{};
  const double stats_us = others && all && !tools_only && !script_only ? bench::stats_overhead_us_per_activation(cases.front().first) : 0.0;
  const auto tools = others && all && !script_only ? std::optional(bench::tool_costs(options)) : std::nullopt;
  const auto scopes = tools ? std::optional(bench::profiler_scope_costs(options)) : std::nullopt;
  const auto ranks = all && !tools_only && !script_only ? std::optional(bench::rank_costs(4, 1000, 15)) : std::nullopt;

  if (json) {
    std::printf("{");
    if (others && all && !tools_only) std::printf("\"stats\": {\"overhead_us_per_activation\": %.3f}, ", stats_us);
    if (tools)
      std::printf("\"tools\": {\"alloc_free_ns\": %.1f, \"alloc_free_memory_tracker_ns\": %.1f, \"op_ns\": %.1f, "
                  "\"op_bare_callback_ns\": %.1f, \"op_flop_counter_ns\": %.1f, \"op_profiler_flops_memory_ns\": %.1f, "
                  "\"step_us\": %.1f, \"step_memory_tracker_us\": %.1f, \"step_flop_counter_us\": %.1f, "
                  "\"step_both_us\": %.1f, \"step_bare_callback_us\": %.1f}, ",
                  tools->alloc_ns, tools->alloc_tracked_ns, tools->op_ns, tools->op_bare_callback_ns,
                  tools->op_flop_counter_ns, tools->op_profiler_ns, tools->step_us, tools->step_memory_us,
                  tools->step_flops_us, tools->step_both_us, tools->step_bare_callback_us);
    if (core)
      std::printf("\"core\": {\"enter_exit_ns_no_hooks\": %.1f, \"enter_exit_ns_noop_hooks\": %.1f}, ", no_hooks,
                  noop_hooks);
    if (journal.transitions > 0)
      std::printf("\"journal_read_ns_per_transition\": %.1f, ", journal.ns / static_cast<double>(journal.transitions));
    std::printf("\"calls\": ");
    print_json(calls, "style", "module");
    std::printf(", \"script\": ");
    print_json(script, "mode", "call");
    std::printf(", \"torch\": [");
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const auto& r = rows[i];
      std::printf("%s{\"modules\": %d, \"width\": %d, \"mode\": \"%s\", \"baseline_us\": %.1f, "
                  "\"tracked_us\": %.1f, \"overhead_us_per_module\": %.3f, \"ratio\": %.3f}",
                  i ? ", " : "", r.modules, r.width, r.mode, r.base_us, r.tracked_us, r.overhead_per_module(), r.ratio());
    }
    std::printf("]");
    if (ranks)
      std::printf(", \"ranks\": {\"world\": %d, \"modules\": %d, \"gather_ms_min\": %.2f, \"gather_ms_median\": %.2f, "
                  "\"gather_ms_max\": %.2f, \"allreduce_us\": %.1f, \"allreduce_tracked_us\": %.1f, "
                  "\"tracked_ratio_min\": %.3f, \"tracked_ratio_max\": %.3f}",
                  ranks->world, ranks->modules, ranks->gather_ms_min, ranks->gather_ms_median, ranks->gather_ms_max,
                  ranks->allreduce_us, ranks->allreduce_tracked_us, ranks->ratio_min, ranks->ratio_max);
    std::printf("}\n");
    return 0;
  }
  if (ranks) {
    const auto& k = *ranks;
    std::printf("ranks (%d threads over a HashStore, Gloo over 127.0.0.1), 15 rounds\n", k.world);
    std::printf("  gather of a %d-module table to rank 0   min %.2f ms   median %.2f ms   max %.2f ms\n", k.modules,
                k.gather_ms_min, k.gather_ms_median, k.gather_ms_max);
    std::printf("  allreduce of %d floats                 untracked %.1f us   tracked %.1f us   (tracked/untracked "
                "%.3f-%.3f by round)\n\n",
                k.modules * 72, k.allreduce_us, k.allreduce_tracked_us, k.ratio_min, k.ratio_max);
  }
  if (ranks_only) return 0;
  if (others && all && !tools_only && !script_only)
    std::printf("statistics (shapes + per-module table) over plain tracking: %.3f us per activation\n\n", stats_us);
  if (tools) {
    const auto& t = *tools;
    std::printf("tools (best of %d rounds, every variant in each)\n", options.runs);
    std::printf("  allocation + free of 256 B    allocator %6.1f ns   with MemoryTracker %6.1f ns   (+%.1f ns)\n",
                t.alloc_ns, t.alloc_tracked_ns, t.alloc_tracked_ns - t.alloc_ns);
    std::printf("  operator (mm, add of 4x4)     none %6.1f ns   bare callback +%.1f ns   FlopCounter +%.1f ns (%.2fx the "
                "bare callback's)   profiler (FLOPs, memory) +%.1f ns\n",
                t.op_ns, t.op_bare_callback_ns - t.op_ns, t.op_flop_counter_ns - t.op_ns,
                (t.op_flop_counter_ns - t.op_ns) / (t.op_bare_callback_ns - t.op_ns), t.op_profiler_ns - t.op_ns);
    std::printf("  operator, scope with no tracked call yet (the watch) +%.1f ns   (a bare callback without inputs "
                "+%.1f ns)\n",
                t.op_watch_ns - t.op_watch_base_ns, t.op_bare_no_inputs_ns - t.op_watch_base_ns);
    std::printf("  training step, demo model     tracked %6.1f us   + MemoryTracker %+.1f%%   + FlopCounter %+.1f%%   "
                "+ both %+.1f%%   (+ a bare callback %+.1f%%)\n",
                t.step_us, 100 * (t.step_memory_us / t.step_us - 1), 100 * (t.step_flops_us / t.step_us - 1),
                100 * (t.step_both_us / t.step_us - 1), 100 * (t.step_bare_callback_us / t.step_us - 1));
    std::printf("  backward attribution          FlopCounter by spans %+.1f%%, by provenance %+.1f%%   (a bare callback on "
                "backward nodes alone %+.1f%%)   every tool (+ BackwardTimer) %+.1f%%\n",
                100 * (t.step_flops_spans_us / t.step_us - 1), 100 * (t.step_flops_us / t.step_us - 1),
                100 * (t.step_bare_node_callback_us / t.step_us - 1), 100 * (t.step_all_us / t.step_us - 1));
    std::printf("  operators in the trace        OperatorRecorder +%.1f ns an operator (mm, add of 4x4), a training step "
                "%+.1f%%\n",
                t.op_recorder_ns - t.op_ns, 100 * (t.step_operators_us / t.step_us - 1));
    if (scopes) {
      const auto& p = *scopes;  // 100 module calls a forward
      std::printf("  profiler scopes (100 Linear)  tracked %6.1f us   + ProfilerScopes, no profiler on %+.1f ns a call   "
                  "profiler on: %6.1f us, + ProfilerScopes %+.1f ns a call\n\n",
                  p.tracked_us, 1000 * (p.scopes_us - p.tracked_us) / 100, p.profiled_us,
                  1000 * (p.profiled_scopes_us - p.profiled_us) / 100);
    }
  }
  if (core) {
    std::printf("core (reference backend, one module enter+exit)\n");
    std::printf("  no user hooks      %8.1f ns\n", no_hooks);
    std::printf("  four no-op hooks   %8.1f ns\n\n", noop_hooks);
  }
  if (journal.transitions > 0)
    std::printf("reading the journal (not in the times below): %.1f ns per transition\n\n",
                journal.ns / static_cast<double>(journal.transitions));
  if (tools_only) return 0;
  if (!script_only) {
    std::printf("LibTorch Sequential of Linear(d, d), 1 thread, best of %d runs of %d call%s, alternating\n", options.runs,
                options.reps, options.reps == 1 ? "" : "s");
    std::printf("%8s %6s %10s %12s %12s %16s %7s\n", "modules", "width", "mode", "baseline_us", "tracked_us",
                "overhead_us/mod", "ratio");
    for (const auto& r : rows)
      std::printf("%8d %6d %10s %12.1f %12.1f %16.3f %7.3f\n", r.modules, r.width, r.mode, r.base_us, r.tracked_us,
                  r.overhead_per_module(), r.ratio());
    if (!calls.empty()) {
      std::printf("\n%d separate Linear(8, 8) called in a loop, forward without grad: plain torch::nn holders,\n"
                  "the tracked holders with no tracker active (idle), and tracked\n", calls.front().modules);
      print_table(calls, "style", "overhead_us/mod");
    }
  }
  if (!script.empty()) {
    std::printf("\nTorchScript: %d Linear(8, 8) in a scripted model, called in sequence: plain, instrumented\n"
                "with no tracker active (idle), and instrumented and tracked\n", script.front().modules);
    print_table(script, "mode", "overhead_us/call");
  }
  return 0;
}
