// MemoryTracker: LibTorch's CPU allocator wrapped (c10::SetCPUAllocator).
// Each block gets a 64-byte header in front (its size, when it was
// allocated, its category), so no allocation of ours per tensor; the
// block's context stays its data pointer, as LibTorch's raw_allocate wants.
// The modules running are frames on a stack, pushed and popped by the
// tracker's transitions; each byte is credited where the rules of
// memory.hpp say (docs/semantics.md, "Per-module FLOPs and memory").
//
// There is one counting state per process, made once and never freed: an
// allocation or a free on another thread may still hold it while a
// MemoryTracker goes away, and this way it needs no read section (one fewer
// thing on a path that costs about 100 ns in all). Each MemoryTracker gets a
// new id; a block counts only for the id it was allocated under.
#include <torch/torch.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "detail/spin_lock.hpp"
#include "libtorch_tools/provenance.hpp"
#include "modtracker/libtorch/memory.hpp"

namespace modtracker::libtorch {

namespace {

using modtracker::detail::SpinLock;

constexpr std::size_t header_bytes = 64;  // keeps the data at the allocator's 64-byte alignment

struct alignas(64) Header {
  std::uint64_t size;
  std::uint64_t time;   // the bytes allocated before it: its place among allocations
  std::uint64_t owner;  // the MemoryTracker that counts it
  void* original_context;
  c10::DeleterFnPtr original_deleter;
  MemoryCategory category;
};
static_assert(sizeof(Header) == header_bytes);

Header* header_of(void* data) noexcept { return reinterpret_cast<Header*>(static_cast<char*>(data) - header_bytes); }

void free_block(void* data);

}  // namespace

struct MemoryTracker::State {
  SpinLock lock;  // guards all below
  std::uint64_t id = 0;  // of the MemoryTracker counting now; 0: none
  bool scope_on = false;
  std::uint64_t allocated = 0, freed = 0, live = 0, external = 0;
  std::array<std::uint64_t, memory_categories> live_by{};
  struct Frame {
    std::uint32_t module;
    Phase phase;
    std::uint64_t enter_time, level, allocated_at_enter, freed_at_enter, max_live, young_freed;
  };
  std::vector<Frame> frames;  // the modules running, in the order they entered
  std::unordered_map<const char*, std::uint32_t> ids;
  std::vector<std::string> names;
  std::vector<std::array<ModuleMemory, 2>> stats;
  MemoryPeak peak;
  std::deque<std::pair<std::chrono::nanoseconds, std::uint64_t>> timeline;
  std::vector<std::weak_ptr<const torch::nn::Module>> modules;
  std::vector<const torch::optim::Optimizer*> optimizers;
  // Backward by provenance (docs/semantics.md, "Backward attribution"): the
  // node's module and its ancestors, each with the pass it last saw and the
  // live bytes before its first own allocation in it.
  Attribution attribution = Attribution::provenance;
  std::optional<detail::NodeWatch> nodes;
  detail::Provenance provenance;
  struct OpenPass {
    std::uint64_t pass = 0, level = 0;
  };
  std::vector<OpenPass> open_pass;

