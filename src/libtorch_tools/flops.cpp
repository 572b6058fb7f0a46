// FlopCounter: a RecordFunction callback sees every operator (forward, and
// backward's inside the engine's nodes) with its inputs; the formulas below
// (flop_formulas.cpp) count the matmul and convolution family; a transition listener keeps the
// set of modules running, which each count is credited to. Built with NDEBUG
// always (CMakeLists.txt): RecordFunction's layout differs without it, and
// LibTorch is built with it.
#include <torch/torch.h>
#include <torch/csrc/autograd/graph_task.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "backend/spin_lock.hpp"
#include "libtorch_tools/callback_owners.hpp"
#include "libtorch_tools/flop_formulas.hpp"
#include "libtorch_tools/provenance.hpp"
#include "modtracker/libtorch_tools/flops.hpp"

namespace modtracker::libtorch {

namespace {

using modtracker::detail::SpinLock;
using namespace detail::formulas;

// Which operator a RecordFunction is, from its name: schema names are
// stable strings, so each thread remembers its answers by address, and for
// an operator without a formula, whether the counters listening now have
// it listed (`listed` against `listings`, which a counter's new scope moves on).
constexpr std::int8_t not_an_operator = -2, uncounted = -1;
struct NameCache {
  struct Slot {
    const char* name = nullptr;
    std::int8_t op = not_an_operator;
    std::uint32_t listed = 0;
  };
  std::array<Slot, 256> slots{};
};
[[gnu::tls_model("initial-exec")]] thread_local NameCache name_cache;
std::atomic<std::uint32_t> listings{1};
// Counted operators running on this thread: one inside another (a
// formula's operator calling another) is not counted again. Valid for one
// installation of the callback (`installs`): an operator running while the
// callback went away never sees its end.
struct Depth {
  std::uint32_t install = 0, depth = 0;
};
[[gnu::tls_model("initial-exec")]] thread_local Depth counted;
std::atomic<std::uint32_t> installs{0};

NameCache::Slot& classify(const char* name) {
  auto& slot = name_cache.slots[(reinterpret_cast<std::uintptr_t>(name) >> 4) & 255];
  if (slot.name == name) return slot;
  std::int8_t op = not_an_operator;
  if (std::strncmp(name, "aten::", 6) == 0) {
    const auto counted_op = operator_named(name);
    op = counted_op == operators ? uncounted : static_cast<std::int8_t>(counted_op);
  }
  slot = {name, op, 0};
  return slot;
}

}  // namespace

struct FlopCounter::State {
  explicit State(Attribution a) : attribution(a) {}
  SpinLock lock;  // guards all below
  bool active = false;
  const Attribution attribution;
  detail::NodeWatch nodes;  // LibTorch reports each backward node's execution
  detail::Provenance provenance;
  std::unordered_map<const char*, std::uint32_t> ids{{nullptr, 0}};  // the tracker's interned fqn -> index
  std::vector<std::string> names{"Global"};
  std::vector<std::uint32_t> running{1};       // per index: its activations running now ("Global": always)
  std::vector<std::uint32_t> running_list{0};  // the indices running
  using Table = std::array<std::vector<std::array<std::uint64_t, operators>>, 2>;  // per phase, per index
  Table flops{std::vector<std::array<std::uint64_t, operators>>(1), std::vector<std::array<std::uint64_t, operators>>(1)};
  Table exclusive{std::vector<std::array<std::uint64_t, operators>>(1), std::vector<std::array<std::uint64_t, operators>>(1)};
  std::vector<std::uint64_t> all_flops{0};           // per index, both phases: for activations
  std::vector<std::vector<std::uint64_t>> open{{}};  // per index: all_flops at each running activation's enter
  std::map<std::uint64_t, std::uint64_t> by_activation;  // exit sequence -> FLOPs (the latest 65536)
  std::set<std::string> uncounted;

