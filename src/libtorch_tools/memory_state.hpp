// The MemoryTracker's counting state: the blocks' header, what is live by
// category, the modules running (frames on a stack, pushed and popped by the
// tracker's transitions), and per module and phase what memory.hpp promises
// (docs/semantics.md, "Per-module FLOPs and memory"). The allocator wrapper
// that feeds it is in memory.cpp.
#pragma once

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

#include "backend/spin_lock.hpp"
#include "libtorch_tools/provenance.hpp"
#include "modtracker/libtorch/backend.hpp"
#include "modtracker/libtorch_tools/memory.hpp"

namespace modtracker::libtorch {

namespace detail {

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

inline Header* header_of(void* data) noexcept { return reinterpret_cast<Header*>(static_cast<char*>(data) - header_bytes); }

// The deleter of every block the counting allocator gives out (memory.cpp).
void free_block(void* data);

}  // namespace detail

struct MemoryTracker::State {
  using Header = detail::Header;
  modtracker::detail::SpinLock lock;  // guards all below
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
  std::optional<detail::NodeWatch> nodes;  // while a MemoryTracker lives
  detail::Provenance provenance;
  static constexpr std::uint32_t no_node = ~0u;  // not backward work by provenance
  struct OpenPass {
    std::uint64_t pass = 0, level = 0;
  };
  std::vector<OpenPass> open_pass;
  std::uint64_t pass_serial = 0, pass = 0;  // the backward pass, asked once per node execution

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
  [[nodiscard]] bool by_provenance() const noexcept { return attribution == Attribution::provenance; }
  // The owner of backward work by provenance (no_node: not that rule, or not
  // in backward). A forward recomputed in backward runs inside a node too.
  [[nodiscard]] std::uint32_t node_owner() {
    if (!by_provenance()) return no_node;
    const auto* node = detail::running_node();
    if (!node) return no_node;
    if (node->serial != pass_serial) {
      pass_serial = node->serial;
      pass = backend().backward_pass();
    }
    return provenance.owner_now();
  }
  [[nodiscard]] MemoryCategory category_now(std::uint32_t owner) const noexcept {
    if (owner != no_node) return MemoryCategory::temporary;
    if (frames.empty()) return MemoryCategory::other;
    return frames.back().phase == Phase::forward ? MemoryCategory::activation : MemoryCategory::temporary;
  }
  void note_peak(std::uint32_t owner = no_node) {
    const auto now = live + external;
    if (now <= peak.bytes) return;
    peak.bytes = now;
    if (owner != no_node) {
      peak.fqn = owner == detail::Provenance::none ? std::string() : names[provenance.activation(owner).module];
      peak.phase = Phase::backward;
    } else {
      peak.fqn = frames.empty() ? std::string() : names[frames.back().module];
      peak.phase = frames.empty() ? Phase::forward : frames.back().phase;
    }
    peak.by_category = by_category();
  }
  // A backward allocation (or free, with `is_free`) by provenance: to the node's
  // module and its ancestors.
  void credit_backward(std::uint32_t owner, std::uint64_t bytes, bool is_free) {
    if (owner == detail::Provenance::none) return;
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
    if (owner != no_node) credit_backward(owner, h.size, false);
    else if (!frames.empty()) frames.back().max_live = std::max(frames.back().max_live, live);
    note_peak(owner);
  }
  void freed_block(const Header& h) {
    freed += h.size;
    live -= h.size;
    live_by[static_cast<std::size_t>(h.category)] -= h.size;
    if (const auto owner = node_owner(); owner != no_node) credit_backward(owner, h.size, true);
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
      if (data.get_deleter() == &detail::free_block) {
        auto& h = *detail::header_of(data.get_context());
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

}  // namespace modtracker::libtorch
