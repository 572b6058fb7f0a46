// Statistics and traces of real LibTorch models.
#include <sstream>

#include "libtorch/scenarios.hpp"
#include <modtracker/torch_stats.hpp>

#include <doctest/doctest.h>

using namespace scenarios;

TEST_CASE("LibTorch statistics: calls, parameters (trainable and frozen), output shapes, times that add up") {
  Seq3 seq;
  seq->net[0]->as<torch::nn::LinearImpl>()->bias.set_requires_grad(false);  // 8 frozen parameters
  lt::Tracker tracker;
  lt::ShapeRecorder shapes;
  modtracker::Statistics stats;
  {
    auto scope = tracker.track();
    for (int i = 0; i < 2; ++i) seq(torch::randn({3, 4}, torch::requires_grad())).sum().backward();
    stats.consume_all(tracker.drain_transitions());
  }
  lt::annotate(stats, tracker, *seq, &shapes);
  const auto* root = stats.find("Seq3");
  REQUIRE(root != nullptr);
  CHECK(root->fw_calls == 2);
  CHECK(root->bw_calls == 2);
  CHECK(root->params_trainable + root->params_frozen == (4 * 8 + 8) + (8 * 8 + 8) + (8 * 2 + 2));
  CHECK(root->params_frozen == 8);
  CHECK(root->bytes_frozen == 8 * sizeof(float));
  CHECK(stats.find("Seq3.net.2")->output_shape == "[3, 8]");
  CHECK(root->output_shape == "[3, 2]");
  std::chrono::nanoseconds excl{};
  for (const auto* r : stats.rows()) excl += r->bw_exclusive;
  CHECK(excl == root->bw_inclusive);
  const auto table = stats.table();
  CHECK(table.find("net") != std::string::npos);
  CHECK(table.find("frozen") != std::string::npos);
}

TEST_CASE("a shape recorder alone (the only observer) sees every child of a tracked Sequential") {
  lt::nn::Sequential seq(torch::nn::Linear(4, 8), torch::nn::ReLU(), torch::nn::Linear(8, 2));
  lt::ShapeRecorder shapes;
  (void)seq(torch::randn({3, 4}));
  CHECK(shapes.shape_of(*seq[0]) == "[3, 8]");
  CHECK(shapes.shape_of(*seq[1]) == "[3, 8]");
  CHECK(shapes.shape_of(*seq[2]) == "[3, 2]");
  CHECK(shapes.shape_of(*seq) == "[3, 2]");
}

TEST_CASE("a layer shared by two parents counts its parameters once") {
  struct TiedImpl : torch::nn::Module {
    torch::nn::Linear a{register_module("a", torch::nn::Linear(4, 4))};
    torch::nn::Linear b{register_module("b", a)};
    torch::Tensor forward(torch::Tensor x) { return b(a(x)); }
  };
  auto tied = std::make_shared<TiedImpl>();
  lt::Tracker tracker;
  modtracker::Statistics stats;
  lt::annotate(stats, tracker, *tied);
  CHECK(stats.find("Tied")->params_trainable == 20);
}

TEST_CASE("Chrome trace of a LibTorch step: forward and backward slices, nested, one per activation") {
  Seq3 seq;
  lt::Tracker tracker;
  std::ostringstream out;
  {
    modtracker::ChromeTraceWriter trace(out);
    auto scope = tracker.track();
    seq(torch::randn({3, 4}, torch::requires_grad())).sum().backward();
    trace.consume_all(tracker.drain_transitions());
  }
  const auto doc = json::parse(out.str());
  std::map<std::string, json> slices;
  int forward = 0, backward = 0;
  for (const auto& e : doc.at("traceEvents")) {
    if (e.at("ph") != "X") continue;
    (e.at("cat") == "forward" ? forward : backward) += 1;
    slices[e.at("cat").get<std::string>() + " " + e.at("name").get<std::string>()] = e;
  }
  CHECK(forward == 7);  // Seq3, net, 5 layers
  CHECK(backward == 7);
  for (const char* phase : {"forward", "backward"}) {
    const auto& outer = slices.at(std::string(phase) + " Seq3.net");
    const auto& inner = slices.at(std::string(phase) + " Seq3.net.3");
    CHECK(inner.at("ts").get<double>() >= outer.at("ts").get<double>());
    CHECK(inner.at("ts").get<double>() + inner.at("dur").get<double>() <=
          outer.at("ts").get<double>() + outer.at("dur").get<double>() + 1e-3);
    CHECK(inner.at("tid") == outer.at("tid"));
  }
}

