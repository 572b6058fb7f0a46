// TrackerCore: parents counts, lazy naming, the journal, and the forward and
// backward enter/exit rules of SEMANTICS.md.
module;
#include <algorithm>
#include <array>
#include <bit>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <iterator>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "clock.hpp"
#include "pool.hpp"
module modtracker;

namespace modtracker {

bool Parents::contains(std::string_view fqn) const noexcept {
  return std::binary_search(names_.begin(), names_.end(), fqn);
}

std::set<std::string> Parents::to_set() const { return {names_.begin(), names_.end()}; }

std::string root_name_from_type(std::string_view type_name) {
  // Namespaces end at the last "::" before any template arguments.
  const auto args = type_name.find('<');
  const auto head = type_name.substr(0, args);
  const auto colons = head.rfind("::");
  auto name = colons == std::string_view::npos ? type_name : type_name.substr(colons + 2);
  if (args == std::string_view::npos && name.size() > 4 && name.ends_with("Impl"))
    name.remove_suffix(4);
  return std::string(name);
}

namespace detail {

/// Lifetime link between gradient callbacks and a tracking scope. A callback
/// may outlive its scope and its tracker (a graph kept after the scope), so
/// epochs are never freed: a scope's end bumps `generation` and clears
/// `core`, and a later scope reuses the epoch. A callback acts only if the
/// generation it was made in is still current. No reference count per
/// activation.
struct Epoch {
  std::atomic<std::uint64_t> generation{1};
  std::atomic<TrackerCore*> core{nullptr};
  Epoch* next_free = nullptr;  // guarded by epochs_mutex
};

namespace {
std::mutex epochs_mutex;
Epoch* free_epochs = nullptr;  // ended epochs, for the next scopes

Epoch& open_epoch(TrackerCore& core) {
  Epoch* e = nullptr;
  {
    std::lock_guard<std::mutex> lock(epochs_mutex);
    if ((e = free_epochs)) free_epochs = e->next_free;
  }
  if (!e) e = new Epoch;  // lives for the rest of the process (see Epoch)
  e->core.store(&core, std::memory_order_seq_cst);
  return *e;
}

/// Runs `f(core)` if the epoch's scope (`generation`) is still open, inside a
/// ReadSection: the scope's end waits for it (a per-thread mark, no shared atomic).
template <class F>
void with_epoch(Epoch& epoch, std::uint64_t generation, F&& f) {
  ReadSection section;
  if (epoch.generation.load(std::memory_order_seq_cst) != generation) return;
  if (auto* core = epoch.core.load(std::memory_order_seq_cst)) f(*core);
}

/// Closes the epoch: no callback starts using its core after this returns,
/// and those running on other threads have finished (one on this thread, a
/// scope ending inside its own callback, does not wait for itself). Then the
/// epoch is free for another scope.
void close_epoch(Epoch& epoch) {
  epoch.core.store(nullptr, std::memory_order_seq_cst);
  epoch.generation.fetch_add(1, std::memory_order_seq_cst);
  {
    WriteSection wait;
  }
  std::lock_guard<std::mutex> lock(epochs_mutex);
  epoch.next_free = free_epochs;
  free_epochs = &epoch;
}
}  // namespace

/// One forward call of a module whose backward the tracker follows. Two
/// cache lines from the block pool: the first holds all that the gradient
/// callbacks read, so a backward step touches one line of it.
struct alignas(64) Activation {
  std::atomic<std::uint32_t> refs;  // ActivationRef and the gradient callbacks
  std::uint32_t fqn;
  Epoch* epoch;
  std::uint64_t epoch_generation;
  std::uint64_t entered_pass = 0;  // guarded by the core's state lock
  std::uint64_t exited_pass = 0;
  std::uint64_t sequence;  // activations started before this one
  std::uint32_t depth;
  std::uint32_t previous_fqn;  // of the activation started before it: likely the next in backward
  bool selected;
  // Its place among the pass's backward entries (GradOrder::rank of its exit).
  std::atomic<std::uint32_t> backward_rank{0};
  // Second line: forward, naming, and backward's rare paths.
  bool flying = false;  // in the core's in-flight list (which then owns a reference)
  std::uint32_t thread;
  std::uint64_t end_sequence;  // activations started before its forward ended
  const void* module;  // with module_generation: see live_module()
  std::uint64_t module_generation;
  // Between pre_forward and post_forward: linked into the core's in-flight
  // list (state lock), so that a scope ending mid-forward frees it.
  Activation* flight_prev = nullptr;
  Activation* flight_next = nullptr;

