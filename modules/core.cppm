// The framework-neutral tracker state: fqn interning, `parents` counts,
// the transition journal, forward/backward enter/exit and the user hooks in
// type-erased form. Tracker<B> (tracker.cppm) is its typed front.
module;
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>
#include <deque>
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
#include <utility>
#include <vector>
export module modtracker:core;
import :backend;
import :generator;

export namespace modtracker {

/// One enter or exit of a module, forward or backward.
struct Transition {
  Phase phase;
  Kind kind;
  std::string_view fqn;        ///< valid as long as the tracker lives
  std::uint32_t depth;         ///< forward call depth of the activation
  std::uint64_t sequence;      ///< order of the transition within its tracker
  std::chrono::nanoseconds time;  ///< since the tracker was created (steady clock)
  std::uint32_t thread;        ///< small index of the thread it happened on (0, 1, ...)
};

/// What the tracker reports through its diagnostics sink.
struct Diagnostic {
  enum class Code : std::uint8_t {
    reentrant_forward,    ///< a module entered while already active outside backward
    unfinished_backward,  ///< a backward pass ended without its end callback (it threw)
    journal_overflow,     ///< the transition journal dropped its oldest entries
  };
  Code code;
  std::string fqn;
  std::string message;
};
using DiagnosticSink = std::function<void(const Diagnostic&)>;

/// Thrown when user hooks are registered into slots that are already set.
class HooksAlreadySet : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

/// Sizes and switches of a tracker.
struct TrackerOptions {
  std::size_t journal_capacity = std::size_t{1} << 16;  ///< transitions kept before the oldest drop
};

/// A snapshot of `parents`: sorted fqns, always holding "Global".
class Parents {
 public:
  Parents() = default;
  explicit Parents(std::vector<std::string_view> sorted) : names_(std::move(sorted)) {}
  [[nodiscard]] bool contains(std::string_view fqn) const noexcept;
  [[nodiscard]] std::size_t size() const noexcept { return names_.size(); }
  [[nodiscard]] auto begin() const noexcept { return names_.begin(); }
  [[nodiscard]] auto end() const noexcept { return names_.end(); }
  [[nodiscard]] std::set<std::string> to_set() const;
  friend bool operator==(const Parents&, const Parents&) = default;

 private:
  std::vector<std::string_view> names_;
};

/// "TypeName" from "ns::TypeNameImpl": namespaces and a trailing Impl dropped.
[[nodiscard]] std::string root_name_from_type(std::string_view type_name);

namespace detail {

/// User hooks with their payloads still opaque.
struct ErasedHooks {
  std::function<void(ModuleRef, Payload)> pre_fw;
  std::function<void(ModuleRef, Payload, Payload)> post_fw;
  std::function<void(ModuleRef, Payload)> pre_bw;
  std::function<void(ModuleRef, Payload)> post_bw;
};
using ErasedFilter = std::function<bool(std::string_view, ModuleRef)>;

/// A tiny test-and-set lock: the state it guards is touched for nanoseconds.
class SpinLock {
 public:
  void lock() noexcept {
    while (flag_.test_and_set(std::memory_order_acquire))
      while (flag_.test(std::memory_order_relaxed)) std::this_thread::yield();
  }
  void unlock() noexcept { flag_.clear(std::memory_order_release); }

 private:
  std::atomic_flag flag_;
};

/// Module address -> value, for the lookup on every module call: open
/// addressing in one flat array of (address, value) slots, so a lookup is one
/// probe that finds the value in the same cache line (std::unordered_map
/// costs two dependent cache misses per lookup once a model has a thousand
/// modules). Nothing is ever erased: a new module at a freed module's address
/// takes over its entry (assign). Growth moves the values: a reference is
/// valid until the next assign.
template <class V>
class AddressMap {
 public:
  [[nodiscard]] V* find(const void* key) noexcept {
    if (slots_.empty()) return nullptr;
    for (std::size_t i = home(key);; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.key == key) return &s.value;
      if (!s.key) return nullptr;
    }
  }
  [[nodiscard]] const V* find(const void* key) const noexcept { return const_cast<AddressMap*>(this)->find(key); }
  /// Sets the value of `key` (inserting it if absent); returns it.
  V& assign(const void* key, V value) {
    if (V* v = find(key)) return *v = std::move(value);
    if ((size_ + 1) * 2 > slots_.size()) grow();
    ++size_;
    return place(key, std::move(value));
  }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  /// Starts loading the home slot of `key` into the cache (a lookup soon).
  void prefetch(const void* key) const noexcept {
    if (slots_.empty()) return;
    const auto* first = reinterpret_cast<const char*>(&slots_[home(key)]);
    __builtin_prefetch(first);
    __builtin_prefetch(first + sizeof(Slot) - 1);  // a slot may straddle two lines
  }
  /// Calls f(key, value) for every entry.
  template <class F>
  void for_each(F&& f) {
    for (auto& s : slots_)
      if (s.key) f(s.key, s.value);
  }

