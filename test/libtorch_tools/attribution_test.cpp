// Backward attribution by provenance (docs/semantics.md, "Backward
// attribution"): backward work goes to the module whose forward made the
// autograd node, against hand counts (2 FLOPs per multiply-add; a
// convolution's backward costs one forward per gradient it computes).
#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "libtorch/helpers.hpp"

#include <doctest/doctest.h>

namespace nn = modtracker::libtorch::nn;
namespace lt = modtracker::libtorch;
using modtracker::Phase;

namespace {
using Counts = std::map<std::string, std::map<std::string, std::uint64_t>>;

std::map<std::string, std::uint64_t> summed(const Counts& c) {
  std::map<std::string, std::uint64_t> out;
  for (const auto& [fqn, ops] : c)
    for (const auto& [op, n] : ops) out[fqn] += n;
  return out;
}

// One tracked run of `step`, counted by provenance (`flops`) and by spans.
struct Counted {
  lt::Tracker tracker;
  lt::FlopCounter flops{tracker};
  lt::FlopCounter spans{tracker, lt::Attribution::spans};
  template <class Step>
  explicit Counted(Step&& step) {
    auto scope = tracker.track();
    step();
  }
};

// Every FLOP has one owner: the exclusive counts sum to the total.
void check_exclusive_sum(const lt::FlopCounter& f, Phase phase) {
  std::uint64_t sum = 0;
  for (const auto& [fqn, n] : summed(f.exclusive_counts(phase))) sum += n;
  CHECK(sum == f.total(phase));
}

// x -> conv1 -> relu -> conv2 (+ downsample(x)), after a stem on data.
struct BlockImpl : nn::Module {
  nn::Conv2d conv1{register_module("conv1", nn::Conv2d(nn::Conv2dOptions(4, 8, 3).padding(1)))};
  nn::Conv2d conv2{register_module("conv2", nn::Conv2d(nn::Conv2dOptions(8, 8, 3).padding(1)))};
  nn::Conv2d downsample{register_module("downsample", nn::Conv2d(nn::Conv2dOptions(4, 8, 1)))};
  torch::Tensor forward(torch::Tensor x) { return conv2->forward(torch::relu(conv1->forward(x))) + downsample(x); }
};
MODTRACKER_MODULE(Block);

struct NetImpl : nn::Module {
  nn::Conv2d stem{register_module("stem", nn::Conv2d(nn::Conv2dOptions(3, 4, 3).padding(1)))};
  Block block{register_module("block", Block())};
  torch::Tensor forward(torch::Tensor x) { return block(stem(x)); }
};
MODTRACKER_MODULE(Net);

// Forward FLOPs on 1x3x8x8 (64 positions): 2 * 64 * weights.
constexpr std::uint64_t stem_fw = 2 * 64 * (4 * 3 * 9), conv1_fw = 2 * 64 * (8 * 4 * 9), conv2_fw = 2 * 64 * (8 * 8 * 9),
                        down_fw = 2 * 64 * (8 * 4);
}  // namespace

