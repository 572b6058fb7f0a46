// FlopCounter against hand counts: 2 FLOPs per multiply-add, forward and each
// gradient backward computes, credited to every module running and "Global".
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "libtorch/helpers.hpp"
#include <modtracker/libtorch/jit.hpp>

#include <doctest/doctest.h>

namespace nn = modtracker::libtorch::nn;
namespace lt = modtracker::libtorch;
using modtracker::Phase;
using Counts = std::map<std::string, std::map<std::string, std::uint64_t>>;

namespace {
// FLOPs of one forward (and, with `backward`, its backward) of `module` on x.
struct Flops {
  std::uint64_t forward = 0, backward = 0;
  Counts fw, bw;
};
template <class Call>
Flops count(Call&& call, bool backward = true) {
  lt::Tracker tracker;
  lt::FlopCounter counter(tracker);
  {
    auto scope = tracker.track();
    auto y = call();
    if (backward) y.sum().backward();
  }
  return {counter.total(Phase::forward), counter.total(Phase::backward), counter.counts(Phase::forward),
          counter.counts(Phase::backward)};
}
}  // namespace

TEST_CASE("FLOPs: Linear on 2-D and 3-D input, forward and backward, with and without input grad") {
  torch::manual_seed(0);
  nn::Linear fc(8, 16);
  // [4, 8] x [8, 16]: 2 * 4 * 8 * 16 per matrix product; backward: one for the weight, one for the input.
  auto f = count([&] { return fc(torch::randn({4, 8}, torch::requires_grad())); });
  CHECK(f.forward == 1024);
  CHECK(f.backward == 2048);
  CHECK(f.fw == Counts{{"Global", {{"aten::addmm", 1024}}}, {"Linear", {{"aten::addmm", 1024}}}});
  CHECK(f.bw == Counts{{"Global", {{"aten::mm", 2048}}}, {"Linear", {{"aten::mm", 2048}}}});
  f = count([&] { return fc(torch::randn({4, 8})); });  // no input grad: the weight's product only
  CHECK(f.forward == 1024);
  CHECK(f.backward == 1024);
  // [2, 3, 8]: folded to [6, 8] x [8, 16].
  f = count([&] { return fc(torch::randn({2, 3, 8}, torch::requires_grad())); });
  CHECK(f.forward == 2 * 6 * 8 * 16);
  CHECK(f.backward == 2 * 2 * 6 * 8 * 16);
  f = count([&] { return fc(torch::randn({2, 3, 8})); }, /*backward=*/false);
  CHECK(f.backward == 0);
}

TEST_CASE("FLOPs: convolutions with groups, stride, padding, dilation and transposed, and their backward") {
  torch::manual_seed(0);
  nn::Conv1d c1(nn::Conv1dOptions(3, 4, 3));
  // Output length 8: 2 * batch 2 * 8 positions * (4 * 3 * 3) weights.
  auto f = count([&] { return c1(torch::randn({2, 3, 10}, torch::requires_grad())); });
  CHECK(f.forward == 2 * 2 * 8 * 36);
  CHECK(f.backward == 2 * f.forward);  // the input's and the weight's gradients
  CHECK(f.fw.at("Conv1d") == std::map<std::string, std::uint64_t>{{"aten::convolution", 2 * 2 * 8 * 36}});
  CHECK(f.bw.at("Conv1d") == std::map<std::string, std::uint64_t>{{"aten::convolution_backward", 2 * 2 * 2 * 8 * 36}});
  f = count([&] { return c1(torch::randn({2, 3, 10})); });
  CHECK(f.backward == f.forward);  // the weight's gradient only
  // Groups 2, stride 2, padding 1 on 8 x 8: 4 x 4 positions, weight [6, 2, 3, 3].
  nn::Conv2d c2(nn::Conv2dOptions(4, 6, 3).stride(2).padding(1).groups(2));
  f = count([&] { return c2(torch::randn({2, 4, 8, 8}, torch::requires_grad())); });
  CHECK(f.forward == 2 * 2 * 16 * (6 * 2 * 9));
  CHECK(f.backward == 2 * f.forward);
  // Dilation 2 on 9 x 9 with a 3 x 3 kernel: 5 x 5 positions.
  nn::Conv2d dilated(nn::Conv2dOptions(1, 2, 3).dilation(2).bias(false));
  f = count([&] { return dilated(torch::randn({1, 1, 9, 9})); });
  CHECK(f.forward == 2 * 1 * 25 * (2 * 1 * 9));
  // Transposed: counted over the input's positions, weight [4, 2, 3, 3].
  nn::ConvTranspose2d up(nn::ConvTranspose2dOptions(4, 2, 3).stride(2));
  f = count([&] { return up(torch::randn({1, 4, 5, 5}, torch::requires_grad())); });
  CHECK(f.forward == 2 * 1 * 25 * (4 * 2 * 9));
  CHECK(f.backward == 2 * f.forward);
}