 private:
  struct Slot {
    const void* key = nullptr;
    V value{};
  };
  [[nodiscard]] std::size_t home(const void* key) const noexcept {
    const auto h = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(key)) * 0x9E3779B97F4A7C15ull;
    return static_cast<std::size_t>(h >> shift_);
  }
  V& place(const void* key, V value) {
    std::size_t i = home(key);
    while (slots_[i].key) i = (i + 1) & mask_;
    slots_[i].key = key;
    slots_[i].value = std::move(value);
    return slots_[i].value;
  }
  void grow() {
    const std::size_t size = slots_.empty() ? 64 : slots_.size() * 2;
    std::vector<Slot> old(size);
    old.swap(slots_);
    mask_ = size - 1;
    shift_ = 64 - static_cast<unsigned>(std::countr_zero(size));
    for (auto& s : old)
      if (s.key) place(s.key, std::move(s.value));
  }
  std::vector<Slot> slots_;
  std::size_t mask_ = 0, size_ = 0;
  unsigned shift_ = 64;
};

struct Activation;
struct Epoch;
void retain_activation(Activation* a) noexcept;
void release_activation(Activation* a) noexcept;

/// A counted reference to an Activation, whose count lives in it (no control
/// block, and the references made with it cost no atomic operation).
class ActivationRef {
 public:
  ActivationRef() = default;
  /// Takes over a reference already counted.
  static ActivationRef adopt(Activation* a) noexcept {
    ActivationRef r;
    r.p_ = a;
    return r;
  }
  /// Adds a reference.
  explicit ActivationRef(Activation& a) noexcept : p_(&a) { retain_activation(p_); }
  ActivationRef(const ActivationRef& o) noexcept : p_(o.p_) {
    if (p_) retain_activation(p_);
  }
  ActivationRef(ActivationRef&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  ActivationRef& operator=(ActivationRef o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~ActivationRef() {
    if (p_) release_activation(p_);
  }
  [[nodiscard]] Activation* get() const noexcept { return p_; }
  Activation* operator->() const noexcept { return p_; }
  Activation& operator*() const noexcept { return *p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }
  /// Hands the reference on (to an adopting owner).
  [[nodiscard]] Activation* release() noexcept { return std::exchange(p_, nullptr); }

 private:
  Activation* p_ = nullptr;
};

class TrackerCore final : public ForwardObserver {
 public:
  explicit TrackerCore(HookBackend& backend, TrackerOptions options = {});
  TrackerCore(const TrackerCore&) = delete;
  TrackerCore& operator=(const TrackerCore&) = delete;
  ~TrackerCore();

  void start();
  void stop();
  [[nodiscard]] bool tracking() const noexcept { return epoch_ != nullptr; }

  [[nodiscard]] Parents parents() const;
  [[nodiscard]] bool is_bw() const { return backend_.in_backward(); }
  [[nodiscard]] std::optional<std::string> known_fqn(ModuleRef module) const;
  [[nodiscard]] HookBackend& backend() const noexcept { return backend_; }

  void set_hooks(ErasedHooks hooks, const std::array<bool, 4>& given);
  void clear_hooks();
  void set_filter(ErasedFilter filter);
  void set_sink(DiagnosticSink sink);

  Generator<Transition> transitions();
  [[nodiscard]] std::uint64_t dropped_transitions() const;
  Generator<std::pair<std::string, ModuleRef>> walk(ModuleRef root) const;

  std::uintptr_t pre_forward(const ForwardCall& call) override;
  void post_forward(const ForwardCall& call, Payload output, std::uintptr_t token) override;
  std::uintptr_t hand_over(const ForwardCall& done, Payload output, std::uintptr_t token,
                           const ForwardCall& next) override;
  void children_changed(ModuleRef module) override;

  // Called by the gradient callbacks (through their Epoch).
  void backward_enter(Activation& act, Payload grads);
  void backward_exit(Activation& act, Payload grads);
  void finish_pass(std::uint64_t pass);

 private:
  struct ModuleInfo {
    std::uint32_t fqn;
    bool selected;
    bool weak_known;
    WeakModule weak;
    std::uint64_t generation;  // which module at this address (addresses are reused)
  };
  struct Count {
    std::uint32_t forward = 0;
    std::uint32_t backward = 0;
    std::uint32_t active_pos = 0;  // index in active_ while forward + backward > 0
  };
  // 24 bytes: the journal is written on every enter and exit. The sequence
  // number is not stored: the entry at the ring's head has sequence_ - ring_size_.
  struct RawTransition {
    std::uint64_t ticks;
    std::uint32_t fqn;
    std::uint32_t depth;
    std::uint32_t thread;
    Phase phase;
    Kind kind;
  };
  struct OpenPass {
    std::uint64_t id;
    std::thread::id thread;
    std::vector<ActivationRef> open;  // entered in this pass, not exited yet
    std::uint32_t entered = 0;        // activations entered so far: the next backward rank
  };

  std::uint32_t intern(std::string fqn);
  // Names lazily (state lock held); the reference is valid until the next naming.
  const ModuleInfo& info_for(ModuleRef module, ModuleOwner owner = {});
  // Its info if named (and not a freed module's at the same address).
  [[nodiscard]] const ModuleInfo* named(ModuleRef module, ModuleOwner owner = {}) const noexcept;
  const ModuleInfo& remember(ModuleRef module, std::string fqn);
  void name_subtree(ModuleRef module, std::uint32_t fqn);
  void add_count(std::uint32_t fqn, Phase phase);
  void sub_count(std::uint32_t fqn, Phase phase);
  void record(Phase phase, Kind kind, std::uint32_t fqn, std::uint32_t depth);  // reads the clock
  void record(Phase phase, Kind kind, std::uint32_t fqn, std::uint32_t depth, std::uint64_t& time);
  void exit_backward(Activation& act, Payload grads);
  void exit_backward_locked(const Activation& act);
  void exit_forward_locked(std::uint32_t fqn, bool selected, std::uint32_t depth, std::uint64_t& time);
  ActivationRef exit_locked(const ForwardCall& call, std::uintptr_t token, std::uint64_t& time);
  struct Entering;
  void keep_output(ActivationRef act, Payload output, Entering* next = nullptr);
  void begin_enter(const ForwardCall& call, Entering& e);
  void enter_locked(const ForwardCall& call, Entering& e, std::uint64_t& time);
  std::uintptr_t end_enter(const ForwardCall& call, Entering& e);
  void undo_enter(const ForwardCall& call, Entering& e) noexcept;
  [[nodiscard]] std::shared_ptr<const void> live_module(const Activation& act) const;
  void close_stale_passes();
  void link_in_flight(Activation& a) noexcept;
  void unlink_in_flight(Activation& a) noexcept;
  [[nodiscard]] bool in_flight(const Activation& a) const noexcept;
  void diagnose(Diagnostic d);
  std::shared_ptr<const ErasedHooks> hooks() const;
  // False in the common case (no user hooks): then the hot paths hold no
  // hooks pointer at all (its null copy costs a store and a reload).
  [[nodiscard]] bool may_have_hooks() const noexcept { return has_hooks_.load(std::memory_order_acquire); }
  void finish_forward(const ForwardCall& call, Payload output, std::uintptr_t token, const ErasedHooks* h);

  HookBackend& backend_;
  TrackerOptions options_;
  mutable SpinLock state_;  // guards everything below except hooks_/sink_
  std::deque<std::string> names_;  // interned fqns; stable addresses
  std::unordered_map<std::string_view, std::uint32_t> ids_;
  AddressMap<ModuleInfo> modules_;
  std::vector<Count> counts_;
  std::vector<std::uint32_t> active_;  // fqn ids in parents, "Global" first
  std::vector<RawTransition> ring_;
  std::size_t ring_head_ = 0, ring_size_ = 0, ring_mask_ = 0;
  std::uint64_t dropped_ = 0, dropped_reported_ = 0, sequence_ = 0, activations_ = 0, module_generation_ = 0;
  std::uint32_t last_activation_fqn_ = 0;  // see Activation::previous_fqn
  std::vector<OpenPass> passes_;
  Activation* in_flight_ = nullptr;  // activations between pre_ and post_forward
  ErasedFilter filter_;

  mutable std::mutex config_;  // guards hooks_, sink_
  std::shared_ptr<const ErasedHooks> hooks_;
  std::atomic<bool> has_hooks_{false};
  DiagnosticSink sink_;

  Epoch* epoch_ = nullptr;  // set while tracking
  std::uint64_t epoch_generation_ = 0;
  Registration observer_;
  std::uint64_t tick0_;
};

}  // namespace detail
}  // namespace modtracker
