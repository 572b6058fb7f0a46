// The modtracker command. `modtracker demo` trains a small model (or a
// TorchScript file) on synthetic data under a tracker, with a FLOP counter
// and a memory tracker on it, then prints the per-module table and the
// biggest consumers, and writes a Chrome/Perfetto trace; with --ranks N, N
// processes train it data-parallel and rank 0 prints the tables across ranks
// and writes one trace for all. `modtracker profile MODEL.pt` does the same
// for a TorchScript file, training or (--eval) evaluation steps. Arguments
// are parsed by CLI11 (Debian's libcli11-dev).
#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <limits>
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

#include <CLI/CLI.hpp>
#include <unistd.h>

#include <modtracker/torch.hpp>

#include "consumers.hpp"
#include "demo_ranks.hpp"
#include "models.hpp"

namespace lt = modtracker::libtorch;

namespace {

struct Model {
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(torch::Tensor)> forward;
  std::vector<std::int64_t> input_shape;
  std::function<void(bool)> set_training;
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
    std::fprintf(stderr, "modtracker: cannot use '%s' as a TorchScript model: %s%s\n", path.c_str(), why.c_str(),
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
               std::move(shape), [script](bool on) mutable { script.train(on); }};
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
    return Model{m.ptr(), [m](torch::Tensor x) mutable { return m(std::move(x)); }, {64, 16},
                 [m](bool on) mutable { m->train(on); }};
  }
  if (name == "convnet") {
    models::ConvNet m;
    return Model{m.ptr(), [m](torch::Tensor x) mutable { return m(std::move(x)); }, {32, 1, 16, 16},
                 [m](bool on) mutable { m->train(on); }};
  }
  return std::nullopt;
}



}  // namespace