TEST_CASE("FLOPs: _convolution, as torch.jit.trace records convolutions, counts as convolution does") {
  torch::manual_seed(0);
  nn::Conv2d conv(nn::Conv2dOptions(4, 6, 3).stride(2).padding(1).groups(2));
  const auto x = torch::randn({2, 4, 8, 8}, torch::requires_grad());
  const auto eager = count([&] { return conv(x); });
  // The traced form: aten::_convolution with the same arguments, inside the module's call.
  const auto traced = count([&] {
    lt::ForwardScope call(*conv, x);
    auto y = at::_convolution(x, conv->weight, conv->bias, {2, 2}, {1, 1}, {1, 1}, false, {0, 0}, 2, false, false, true,
                              true);
    call.finish(y);
    return y;
  });
  CHECK(traced.forward == 2 * 2 * 16 * (6 * 2 * 9));
  CHECK(traced.forward == eager.forward);
  CHECK(traced.backward == eager.backward);
  CHECK(traced.fw.at("Conv2d") == std::map<std::string, std::uint64_t>{{"aten::_convolution", traced.forward}});
  // The eager convolution calls _convolution inside: counted once, as convolution.
  CHECK(eager.fw.at("Conv2d") == std::map<std::string, std::uint64_t>{{"aten::convolution", eager.forward}});
}

TEST_CASE("FLOPs: bmm, baddbmm and matmul through them") {
  const auto a = torch::randn({3, 4, 5}, torch::requires_grad()), b = torch::randn({3, 5, 6});
  auto f = count([&] { return torch::bmm(a, b); });
  CHECK(f.forward == 2 * 3 * 4 * 5 * 6);
  CHECK(f.backward == 2 * 3 * 4 * 5 * 6);  // a's gradient only: b requires none
  f = count([&] { return torch::baddbmm(torch::zeros({3, 4, 6}), a, b); }, false);
  CHECK(f.forward == 2 * 3 * 4 * 5 * 6);
  CHECK(f.fw.at("Global") == std::map<std::string, std::uint64_t>{{"aten::baddbmm", 720}});
  f = count([&] { return torch::matmul(a, b); }, false);
  CHECK(f.fw.at("Global") == std::map<std::string, std::uint64_t>{{"aten::bmm", 720}});
}

TEST_CASE("FLOPs: LibTorch's scaled dot-product attention counts through its two batched products") {
  // PyTorch's FlopCounterMode has formulas of its own for the fused
  // attention kernels; in LibTorch 1.13 on CPU the operator decomposes into
  // bmm (scores = q k^T, out = scores v), which are counted.
  const auto q = torch::randn({2, 3, 5}, torch::requires_grad()), k = torch::randn({2, 4, 5}), v = torch::randn({2, 4, 6});
  const auto f = count([&] { return std::get<0>(at::_scaled_dot_product_attention(q, k, v)); });
  CHECK(f.forward == 2 * 2 * 3 * 5 * 4 + 2 * 2 * 3 * 4 * 6);
  // q's gradient: the scores' gradient (d_out v^T) and q's (d_scores k).
  CHECK(f.backward == 2 * 2 * 3 * 6 * 4 + 2 * 2 * 3 * 4 * 5);
}

