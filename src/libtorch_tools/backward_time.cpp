// BackwardTimer: the node callback times each node; provenance names its module.
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "backend/spin_lock.hpp"
#include "libtorch_tools/provenance.hpp"
#include "modtracker/libtorch/backward_time.hpp"

namespace modtracker::libtorch {

using modtracker::detail::SpinLock;

struct BackwardTimer::State final : detail::NodeListener {
  SpinLock lock;  // guards all below
  bool active = false;
  detail::NodeWatch nodes;
  detail::Provenance provenance;
  std::unordered_map<const char*, std::uint32_t> ids{{nullptr, 0}};  // the tracker's interned fqn -> index
  std::vector<std::string> names{"Global"};
  std::vector<BackwardTime> times{1};

  std::uint32_t index(std::string_view fqn) {
    const auto [it, fresh] = ids.try_emplace(fqn.data(), static_cast<std::uint32_t>(names.size()));
    if (fresh) {
      names.emplace_back(fqn);
      times.emplace_back();
    }
    return it->second;
  }
  void on_node(const detail::RunningNode& node, std::chrono::nanoseconds own) override {
    std::lock_guard<SpinLock> guard(lock);
    if (!active) return;
    const auto owner = provenance.owner_of(node);
    const auto module = owner == detail::Provenance::none ? 0 : provenance.activation(owner).module;
    times[module].exclusive += own;
    ++times[module].nodes;
    times[0].inclusive += own;
    provenance.for_each_module(owner, [&](std::uint32_t m) { times[m].inclusive += own; });
  }
};

BackwardTimer::BackwardTimer(Tracker& tracker) : state_(std::make_shared<State>()) {
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

void BackwardTimer::reset() {
  std::lock_guard<SpinLock> lock(state_->lock);
  for (auto& t : state_->times) t = {};
}

}  // namespace modtracker::libtorch