TEST_CASE("attribution: a residual block's 1x1 downsample is charged its own gradients only") {
  torch::manual_seed(0);
  Net net;
  const Counted run([&] {
    net(torch::randn({1, 3, 8, 8})).sum().backward();
  });
  const auto& flops = run.flops;
  const auto& spans = run.spans;
  // The stem's input is data: its weight's gradient only; the others both.
  const auto bw = summed(flops.counts(Phase::backward));
  CHECK(bw.at("Net.block.downsample") == 2 * down_fw);
  CHECK(bw.at("Net.block.conv1") == 2 * conv1_fw);
  CHECK(bw.at("Net.block.conv2") == 2 * conv2_fw);
  CHECK(bw.at("Net.stem") == stem_fw);
  CHECK(bw.at("Net.block") == 2 * (conv1_fw + conv2_fw + down_fw));
  CHECK(bw.at("Net") == stem_fw + 2 * (conv1_fw + conv2_fw + down_fw));
  CHECK(bw.at("Global") == bw.at("Net"));
  CHECK(flops.counts(Phase::backward)["Net.block.downsample"] ==
        std::map<std::string, std::uint64_t>{{"aten::convolution_backward", 2 * down_fw}});
  // Python's rule: the downsample's span is open through the main branch.
  const auto by_span = summed(spans.counts(Phase::backward));
  CHECK(by_span.at("Net.block.downsample") > 2 * down_fw);
  CHECK(by_span.at("Net.block") == bw.at("Net.block"));  // the block's inclusive count is the same either way
  CHECK(spans.total(Phase::backward) == flops.total(Phase::backward));
  // Exclusive: the convolutions own everything, and it sums to Global.
  const auto own = summed(flops.exclusive_counts(Phase::backward));
  CHECK(own == std::map<std::string, std::uint64_t>{{"Net.block.conv1", 2 * conv1_fw},
                                                    {"Net.block.conv2", 2 * conv2_fw},
                                                    {"Net.block.downsample", 2 * down_fw},
                                                    {"Net.stem", stem_fw}});
  check_exclusive_sum(flops, Phase::backward);
  check_exclusive_sum(flops, Phase::forward);
  CHECK(summed(flops.exclusive_counts(Phase::forward)).at("Net.block.downsample") == down_fw);
}

namespace {
// A convolution on data beside a Linear on a tensor that requires grad. The
// convolution's node is made last, so LibTorch's engine runs it first.
struct SiblingsImpl : nn::Module {
  nn::Linear fc{register_module("fc", nn::Linear(8, 16))};
  nn::Conv2d conv{register_module("conv", nn::Conv2d(nn::Conv2dOptions(3, 4, 3)))};
  torch::Tensor forward(torch::Tensor image, torch::Tensor v) {
    return torch::cat({fc(v).flatten(), conv(image).flatten()}).sum();
  }
};
MODTRACKER_MODULE(Siblings);
}  // namespace

TEST_CASE("attribution: a branch on data is not charged its sibling's backward") {
  torch::manual_seed(0);
  Siblings net;
  const Counted run([&] {
    net(torch::randn({1, 3, 8, 8}), torch::randn({4, 8}, torch::requires_grad())).backward();
  });
  const auto& flops = run.flops;
  const auto& spans = run.spans;
  constexpr std::uint64_t conv_weight = 2 * 36 * (4 * 3 * 9), fc_both = 2 * 2 * 4 * 8 * 16;
  const auto bw = summed(flops.counts(Phase::backward));
  CHECK(bw.at("Siblings.conv") == conv_weight);
  CHECK(bw.at("Siblings.fc") == fc_both);
  CHECK(bw.at("Siblings") == conv_weight + fc_both);
  CHECK(summed(spans.counts(Phase::backward)).at("Siblings.conv") == conv_weight + fc_both);  // to the end of the pass
  check_exclusive_sum(flops, Phase::backward);
}

TEST_CASE("attribution: a module called twice is charged both calls' gradients, once each") {
  torch::manual_seed(0);
  nn::Linear fc(8, 8);
  const Counted run([&] {
    fc(fc(torch::randn({4, 8}, torch::requires_grad()))).sum().backward();
  });
  const auto& flops = run.flops;
  const auto bw = summed(flops.counts(Phase::backward));
  CHECK(bw.at("Linear") == 2 * (2 * 2 * 4 * 8 * 8));
  CHECK(bw.at("Global") == bw.at("Linear"));
  check_exclusive_sum(flops, Phase::backward);
}