TEST_CASE("operators in the trace: each inside its module's slice on its track, with shapes and FLOPs, only in scopes") {
  Seq3 seq;
  lt::Tracker tracker;
  lt::OperatorRecorder ops(tracker);
  (void)seq(torch::randn({3, 4}));  // no scope: nothing recorded
  CHECK(ops.calls().empty());
  std::ostringstream out;
  {
    modtracker::ChromeTraceWriter trace(out);
    {
      auto scope = tracker.track();
      seq(torch::randn({3, 4}, torch::requires_grad())).sum().backward();
    }
    trace.consume_all(tracker.drain_transitions());
    lt::annotate(trace, ops);
  }
  CHECK(ops.dropped() == 0);
  const auto doc = json::parse(out.str());
  std::map<std::string, json> modules;
  std::vector<json> operators;
  for (const auto& e : doc.at("traceEvents")) {
    if (e.at("ph") != "X") continue;
    const auto cat = e.at("cat").get<std::string>();
    if (cat.starts_with("operator")) operators.push_back(e);
    else modules[cat + " " + e.at("name").get<std::string>()] = e;
  }
  const auto inside = [](const json& inner, const json& outer) {
    return inner.at("tid") == outer.at("tid") && inner.at("ts").get<double>() >= outer.at("ts").get<double>() &&
           inner.at("ts").get<double>() + inner.at("dur").get<double>() <=
               outer.at("ts").get<double>() + outer.at("dur").get<double>() + 1e-3;
  };
  // The first Linear's forward product: [3, 4] x [4, 8] plus the bias, inside Seq3.net.0's slice.
  const auto& fc = modules.at("forward Seq3.net.0");
  int addmm = 0;
  for (const auto& op : operators) {
    if (op.at("name") != "aten::addmm" || !inside(op, fc)) continue;
    ++addmm;
    CHECK(op.at("cat") == "operator");
    CHECK(op.at("args").at("flops") == 2 * 3 * 4 * 8);
    CHECK(op.at("args").at("shapes").get<std::string>().find("[3, 4]") != std::string::npos);
  }
  CHECK(addmm == 1);
  // Backward: the weights' gradients (aten::mm) in the backward phase, on the modules' track.
  int backward_mm = 0;
  for (const auto& op : operators)
    if (op.at("cat") == "operator (backward)" && op.at("name") == "aten::mm") {
      ++backward_mm;
      CHECK(op.at("tid") == fc.at("tid"));
      CHECK(op.at("args").contains("flops"));
    }
  CHECK(backward_mm >= 3);  // each Linear's weight gradient (and two input gradients)
  const auto recorded = ops.calls().size();
  (void)seq(torch::randn({3, 4}));  // after the scope: nothing more
  CHECK(ops.calls().size() == recorded);
  ops.reset();
  CHECK(ops.calls().empty());

  // Past its capacity a recorder keeps the first calls and counts the rest.
  lt::OperatorRecorder few(tracker, 3);
  {
    auto scope = tracker.track();
    (void)seq(torch::randn({3, 4}));
  }
  CHECK(few.calls().size() == 3);
  CHECK(few.dropped() > 0);
  CHECK(few.dropped() + 3 == ops.calls().size());  // the other recorder kept every one of them
}