  std::uint32_t index(std::string_view fqn) {
    const auto [it, fresh] = ids.try_emplace(fqn.data(), static_cast<std::uint32_t>(names.size()));
    if (fresh) {
      names.emplace_back(fqn);
      running.push_back(0);
      for (auto* t : {&flops, &exclusive}) {
        (*t)[0].emplace_back();
        (*t)[1].emplace_back();
      }
      all_flops.push_back(0);
      open.emplace_back();
    }
    return it->second;
  }
  // Forward, or backward by spans: every module running. Backward by
  // provenance: the node's module, its ancestors and Global.
  void credit(Operator op, Phase phase, std::uint64_t n) {
    const auto p = static_cast<std::size_t>(phase);
    const auto owner = phase == Phase::forward ? provenance.innermost() : provenance.owner_now();
    exclusive[p][owner == detail::Provenance::none ? 0 : provenance.activation(owner).module][op] += n;
    const auto add = [&](std::uint32_t i) {
      flops[p][i][op] += n;
      all_flops[i] += n;
    };
    if (phase == Phase::forward || attribution == Attribution::spans) {
      for (const auto i : running_list) add(i);
      return;
    }
    add(0);
    provenance.for_each_module(owner, add);
  }
};

namespace {

// Every counter's state, for the one RecordFunction callback.
using Counters = detail::CallbackOwners<FlopCounter::State>;
Counters& counters() {
  static Counters c;
  return c;
}

std::unique_ptr<at::ObserverContext> count_operator(const at::RecordFunction& fn) {
  const char* name = fn.name();
  auto& slot = classify(name);
  const auto op = slot.op;
  if (op == not_an_operator) return nullptr;
  if (op >= 0) {
    if (const auto now = installs.load(std::memory_order_relaxed); counted.install != now) counted = {now, 0};
    if (counted.depth++ > 0) return nullptr;  // inside a counted one: its FLOPs are that one's
  }
  auto& c = counters();
  if (op == uncounted) {
    const auto now = listings.load(std::memory_order_relaxed);
    if (slot.listed == now) return nullptr;  // listed already: the usual case
    slot.listed = now;
    std::lock_guard<SpinLock> lock(c.lock);
    for (auto* s : c.all) {
      std::lock_guard<SpinLock> inner(s->lock);
      if (s->active) s->uncounted.emplace(name);
    }
    return nullptr;
  }
  std::uint64_t n = 0;
  bool understood = true;
  try {
    n = flops_of(static_cast<Operator>(op), fn.inputs());
  } catch (const std::exception&) {  // arguments of unexpected types: count zero, and list it
    understood = false;
  }
  const auto phase = torch::autograd::get_current_graph_task_exec_info() ? Phase::backward : Phase::forward;
  std::lock_guard<SpinLock> lock(c.lock);
  for (auto* s : c.all) {
    std::lock_guard<SpinLock> inner(s->lock);
    if (!s->active) continue;
    if (understood) s->credit(static_cast<Operator>(op), phase, n);
    else s->uncounted.emplace(std::string(name) + " (arguments not understood)");
  }
  return nullptr;
}

void end_operator(const at::RecordFunction& fn, at::ObserverContext*) {
  if (classify(fn.name()).op >= 0 && counted.depth > 0 && counted.install == installs.load(std::memory_order_relaxed))
    --counted.depth;
}

}  // namespace

FlopCounter::FlopCounter(Tracker& tracker, Attribution backward) : state_(std::make_shared<State>(backward)) {
  counters().add(state_.get(), [] {
    installs.fetch_add(1, std::memory_order_relaxed);  // a new installation: threads' depths start over
    return at::RecordFunctionCallback(&count_operator, &end_operator).needsInputs(true).scopes({at::RecordScope::FUNCTION});
  });
  listening_ = tracker.add_listener(*this);
}

FlopCounter::~FlopCounter() {
  listening_ = Registration{};
  counters().remove(state_.get());
}

void FlopCounter::on_scope(bool started) {
  std::lock_guard<SpinLock> lock(state_->lock);
  state_->active = started;
  if (started) {
    listings.fetch_add(1, std::memory_order_relaxed);  // every thread lists its uncounted operators anew
    return;
  }
  for (std::size_t i = 1; i < state_->running.size(); ++i) state_->running[i] = 0;  // the scope's calls end with it
  state_->running_list.assign(1, 0);
  for (auto& o : state_->open) o.clear();
  if (const auto n = state_->provenance.unresolved())
    state_->uncounted.emplace("backward nodes made too long before they ran (" + std::to_string(n) +
                              "): their FLOPs went to Global only");
  state_->provenance.clear();
}

void FlopCounter::on_transition(const Transition& t) {
  auto& s = *state_;
  std::lock_guard<SpinLock> lock(s.lock);
  const auto i = s.index(t.fqn);
  if (t.phase == Phase::forward) s.provenance.forward(t.kind, i);
  if (t.kind == Kind::enter) {
    if (s.running[i]++ == 0) s.running_list.push_back(i);
    s.open[i].push_back(s.all_flops[i]);
    return;
  }
  if (s.running[i] == 0) return;  // entered before this counter listened
  if (--s.running[i] == 0) std::erase(s.running_list, i);
  if (s.open[i].empty()) return;
  const auto flops = s.all_flops[i] - s.open[i].back();
  s.open[i].pop_back();
  if (flops == 0) return;
  s.by_activation[t.sequence] = flops;
  if (s.by_activation.size() > (1u << 16)) s.by_activation.erase(s.by_activation.begin());
}

std::uint64_t FlopCounter::total(Phase phase) const {
  std::lock_guard<SpinLock> lock(state_->lock);
  std::uint64_t sum = 0;
  for (const auto n : state_->flops[static_cast<std::size_t>(phase)][0]) sum += n;
  return sum;
}

namespace {
std::map<std::string, std::map<std::string, std::uint64_t>> by_name(const std::vector<std::string>& names,
                                                                    const std::vector<std::array<std::uint64_t, operators>>& per) {
  std::map<std::string, std::map<std::string, std::uint64_t>> out;
  for (std::size_t i = 0; i < per.size(); ++i)
    for (std::size_t op = 0; op < operators; ++op)
      if (per[i][op] != 0) out[names[i]][std::string(operator_names[op])] = per[i][op];
  return out;
}
}  // namespace

std::map<std::string, std::map<std::string, std::uint64_t>> FlopCounter::counts(Phase phase) const {
  std::lock_guard<SpinLock> lock(state_->lock);
  return by_name(state_->names, state_->flops[static_cast<std::size_t>(phase)]);
}

std::map<std::string, std::map<std::string, std::uint64_t>> FlopCounter::exclusive_counts(Phase phase) const {
  std::lock_guard<SpinLock> lock(state_->lock);
  return by_name(state_->names, state_->exclusive[static_cast<std::size_t>(phase)]);
}

std::uint64_t FlopCounter::activation_flops(std::uint64_t exit_sequence) const {
  std::lock_guard<SpinLock> lock(state_->lock);
  const auto it = state_->by_activation.find(exit_sequence);
  return it == state_->by_activation.end() ? 0 : it->second;
}

std::vector<std::string> FlopCounter::uncounted_operators() const {
  std::lock_guard<SpinLock> lock(state_->lock);
  return {state_->uncounted.begin(), state_->uncounted.end()};
}

void FlopCounter::reset() {
  std::lock_guard<SpinLock> lock(state_->lock);
  for (auto* t : {&state_->flops, &state_->exclusive})
    for (auto& per : *t)
      for (auto& row : per) row.fill(0);
  std::fill(state_->all_flops.begin(), state_->all_flops.end(), 0);
  for (auto& o : state_->open) std::fill(o.begin(), o.end(), 0);
  state_->by_activation.clear();
  state_->uncounted.clear();
  listings.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace modtracker::libtorch
