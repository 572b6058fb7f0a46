// BackwardTimer: the node callback times each node; provenance names its
// module; the backend's pass numbers group the nodes into spans per pass.
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "backend/spin_lock.hpp"
#include "libtorch/passes.hpp"
#include "libtorch_tools/provenance.hpp"
#include "modtracker/libtorch_tools/backward_time.hpp"

namespace modtracker::libtorch {

using modtracker::detail::SpinLock;

namespace {
// The tracker's index of this thread (Transition::thread), learnt from the
// transitions it made; threads that made none get indices from 1000 on.
[[gnu::tls_model("initial-exec")]] thread_local std::uint32_t lane = ~0u;
std::atomic<std::uint32_t> unnamed_lanes{1000};
std::uint32_t this_lane() {
  if (lane == ~0u) lane = unnamed_lanes.fetch_add(1, std::memory_order_relaxed);
  return lane;
}
}  // namespace

struct BackwardTimer::State final : detail::NodeListener {
  std::chrono::steady_clock::time_point zero;  // the tracker's clock's zero
  SpinLock lock;  // guards all below
  std::atomic<bool> active{false};  // written under the lock; read first without it
  detail::NodeWatch nodes;
  detail::Provenance provenance;
  std::unordered_map<const char*, std::uint32_t> ids{{nullptr, 0}};  // the tracker's interned fqn -> index
  std::vector<std::string> names{"Global"};
  std::vector<BackwardTime> times{1};
  // An activation's nodes (its own and its descendants') in one pass, on one thread.
  struct PassSpan {
    std::uint64_t pass;
    std::uint32_t module, depth, thread;
    std::chrono::steady_clock::time_point start, end;
    std::chrono::nanoseconds own{};
  };
  std::deque<PassSpan> spans;
  std::unordered_map<std::uint64_t, std::size_t> open;  // (pass << 24 | activation) -> dropped + index in spans
  std::size_t dropped = 0;  // spans dropped from the front (index shift)

  std::uint32_t index(std::string_view fqn) {
    const auto [it, fresh] = ids.try_emplace(fqn.data(), static_cast<std::uint32_t>(names.size()));
    if (fresh) {
      names.emplace_back(fqn);
      times.emplace_back();
    }
    return it->second;
  }
  void on_node(const detail::RunningNode& node, std::chrono::nanoseconds own, std::chrono::steady_clock::time_point start,
               std::chrono::steady_clock::time_point end) override {
    if (!active.load(std::memory_order_relaxed)) return;  // no scope: no pass to open (current_pass() queues a callback)
    const auto pass = detail::current_pass();
    const auto thread = this_lane();
    std::lock_guard<SpinLock> guard(lock);
    if (!active.load(std::memory_order_relaxed)) return;
    const auto owner = provenance.owner_of(node);
    const auto module = owner == detail::Provenance::none ? 0 : provenance.activation(owner).module;
    times[module].exclusive += own;
    ++times[module].nodes;
    times[0].inclusive += own;
    provenance.for_each_module(owner, [&](std::uint32_t m) { times[m].inclusive += own; });
    if (pass == 0) return;  // a node outside a graph task: no pass to span
    // A span per activation (a module under its chain of parents: a layer
    // shared by two parents has a span in each) and pass.
    std::uint32_t chain[64];
    std::uint32_t n = 0;
    for (auto a = owner; a != detail::Provenance::none && n < 64; a = provenance.activation(a).parent) chain[n++] = a;
    if (open.size() > (std::size_t{1} << 16)) open.clear();  // old passes' (a pass still running starts new spans)
    for (std::uint32_t i = 0; i < n; ++i) {  // innermost first: depth n - 1 - i
      const auto key = pass << 24 | chain[i];
      auto it = open.find(key);
      if (it == open.end() || it->second < dropped) {
        if (spans.size() >= (std::size_t{1} << 20)) {
          spans.pop_front();
          ++dropped;
        }
        it = open.insert_or_assign(key, dropped + spans.size()).first;
        spans.push_back({pass, provenance.activation(chain[i]).module, n - 1 - i, thread, start, end});
      }
      auto& span = spans[it->second - dropped];
      span.start = std::min(span.start, start);
      span.end = std::max(span.end, end);
      if (i == 0) span.own += own;
    }
  }
};

BackwardTimer::BackwardTimer(Tracker& tracker) : state_(std::make_shared<State>()) {
  state_->zero = std::chrono::steady_clock::now() - tracker.now();
  detail::add_node_listener(*state_);
  listening_ = tracker.add_listener(*this);
}

BackwardTimer::~BackwardTimer() {
  listening_ = Registration{};
  detail::remove_node_listener(*state_);  // waits for a node ending now
}

void BackwardTimer::on_scope(bool started) {
  std::lock_guard<SpinLock> lock(state_->lock);
  state_->active = started;
  state_->provenance.clear();
}

void BackwardTimer::on_transition(const Transition& t) {
  lane = t.thread;  // called on the thread that made the transition
  if (t.phase != Phase::forward) return;
  std::lock_guard<SpinLock> lock(state_->lock);
  state_->provenance.forward(t.kind, state_->index(t.fqn));
}

std::map<std::string, BackwardTime> BackwardTimer::times() const {
  std::lock_guard<SpinLock> lock(state_->lock);
  std::map<std::string, BackwardTime> out;
  for (std::size_t i = 0; i < state_->names.size(); ++i)
    if (i == 0 || state_->times[i].inclusive.count() != 0) out[state_->names[i]] = state_->times[i];
  return out;
}

std::chrono::nanoseconds BackwardTimer::total() const {
  std::lock_guard<SpinLock> lock(state_->lock);
  return state_->times[0].inclusive;
}

SpanLog BackwardTimer::spans() const {
  std::vector<State::PassSpan> all;
  std::vector<std::string> names;
  {
    std::lock_guard<SpinLock> lock(state_->lock);
    all.assign(state_->spans.begin(), state_->spans.end());
    names = state_->names;
  }
  // Per thread and pass, by start (the outer first at a tie): a span that
  // ends after the one it starts in overlaps it without nesting.
  std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
    return std::tie(a.pass, a.thread, a.start, b.end, a.depth) < std::tie(b.pass, b.thread, b.start, a.end, b.depth);
  });
  SpanLog out;
  std::vector<std::uint64_t> calls(names.size());
  std::vector<const State::PassSpan*> stack;
  for (std::size_t i = 0; i < all.size(); ++i) {
    const auto& s = all[i];
    if (i > 0 && (all[i - 1].pass != s.pass || all[i - 1].thread != s.thread)) stack.clear();
    while (!stack.empty() && stack.back()->end <= s.start) stack.pop_back();
    const bool nested = stack.empty() || s.end <= stack.back()->end;
    if (nested) stack.push_back(&s);
    const auto inclusive = std::chrono::duration_cast<std::chrono::nanoseconds>(s.end - s.start);
    out.add(Span{names[s.module], Phase::backward, s.thread, s.depth, calls[s.module]++,
                 std::chrono::duration_cast<std::chrono::nanoseconds>(s.start - state_->zero),
                 std::chrono::duration_cast<std::chrono::nanoseconds>(s.end - state_->zero),
                 std::max(std::chrono::nanoseconds{}, inclusive - s.own), nested, 0});
  }
  return out;
}

void BackwardTimer::reset() {
  std::lock_guard<SpinLock> lock(state_->lock);
  for (auto& t : state_->times) t = {};
  state_->spans.clear();
  state_->open.clear();
  state_->dropped = 0;
}

}  // namespace modtracker::libtorch
