// modtracker-demo: trains a small model on synthetic data under a tracker,
// with a FLOP counter and a memory tracker on it, then prints the per-module
// table and the biggest consumers, and writes a Chrome/Perfetto trace.
// With --ranks N, N processes train it data-parallel and rank 0 prints the
// table across ranks and writes one trace for all.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <unistd.h>

#include <modtracker/torch.hpp>

#include "demo_ranks.hpp"
#include "models.hpp"

namespace lt = modtracker::libtorch;

namespace {

struct Model {
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(torch::Tensor)> forward;
  std::vector<std::int64_t> input_shape;
};

// LibTorch's messages run on with a backtrace: their first line says it,
// except the TorchScript interpreter's, whose cause is their last line.
std::string first_line(const std::exception& e) {
  std::string what = e.what();
  if (what.starts_with("The following operation failed in the TorchScript interpreter")) {
    while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
    return what.substr(what.rfind('\n') + 1);
  }
  return what.substr(0, what.find('\n'));
}

// A model file rather than an embedded model's name.
bool is_model_path(const std::string& name) {
  return name.find('/') != std::string::npos || name.ends_with(".pt") || name.ends_with(".pth") ||
         name.ends_with(".ptl") || name.ends_with(".zip") || std::filesystem::exists(name);
}

// A TorchScript model file (torch.jit.script(m).save(path) in Python, or
// torch::jit::Module::save), instrumented, trained on inputs of `shape`.
std::optional<Model> load_model(const std::string& path, std::vector<std::int64_t> shape) {
  torch::jit::Module script;
  try {
    script = torch::jit::load(path);
    lt::jit::instrument(script);
  } catch (const std::exception& e) {
    const auto why = first_line(e);
    // torch.save writes a pickle of Python objects, which LibTorch cannot load.
    const bool pickled = why.find("constants.pkl") != std::string::npos;
    std::fprintf(stderr, "modtracker-demo: cannot use '%s' as a TorchScript model: %s%s\n", path.c_str(), why.c_str(),
                 pickled ? " (saved with torch.save? Save a TorchScript model with torch.jit.save(torch.jit.script(model), "
                           "path) or torch.jit.trace(model, example).save(path))"
                         : "");
    return std::nullopt;
  }
  script.train();
  return Model{lt::jit::module_of(script),
               [script](torch::Tensor x) mutable {
                 auto out = script.forward({std::move(x)});
                 if (out.isTuple()) out = out.toTupleRef().elements().at(0);
                 if (!out.isTensor()) throw std::runtime_error("its forward returns no tensor");
                 return out.toTensor();
               },
               std::move(shape)};
}

std::optional<std::vector<std::int64_t>> to_shape(std::string_view s) {
  std::vector<std::int64_t> shape;
  while (!s.empty()) {
    const auto comma = s.find(',');
    const std::string part(s.substr(0, comma));
    char* end = nullptr;
    const long v = std::strtol(part.c_str(), &end, 10);
    if (part.empty() || *end != '\0' || v < 1) return std::nullopt;
    shape.push_back(v);
    s = comma == std::string_view::npos ? std::string_view{} : s.substr(comma + 1);
  }
  if (shape.empty()) return std::nullopt;
  return shape;
}

std::optional<Model> make_model(std::string_view name) {
  if (name == "classifier") {
    models::Classifier m;
    return Model{m.ptr(), [m](torch::Tensor x) mutable { return m(std::move(x)); }, {64, 16}};
  }
  if (name == "convnet") {
    models::ConvNet m;
    return Model{m.ptr(), [m](torch::Tensor x) mutable { return m(std::move(x)); }, {32, 1, 16, 16}};
  }
  return std::nullopt;
}

int usage(std::FILE* to, int code) {
  std::fprintf(to,
               "usage: modtracker-demo [options]\n"
               "Trains an embedded model on synthetic data under modtracker, prints per-module\n"
               "statistics and writes a Chrome/Perfetto trace.\n\n"
               "  --model NAME    classifier (default) or convnet, or a TorchScript model file\n"
               "                  (a path ending in .pt, saved by torch.jit.script(m).save(path))\n"
               "  --input SHAPE   a TorchScript model's input shape, e.g. 64,16 (default 64,16);\n"
               "                  a 2-D output of C columns is trained as C classes, any other\n"
               "                  towards zero (mean square)\n"
               "  --steps N       training steps, N >= 1 (default 20)\n"
               "  --warmup N      steps run first and left out of the table and trace, N >= 0\n"
               "                  (default 1: LibTorch's first calls load and set up kernels)\n"
               "  --depth D       table rows down to depth D (fqn dots + 1), 0 = all (default 0)\n"
               "  --trace PATH    where to write the trace (default trace.json)\n"
               "  --sort COLUMN   flat table sorted by module, fw_calls, fw_incl, fw_excl, bw_calls,\n"
               "                  bw_incl, bw_excl, params, bytes, fw_flops, bw_flops, fw_peak,\n"
               "                  kept or bw_peak (default: tree order)\n"
               "  --tools on|off  count FLOPs and memory per module (default on)\n"
               "  --ranks N       train data-parallel on N local processes, 1 <= N <= 64 (Gloo over\n"
               "                  127.0.0.1, a store this process hosts); rank 0 prints the table\n"
               "                  across ranks and writes one trace with a process per rank (default 1)\n"
               "  --timeout MS    how long a rank waits for the others, MS >= 100 (default 30000)\n"
               "  --fault R:WHAT  rank R plays a fault, to see it reported: kill (killed at step\n"
               "                  2 of --steps), hang (stops at step 2), absent (never joins); --rank and\n"
               "                  --port are what --ranks passes to the processes it starts\n"
               "  --pid-check on|off  rank 0 sees a rank on its host end by its process id (default\n"
               "                  on); off: by its heartbeat alone, as if every rank ran on another host\n"
               "  --help          this text\n");
  return code;
}

std::optional<long> to_number(const char* s, long min) {
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (end == s || *end != '\0' || v < min) return std::nullopt;
  return v;
}

// The modules without children (a layer's cost, not its parents' sum).
std::vector<const modtracker::ModuleStats*> leaves(const modtracker::Statistics& stats) {
  const auto rows = stats.rows();  // tree order: a module's children right after it
  std::vector<const modtracker::ModuleStats*> out;
  for (std::size_t i = 0; i < rows.size(); ++i)
    if (i + 1 == rows.size() || !rows[i + 1]->fqn.starts_with(rows[i]->fqn + ".")) out.push_back(rows[i]);
  return out;
}

template <class Key>
void print_top(const char* what, std::vector<const modtracker::ModuleStats*> rows, Key key, std::uint64_t total,
               std::string (*format)(std::uint64_t)) {
  std::stable_sort(rows.begin(), rows.end(), [&](auto* a, auto* b) { return key(*a) > key(*b); });
  std::printf("  %-24s", what);
  for (std::size_t i = 0; i < rows.size() && i < 3 && key(*rows[i]) > 0; ++i)
    std::printf("%s%s %s (%.0f%%)", i ? ", " : "", rows[i]->fqn.c_str(), format(key(*rows[i])).c_str(),
                total ? 100.0 * static_cast<double>(key(*rows[i])) / static_cast<double>(total) : 0.0);
  std::printf("\n");
}

void print_consumers(const modtracker::Statistics& stats, const lt::FlopCounter& flops, const lt::MemoryTracker& memory) {
  using modtracker::Phase;
  const auto layers = leaves(stats);
  const auto total = flops.total(Phase::forward) + flops.total(Phase::backward);
  std::printf("biggest consumers (of all the steps):\n");
  // Each FLOP has one owner (backward work by the node's module), so the
  // shares of all owners add up to 100 %.
  std::map<std::string, std::uint64_t> own;
  for (const auto phase : {Phase::forward, Phase::backward})
    for (const auto& [fqn, ops] : flops.exclusive_counts(phase))
      for (const auto& [op, n] : ops) own[fqn == "Global" ? "(outside modules)" : fqn] += n;
  std::vector<std::pair<std::string, std::uint64_t>> owners(own.begin(), own.end());
  std::stable_sort(owners.begin(), owners.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::printf("  %-24s", "FLOPs (fw + bw, own):");
  for (std::size_t i = 0; i < owners.size() && i < 3 && owners[i].second > 0; ++i)
    std::printf("%s%s %s (%.0f%%)", i ? ", " : "", owners[i].first.c_str(), modtracker::format_count(owners[i].second).c_str(),
                total ? 100.0 * static_cast<double>(owners[i].second) / static_cast<double>(total) : 0.0);
  std::printf("\n");
  std::uint64_t kept = 0;
  for (const auto* r : layers) kept += r->fw_kept_bytes.value_or(0);
  print_top("kept for backward:", layers, [](const auto& r) { return r.fw_kept_bytes.value_or(0); }, kept,
            modtracker::format_bytes);
  const auto peak = memory.peak();
  std::printf("  %-24s%s in %s (%s):", "peak memory:", modtracker::format_bytes(peak.bytes).c_str(),
              peak.fqn.empty() ? "no module" : peak.fqn.c_str(), peak.phase == Phase::forward ? "forward" : "backward");
  for (std::size_t c = 0; c < lt::memory_categories; ++c)
    if (peak.by_category[c])
      std::printf(" %s %s", std::string(lt::category_name(static_cast<lt::MemoryCategory>(c))).c_str(),
                  modtracker::format_bytes(peak.by_category[c]).c_str());
  const auto uncounted = flops.uncounted_operators();
  std::printf("\n  FLOPs count the matmul and convolution family; %zu other operators ran and count zero%s\n",
              uncounted.size(), uncounted.empty() ? "" : (" (" + uncounted.front() + ", ...)").c_str());
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_name = "classifier", trace_path = "trace.json";
  std::vector<std::int64_t> input_shape{64, 16};
  long steps = 20, warmup = 1, depth = 0, ranks = 1, timeout_ms = 30000, rank = -1, port = 0;
  bool tools = true, pid_check = true;
  demo::Fault fault;
  modtracker::TableOptions table;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help") return usage(stdout, 0);
    if (i + 1 >= argc) return usage(stderr, 2);
    const char* value = argv[++i];
    if (arg == "--model") {
      model_name = value;
    } else if (arg == "--input" && to_shape(value)) {
      input_shape = *to_shape(value);
    } else if (arg == "--steps" && to_number(value, 1)) {
      steps = *to_number(value, 1);
    } else if (arg == "--warmup" && to_number(value, 0)) {
      warmup = *to_number(value, 0);
    } else if (arg == "--depth" && to_number(value, 0)) {
      depth = *to_number(value, 0);
    } else if (arg == "--tools" && (value == std::string_view("on") || value == std::string_view("off"))) {
      tools = value == std::string_view("on");
    } else if (arg == "--pid-check" && (value == std::string_view("on") || value == std::string_view("off"))) {
      pid_check = value == std::string_view("on");
    } else if (arg == "--trace" && *value) {
      trace_path = value;
    } else if (arg == "--sort" && modtracker::column_from_name(value)) {
      table.sort_by = modtracker::column_from_name(value);
    } else if (arg == "--ranks" && to_number(value, 1) && *to_number(value, 1) <= 64) {
      ranks = *to_number(value, 1);
    } else if (arg == "--timeout" && to_number(value, 100)) {
      timeout_ms = *to_number(value, 100);
    } else if (arg == "--fault" && demo::to_fault(value)) {
      fault = *demo::to_fault(value);
    } else if (arg == "--rank" && to_number(value, 0)) {
      rank = *to_number(value, 0);
    } else if (arg == "--port" && to_number(value, 1) && *to_number(value, 1) < 65536) {
      port = *to_number(value, 1);
    } else {
      std::fprintf(stderr, "modtracker-demo: bad option or value: %s %s\n\n", argv[i - 1], value);
      return usage(stderr, 2);
    }
  }
  const std::chrono::milliseconds timeout(timeout_ms);
  if (fault.kind != demo::Fault::Kind::none && fault.rank >= ranks) {
    std::fprintf(stderr, "modtracker-demo: --fault names rank %d of a job of %ld\n\n", fault.rank, ranks);
    return usage(stderr, 2);
  }
  if (ranks > 1 && rank < 0) return demo::launch(std::vector<std::string>(argv, argv + argc), static_cast<int>(ranks), timeout);
  const bool distributed = rank >= 0;
  if (distributed && (rank >= ranks || port == 0)) return usage(stderr, 2);
  if (fault.hits(static_cast<int>(rank)) && fault.kind == demo::Fault::Kind::absent) {
    std::fprintf(stderr, "rank %ld: leaves before it joins (--fault %ld:absent)\n", rank, rank);
    return 0;
  }
  const bool root = rank <= 0;  // the process that prints and writes
  const bool scripted = is_model_path(model_name);
  auto model = scripted ? load_model(model_name, input_shape) : make_model(model_name);
  if (scripted && !model) return 1;
  if (!model) {
    std::fprintf(stderr, "modtracker-demo: unknown model '%s'\n\n", model_name.c_str());
    return usage(stderr, 2);
  }
  table.max_depth = static_cast<std::size_t>(depth);
  std::ofstream trace_file;
  if (root) {
    trace_file.open(trace_path);
    if (!trace_file) {
      std::fprintf(stderr, "modtracker-demo: cannot write %s\n", trace_path.c_str());
      return 1;
    }
  }
  std::optional<demo::Rank> job;
  if (distributed)
    job.emplace(static_cast<int>(rank), static_cast<int>(ranks), static_cast<int>(port), timeout, pid_check);
  std::string failure = job ? job->training_error() : "";  // why training stopped, on a rank
  const auto params = model->module->parameters();
  if (job && failure.empty()) job->broadcast(params);

  torch::manual_seed(distributed ? static_cast<std::uint64_t>(rank) : 0);  // each rank its own data
  torch::optim::Adam opt(params, 1e-2);
  lt::Tracker tracker;
  lt::ShapeRecorder shapes;
  modtracker::Statistics stats;
  modtracker::SpanLog spans;  // the ranks' trace is written on rank 0, merged
  std::optional<modtracker::ChromeTraceWriter> trace;
  if (!distributed) trace.emplace(trace_file, "modtracker-demo " + model_name);
  std::optional<lt::FlopCounter> flops;
  std::optional<lt::MemoryTracker> memory;
  std::optional<lt::BackwardTimer> backward_time;  // bw times by the modules' own autograd nodes
  if (tools) {
    backward_time.emplace(tracker);
    flops.emplace(tracker);
    memory.emplace(tracker);
    memory->track(*model->module);
    memory->track(opt);
    if (trace) lt::annotate(*trace, *flops);
  }
  const bool tty = isatty(fileno(stdout)) != 0;
  if (root)
    std::printf("modtracker-demo: %s, %ld steps on synthetic data (after %ld warm-up step%s)%s\n", model_name.c_str(),
                steps, warmup, warmup == 1 ? "" : "s",
                distributed ? (", data-parallel on " + std::to_string(ranks) + " ranks").c_str() : "");
  long step = 0;  // 0 in the warm-up
  auto read_transitions = [&] {
    for (const auto& t : tracker.drain_transitions()) {
      stats.consume(t);
      if (tools && t.phase == modtracker::Phase::backward) continue;  // backward slices come from the nodes
      if (trace) trace->consume(t);
      else spans.consume(t);
    }
  };
  try {
    if (!failure.empty()) throw std::runtime_error(failure);
    auto scope = tracker.track();
    auto train_step = [&] {
      const auto x = torch::randn(model->input_shape);
      opt.zero_grad();
      const auto out = model->forward(x);
      auto loss = out.dim() == 2 && out.size(1) > 1
                      ? torch::nn::functional::cross_entropy(out, torch::randint(0, out.size(1), {out.size(0)}))
                      : out.square().mean();
      loss.backward();
      if (job) {
        if (fault.hits(job->rank()) && step == 2 && fault.kind == demo::Fault::Kind::kill) std::raise(SIGKILL);
        if (fault.hits(job->rank()) && step == 2 && fault.kind == demo::Fault::Kind::hang)
          std::this_thread::sleep_for(10 * timeout);
        job->average_gradients(params);
      }
      opt.step();
      return loss;
    };
    for (long w = 1; w <= warmup; ++w) {
      train_step();
      for ([[maybe_unused]] const auto& t : tracker.drain_transitions()) {  // read and dropped
      }
    }
    if (tools) {
      flops->reset();
      memory->reset();
      backward_time->reset();
    }
    const auto t0 = std::chrono::steady_clock::now();
    for (step = 1; step <= steps; ++step) {
      const auto loss = train_step();
      read_transitions();
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      // On a terminal one line, rewritten each step; in a log or a pipe a
      // line every fifth step and at the last.
      if (root && (tty || step % 5 == 0 || step == steps)) {
        std::printf("%sstep %ld/%ld  loss %.4f  %.1f ms/step%s", tty ? "\r" : "", step, steps, loss.item<double>(),
                    ms / step, tty ? "" : "\n");
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    if (!distributed) {
      std::fprintf(stderr, "\nmodtracker-demo: the model failed on an input of shape %s: %s\n",
                   c10::str(c10::IntArrayRef(model->input_shape)).c_str(), first_line(e).c_str());
      return 1;
    }
    failure = first_line(e);
    std::fprintf(stderr, "rank %ld: training stopped at step %ld: %s\n", rank, step, failure.c_str());
    if (step > 0) read_transitions();  // what the steps until the failure showed
  }
  lt::annotate(stats, tracker, *model->module, &shapes);
  if (tools) {
    if (trace) lt::annotate(*trace, *memory);
    if (trace) {
      lt::annotate(*trace, *backward_time);  // backward slices by the nodes, per pass
    } else {
      const auto by_nodes = backward_time->spans();
      for (const auto& s : by_nodes.spans()) spans.add(s);
    }
    lt::annotate(stats, *flops);
    lt::annotate(stats, *memory);
    lt::annotate(stats, *backward_time);
  }
  if (distributed)
    return demo::report(*job, tracker, stats, spans, {tools ? &*flops : nullptr, tools ? &*memory : nullptr}, params,
                        failure, table, trace_path, tty);
  trace->finish();
  std::printf("%s\n%s\n", tty ? "\n" : "", stats.table(table).c_str());
  if (tools) print_consumers(stats, *flops, *memory);
  std::printf("trace: %s (%llu slices)\n", std::filesystem::absolute(trace_path).c_str(),
              static_cast<unsigned long long>(trace->slices()));
  std::printf("open it at https://ui.perfetto.dev (\"Open trace file\") or in chrome://tracing (\"Load\").\n");
  return 0;
}