namespace {
// A head that uses another module's weight in its forward (weight tying).
struct TiedHeadImpl : nn::Module {
  torch::Tensor weight;
  explicit TiedHeadImpl(torch::Tensor w) : weight(std::move(w)) {}
  torch::Tensor forward(const torch::Tensor& h) { return torch::mm(h, weight.t()); }
};
MODTRACKER_MODULE(TiedHead);

struct TiedImpl : nn::Module {
  nn::Linear embed{register_module("embed", nn::Linear(8, 8))};
  TiedHead tied{register_module("tied", TiedHead(embed->weight))};
  torch::Tensor forward(torch::Tensor x) { return tied(embed(x)); }
};
MODTRACKER_MODULE(Tied);
}  // namespace

TEST_CASE("attribution: a shared parameter's gradient goes to the module whose forward used it") {
  torch::manual_seed(0);
  Tied net;
  const Counted run([&] {
    net(torch::randn({4, 8})).sum().backward();
  });
  const auto& flops = run.flops;
  constexpr std::uint64_t product = 2 * 4 * 8 * 8;
  const auto own = summed(flops.exclusive_counts(Phase::backward));
  CHECK(own.at("Tied.tied") == 2 * product);  // h's gradient and embed's weight's, both made by its mm
  CHECK(own.at("Tied.embed") == product);     // its input is data: its weight's only
  check_exclusive_sum(flops, Phase::backward);
}

namespace {
// Recomputation in backward: the forward of `inner` runs again inside the
// backward node, with grad, and a nested backward differentiates it.
struct Recompute : torch::autograd::Function<Recompute> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, nn::Linear inner) {
    ctx->saved_data["inner"] = c10::IValue(static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(inner.ptr().get())));
    ctx->save_for_backward({x});
    torch::NoGradGuard no_grad;
    return inner(x);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    auto* impl = reinterpret_cast<torch::nn::LinearImpl*>(static_cast<std::intptr_t>(ctx->saved_data["inner"].toInt()));
    auto x = ctx->get_saved_variables()[0].detach().requires_grad_();
    torch::AutoGradMode grad_on(true);
    auto y = lt::call(*impl, x);
    return {torch::autograd::grad({y}, {x}, {grads[0]})[0], torch::Tensor()};
  }
};
struct CheckpointedImpl : nn::Module {
  nn::Linear inner{register_module("inner", nn::Linear(8, 8))};
  torch::Tensor forward(torch::Tensor x) { return Recompute::apply(x, inner); }
};
MODTRACKER_MODULE(Checkpointed);
}  // namespace

TEST_CASE("attribution: a forward recomputed in backward owns its work and its gradients") {
  torch::manual_seed(0);
  Checkpointed net;
  const Counted run([&] {
    net(torch::randn({4, 8}, torch::requires_grad())).sum().backward();
  });
  const auto& flops = run.flops;
  constexpr std::uint64_t product = 2 * 4 * 8 * 8;
  CHECK(flops.total(Phase::forward) == product);
  // In backward: the recomputed forward, then the input's gradient.
  const auto own = summed(flops.exclusive_counts(Phase::backward));
  CHECK(own.at("Checkpointed.inner") == 2 * product);
  CHECK(summed(flops.counts(Phase::backward)).at("Checkpointed") == 2 * product);
  check_exclusive_sum(flops, Phase::backward);
}