// `modtracker demo ...` and `modtracker profile MODEL ...`; the demo's options
// without a subcommand (`modtracker --steps 2`) are the demo's.
int main(int argc, char** argv) {
  std::string model_name = "classifier", trace_path = "trace.json", report_path, tools_switch = "on", pid_switch = "on", sort, fault_text;
  std::string input_text;
  std::vector<std::int64_t> input_shape{64, 16};
  long steps = 20, warmup = 1, depth = 0, ranks = 1, timeout_ms = 30000, rank = -1, port = 0;
  bool eval = false, train = false, operators = false;
  demo::Fault fault;
  modtracker::TableOptions table;

  CLI::App app{"modtracker: which module of a LibTorch model runs, forward and backward, and what each costs",
               "modtracker"};
  app.require_subcommand(1);
  auto* demo_cmd = app.add_subcommand("demo", "Trains an embedded model (or a TorchScript file) on synthetic data "
                                              "under the tracker: a table per module, the biggest consumers, a trace");
  auto* profile = app.add_subcommand("profile", "Profiles a TorchScript model file (torch.jit.save): its cost per "
                                                "module, training (default) or evaluation steps on random input");
  const auto shape_check = [](const std::string& v) { return to_shape(v) ? std::string() : "not a shape like 2,3,224,224"; };
  // A whole number within [min, max], said in words.
  const auto whole = [](long min, long max) {
    return CLI::Validator(
        [min, max](std::string& v) -> std::string {
          char* end = nullptr;
          errno = 0;
          const long n = std::strtol(v.c_str(), &end, 10);
          if (v.empty() || *end != '\0' || errno || n < min || n > max)
            return "'" + v + "' is not a whole number from " + std::to_string(min) +
                   (max == std::numeric_limits<long>::max() ? " up" : " to " + std::to_string(max));
          return {};
        },
        "");
  };
  constexpr long any = std::numeric_limits<long>::max();
  std::vector<std::string> columns{"module", "fw_calls", "fw_incl", "fw_excl", "bw_calls", "bw_incl", "bw_excl", "params",
                                   "bytes", "fw_flops", "bw_flops", "fw_peak", "kept", "bw_peak"};
  for (auto* c : {demo_cmd, profile}) {
    c->add_option("--steps", steps, "steps measured (default 20)")->check(whole(1, any));
    c->add_option("--warmup", warmup, "steps run first and left out of the table and trace (default 1: LibTorch's "
                                      "first calls set up kernels)")->check(whole(0, any));
    c->add_option("--depth", depth, "table rows down to this depth (fqn dots + 1), 0 = all")->check(whole(0, any));
    c->add_option("--trace", trace_path, "where to write the Chrome/Perfetto trace (default trace.json)");
    c->add_option("--report", report_path, "also write the report: one HTML page (the module tree drawn by time, "
                                           "FLOPs, memory or parameters, and the table) that opens offline");
    c->add_option("--sort", sort, "a flat table sorted by this column (default: tree order)")->check(CLI::IsMember(columns));
    c->add_option("--tools", tools_switch, "count FLOPs and memory per module (default on)")->check(CLI::IsMember({"on", "off"}));
    c->add_flag("--operators", operators, "also show each operator in the trace, inside its module's slice, with its "
                                          "input shapes and FLOPs (off by default: it costs per operator)");
  }
  demo_cmd->add_option("--model", model_name, "classifier (default) or convnet, or a TorchScript model file");
  demo_cmd->add_option("--input", input_text, "a TorchScript model's input shape (default 64,16)")->check(shape_check);
  demo_cmd->add_option("--ranks", ranks, "train data-parallel on N local processes (Gloo over 127.0.0.1); rank 0 "
                                         "prints the tables across ranks and writes one trace")->check(whole(1, 64));
  demo_cmd->add_option("--timeout", timeout_ms, "how long a rank waits for the others, in ms (default 30000)")
      ->check(whole(100, 86'400'000));
  demo_cmd->add_option("--fault", fault_text, "R:kill, R:hang or R:absent: rank R plays that fault, to see it reported")
      ->check([](const std::string& v) { return demo::to_fault(v) ? std::string() : "not R:kill, R:hang or R:absent"; });
  demo_cmd->add_option("--pid-check", pid_switch, "rank 0 sees a rank on its host end by its process id (default on); "
                                                  "off: by its heartbeat alone")->check(CLI::IsMember({"on", "off"}));
  demo_cmd->add_option("--rank", rank, "(what --ranks passes to the processes it starts)")->group("");
  demo_cmd->add_option("--port", port, "(what --ranks passes to the processes it starts)")->check(whole(1, 65535))->group("");
  profile->add_option("model", model_name, "the TorchScript model file")->required();
  profile->add_option("--input", input_text, "its input shape, e.g. 2,3,224,224")->required()->check(shape_check);
  auto* train_flag = profile->add_flag("--train", train, "training steps: forward, backward, an optimizer step (default)");
  profile->add_flag("--eval", eval, "evaluation steps: eval mode, forward only, no grad")->excludes(train_flag);

  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || (args[0] != "demo" && args[0] != "profile" && args[0] != "--help" && args[0] != "-h"))
    args.insert(args.begin(), "demo");
  std::reverse(args.begin(), args.end());  // CLI11 reads a vector from its back
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    const auto* cmd = profile->parsed() ? "profile" : demo_cmd->parsed() ? "demo" : nullptr;
    std::fprintf(stderr, "modtracker%s%s: %s; see modtracker%s%s --help\n", cmd ? " " : "", cmd ? cmd : "", e.what(),
                 cmd ? " " : "", cmd ? cmd : "");
    return 2;
  }
  const char* command = profile->parsed() ? "profile" : "demo";
  if (!input_text.empty()) input_shape = *to_shape(input_text);
  if (!sort.empty()) table.sort_by = modtracker::column_from_name(sort);
  if (!fault_text.empty()) fault = *demo::to_fault(fault_text);
  const bool tools = tools_switch == "on";
  const auto refuse = [&](const std::string& why) {
    std::fprintf(stderr, "modtracker %s: %s; see modtracker %s --help\n", command, why.c_str(), command);
    return 2;
  };
  const std::chrono::milliseconds timeout(timeout_ms);
  if (fault.kind != demo::Fault::Kind::none && fault.rank >= ranks)
    return refuse("--fault names rank " + std::to_string(fault.rank) + " of a job of " + std::to_string(ranks));
  if (operators && ranks > 1) return refuse("--operators shows one process's operators: not with --ranks");
  if (ranks > 1 && rank < 0) return demo::launch(std::vector<std::string>(argv, argv + argc), static_cast<int>(ranks), timeout);
  const bool distributed = rank >= 0;
  if (distributed && (rank >= ranks || port == 0)) return refuse("--rank and --port are for the processes --ranks starts");
  if (fault.hits(static_cast<int>(rank)) && fault.kind == demo::Fault::Kind::absent) {
    std::fprintf(stderr, "rank %ld: leaves before it joins (--fault %ld:absent)\n", rank, rank);
    return 0;
  }
  const bool root = rank <= 0;  // the process that prints and writes
  const bool scripted = profile->parsed() || is_model_path(model_name);
  auto model = scripted ? load_model(model_name, input_shape) : make_model(model_name);
  if (scripted && !model) return 1;
  if (!model) return refuse("unknown model '" + model_name + "' (embedded: classifier, convnet; or a TorchScript file)");
  if (eval) model->set_training(false);
  table.max_depth = static_cast<std::size_t>(depth);
  std::ofstream trace_file, report_file;
  if (root) {
    trace_file.open(trace_path);
    if (!report_path.empty()) report_file.open(report_path);
    for (const auto [file, path] : {std::pair{&trace_file, &trace_path}, std::pair{&report_file, &report_path}})
      if (!path->empty() && !*file) {
        std::fprintf(stderr, "modtracker %s: cannot write %s\n", command, path->c_str());
        return 1;
      }
  }
  modtracker::ReportOptions page{.title = std::string("modtracker ") + command + ": " + model_name,
                                 .subtitle = std::to_string(steps) + (eval ? " evaluation" : " training") +
                                             " steps on synthetic input " + c10::str(c10::IntArrayRef(model->input_shape)) +
                                             ", after " + std::to_string(warmup) + " warm-up step" + (warmup == 1 ? "" : "s")};
  std::optional<demo::Rank> job;
  if (distributed)
    job.emplace(static_cast<int>(rank), static_cast<int>(ranks), static_cast<int>(port), timeout, pid_switch == "on");
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
  if (!distributed) trace.emplace(trace_file, std::string("modtracker ") + command + " " + model_name);
  std::optional<lt::FlopCounter> flops;
  std::optional<lt::MemoryTracker> memory;
  std::optional<lt::BackwardTimer> backward_time;  // bw times by the modules' own autograd nodes
  std::optional<lt::OperatorRecorder> operator_calls;  // --operators
  if (operators) operator_calls.emplace(tracker);
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
    std::printf("modtracker %s: %s, %ld %s steps on synthetic data (after %ld warm-up step%s)%s\n", command,
                model_name.c_str(), steps, eval ? "evaluation" : "training", warmup, warmup == 1 ? "" : "s",
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
      if (eval) {  // profile --eval: forward only
        torch::NoGradGuard no_grad;
        return model->forward(x).square().mean();
      }
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
    if (operator_calls) operator_calls->reset();
    const auto t0 = std::chrono::steady_clock::now();
    for (step = 1; step <= steps; ++step) {
      const auto loss = train_step();
      read_transitions();
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      // On a terminal one line, rewritten each step; in a log or a pipe a
      // line every fifth step and at the last.
      if (root && (tty || step % 5 == 0 || step == steps)) {
        std::printf("%sstep %ld/%ld  %s %.4f  %.1f ms/step%s", tty ? "\r" : "", step, steps,
                    eval ? "output mean square" : "loss", loss.item<double>(), ms / step, tty ? "" : "\n");
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    if (!distributed) {
      std::fprintf(stderr, "\nmodtracker %s: the model failed on an input of shape %s: %s\n", command,
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
  if (tools) page.notes = demo::consumers(stats, *flops, *memory);
  if (distributed) {
    if (ranks > 1) page.subtitle += ", data-parallel on " + std::to_string(ranks) + " ranks";
    for (auto& note : page.notes) note = "rank 0's " + note;  // its own tools' view
    return demo::report(*job, tracker, stats, spans, {tools ? &*flops : nullptr, tools ? &*memory : nullptr}, params,
                        failure, {table, trace_path, report_path, page}, tty);
  }
  if (operator_calls) lt::annotate(*trace, *operator_calls);
  trace->finish();
  std::printf("%s\n%s\n", tty ? "\n" : "", stats.table(table).c_str());
  if (tools) {
    std::printf("biggest consumers (of all the steps):\n");
    for (const auto& line : page.notes) std::printf("  %s\n", line.c_str());
  }
  if (!report_path.empty()) {
    modtracker::write_report(report_file, stats, page);
    report_file.close();
    if (!report_file) {
      std::fprintf(stderr, "modtracker %s: cannot write %s\n", command, report_path.c_str());
      return 1;
    }
    std::printf("report: %s (open it in a browser)\n", std::filesystem::absolute(report_path).c_str());
  }
  std::printf("trace: %s (%llu slices)\n", std::filesystem::absolute(trace_path).c_str(),
              static_cast<unsigned long long>(trace->slices()));
  std::printf("open it at https://ui.perfetto.dev (\"Open trace file\") or in chrome://tracing (\"Load\").\n");
  return 0;
}