TEST_CASE("FLOPs: credited to every module running and Global, backward to the modules in backward") {
  torch::manual_seed(0);
  nn::Sequential seq(nn::Linear(8, 4), nn::ReLU(), nn::Linear(4, 2));
  lt::Tracker tracker;
  lt::FlopCounter counter(tracker);
  {
    auto scope = tracker.track();
    seq->forward(torch::randn({5, 8}, torch::requires_grad())).sum().backward();
  }
  const std::uint64_t first = 2 * 5 * 8 * 4, second = 2 * 5 * 4 * 2;
  CHECK(counter.counts(Phase::forward) == Counts{{"Global", {{"aten::addmm", first + second}}},
                                                   {"Sequential", {{"aten::addmm", first + second}}},
                                                   {"Sequential.0", {{"aten::addmm", first}}},
                                                   {"Sequential.2", {{"aten::addmm", second}}}});
  CHECK(counter.counts(Phase::backward) == Counts{{"Global", {{"aten::mm", 2 * (first + second)}}},
                                                    {"Sequential", {{"aten::mm", 2 * (first + second)}}},
                                                    {"Sequential.0", {{"aten::mm", 2 * first}}},
                                                    {"Sequential.2", {{"aten::mm", 2 * second}}}});
  const auto uncounted = counter.uncounted_operators();
  CHECK(std::find(uncounted.begin(), uncounted.end(), "aten::relu") != uncounted.end());  // listed, counting zero
  CHECK(std::find(uncounted.begin(), uncounted.end(), "aten::addmm") == uncounted.end());
}

TEST_CASE("FLOPs: only while a scope is on, two counters alike, and a counter that outlives its tracker") {
  torch::manual_seed(0);
  nn::Linear fc(8, 8);
  const auto x = torch::randn({2, 8});
  auto tracker = std::make_unique<lt::Tracker>();
  lt::FlopCounter one(*tracker);  // attached before any scope: it waits for one
  fc(x);
  CHECK(one.total(Phase::forward) == 0);
  {
    auto scope = tracker->track();
    lt::FlopCounter two(*tracker);  // attached inside a scope: counts from now on
    fc(x);
    CHECK(one.total(Phase::forward) == 256);
    CHECK(two.total(Phase::forward) == 256);
  }
  fc(x);  // the scope ended
  CHECK(one.total(Phase::forward) == 256);
  tracker.reset();  // the counter outlives its tracker
  fc(x);
  CHECK(one.total(Phase::forward) == 256);
  CHECK(one.counts(Phase::forward).at("Linear").at("aten::addmm") == 256);
  one.reset();
  CHECK(one.total(Phase::forward) == 0);
  CHECK(one.counts(Phase::forward).empty());
}

TEST_CASE("FLOPs: an operator inside a counted one counts once, and arguments of unexpected types count zero, listed") {
  const auto a = torch::randn({4, 5}), b = torch::randn({5, 6});
  lt::Tracker tracker;
  lt::FlopCounter counter(tracker);
  {
    auto scope = tracker.track();
    {
      RECORD_FUNCTION("aten::mm", std::vector<c10::IValue>({a, b}));  // an outer range around the real one
      (void)torch::mm(a, b);
    }
    CHECK(counter.total(Phase::forward) == 2 * 4 * 5 * 6);
    {
      RECORD_FUNCTION("aten::addmm", std::vector<c10::IValue>({c10::IValue(1), c10::IValue("x")}));
    }
    (void)torch::mm(a, b);  // counting goes on after both
  }
  CHECK(counter.total(Phase::forward) == 2 * 2 * 4 * 5 * 6);
  const auto uncounted = counter.uncounted_operators();
  CHECK(std::find(uncounted.begin(), uncounted.end(), "aten::addmm (arguments not understood)") != uncounted.end());
}

TEST_CASE("FLOPs: a model traced in Python counts its convolutions, run by the TorchScript interpreter") {
  auto m = torch::jit::load(std::string(MODTRACKER_FIXTURES) + "/backbone_traced.pt");  // Conv2d(3, 8, 3, padding=1), ...
  lt::jit::instrument(m);
  lt::Tracker t;
  lt::FlopCounter f(t);
  {
    auto scope = t.track();
    for (int step = 0; step < 3; ++step) m.forward({torch::randn({2, 3, 8, 8})}).toTensor().sum().backward();
  }
  // 2 x 64 output positions x 8 channels x (3 x 9) weights a position, 2 FLOPs each, 3 steps; on data, the
  // backward computes the weight's gradient only: as much again.
  const std::uint64_t conv = 3 * 2 * (2 * 64) * 8 * (3 * 9);
  CHECK(f.total(modtracker::Phase::forward) == conv);
  CHECK(f.counts(modtracker::Phase::forward).at("Backbone.conv") ==
        std::map<std::string, std::uint64_t>{{"aten::_convolution", conv}});
  CHECK(f.total(modtracker::Phase::backward) == conv);
  for (const auto& op : f.uncounted_operators()) CHECK(op.find("not understood") == std::string::npos);
}