  // A new MemoryTracker's start: everything but the lock forgotten.
  void restart(std::uint64_t new_id) {
    id = new_id;
    provenance.clear();
    open_pass.clear();
    scope_on = false;
    allocated = freed = live = external = 0;
    live_by.fill(0);
    external_by.fill(0);
    frames.clear();
    ids.clear();
    names.clear();
    stats.clear();
    peak = {};
    timeline.clear();
    modules.clear();
    optimizers.clear();
  }
  [[nodiscard]] bool by_provenance() const noexcept { return attribution == Attribution::provenance && nodes; }
  // The backward node's module by provenance (~0u: none), when that rule applies now.
  [[nodiscard]] std::uint32_t node_owner() {
    // A forward recomputed in backward runs inside a node too.
    if (!by_provenance() || !detail::running_node()) return ~0u;
    return provenance.owner_now();
  }
  [[nodiscard]] MemoryCategory category_now(std::uint32_t owner) const noexcept {
    if (owner != ~0u) return MemoryCategory::temporary;
    if (frames.empty()) return MemoryCategory::other;
    return frames.back().phase == Phase::forward ? MemoryCategory::activation : MemoryCategory::temporary;
  }
  void note_peak(std::uint32_t owner = ~0u) {
    const auto now = live + external;
    if (now <= peak.bytes) return;
    peak.bytes = now;
    if (owner != ~0u) {
      peak.fqn = owner == detail::Provenance::none ? std::string() : names[provenance.activation(owner).module];
      peak.phase = Phase::backward;
    } else {
      peak.fqn = frames.empty() ? std::string() : names[frames.back().module];
      peak.phase = frames.empty() ? Phase::forward : frames.back().phase;
    }
    peak.by_category = by_category();
  }
  // A backward allocation (or free, with `freed`) by provenance: to the node's
  // module and its ancestors.
  void credit_backward(std::uint32_t owner, std::uint64_t bytes, bool is_free) {
    if (owner == detail::Provenance::none) return;
    const auto pass = backend().backward_pass();
    provenance.for_each_module(owner, [&](std::uint32_t m) {
      auto& st = stats[m][static_cast<std::size_t>(Phase::backward)];
      if (open_pass.size() <= m) open_pass.resize(names.size());
      auto& o = open_pass[m];
      if (o.pass != pass) {  // its first own work in this pass
        o = {pass, is_free ? live + bytes : live - bytes};
        ++st.activations;
      }
      (is_free ? st.freed : st.allocated) += bytes;
      if (live > o.level) st.peak = std::max(st.peak, live - o.level);
    });
  }
  void allocated_block(Header& h) {
    const auto owner = node_owner();
    h.time = allocated;
    h.category = category_now(owner);
    allocated += h.size;
    live += h.size;
    live_by[static_cast<std::size_t>(h.category)] += h.size;
    if (owner != ~0u) credit_backward(owner, h.size, false);
    else if (!frames.empty()) frames.back().max_live = std::max(frames.back().max_live, live);
    note_peak(owner);
  }
  void freed_block(const Header& h) {
    freed += h.size;
    live -= h.size;
    live_by[static_cast<std::size_t>(h.category)] -= h.size;
    if (const auto owner = node_owner(); owner != ~0u) credit_backward(owner, h.size, true);
    // Young for every frame that entered before it was allocated: credited to
    // the deepest of them, which hands it on to its parent when it exits.
    const auto it = std::upper_bound(frames.begin(), frames.end(), h.time,
                                     [](std::uint64_t t, const Frame& f) { return t < f.enter_time; });
    if (it != frames.begin()) std::prev(it)->young_freed += h.size;
  }
  // Parameters, buffers, gradients and optimizer state, found by identity:
  // our blocks change category for good; those allocated before this tracker
  // are counted as they are now (`external`).
  std::array<std::uint64_t, memory_categories> external_by{};
  void recognize() {
    external_by.fill(0);
    external = 0;
    std::unordered_set<const void*> seen;
    const auto note = [&](const at::Tensor& t, MemoryCategory c) {
      if (!t.defined() || !t.has_storage()) return;
      const auto& data = t.storage().data_ptr();
      if (!data.get() || !seen.insert(data.get()).second) return;
      if (data.get_deleter() == &free_block) {
        auto& h = *header_of(data.get_context());
        if (h.owner != id || h.category == c) return;
        live_by[static_cast<std::size_t>(h.category)] -= h.size;
        live_by[static_cast<std::size_t>(c)] += h.size;
        h.category = c;
        return;
      }
      external_by[static_cast<std::size_t>(c)] += t.storage().nbytes();
      external += t.storage().nbytes();
    };
    for (const auto& weak : modules) {
      const auto m = weak.lock();
      if (!m) continue;
      for (const auto& p : m->parameters()) {
        note(p, MemoryCategory::parameter);
        note(p.grad(), MemoryCategory::gradient);
      }
      for (const auto& b : m->buffers()) note(b, MemoryCategory::buffer);
    }
    for (const auto* opt : optimizers)
      for (const auto& entry : opt->state())
        for (const auto& t : state_tensors(*entry.second)) note(t, MemoryCategory::optimizer_state);
  }
  [[nodiscard]] std::array<std::uint64_t, memory_categories> by_category() const {
    auto all = live_by;
    for (std::size_t i = 0; i < all.size(); ++i) all[i] += external_by[i];
    return all;
  }
  // The tensors of LibTorch's optimizers' per-parameter state.
  static std::vector<at::Tensor> state_tensors(const torch::optim::OptimizerParamState& state) {
    namespace o = torch::optim;
    if (const auto* a = dynamic_cast<const o::AdamParamState*>(&state)) return {a->exp_avg(), a->exp_avg_sq(), a->max_exp_avg_sq()};
    if (const auto* a = dynamic_cast<const o::AdamWParamState*>(&state)) return {a->exp_avg(), a->exp_avg_sq(), a->max_exp_avg_sq()};
    if (const auto* g = dynamic_cast<const o::SGDParamState*>(&state)) return {g->momentum_buffer()};
    if (const auto* g = dynamic_cast<const o::AdagradParamState*>(&state)) return {g->sum()};
    if (const auto* r = dynamic_cast<const o::RMSpropParamState*>(&state)) return {r->square_avg(), r->momentum_buffer(), r->grad_avg()};
    return {};
  }
};

namespace {

// The wrapper installed while a MemoryTracker lives, and the state it counts for.
class CountingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t n) const override;
  [[nodiscard]] c10::DeleterFnPtr raw_deleter() const override { return &free_block; }
  c10::Allocator* original = nullptr;
};
CountingAllocator counting;
MemoryTracker::State& counting_state = *new MemoryTracker::State;  // never freed: see the top
std::mutex install_mutex;  // guards installing and removing the wrapper, next_id
std::uint64_t next_id = 1;

