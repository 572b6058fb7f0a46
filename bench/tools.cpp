// The tools' costs: the memory tracker per allocation and per training step,
// the FLOP counter per operator against a bare RecordFunction callback with
// the same settings, and LibTorch's own profiler with FLOPs and memory on.
// Every variant runs in every round, so a drifting machine hurts all alike.
#include <torch/torch.h>
#include <c10/core/CPUAllocator.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <functional>
#include <sstream>
#include <optional>
#include <vector>

#include <modtracker/torch.hpp>

#include "bench.hpp"
#include "models.hpp"

namespace bench {
namespace lt = modtracker::libtorch;

namespace {

// The best of `runs` rounds of each variant, a round running every variant once.
std::vector<double> rounds(int runs, const std::vector<std::function<double()>>& variants) {
  std::vector<double> best(variants.size(), 1e300);
  for (int r = 0; r < runs; ++r)
    for (std::size_t v = 0; v < variants.size(); ++v) best[v] = std::min(best[v], variants[v]());
  return best;
}

std::unique_ptr<at::ObserverContext> bare_callback(const at::RecordFunction& fn) {
  static thread_local const char* last = nullptr;
  last = fn.name();  // as little as a callback can do: read the name
  return nullptr;
}

}  // namespace

ToolCosts tool_costs(const Options& options) {
  ToolCosts out;
  lt::Tracker tracker;
  torch::NoGradGuard no_grad;
  lt::nn::Identity probe;  // a tracked call first in each scope: the scope is not one that tracks nothing
  const auto nothing = torch::zeros({1});

  // Allocation and free of one 256-byte block, through the CPU allocator.
  constexpr int blocks = 20000;
  auto churn = [&] {
    return best_us(1, [&] {
             auto* allocator = c10::GetCPUAllocator();
             for (int i = 0; i < blocks; ++i) (void)allocator->allocate(256);
           }) * 1e3 / blocks;
  };
  {
    auto scope = tracker.track();
    probe(nothing);
    std::optional<lt::MemoryTracker> memory;
    const auto best = rounds(5 * options.runs, {[&] { return churn(); },  // short rounds: more of them
                                            [&] {
                                              memory.emplace(tracker);
                                              const double ns = churn();
                                              memory.reset();
                                              return ns;
                                            }});
    out.alloc_ns = best[0];
    out.alloc_tracked_ns = best[1];
  }

  // Operators: `ops` small matrix products (counted) and additions (not).
  constexpr int ops = 2000;
  const auto a = torch::randn({4, 4}), b = torch::randn({4, 4});
  auto op_loop = [&] {
    return best_us(1, [&] {
             for (int i = 0; i < ops / 2; ++i) {
               (void)torch::mm(a, b);
               (void)torch::add(a, b);
             }
           }) * 1e3 / ops;
  };
  namespace prof = torch::autograd::profiler;
  {
    auto scope = tracker.track();
    probe(nothing);
    const auto best = rounds(
        options.runs,
        {[&] { return op_loop(); },
         [&] {
           const auto handle = at::addGlobalCallback(
               at::RecordFunctionCallback(&bare_callback).needsInputs(true).scopes({at::RecordScope::FUNCTION}));
           const double ns = op_loop();
           at::removeCallback(handle);
           return ns;
         },
         [&] {
           lt::FlopCounter counter(tracker);
           return op_loop();
         },
         [&] {
           prof::enableProfilerLegacy(prof::ProfilerConfig(prof::ProfilerState::CPU, /*report_input_shapes=*/true,
                                                           /*profile_memory=*/true, /*with_stack=*/false,
                                                           /*with_flops=*/true));
           const double ns = op_loop();
           (void)prof::disableProfilerLegacy();
           return ns;
         },
         [&] {
           lt::OperatorRecorder recorder(tracker);
           return op_loop();
         }});
    out.op_recorder_ns = best[4];
    out.op_ns = best[0];
    out.op_bare_callback_ns = best[1];
    out.op_flop_counter_ns = best[2];
    out.op_profiler_ns = best[3];
  }
  {
    // The watch of a scope that has seen no tracked call yet, against a bare
    // callback on the same scopes without inputs (its floor).
    lt::Tracker idle;
    const auto best = rounds(options.runs, {[&] { return op_loop(); },
                                            [&] {
                                              const auto handle = at::addGlobalCallback(
                                                  at::RecordFunctionCallback(&bare_callback).scopes(
                                                      {at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
                                              const double ns = op_loop();
                                              at::removeCallback(handle);
                                              return ns;
                                            },
                                            [&] {
                                              auto scope = idle.track();
                                              const double ns = op_loop();
                                              probe(nothing);  // ends the watch: no diagnostic
                                              return ns;
                                            }});
    out.op_watch_base_ns = best[0];
    out.op_bare_no_inputs_ns = best[1];
    out.op_watch_ns = best[2];
  }

  // A training step of the demo's model: tracked alone, with each tool, with both.
  torch::manual_seed(0);
  models::Classifier model;
  torch::optim::Adam adam(model->parameters(), 1e-2);
  const auto x = torch::randn({64, 16});
  const auto y = torch::randint(0, 4, {64});
  auto step = [&] {
    torch::AutoGradMode grad(true);
    adam.zero_grad();
    torch::nn::functional::cross_entropy(model(x), y).backward();
    adam.step();
  };
  auto steps = [&] {
    constexpr int n = 5;
    return best_us(1, [&] {
             auto scope = tracker.track();
             for (int i = 0; i < n; ++i) step();
             for ([[maybe_unused]] const auto& t : tracker.drain_transitions()) {
             }
           }) / n;
  };
  for (int i = 0; i < 3; ++i) step();  // warm-up: kernels set up, optimizer state made
  const auto best = rounds(options.runs, {[&] { return steps(); },
                                          [&] {
                                            lt::MemoryTracker memory(tracker);
                                            memory.track(*model.ptr());
                                            memory.track(adam);
                                            return steps();
                                          },
                                          [&] {
                                            lt::FlopCounter counter(tracker);
                                            return steps();
                                          },
                                          [&] {
                                            lt::MemoryTracker memory(tracker);
                                            lt::FlopCounter counter(tracker);
                                            return steps();
                                          },
                                          [&] {
                                            const auto handle = at::addGlobalCallback(
                                                at::RecordFunctionCallback(&bare_callback).needsInputs(true).scopes(
                                                    {at::RecordScope::FUNCTION}));
                                            const double us = steps();
                                            at::removeCallback(handle);
                                            return us;
                                          },
                                          [&] {
                                            lt::FlopCounter counter(tracker, lt::Attribution::spans);
                                            return steps();
                                          },
                                          [&] {  // every tool, as the demo runs them
                                            lt::MemoryTracker memory(tracker);
                                            lt::FlopCounter counter(tracker);
                                            lt::BackwardTimer timer(tracker);
                                            return steps();
                                          },
                                          [&] {
                                            const auto handle = at::addGlobalCallback(
                                                at::RecordFunctionCallback(&bare_callback).scopes(
                                                    {at::RecordScope::BACKWARD_FUNCTION}));
                                            const double us = steps();
                                            at::removeCallback(handle);
                                            return us;
                                          },
                                          [&] {
                                            lt::OperatorRecorder recorder(tracker);
                                            return steps();
                                          }});
  out.step_operators_us = best[8];
  out.step_us = best[0];
  out.step_memory_us = best[1];
  out.step_flops_us = best[2];
  out.step_both_us = best[3];
  out.step_bare_callback_us = best[4];
  out.step_flops_spans_us = best[5];
  out.step_all_us = best[6];
  out.step_bare_node_callback_us = best[7];
  return out;
}

ProfilerScopeCosts profiler_scope_costs(const Options& options) {
  lt::Tracker tracker;
  torch::NoGradGuard no_grad;
  lt::nn::Sequential model;
  for (int i = 0; i < 100; ++i) model->push_back(lt::nn::Linear(8, 8));
  const auto x = torch::randn({4, 8});
  auto forward_us = [&](int n) {
    return best_us(1, [&] {
             auto scope = tracker.track();
             for (int i = 0; i < n; ++i) (void)model->forward(x);
             for ([[maybe_unused]] const auto& t : tracker.drain_transitions()) {
             }
           }) / n;
  };
  forward_us(20);  // warm-up
  std::ostringstream sink;
  const auto best = rounds(options.runs, {[&] { return forward_us(50); },
                                          [&] {
                                            lt::ProfilerScopes scopes(tracker);
                                            return forward_us(50);
                                          },
                                          [&] {
                                            sink.str("");
                                            torch::autograd::profiler::RecordProfile profile(sink);
                                            return forward_us(50);
                                          },
                                          [&] {
                                            sink.str("");
                                            lt::ProfilerScopes scopes(tracker);
                                            torch::autograd::profiler::RecordProfile profile(sink);
                                            return forward_us(50);
                                          }});
  return {best[0], best[1], best[2], best[3]};
}

}  // namespace bench