TEST_CASE("the table gains FLOPs and memory columns when those tools are attached, and the trace their data") {
  torch::manual_seed(0);
  lt::nn::Sequential seq(lt::nn::Linear(4, 8), lt::nn::ReLU(), lt::nn::Linear(8, 2));
  lt::Tracker tracker;
  lt::FlopCounter flops(tracker);
  lt::MemoryTracker memory(tracker);
  modtracker::Statistics stats;
  std::ostringstream out;
  {
    modtracker::ChromeTraceWriter trace(out);
    lt::annotate(trace, flops);
    {
      auto scope = tracker.track();
      seq(torch::randn({3, 4}, torch::requires_grad())).sum().backward();
      for (const auto& t : tracker.drain_transitions()) {
        stats.consume(t);
        trace.consume(t);
      }
    }
    lt::annotate(trace, memory);
  }
  const auto plain = stats.table();
  CHECK(plain.find("FLOPs") == std::string::npos);  // not annotated yet: no tools' columns
  CHECK(plain.find("kept") == std::string::npos);
  lt::annotate(stats, flops);
  lt::annotate(stats, memory);
  const auto* first = stats.find("Sequential.0");
  CHECK(first->fw_flops == 2 * 3 * 4 * 8);
  CHECK(first->bw_flops == 2 * 2 * 3 * 4 * 8);  // the input's gradient and the weight's
  CHECK(stats.find("Sequential.1")->fw_flops == 0);
  CHECK(first->fw_kept_bytes == 3 * 8 * 4);
  CHECK(stats.find("Sequential")->fw_flops == 2 * 3 * (4 * 8 + 8 * 2));
  const auto table = stats.table();
  for (const char* header : {"fw FLOPs", "bw FLOPs", "fw peak", "kept", "bw peak"})
    CHECK(table.find(header) != std::string::npos);
  CHECK(stats.table({.sort_by = modtracker::column_from_name("fw_flops")}).find("Sequential ") <
        stats.table({.sort_by = modtracker::column_from_name("fw_flops")}).find("Sequential.2"));

  const auto doc = json::parse(out.str());
  std::uint64_t counted = 0, samples = 0;
  for (const auto& e : doc.at("traceEvents")) {
    if (e.at("ph") == "C") {
      CHECK(e.at("name") == "memory");
      CHECK(e.at("args").at("live bytes").get<double>() > 0);
      ++samples;
    }
    if (e.at("ph") == "X" && e.at("name") == "Sequential.0")
      counted += e.at("args").at("flops").get<std::uint64_t>();
  }
  CHECK(counted == 3 * 2 * 3 * 4 * 8);  // its forward slice and its backward slice
  CHECK(samples == memory.timeline().size());
  CHECK(samples == 16);  // an enter and an exit of 4 modules in each phase
}

namespace {
struct ProfiledSlice {
  std::string name;
  double start, end;
};
// The complete events of a chrome trace that LibTorch's RecordProfile wrote.
std::vector<ProfiledSlice> profiled(const std::string& trace) {
  std::vector<ProfiledSlice> out;
  for (const auto& e : nlohmann::json::parse(trace))
    if (e.value("ph", "") == "X")
      out.push_back({e.at("name"), e.at("ts").get<double>(), e.at("ts").get<double>() + e.at("dur").get<double>()});
  return out;
}
}  // namespace

TEST_CASE("profiler scopes: LibTorch's own profiler shows each module call around its operators") {
  Seq3 seq;
  lt::Tracker tracker;
  std::ostringstream trace;
  {
    lt::ProfilerScopes scopes(tracker);
    auto scope = tracker.track();
    (void)seq(torch::randn({3, 4}));  // no profiler on: nothing to record, nothing left open
    {
      torch::autograd::profiler::RecordProfile profile(trace);
      seq(torch::randn({3, 4}, torch::requires_grad())).sum().backward();
    }
  }
  const auto slices = profiled(trace.str());
  const auto find = [&](const std::string& name) {
    std::vector<ProfiledSlice> out;
    for (const auto& s : slices)
      if (s.name == name) out.push_back(s);
    return out;
  };
  // One slice per call, forward and backward, around the operators of that module.
  for (const auto* fqn : {"Seq3", "Seq3.net", "Seq3.net.0", "Seq3.net.1", "Seq3.net.2", "Seq3.net.4"}) {
    CAPTURE(fqn);
    CHECK(find(fqn).size() == 1);
    CHECK(find(std::string(fqn) + " (backward)").size() == 1);
  }
  const auto fc = find("Seq3.net.0").at(0), root = find("Seq3").at(0);
  CHECK(root.start <= fc.start);
  CHECK(fc.end <= root.end);
  bool addmm_inside = false;
  for (const auto& s : find("aten::addmm")) addmm_inside |= fc.start <= s.start && s.end <= fc.end;
  CHECK(addmm_inside);
  const auto fc_bw = find("Seq3.net.0 (backward)").at(0);
  bool mm_inside = false;
  for (const auto& s : find("aten::mm")) mm_inside |= fc_bw.start <= s.start && s.end <= fc_bw.end;
  CHECK(mm_inside);
}