  /// Did `other` run inside this activation's forward?
  [[nodiscard]] bool encloses(const Activation& other) const noexcept {
    return other.thread == thread && other.sequence > sequence && other.sequence < end_sequence;
  }
};
static_assert(sizeof(Activation) == 128);

void retain_activation(Activation* a) noexcept { a->refs.fetch_add(1, std::memory_order_relaxed); }
void release_activation(Activation* a) noexcept {
  if (a->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  a->~Activation();
  BlockPool<sizeof(Activation)>::deallocate(a);
}

namespace {

constexpr std::uint32_t global_id = 0;

std::uint32_t thread_index() noexcept {
  static std::atomic<std::uint32_t> next{0};
  [[gnu::tls_model("initial-exec")]] static thread_local std::uint32_t index = ~0u;  // no init guard
  if (index == ~0u) index = next.fetch_add(1, std::memory_order_relaxed);
  return index;
}

// pre_forward's token: an Activation* (low bit 1) or fqn id + selected bit.
std::uintptr_t plain_token(std::uint32_t fqn, bool selected) noexcept {
  return (static_cast<std::uintptr_t>(fqn) << 2) | (selected ? 2u : 0u);
}

// The gradient callbacks: the Activation is their context (no allocation),
// counted in it.
void on_output_gradient(void* context, Payload grads) {
  auto& act = *static_cast<Activation*>(context);
  with_epoch(*act.epoch, act.epoch_generation, [&](TrackerCore& c) { c.backward_enter(act, grads); });
}
void on_input_gradients(void* context, Payload grads) {
  auto& act = *static_cast<Activation*>(context);
  with_epoch(*act.epoch, act.epoch_generation, [&](TrackerCore& c) { c.backward_exit(act, grads); });
}
constexpr ContextRefs activation_refs{
    [](void* a) noexcept { retain_activation(static_cast<Activation*>(a)); },
    [](void* a) noexcept { release_activation(static_cast<Activation*>(a)); },
};

void default_sink(const Diagnostic& d) {
  static std::mutex mutex;
  static std::set<std::pair<Diagnostic::Code, std::string>> reported;
  std::lock_guard<std::mutex> lock(mutex);
  if (reported.emplace(d.code, d.fqn).second) std::fprintf(stderr, "modtracker: %s\n", d.message.c_str());
}

}  // namespace

TrackerCore::TrackerCore(HookBackend& backend, TrackerOptions options)
    : backend_(backend), options_(options), sink_(default_sink), tick0_(ticks()) {
  if (options_.journal_capacity == 0)
    throw std::invalid_argument("modtracker: journal_capacity must be at least 1");
  ring_.resize(std::bit_ceil(options_.journal_capacity));  // a power of two: index by mask
  ring_mask_ = ring_.size() - 1;
  intern("Global");
  add_count(global_id, Phase::forward);  // "Global" is always a parent
  (void)ns_per_tick();                   // calibrate now, not on the first read
}

TrackerCore::~TrackerCore() {
  if (epoch_) {
    try {
      stop();
    } catch (...) {
    }
  }
}

void TrackerCore::start() {
  if (epoch_) throw std::logic_error("modtracker: this tracker is tracking already (one scope at a time)");
  auto& epoch = open_epoch(*this);
  epoch_ = &epoch;  // before the observer: other threads' calls read it at once
  epoch_generation_ = epoch.generation.load(std::memory_order_relaxed);
  try {
    observer_ = backend_.add_forward_observer(*this);
  } catch (...) {
    epoch_ = nullptr;
    close_epoch(epoch);
    throw;
  }
}

void TrackerCore::stop() {
  if (!epoch_) throw std::logic_error("modtracker: this tracker is not tracking");
  observer_.remove();
  close_epoch(*std::exchange(epoch_, nullptr));  // waits for gradient callbacks running now
  // Calls still running will never report their end to this scope: forget
  // them, and every count but Global's.
  std::vector<ActivationRef> abandoned;
  {
    std::lock_guard<SpinLock> lock(state_);
    passes_.clear();
    for (std::uint32_t id = 1; id < counts_.size(); ++id) {
      while (counts_[id].backward > 0) sub_count(id, Phase::backward);
      while (counts_[id].forward > 0) sub_count(id, Phase::forward);
    }
    while (in_flight_) {
      Activation* a = in_flight_;
      unlink_in_flight(*a);
      abandoned.push_back(ActivationRef::adopt(a));
    }
  }
}

void TrackerCore::link_in_flight(Activation& a) noexcept {
  a.flying = true;
  a.flight_prev = nullptr;
  a.flight_next = in_flight_;
  if (in_flight_) in_flight_->flight_prev = &a;
  in_flight_ = &a;
}

bool TrackerCore::in_flight(const Activation& a) const noexcept { return a.flying; }

void TrackerCore::unlink_in_flight(Activation& a) noexcept {
  (a.flight_prev ? a.flight_prev->flight_next : in_flight_) = a.flight_next;
  if (a.flight_next) a.flight_next->flight_prev = a.flight_prev;
  a.flight_prev = a.flight_next = nullptr;
  a.flying = false;
}

std::uint32_t TrackerCore::intern(std::string fqn) {
  if (auto it = ids_.find(fqn); it != ids_.end()) return it->second;
  const auto id = static_cast<std::uint32_t>(names_.size());
  names_.push_back(std::move(fqn));
  ids_.emplace(names_.back(), id);
  counts_.emplace_back();
  return id;
}

void TrackerCore::add_count(std::uint32_t fqn, Phase phase) {
  auto& c = counts_[fqn];
  if (c.forward + c.backward == 0) {
    c.active_pos = static_cast<std::uint32_t>(active_.size());
    active_.push_back(fqn);
  }
  ++(phase == Phase::forward ? c.forward : c.backward);
}

void TrackerCore::sub_count(std::uint32_t fqn, Phase phase) {
  auto& c = counts_[fqn];
  --(phase == Phase::forward ? c.forward : c.backward);
  if (c.forward + c.backward != 0) return;
  const auto moved = active_.back();
  active_[c.active_pos] = moved;
  counts_[moved].active_pos = c.active_pos;
  active_.pop_back();
}

void TrackerCore::record(Phase phase, Kind kind, std::uint32_t fqn, std::uint32_t depth) {
  std::uint64_t time = 0;
  record(phase, kind, fqn, depth, time);
}

// `time`: the step's clock read, taken here if no transition of the step took it yet (0).
void TrackerCore::record(Phase phase, Kind kind, std::uint32_t fqn, std::uint32_t depth, std::uint64_t& time) {
  if (time == 0) time = ticks();
  if (ring_size_ == options_.journal_capacity) {  // full: drop the oldest
    ring_head_ = (ring_head_ + 1) & ring_mask_;
    --ring_size_;
    ++dropped_;
  }
  ring_[(ring_head_ + ring_size_) & ring_mask_] = RawTransition{time, fqn, depth, thread_index(), phase, kind};
  ++sequence_;
  ++ring_size_;
}

// Remembers `module` as `fqn`, with its liveness and the filter's verdict
// (asked once per module here, or again by set_filter). State lock held; the
// backend and filter calls here must not call back into the tracker.
const TrackerCore::ModuleInfo& TrackerCore::remember(ModuleRef module, std::string fqn) {
  auto weak = backend_.weak(module);
  const bool weak_known = !weak.expired();
  const auto id = intern(std::move(fqn));
  const bool selected = !filter_ || filter_(names_[id], module);
  return modules_.assign(module.ptr, ModuleInfo{id, selected, weak_known, std::move(weak), ++module_generation_});
}

const TrackerCore::ModuleInfo* TrackerCore::named(ModuleRef module, ModuleOwner owner) const noexcept {
  const auto* info = modules_.find(module.ptr);
  if (!info || !info->weak_known) return info;
  // A freed module's address? Asked where the address can be reused: by the
  // call site's owner when it has one (pointer compares), else by the weak
  // reference (its control block is cold memory: a cache miss per call).
  if (owner ? !owner.same(owner.owner, info->weak) : info->weak.expired()) return nullptr;
  return info;
}

// Names every child below `module` not named yet (first name wins).
void TrackerCore::name_subtree(ModuleRef module, std::uint32_t fqn) {
  backend_.for_each_child(module, [&](std::string_view name, ModuleRef child) {
    if (!child || named(child)) return;
    std::string child_fqn = names_[fqn];
    child_fqn.append(".").append(name);
    name_subtree(child, remember(child, std::move(child_fqn)).fqn);
  });
}

const TrackerCore::ModuleInfo& TrackerCore::info_for(ModuleRef module, ModuleOwner owner) {
  if (const auto* info = named(module, owner)) return *info;
  // A new root (or a new module at a freed one's address, which takes over its entry).
  name_subtree(module, remember(module, root_name_from_type(backend_.type_name(module))).fqn);
  return *modules_.find(module.ptr);  // naming the subtree may have moved it
}

void TrackerCore::children_changed(ModuleRef module) {
  if (!module) return;
  std::lock_guard<SpinLock> lock(state_);
  if (const auto* info = named(module)) name_subtree(module, info->fqn);  // else its first call names it
}

void TrackerCore::close_stale_passes() {
  const auto me = std::this_thread::get_id();
  for (auto p = passes_.begin(); p != passes_.end();) {
    if (p->thread != me) {
      ++p;
      continue;
    }
    for (auto a = p->open.rbegin(); a != p->open.rend(); ++a) {
      auto& act = **a;
      if (act.exited_pass == p->id) continue;
      act.exited_pass = p->id;
      exit_backward_locked(act);
    }
    p = passes_.erase(p);
  }
}

// An enter in progress: pre_forward's state across its three steps (before,
// under and after the state lock), which hand_over shares.
struct TrackerCore::Entering {
  explicit Entering(HookBackend& b) : backend(b) {}
  HookBackend& backend;
  // Whether backward runs, asked only if something depends on it (a no-grad
  // forward pays for no engine lookup).
  std::optional<bool> in_bw_known;
  bool in_bw() { return in_bw_known ? *in_bw_known : *(in_bw_known = backend.in_backward()); }
  Activation* act = nullptr;  // not published yet: no atomics needed to fill it
  ActivationRef made;         // frees it if naming throws
  std::uint32_t fqn = 0;
  bool selected = false;
  bool reentered = false;
  bool stale = false;
  std::string_view name;  // read under the lock: names_ may grow meanwhile
  // Once linked, the activation belongs to the in-flight list (a scope ending
  // meanwhile frees it) and to its exit callback, which the backend takes:
  // two references, counted when it is made.
  GradCallback exit_cb;
  GradOrder exit_order{};
  bool inputs_kept = false;  // exit_cb registered already (hand_over)
};

std::uintptr_t TrackerCore::pre_forward(const ForwardCall& call) {
  Entering e(backend_);
  begin_enter(call, e);
  {
    std::lock_guard<SpinLock> lock(state_);
    std::uint64_t time = 0;
    enter_locked(call, e, time);
  }
  return end_enter(call, e);
}

// With grad on (and outside backward) the call gets an Activation: its
// backward is followed. Allocated here, filled and linked under the one lock.
void TrackerCore::begin_enter(const ForwardCall& call, Entering& e) {
  if (!call.module) throw std::invalid_argument("modtracker: pre_forward of a null module");
  if (!backend_.grad_enabled() || e.in_bw()) return;
  auto* act = ::new (BlockPool<sizeof(Activation)>::allocate()) Activation;
  act->refs.store(1, std::memory_order_relaxed);
  e.made = ActivationRef::adopt(act);
  e.act = act;
  act->epoch = epoch_;
  act->epoch_generation = epoch_generation_;
  act->module = call.module.ptr;
  act->depth = call.depth;
  act->end_sequence = ~std::uint64_t{0};
  act->thread = thread_index();
}

void TrackerCore::enter_locked(const ForwardCall& call, Entering& e, std::uint64_t& time) {
  if (!passes_.empty() && !e.in_bw()) {
    const auto before = passes_.size();
    close_stale_passes();
    e.stale = passes_.size() != before;
  }
  const auto& info = info_for(call.module, call.owner);
  e.fqn = info.fqn;
  e.selected = info.selected;
  const auto& c = counts_[e.fqn];
  e.reentered = c.forward + c.backward > 0 && !e.in_bw();
  add_count(e.fqn, Phase::forward);
  if (e.selected) record(Phase::forward, Kind::enter, e.fqn, call.depth, time);
  if (e.reentered) e.name = names_[e.fqn];  // only the diagnostic needs it (a cold string)
  if (auto* act = e.act) {
    act->fqn = e.fqn;
    act->selected = e.selected;
    act->module_generation = info.generation;
    act->sequence = activations_++;
    act->previous_fqn = std::exchange(last_activation_fqn_, e.fqn);
    (void)e.made.release();  // from here on the in-flight list's reference
    act->refs.store(2, std::memory_order_relaxed);  // published by the lock's release
    e.exit_order = GradOrder{Kind::exit, act->depth, act->sequence, &act->backward_rank};
    e.exit_cb = GradCallback(act, activation_refs, &on_input_gradients);
    link_in_flight(*act);
  }
  if (call.next) modules_.prefetch(call.next.ptr);  // its lookup is the next call's first cache miss
}

std::uintptr_t TrackerCore::end_enter(const ForwardCall& call, Entering& e) {
  if (e.stale)
    diagnose({Diagnostic::Code::unfinished_backward, "",
              "a backward pass ended without running its end callbacks (did it throw?); "
              "its modules left backward when the next forward started"});
  if (e.reentered)
    diagnose({Diagnostic::Code::reentrant_forward, std::string(e.name),
              "module '" + std::string(e.name) +
                  "' entered while already active; the module hierarchy may be wrong"});
  auto* act = e.act;
  const std::uintptr_t token = act ? reinterpret_cast<std::uintptr_t>(act) | 1u : plain_token(e.fqn, e.selected);
  try {
    // Kept for good: inert once the scope ends; lives as long as the graph.
    if (act && !e.inputs_kept) backend_.keep_all_gradients(call.inputs, e.exit_order, std::move(e.exit_cb));
    if (e.selected && may_have_hooks()) {
      if (const auto h = hooks()) {
        if (h->post_fw) call.inputs_after = true;
        if (h->pre_fw) h->pre_fw(call.module, call.inputs);
      }
    }
  } catch (...) {
    undo_enter(call, e);
    throw;
  }
  return token;
}

// Takes back an enter whose call will not run (its pre work failed).
void TrackerCore::undo_enter(const ForwardCall& call, Entering& e) noexcept {
  ActivationRef dropped;
  std::lock_guard<SpinLock> lock(state_);
  if (e.act && in_flight(*e.act)) {  // still the list's (the scope may have ended and freed it)
    unlink_in_flight(*e.act);
    dropped = ActivationRef::adopt(e.act);
  }
  if (counts_[e.fqn].forward > 0) sub_count(e.fqn, Phase::forward);
  if (e.selected) record(Phase::forward, Kind::exit, e.fqn, call.depth);
}

// Forward exit under the state lock: count - 1 and the journal.
void TrackerCore::exit_forward_locked(std::uint32_t fqn, bool selected, std::uint32_t depth, std::uint64_t& time) {
  if (fqn >= counts_.size() || counts_[fqn].forward == 0 || fqn == global_id)
    throw std::logic_error("modtracker: forward exit without a matching enter");
  sub_count(fqn, Phase::forward);
  if (selected) record(Phase::forward, Kind::exit, fqn, depth, time);
}

// The whole exit of a call whose post hook does not run, under the state
// lock. Returns the call's activation, if it has one (the in-flight list's
// reference, now the caller's).
ActivationRef TrackerCore::exit_locked(const ForwardCall& call, std::uintptr_t token, std::uint64_t& time) {
  if (!(token & 1u)) {
    exit_forward_locked(static_cast<std::uint32_t>(token >> 2), (token & 2u) != 0, call.depth, time);
    return {};
  }
  auto* a = reinterpret_cast<Activation*>(token & ~std::uintptr_t{1});
  if (!in_flight(*a)) throw std::logic_error("modtracker: post_forward without a matching pre_forward");
  unlink_in_flight(*a);
  auto act = ActivationRef::adopt(a);
  exit_forward_locked(act->fqn, act->selected, call.depth, time);
  act->end_sequence = activations_;
  return act;
}

// After a call's exit: the first gradient of its output enters it in backward.
// `next`, entered already, takes that output as its inputs (a hand-over): its
// exit registration goes along in the same backend call.
void TrackerCore::keep_output(ActivationRef act, Payload output, Entering* next) {
  if (!act || !output) return;
  const GradOrder order{Kind::enter, act->depth, act->sequence};
  GradCallback fn(act.release(), activation_refs, &on_output_gradient);
  if (!next) {
    backend_.keep_first_gradient(output, order, std::move(fn));
    return;
  }
  backend_.keep_boundary(output, order, std::move(fn), next->exit_order, std::move(next->exit_cb));
  next->inputs_kept = true;
}

void TrackerCore::post_forward(const ForwardCall& call, Payload output, std::uintptr_t token) {
  if (!may_have_hooks()) return finish_forward(call, output, token, nullptr);  // the common case: one lock does all
  const auto h = hooks();
  finish_forward(call, output, token, h.get());
}

void TrackerCore::finish_forward(const ForwardCall& call, Payload output, std::uintptr_t token, const ErasedHooks* h) {
  ActivationRef act;
  std::uint64_t time = 0;
  if (!h || !h->post_fw) {
    {
      std::lock_guard<SpinLock> lock(state_);
      act = exit_locked(call, token, time);
    }
    return keep_output(std::move(act), output);
  }
  // A post hook runs before the exit, outside the lock (if the module is selected).
  std::uint32_t fqn;
  bool selected;
  bool exited = false;
  if (token & 1u) {
    auto* a = reinterpret_cast<Activation*>(token & ~std::uintptr_t{1});
    {
      std::lock_guard<SpinLock> lock(state_);
      if (in_flight(*a)) {
        if (!a->selected) {
          act = exit_locked(call, token, time);
          exited = true;
        } else {
          unlink_in_flight(*a);
          act = ActivationRef::adopt(a);  // the list's reference
        }
      }
    }
    if (!act) throw std::logic_error("modtracker: post_forward without a matching pre_forward");
    fqn = act->fqn;
    selected = act->selected;
  } else {
    fqn = static_cast<std::uint32_t>(token >> 2);
    selected = (token & 2u) != 0;
  }
  if (!exited) {
    std::exception_ptr hook_error;
    if (selected) {
      try {
        h->post_fw(call.module, call.inputs, output);
      } catch (...) {
        hook_error = std::current_exception();
      }
    }
    {
      std::lock_guard<SpinLock> lock(state_);
      exit_forward_locked(fqn, selected, call.depth, time);
      if (act) act->end_sequence = activations_;
    }
    if (hook_error) std::rethrow_exception(hook_error);
  }
  keep_output(std::move(act), output);
}

// One lock and one clock read for a call's exit and the next call's enter
// (a Sequential's children): the two transitions share a time. With user
// hooks, which run between the two, it is post_forward then pre_forward.
std::uintptr_t TrackerCore::hand_over(const ForwardCall& done, Payload output, std::uintptr_t token,
                                      const ForwardCall& next) {
  if (may_have_hooks()) return ForwardObserver::hand_over(done, output, token, next);  // post, then pre
  Entering e(backend_);
  ActivationRef act;  // done's, if it has one
  std::exception_ptr enter_error;
  try {
    begin_enter(next, e);
  } catch (...) {  // next does not start; done still ends
    enter_error = std::current_exception();
  }
  {
    std::lock_guard<SpinLock> lock(state_);
    std::uint64_t now = 0;  // one clock read for both transitions
    act = exit_locked(done, token, now);
    if (!enter_error) {
      try {
        enter_locked(next, e, now);
      } catch (...) {
        enter_error = std::current_exception();
      }
    }
  }
  try {  // done is finished either way
    const bool boundary = e.act && !enter_error && output.ptr == next.inputs.ptr;  // done's output is next's input
    keep_output(std::move(act), output, boundary ? &e : nullptr);
  } catch (...) {
    if (!enter_error) undo_enter(next, e);  // next will not run
    throw;
  }
  if (enter_error) std::rethrow_exception(enter_error);
  return end_enter(next, e);
}

// The module of an activation if it still exists: the one named at its
// address then (a later module at a reused address is not it).
std::shared_ptr<const void> TrackerCore::live_module(const Activation& act) const {
  std::lock_guard<SpinLock> lock(state_);
  const auto* info = modules_.find(act.module);
  if (!info || info->generation != act.module_generation) return nullptr;
  return info->weak.lock();
}

void TrackerCore::backward_enter(Activation& act, Payload grads) {
  const auto pass = backend_.backward_pass();
  if (pass == 0) return;  // a gradient outside any backward pass: nothing to enter
  bool first_of_pass = false;
  {
    std::lock_guard<SpinLock> lock(state_);
    if (act.entered_pass == pass) return;  // "first gradient of any": once per pass
    auto p = std::find_if(passes_.begin(), passes_.end(), [&](const OpenPass& o) { return o.id == pass; });
    if (p == passes_.end()) {
      passes_.push_back(OpenPass{pass, std::this_thread::get_id(), {}});
      p = std::prev(passes_.end());
      first_of_pass = true;
    }
    act.entered_pass = pass;
    act.backward_rank.store(++p->entered, std::memory_order_relaxed);
    // In a chain the module that ran before this one enters backward next:
    // start loading its count (at 1000 modules it is out of cache).
    if (act.previous_fqn < counts_.size()) prefetch_line(&counts_[act.previous_fqn]);
    p->open.emplace_back(act);
    add_count(act.fqn, Phase::backward);
    if (act.selected) record(Phase::backward, Kind::enter, act.fqn, act.depth);
  }
  if (first_of_pass) {
    backend_.at_end_of_backward([epoch = act.epoch, generation = act.epoch_generation, pass] {
      with_epoch(*epoch, generation, [&](TrackerCore& core) { core.finish_pass(pass); });
    });
  }
  if (act.selected && may_have_hooks()) {
    if (const auto h = hooks(); h && h->pre_bw) {
      const auto module = live_module(act);
      h->pre_bw(ModuleRef{module.get()}, grads);
    }
  }
}

void TrackerCore::backward_exit(Activation& act, Payload grads) {
  const auto pass = backend_.backward_pass();
  const bool post_hook = act.selected && may_have_hooks() && [&] {
    const auto h = hooks();
    return h && h->post_bw;
  }();
  std::vector<ActivationRef> inner;  // still in backward, but ran inside `act`
  {
    std::lock_guard<SpinLock> lock(state_);
    if (pass == 0 || act.entered_pass != pass || act.exited_pass == pass) return;  // never entered
    act.exited_pass = pass;
    // Modules whose exits wait for the end of the pass (their inputs get no
    // gradient in it) leave first, latest first, so backward stays nested.
    // They entered after `act`: search the open stack from its top (exits are
    // mostly last-in first-out, so this is short).
    const auto p = std::find_if(passes_.begin(), passes_.end(), [&](const OpenPass& o) { return o.id == pass; });
    if (p != passes_.end()) {
      auto& open = p->open;
      const auto at = std::find_if(open.rbegin(), open.rend(), [&](const auto& a) { return a.get() == &act; });
      if (at != open.rend()) {
        const auto index = static_cast<std::size_t>(std::distance(at, open.rend())) - 1;
        for (auto j = open.size(); j-- > index + 1;) {
          if (!act.encloses(*open[j])) continue;
          open[j]->exited_pass = pass;
          inner.push_back(open[j]);
        }
        if (inner.empty() && index + 1 == open.size()) open.pop_back();  // the usual case: it is on top
        else std::erase_if(open, [&](const auto& a) { return a->exited_pass == pass; });
      }
    }
    if (inner.empty() && !post_hook) {  // the usual case: no hook to run first, exit under this lock
      exit_backward_locked(act);
      return;
    }
  }
  for (const auto& a : inner) exit_backward(*a, Payload{});
  exit_backward(act, grads);
}

void TrackerCore::exit_backward_locked(const Activation& act) {
  if (counts_[act.fqn].backward == 0) return;  // stop() may have cleared it meanwhile
  sub_count(act.fqn, Phase::backward);
  if (act.selected) record(Phase::backward, Kind::exit, act.fqn, act.depth);
}

void TrackerCore::exit_backward(Activation& act, Payload grads) {
  std::exception_ptr hook_error;
  if (act.selected && may_have_hooks()) {
    try {
      if (const auto h = hooks(); h && h->post_bw) {
        const auto module = live_module(act);
        h->post_bw(ModuleRef{module.get()}, grads);
      }
    } catch (...) {
      hook_error = std::current_exception();
    }
  }
  {
    std::lock_guard<SpinLock> lock(state_);
    exit_backward_locked(act);
  }
  if (hook_error) std::rethrow_exception(hook_error);
}

void TrackerCore::finish_pass(std::uint64_t pass) {
  std::vector<ActivationRef> open;
  {
    std::lock_guard<SpinLock> lock(state_);
    auto p = std::find_if(passes_.begin(), passes_.end(), [&](const OpenPass& o) { return o.id == pass; });
    if (p == passes_.end()) return;
    open = std::move(p->open);
    passes_.erase(p);
  }
  std::exception_ptr first_error;
  for (auto a = open.rbegin(); a != open.rend(); ++a) {  // deferred exits, latest first
    {
      std::lock_guard<SpinLock> lock(state_);
      if ((*a)->exited_pass == pass) continue;
      (*a)->exited_pass = pass;
    }
    try {
      exit_backward(**a, Payload{});
    } catch (...) {
      if (!first_error) first_error = std::current_exception();
    }
  }
  if (first_error) std::rethrow_exception(first_error);
}

Parents TrackerCore::parents() const {
  std::vector<std::string_view> names;
  {
    std::lock_guard<SpinLock> lock(state_);
    names.reserve(active_.size());
    for (auto id : active_) names.emplace_back(names_[id]);
  }
  std::sort(names.begin(), names.end());
  return Parents(std::move(names));
}

std::optional<std::string> TrackerCore::known_fqn(ModuleRef module) const {
  if (!module) return std::nullopt;
  std::lock_guard<SpinLock> lock(state_);
  const auto* info = named(module);
  if (!info) return std::nullopt;
  return names_[info->fqn];
}

void TrackerCore::set_hooks(ErasedHooks hooks, const std::array<bool, 4>& given) {
  std::lock_guard<std::mutex> lock(config_);
  const ErasedHooks none;
  const ErasedHooks& now = hooks_ ? *hooks_ : none;
  const std::array<bool, 4> taken{static_cast<bool>(now.pre_fw), static_cast<bool>(now.post_fw),
                                  static_cast<bool>(now.pre_bw), static_cast<bool>(now.post_bw)};
  static constexpr std::array<const char*, 4> slot{"pre_fw", "post_fw", "pre_bw", "post_bw"};
  std::string clash;
  for (std::size_t i = 0; i < 4; ++i)
    if (given[i] && taken[i]) clash += (clash.empty() ? "" : ", ") + std::string(slot[i]);
  if (!clash.empty())
    throw HooksAlreadySet("modtracker: user hook slot(s) already set: " + clash +
                          " (call clear_user_hooks() first)");
  auto merged = std::make_shared<ErasedHooks>(now);
  if (given[0]) merged->pre_fw = std::move(hooks.pre_fw);
  if (given[1]) merged->post_fw = std::move(hooks.post_fw);
  if (given[2]) merged->pre_bw = std::move(hooks.pre_bw);
  if (given[3]) merged->post_bw = std::move(hooks.post_bw);
  hooks_ = std::move(merged);
  has_hooks_.store(true, std::memory_order_release);
}

void TrackerCore::clear_hooks() {
  std::lock_guard<std::mutex> lock(config_);
  hooks_.reset();
  has_hooks_.store(false, std::memory_order_release);
}

std::shared_ptr<const ErasedHooks> TrackerCore::hooks() const {
  if (!has_hooks_.load(std::memory_order_acquire)) return nullptr;  // the common case: no lock
  std::lock_guard<std::mutex> lock(config_);
  return hooks_;
}

void TrackerCore::set_filter(ErasedFilter filter) {
  // The filter runs once per module, when it is named or now for known ones.
  std::unordered_map<const void*, bool> verdicts;
  if (filter) {
    std::vector<std::pair<const void*, std::string>> known;
    {
      std::lock_guard<SpinLock> lock(state_);
      modules_.for_each([&](const void* ptr, const ModuleInfo& info) { known.emplace_back(ptr, names_[info.fqn]); });
    }
    for (const auto& [ptr, fqn] : known) verdicts[ptr] = filter(fqn, ModuleRef{ptr});
  }
  std::lock_guard<SpinLock> lock(state_);
  modules_.for_each([&](const void* ptr, ModuleInfo& info) {
    const auto v = verdicts.find(ptr);
    info.selected = v == verdicts.end() ? !filter || filter(names_[info.fqn], ModuleRef{ptr}) : v->second;
  });
  filter_ = std::move(filter);
}

void TrackerCore::set_sink(DiagnosticSink sink) {
  std::lock_guard<std::mutex> lock(config_);
  sink_ = sink ? std::move(sink) : DiagnosticSink(default_sink);
}

void TrackerCore::diagnose(Diagnostic d) {
  DiagnosticSink sink;
  {
    std::lock_guard<std::mutex> lock(config_);
    sink = sink_;
  }
  sink(d);
}

Generator<Transition> TrackerCore::transitions() {
  const double scale = ns_per_tick();
  for (;;) {
    RawTransition raw;
    std::uint64_t sequence = 0;
    std::string_view fqn;  // read under the lock: names_ may grow meanwhile
    std::uint64_t newly_dropped = 0;
    {
      std::lock_guard<SpinLock> lock(state_);
      newly_dropped = dropped_ - dropped_reported_;
      dropped_reported_ = dropped_;
      if (newly_dropped == 0) {
        if (ring_size_ == 0) break;
        raw = ring_[ring_head_];
        sequence = sequence_ - ring_size_;
        fqn = names_[raw.fqn];
        // Emptied: the next writes start over at the front, so a journal
        // read as often as it is written stays in the cache lines it used.
        ring_head_ = --ring_size_ == 0 ? 0 : (ring_head_ + 1) & ring_mask_;
      }
    }
    if (newly_dropped != 0) {  // said before the survivors are yielded
      diagnose({Diagnostic::Code::journal_overflow, "",
                std::to_string(newly_dropped) + " transitions dropped: the journal holds " +
                    std::to_string(options_.journal_capacity) + "; read transitions() more often or raise journal_capacity"});
      continue;
    }
    const auto ns = static_cast<std::int64_t>(static_cast<double>(raw.ticks - tick0_) * scale);
    co_yield Transition{raw.phase, raw.kind, fqn, raw.depth, sequence,
                        std::chrono::nanoseconds(ns), raw.thread};
  }
}

std::uint64_t TrackerCore::dropped_transitions() const {
  std::lock_guard<SpinLock> lock(state_);
  return dropped_;
}

Generator<std::pair<std::string, ModuleRef>> TrackerCore::walk(ModuleRef root) const {
  if (!root) throw std::invalid_argument("modtracker: walk of a null module");
  std::string root_fqn = known_fqn(root).value_or(root_name_from_type(backend_.type_name(root)));
  std::vector<std::pair<std::string, ModuleRef>> stack{{std::move(root_fqn), root}};
  std::unordered_set<const void*> seen{root.ptr};
  while (!stack.empty()) {
    auto [fqn, module] = std::move(stack.back());
    stack.pop_back();
    std::vector<std::pair<std::string, ModuleRef>> children;
    backend_.for_each_child(module, [&](std::string_view name, ModuleRef child) {
      if (child && seen.insert(child.ptr).second) children.emplace_back(fqn + "." + std::string(name), child);
    });
    std::move(children.rbegin(), children.rend(), std::back_inserter(stack));
    co_yield std::pair<std::string, ModuleRef>{std::move(fqn), module};
  }
}

}  // namespace detail
}  // namespace modtracker