TEST_CASE("attribution: a gradient penalty's second backward goes to the module of the first") {
  torch::manual_seed(0);
  nn::Linear fc(8, 8);
  const Counted run([&] {
    auto x = torch::randn({4, 8}, torch::requires_grad());
    auto g = torch::autograd::grad({fc(x).sum()}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
    g.pow(2).sum().backward();
  });
  const auto& flops = run.flops;
  constexpr std::uint64_t product = 2 * 4 * 8 * 8;
  // grad(): x's gradient (one product); backward(): the weight's gradient of that product.
  CHECK(summed(flops.exclusive_counts(Phase::backward)) == std::map<std::string, std::uint64_t>{{"Linear", 2 * product}});
  CHECK(flops.total(Phase::backward) == 2 * product);
  check_exclusive_sum(flops, Phase::backward);
}

TEST_CASE("attribution: a retained graph run twice is charged twice to the same modules") {
  torch::manual_seed(0);
  Net net;
  const Counted run([&] {
    auto loss = net(torch::randn({1, 3, 8, 8})).sum();
    loss.backward({}, /*retain_graph=*/true);
    loss.backward();
  });
  const auto& flops = run.flops;
  CHECK(summed(flops.counts(Phase::backward)).at("Net.block.downsample") == 2 * 2 * down_fw);
  check_exclusive_sum(flops, Phase::backward);
}

TEST_CASE("attribution: memory allocated by a branch's nodes goes to that branch") {
  torch::manual_seed(0);
  Net net;
  lt::Tracker tracker;
  const auto backward_bytes = [&](lt::Attribution a) {
    lt::MemoryTracker memory(tracker, a);
    {
      auto scope = tracker.track();
      net(torch::randn({1, 3, 8, 8})).sum().backward();
    }
    return std::pair{memory.module("Net.block.downsample", Phase::backward).allocated,
                     memory.module("Net.block", Phase::backward).allocated};
  };
  const auto [own, block] = backward_bytes(lt::Attribution::provenance);
  const auto [by_span, block_by_span] = backward_bytes(lt::Attribution::spans);
  // Its own gradients: 8x4 weights, 8 biases, the 4x8x8 input (floats).
  CHECK(own >= 4 * (32 + 8 + 256));
  CHECK(own < by_span);
  CHECK(block > own);
  CHECK(block <= block_by_span);
}

TEST_CASE("attribution: backward time is the time of each module's own nodes, and sums to the time in nodes") {
  torch::manual_seed(0);
  Net net;
  lt::Tracker tracker;
  lt::BackwardTimer timer(tracker);
  modtracker::Statistics stats;
  {
    auto scope = tracker.track();
    for (int i = 0; i < 2; ++i) net(torch::randn({1, 3, 8, 8})).sum().backward();
  }
  stats.consume_all(tracker.drain_transitions());
  const auto times = timer.times();
  // Each convolution made one node per step; the block its relu's and its sum's.
  const std::map<std::string, std::uint64_t> nodes{
      {"Net.stem", 2}, {"Net.block.conv1", 2}, {"Net.block.conv2", 2}, {"Net.block.downsample", 2}, {"Net.block", 4}};
  for (const auto& [fqn, n] : nodes) {
    CAPTURE(fqn);
    REQUIRE(times.contains(fqn));
    CHECK(times.at(fqn).nodes == n);
    CHECK(times.at(fqn).exclusive.count() > 0);
  }
  CHECK(times.at("Net").nodes == 0);
  CHECK(times.at("Net").exclusive.count() == 0);
  const auto incl = [&](const char* fqn) { return times.at(fqn).inclusive; };
  CHECK(incl("Net.block.downsample") == times.at("Net.block.downsample").exclusive);
  CHECK(incl("Net.block") ==
        times.at("Net.block").exclusive + incl("Net.block.conv1") + incl("Net.block.conv2") + incl("Net.block.downsample"));
  CHECK(incl("Net") == incl("Net.stem") + incl("Net.block"));
  std::chrono::nanoseconds sum{};
  for (const auto& [fqn, t] : times) sum += t.exclusive;
  CHECK(sum == timer.total());
  CHECK(incl("Global") == timer.total());
  // In the table: the nodes' times replace the spans'.
  lt::annotate(stats, timer);
  CHECK(stats.find("Net.block.downsample")->bw_exclusive == times.at("Net.block.downsample").exclusive);
  CHECK(stats.find("Net")->bw_inclusive == incl("Net"));
  CHECK(stats.total(Phase::backward) == timer.total() - times.at("Global").exclusive);
}

TEST_CASE("attribution: backward spans by the nodes: a residual block's downsample spans its own node, not the branch") {
  torch::manual_seed(0);
  Net net;
  lt::Tracker tracker;
  lt::BackwardTimer timer(tracker);
  modtracker::SpanLog by_rule;  // Python's rule, from the transitions
  {
    auto scope = tracker.track();
    for (int i = 0; i < 2; ++i) net(torch::randn({1, 3, 8, 8})).sum().backward();
  }
  by_rule.consume_all(tracker.drain_transitions());
  const auto log = timer.spans();
  std::map<std::string, std::vector<modtracker::Span>> spans;
  for (const auto& s : log.spans()) spans[std::string(s.fqn)].push_back(s);
  // One span per module that made nodes, per pass: Net (its descendants'), the block, its three convolutions and the stem.
  for (const auto* fqn : {"Net", "Net.stem", "Net.block", "Net.block.conv1", "Net.block.conv2", "Net.block.downsample"}) {
    CAPTURE(fqn);
    REQUIRE(spans[fqn].size() == 2);
    CHECK(spans[fqn][0].call == 0);
    CHECK(spans[fqn][1].call == 1);
    CHECK(spans[fqn][0].phase == Phase::backward);
    CHECK(spans[fqn][1].start >= spans[fqn][0].end);  // the second pass after the first
  }
  const auto times = timer.times();
  for (int pass = 0; pass < 2; ++pass) {
    CAPTURE(pass);
    const auto& down = spans["Net.block.downsample"][pass];
    const auto& conv1 = spans["Net.block.conv1"][pass];
    const auto& conv2 = spans["Net.block.conv2"][pass];
    const auto& block = spans["Net.block"][pass];
    const auto& net_span = spans["Net"][pass];
    // The downsample's node (made last in forward) runs first, alone: its span ends before the main branch's nodes start.
    CHECK(down.end <= conv2.start);
    CHECK(conv2.end <= conv1.start);
    // Nesting: each module's span holds its children's.
    for (const auto* child : {&down, &conv1, &conv2}) {
      CHECK(block.start <= child->start);
      CHECK(child->end <= block.end);
      CHECK(child->nested);
      CHECK(child->depth == 2);
    }
    CHECK(block.depth == 1);
    CHECK(net_span.depth == 0);
    CHECK(net_span.start <= spans["Net.stem"][pass].start);
    CHECK(block.end <= net_span.end);
    // A leaf's exclusive time is its span's: one node each.
    CHECK(down.exclusive() == down.inclusive());
    CHECK(net_span.exclusive().count() == 0);  // Net's forward made no node of its own
  }
  // Summed over the passes, each span's exclusive time is the timer's.
  for (const auto& [fqn, list] : spans) {
    std::chrono::nanoseconds own{};
    for (const auto& s : list) own += s.exclusive();
    CHECK(own == times.at(fqn).exclusive);
  }
  // By Python's rule the downsample's span lasts until its input's gradient is done: through conv1's backward.
  std::vector<modtracker::Span> rule_down, rule_conv1;
  for (const auto& s : by_rule.spans())
    if (s.phase == Phase::backward && s.fqn == "Net.block.downsample") rule_down.push_back(s);
    else if (s.phase == Phase::backward && s.fqn == "Net.block.conv1") rule_conv1.push_back(s);
  REQUIRE(rule_down.size() == 2);
  REQUIRE(rule_conv1.size() == 2);
  CHECK(rule_down[0].end >= rule_conv1[0].end);
  CHECK(spans["Net.block.downsample"][0].inclusive() < rule_down[0].inclusive());
  // In a trace: a backward slice per span, at its time.
  std::ostringstream out;
  {
    modtracker::ChromeTraceWriter trace(out);
    lt::annotate(trace, timer);
  }
  std::size_t backward_slices = 0;
  const auto doc = nlohmann::json::parse(out.str());
  for (const auto& e : doc.at("traceEvents"))
    if (e.value("cat", std::string()) == "backward" && e.at("ph") != "e") ++backward_slices;  // an async slice: "b" and "e"
  CHECK(backward_slices == log.size());
  timer.reset();
  CHECK(timer.spans().size() == 0);
}