c10::DataPtr CountingAllocator::allocate(std::size_t n) const {
  auto inner = original->allocate(n + header_bytes);
  auto* h = static_cast<Header*>(inner.get());
  const auto device = inner.device();
  h->size = n;
  h->original_deleter = inner.get_deleter();
  h->original_context = inner.release_context();
  h->category = MemoryCategory::other;
  {
    auto& s = counting_state;
    std::lock_guard<SpinLock> lock(s.lock);
    h->owner = s.id;
    if (s.id != 0) s.allocated_block(*h);
  }
  void* data = reinterpret_cast<char*>(h) + header_bytes;
  return c10::DataPtr(data, data, &free_block, device);
}

void free_block(void* data) {
  auto* h = header_of(data);
  if (h->owner != 0) {
    auto& s = counting_state;
    std::lock_guard<SpinLock> lock(s.lock);
    if (h->owner == s.id) s.freed_block(*h);
  }
  h->original_deleter(h->original_context);
}

}  // namespace

std::string_view category_name(MemoryCategory c) noexcept {
  static constexpr std::array<std::string_view, memory_categories> names{
      "parameter", "buffer", "gradient", "optimizer state", "activation", "temporary", "other"};
  return names[static_cast<std::size_t>(c)];
}

MemoryTracker::MemoryTracker(Tracker& tracker, Attribution backward) : state_(&counting_state) {
  {
    std::lock_guard<std::mutex> lock(install_mutex);
    if (c10::GetCPUAllocator() == &counting)
      throw std::logic_error("modtracker: one MemoryTracker at a time (it wraps the CPU allocator)");
    {
      std::lock_guard<SpinLock> state_lock(state_->lock);
      state_->restart(next_id++);
      state_->attribution = backward;
      state_->nodes.emplace();
    }
    counting.original = c10::GetCPUAllocator();
    c10::SetCPUAllocator(&counting, /*priority=*/255);
  }
  listening_ = tracker.add_listener(*this);
}

MemoryTracker::~MemoryTracker() {
  listening_ = Registration{};
  std::lock_guard<std::mutex> lock(install_mutex);
  c10::SetCPUAllocator(counting.original, /*priority=*/255);
  std::lock_guard<SpinLock> state_lock(state_->lock);
  state_->restart(0);  // blocks allocated meanwhile count for nobody
  state_->nodes.reset();
}

void MemoryTracker::track(const torch::nn::Module& module) {
  auto owned = module.weak_from_this();
  if (owned.expired())
    throw std::invalid_argument("modtracker: MemoryTracker::track needs a module owned by a std::shared_ptr (a holder's)");
  std::lock_guard<SpinLock> lock(state_->lock);
  state_->modules.push_back(std::move(owned));
  state_->recognize();
  state_->note_peak();
}

