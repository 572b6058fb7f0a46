// OperatorRecorder: one RecordFunction callback for every recorder (added
// with the first, removed with the last) times each operator call; the
// recorders' transition listeners tell which trace track each thread is.
#include <torch/torch.h>
#include <torch/csrc/autograd/graph_task.h>
#include <ATen/record_function.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "backend/spin_lock.hpp"
#include "libtorch_tools/callback_owners.hpp"
#include "libtorch_tools/flop_formulas.hpp"
#include "modtracker/libtorch_tools/operators.hpp"

namespace modtracker::libtorch {

using modtracker::detail::SpinLock;

struct OperatorRecorder::State {
  // A call as kept: its shapes unformatted (formatting is left to calls():
  // it would cost more than the operator).
  struct Kept {
    std::string name;
    Phase phase;
    std::uint32_t thread;
    std::chrono::nanoseconds start, end;
    std::vector<std::int64_t> shapes;
    std::optional<std::uint64_t> flops;
  };
  SpinLock lock;  // guards all below
  bool active = false;
  std::chrono::steady_clock::time_point zero;  // the tracker's clock's zero
  std::size_t capacity;
  std::vector<Kept> calls;
  std::uint64_t dropped = 0;
};

namespace {

using Recorders = detail::CallbackOwners<OperatorRecorder::State>;
Recorders& recorders() {
  static Recorders r;
  return r;
}
std::atomic<int> active_recorders{0};

// This thread's track: the transitions' thread index, learnt from the
// first transition a recorder sees on it.
constexpr std::uint32_t unknown = ~0u;
thread_local std::uint32_t track = unknown;
std::uint32_t track_of_this_thread() {
  if (track != unknown) return track;
  return 1000 + static_cast<std::uint32_t>(std::hash<std::thread::id>{}(std::this_thread::get_id()) % 1000);
}

struct Started final : at::ObserverContext {
  std::chrono::steady_clock::time_point start;
  Phase phase = Phase::forward;
  detail::OperatorDescription what;
};

std::unique_ptr<at::ObserverContext> start_operator(const at::RecordFunction& fn) {
  if (active_recorders.load(std::memory_order_relaxed) == 0) return nullptr;
  auto started = std::make_unique<Started>();
  started->phase = torch::autograd::get_current_graph_task_exec_info() ? Phase::backward : Phase::forward;
  started->what = detail::describe(fn);
  started->start = std::chrono::steady_clock::now();  // last: describing is not the operator's time
  return started;
}

void end_operator(const at::RecordFunction& fn, at::ObserverContext* context) {
  const auto end = std::chrono::steady_clock::now();
  if (context == nullptr) return;
  const auto& s = *static_cast<Started*>(context);
  const auto thread = track_of_this_thread();
  auto& r = recorders();
  std::lock_guard<SpinLock> lock(r.lock);
  for (auto* state : r.all) {
    std::lock_guard<SpinLock> inner(state->lock);
    if (!state->active) continue;
    if (state->calls.size() >= state->capacity) {
      ++state->dropped;
      continue;
    }
    state->calls.push_back(
        {fn.name(), s.phase, thread, s.start - state->zero, end - state->zero, s.what.shapes, s.what.flops});
  }
}

}  // namespace

OperatorRecorder::OperatorRecorder(Tracker& tracker, std::size_t capacity) : state_(std::make_shared<State>()) {
  state_->zero = std::chrono::steady_clock::now() - tracker.now();
  state_->capacity = capacity;
  recorders().add(state_.get(), [] {
    return at::RecordFunctionCallback(&start_operator, &end_operator).needsInputs(true).scopes({at::RecordScope::FUNCTION});
  });
  listening_ = tracker.add_listener(*this);
}

OperatorRecorder::~OperatorRecorder() {
  listening_ = Registration{};
  {
    std::lock_guard<SpinLock> lock(state_->lock);
    if (std::exchange(state_->active, false)) active_recorders.fetch_sub(1, std::memory_order_relaxed);
  }
  recorders().remove(state_.get());
}

void OperatorRecorder::on_transition(const Transition& t) { track = t.thread; }

void OperatorRecorder::on_scope(bool started) {
  std::lock_guard<SpinLock> lock(state_->lock);
  if (state_->active == started) return;
  state_->active = started;
  active_recorders.fetch_add(started ? 1 : -1, std::memory_order_relaxed);
}

std::vector<OperatorCall> OperatorRecorder::calls() const {
  std::vector<State::Kept> kept;
  {
    std::lock_guard<SpinLock> lock(state_->lock);
    kept = state_->calls;
  }
  std::vector<OperatorCall> out;
  out.reserve(kept.size());
  for (const auto& k : kept)
    out.push_back({k.name, k.phase, k.thread, k.start, k.end, detail::format_shapes(k.shapes), k.flops});
  return out;
}

std::uint64_t OperatorRecorder::dropped() const {
  std::lock_guard<SpinLock> lock(state_->lock);
  return state_->dropped;
}

void OperatorRecorder::reset() {
  std::lock_guard<SpinLock> lock(state_->lock);
  state_->calls.clear();
  state_->dropped = 0;
}

void annotate(ChromeTraceWriter& trace, const OperatorRecorder& operators) {
  for (const auto& c : operators.calls()) {
    std::vector<std::pair<std::string_view, std::uint64_t>> numbers;
    if (c.flops) numbers.emplace_back("flops", *c.flops);
    trace.slice(c.name, c.phase == Phase::forward ? "operator" : "operator (backward)", c.thread, c.start, c.end,
                {{"shapes", c.shapes}}, numbers);
  }
}

}  // namespace modtracker::libtorch
