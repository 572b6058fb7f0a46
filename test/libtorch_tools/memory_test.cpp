// MemoryTracker against bytes counted by hand: storage sizes of the tensors
// a module allocates and frees, what its forward keeps for backward, the
// gradients and optimizer state, on every thread, with the profiler on.
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "libtorch/helpers.hpp"

#include <doctest/doctest.h>

namespace nn = modtracker::libtorch::nn;
namespace lt = modtracker::libtorch;
using modtracker::Phase;
using Category = lt::MemoryCategory;

namespace {

// 1024 bytes of scratch freed before it returns, 256 bytes returned.
struct ScratchImpl : nn::Module {
  torch::Tensor forward(const torch::Tensor&) {
    auto scratch = torch::empty({256});
    return torch::empty({64});
  }
};
MODTRACKER_MODULE(Scratch);

// Its child's 1280 bytes (256 of them returned to it and dropped) and 128 of its own.
struct OuterImpl : nn::Module {
  Scratch inner{register_module("inner", Scratch())};
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = inner(x);
    return torch::empty({32});
  }
};
MODTRACKER_MODULE(Outer);

std::uint64_t category(const lt::MemoryTracker& m, Category c) {
  return m.live_by_category()[static_cast<std::size_t>(c)];
}

}  // namespace

TEST_CASE("Memory: a module allocating and freeing known tensors gives exact bytes, nested") {
  torch::NoGradGuard no_grad;
  Outer model;
  const auto x = torch::zeros({4});
  lt::Tracker tracker;
  lt::MemoryTracker memory(tracker);
  const auto before = memory.live();
  {
    auto scope = tracker.track();
    model(x);
  }
  const auto inner = memory.module("Outer.inner", Phase::forward);
  CHECK(inner.allocated == 1280);
  CHECK(inner.freed == 1024);
  CHECK(inner.kept == 256);
  CHECK(inner.peak == 1280);
  CHECK(inner.activations == 1);
  const auto outer = memory.module("Outer", Phase::forward);
  CHECK(outer.allocated == 1408);
  CHECK(outer.freed == 1280);  // the scratch, and the child's output it dropped
  CHECK(outer.kept == 128);
  CHECK(outer.peak == 1280);
  CHECK(memory.live() == before);  // the output was dropped too
  const auto peak = memory.peak();
  CHECK(peak.bytes == before + 1280);
  CHECK(peak.fqn == "Outer.inner");
  CHECK(peak.phase == Phase::forward);
  CHECK(peak.by_category[static_cast<std::size_t>(Category::activation)] == 1280);
  {  // a second activation: summed, the peak the larger of the two
    auto scope = tracker.track();
    model(x);
  }
  CHECK(memory.module("Outer.inner", Phase::forward).allocated == 2560);
  CHECK(memory.module("Outer.inner", Phase::forward).peak == 1280);
  CHECK(memory.module("Outer.inner", Phase::forward).activations == 2);
  CHECK(memory.modules().size() == 2);
  CHECK(memory.module("nothing", Phase::forward).activations == 0);
}

TEST_CASE("Memory: what a forward keeps for backward") {
  torch::manual_seed(0);
  // Softplus saves its input (Linear's output) for backward; its own output is returned.
  nn::Sequential seq(nn::Linear(8, 16), nn::Softplus());
  const auto x = torch::randn({4, 8});
  const std::uint64_t out = 4 * 16 * 4;
  lt::Tracker tracker;
  lt::MemoryTracker memory(tracker);
  {
    auto scope = tracker.track();
    auto y = seq->forward(x);
    CHECK(memory.module("Sequential", Phase::forward).kept == 2 * out);  // its output, and what autograd saved
    CHECK(memory.module("Sequential.0", Phase::forward).kept == out);
    CHECK(memory.module("Sequential.1", Phase::forward).kept == out);
    y.sum().backward();
  }
  memory.reset();
  {
    torch::NoGradGuard no_grad;  // nothing saved: only the output stays
    auto scope = tracker.track();
    auto y = seq->forward(x);
    CHECK(memory.module("Sequential", Phase::forward).kept == out);
    CHECK(memory.module("Sequential", Phase::forward).allocated == 2 * out);
    CHECK(memory.module("Sequential", Phase::forward).freed == out);
  }
}

