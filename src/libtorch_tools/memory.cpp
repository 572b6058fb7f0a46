// MemoryTracker: LibTorch's CPU allocator wrapped (c10::SetCPUAllocator).
// Each block gets a 64-byte header in front (its size, when it was
// allocated, its category), so no allocation of ours per tensor; the
// block's context stays its data pointer, as LibTorch's raw_allocate wants.
// Each byte is credited by the counting state (memory_state.hpp).
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
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "libtorch_tools/memory_state.hpp"

namespace modtracker::libtorch {

using modtracker::detail::SpinLock;
using detail::free_block;
using detail::Header;
using detail::header_bytes;
using detail::header_of;

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

}  // namespace

void detail::free_block(void* data) {
  auto* h = header_of(data);
  if (h->owner != 0) {
    auto& s = counting_state;
    std::lock_guard<SpinLock> lock(s.lock);
    if (h->owner == s.id) s.freed_block(*h);
  }
  h->original_deleter(h->original_context);
}

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