void MemoryTracker::track(const torch::optim::Optimizer& optimizer) {
  std::lock_guard<SpinLock> lock(state_->lock);
  state_->optimizers.push_back(&optimizer);
  state_->recognize();
}

void MemoryTracker::on_scope(bool started) {
  std::lock_guard<SpinLock> lock(state_->lock);
  state_->scope_on = started;
  state_->frames.clear();
  state_->provenance.clear();
  state_->open_pass.clear();
  state_->recognize();
}

void MemoryTracker::on_transition(const Transition& t) {
  auto& s = *state_;
  std::lock_guard<SpinLock> lock(s.lock);
  const auto [it, fresh] = s.ids.try_emplace(t.fqn.data(), static_cast<std::uint32_t>(s.names.size()));
  if (fresh) {
    s.names.emplace_back(t.fqn);
    s.stats.emplace_back();
  }
  const auto m = it->second;
  s.timeline.emplace_back(t.time, s.live + s.external);
  if (s.timeline.size() > (1u << 16)) s.timeline.pop_front();
  if (t.phase == Phase::forward) s.provenance.forward(t.kind, m);
  else if (s.by_provenance()) return;  // backward work goes by its nodes, not by spans
  if (t.kind == Kind::enter) {
    if (t.phase == Phase::forward && t.depth == 0) s.recognize();  // a step starts: gradients and optimizer state are new
    s.frames.push_back({m, t.phase, s.allocated, s.live, s.allocated, s.freed, s.live, 0});
    return;
  }
  const auto f = std::find_if(s.frames.rbegin(), s.frames.rend(),
                              [&](const State::Frame& x) { return x.module == m && x.phase == t.phase; });
  if (f == s.frames.rend()) return;  // entered before this tracker listened
  auto& stats = s.stats[m][static_cast<std::size_t>(t.phase)];
  const auto allocated = s.allocated - f->allocated_at_enter;
  stats.allocated += allocated;
  stats.freed += s.freed - f->freed_at_enter;
  stats.peak = std::max(stats.peak, f->max_live - f->level);
  if (t.phase == Phase::forward) stats.kept += allocated - f->young_freed;
  ++stats.activations;
  const auto index = static_cast<std::size_t>(std::distance(f, s.frames.rend())) - 1;
  if (index > 0) {  // what it saw belongs to the frame around it too
    auto& outer = s.frames[index - 1];
    outer.young_freed += f->young_freed;
    outer.max_live = std::max(outer.max_live, f->max_live);
  }
  s.frames.erase(s.frames.begin() + static_cast<std::ptrdiff_t>(index));
}

ModuleMemory MemoryTracker::module(std::string_view fqn, Phase phase) const {
  std::lock_guard<SpinLock> lock(state_->lock);
  for (std::size_t i = 0; i < state_->names.size(); ++i)
    if (state_->names[i] == fqn) return state_->stats[i][static_cast<std::size_t>(phase)];
  return {};
}

std::map<std::string, std::array<ModuleMemory, 2>> MemoryTracker::modules() const {
  std::lock_guard<SpinLock> lock(state_->lock);
  std::map<std::string, std::array<ModuleMemory, 2>> out;
  for (std::size_t i = 0; i < state_->names.size(); ++i) out[state_->names[i]] = state_->stats[i];
  return out;
}

std::uint64_t MemoryTracker::live() const {
  std::lock_guard<SpinLock> lock(state_->lock);
  return state_->live + state_->external;
}

std::array<std::uint64_t, memory_categories> MemoryTracker::live_by_category() const {
  std::lock_guard<SpinLock> lock(state_->lock);
  state_->recognize();
  return state_->by_category();
}

MemoryPeak MemoryTracker::peak() const {
  std::lock_guard<SpinLock> lock(state_->lock);
  return state_->peak;
}

std::vector<std::pair<std::chrono::nanoseconds, std::uint64_t>> MemoryTracker::timeline() const {
  std::lock_guard<SpinLock> lock(state_->lock);
  return {state_->timeline.begin(), state_->timeline.end()};
}

void MemoryTracker::reset() {
  std::lock_guard<SpinLock> lock(state_->lock);
  for (auto& s : state_->stats) s = {};
  state_->peak = {};
  state_->timeline.clear();
  state_->note_peak();
}

}  // namespace modtracker::libtorch