TEST_CASE("Memory: gradients allocated in their module's backward, and recognised as gradients") {
  torch::manual_seed(0);
  nn::Sequential seq(nn::Linear(8, 4), nn::Linear(4, 2));
  lt::Tracker tracker;
  lt::MemoryTracker memory(tracker);
  memory.track(*seq.ptr());
  const std::uint64_t params = (8 * 4 + 4 + 4 * 2 + 2) * 4;
  CHECK(category(memory, Category::parameter) == params);
  CHECK(category(memory, Category::gradient) == 0);
  {
    auto scope = tracker.track();
    seq->forward(torch::randn({5, 8})).sum().backward();
  }
  // The first layer's backward: its weight's and bias's gradients (32 + 4 floats), nothing for
  // its input (which requires none); the gradient it gets was the second layer's to allocate.
  CHECK(memory.module("Sequential.0", Phase::backward).allocated == 144);
  CHECK(memory.module("Sequential", Phase::backward).allocated ==
        144 + memory.module("Sequential.1", Phase::backward).allocated);
  CHECK(category(memory, Category::gradient) == params);
  CHECK(category(memory, Category::parameter) == params);
  CHECK(category(memory, Category::temporary) == 0);
}

TEST_CASE("Memory: optimizer state recognised, and no growth over many steps") {
  torch::manual_seed(0);
  nn::Linear fc(8, 4);
  torch::optim::Adam adam(fc->parameters(), torch::optim::AdamOptions(1e-3));
  lt::Tracker tracker;
  lt::MemoryTracker memory(tracker);
  memory.track(*fc.ptr());
  memory.track(adam);
  const auto x = torch::randn({16, 8});
  const auto step = [&] {
    auto scope = tracker.track();
    adam.zero_grad();
    fc(x).pow(2).mean().backward();
    adam.step();
  };
  step();
  CHECK(category(memory, Category::optimizer_state) == 2 * 144);  // exp_avg and exp_avg_sq
  CHECK(category(memory, Category::gradient) == 144);
  const auto live = memory.live();
  for (int i = 0; i < 100; ++i) step();
  CHECK(memory.live() == live);
  CHECK(memory.module("Linear", Phase::forward).activations == 101);
  CHECK(memory.modules().size() == 1);
}

TEST_CASE("Memory: allocations on other threads, and with LibTorch's profiler on") {
  torch::NoGradGuard no_grad;
  Scratch model;
  lt::Tracker tracker;
  lt::MemoryTracker memory(tracker);
  const auto before = memory.live();
  torch::Tensor kept;
  std::thread([&] { kept = torch::empty({1000}); }).join();
  CHECK(memory.live() == before + 4000);
  namespace prof = torch::autograd::profiler;
  prof::enableProfilerLegacy(prof::ProfilerConfig(prof::ProfilerState::CPU, /*report_input_shapes=*/false,
                                                  /*profile_memory=*/true));
  {
    auto scope = tracker.track();
    model(kept);
  }
  const auto events = prof::disableProfilerLegacy();
  CHECK(!events.empty());
  CHECK(memory.module("Scratch", Phase::forward).allocated == 1280);
  CHECK(memory.module("Scratch", Phase::forward).kept == 256);
}

TEST_CASE("Memory: one at a time, a module without an owner, and outliving the tracker") {
  auto tracker = std::make_unique<lt::Tracker>();
  auto memory = std::make_unique<lt::MemoryTracker>(*tracker);
  CHECK_THROWS_AS(lt::MemoryTracker{*tracker}, std::logic_error);
  torch::nn::LinearImpl on_stack(2, 2);
  CHECK_THROWS_AS(memory->track(on_stack), std::invalid_argument);
  auto t = torch::empty({10});
  CHECK(memory->live() >= 40);
  tracker.reset();  // the memory tracker outlives its tracker: it still counts, and answers
  auto u = torch::empty({10});
  CHECK(memory->peak().bytes >= 80);
  memory.reset();  // tensors it counted are freed after it, through the allocator they came from
  t = torch::Tensor();
  u = torch::Tensor();
  lt::Tracker again;
  lt::MemoryTracker second(again);  // and a new one can be made
  CHECK(second.live() == 0);
}
