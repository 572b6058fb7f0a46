// Forward-call dispatch shared by every backend: what a tracker installs to
// see module calls (ForwardObserver), and the registry of installed trackers
// with the per-call frame that runs their pre/post steps in nesting order,
// also when the forward or a step throws (ForwardDispatcher).
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <array>
#include <atomic>
export module modtracker.backend:dispatch;
import :values;
import :registration;

export namespace modtracker {

/// Optional, from a call site that owns its module through a std::shared_ptr
/// (a holder, a container): `owns(site, known)` tells whether the weak
/// reference `known` refers to the module that site owns, by comparing
/// control blocks (no reference count, no cold memory touched). Without it
/// the tracker asks `known` whether it has expired to tell a module from a
/// freed one at the same address.
struct OwnerProof {
  const void* site = nullptr;
  bool (*owns)(const void* site, const WeakModule& known) noexcept = nullptr;
  explicit operator bool() const noexcept { return owns != nullptr; }
};

/// One module call as a backend reports it to the trackers.
struct ForwardCall {
  ModuleRef module;
  ValuesRef inputs;
  std::uint32_t depth = 0;  ///< tracked calls already running on this thread (the Call sets it)
  OwnerProof owner;         ///< optional: see OwnerProof
  /// Optional: the module's serial number, unique among the modules of the
  /// process (0: none). Like OwnerProof, it tells a tracker which module this
  /// is without reading cold memory, and it stays right for a module whose
  /// liveness a weak reference cannot tell (one on the stack).
  std::uint64_t serial = 0;
  /// Optional: the module this thread will likely call next (a Sequential's
  /// next child). A tracker starts loading its lookup; nothing depends on it.
  ModuleRef likely_next;
  /// Optional: the method called, when it is not `forward` (a TorchScript
  /// module's `encode` called from outside it), as a C string that outlives
  /// the call (null: forward); transitions name it. A pointer, not a
  /// string_view: the call stays 64 bytes, one cache line.
  const char* method = nullptr;
};

/// What an observer's pre_forward hands back to the call.
struct EnterResult {
  std::uintptr_t token = 0;         ///< the observer's own, handed back to its post_forward
  bool reads_inputs_after = false;  ///< it reads the inputs again after the forward (a post hook)
};

/// What a tracker installs into a backend's dispatcher to see forward calls.
class ForwardObserver {
 public:
  /// Before the module's forward. May throw: the observer has then undone
  /// its own pre work.
  virtual EnterResult pre_forward(const ForwardCall& call) = 0;
  /// After the forward; `output` is null when the forward threw. Called once
  /// for each pre_forward that returned.
  virtual void post_forward(const ForwardCall& call, ValuesRef output, std::uintptr_t token) = 0;
  /// post_forward(done, output, token), then pre_forward(next), for a chain
  /// of calls in which one call's output is the next call's input (a
  /// Sequential's children): nothing runs between the two, so an observer
  /// may do both in one step. If it throws, `done` has been finished anyway
  /// and `next` was not entered.
  virtual EnterResult exit_and_enter(const ForwardCall& done, ValuesRef output, std::uintptr_t token,
                                     const ForwardCall& next) {
    post_forward(done, output, token);
    return pre_forward(next);
  }
  /// Children were added to `module` after it first ran: a tracker that
  /// knows it names the new ones below it (first name still wins).
  virtual void children_changed(ModuleRef module) { (void)module; }

 protected:
  ~ForwardObserver() = default;
};

/// Registry of the forward observers (trackers) of one backend. Installing
/// or removing an observer waits for observer calls running on other
/// threads to finish; a call reads the registry through a mark on its own
/// thread (no shared atomic per call).
class ForwardDispatcher {
 public:
  /// How many trackers can observe one backend at once.
  static constexpr std::size_t max_observers = 8;

  ForwardDispatcher() = default;
  ForwardDispatcher(const ForwardDispatcher&) = delete;
  ForwardDispatcher& operator=(const ForwardDispatcher&) = delete;
  ~ForwardDispatcher();

  /// Installs `observer` until the handle is removed; throws
  /// std::length_error past max_observers.
  [[nodiscard]] Registration add(ForwardObserver& observer);
  /// Tells the observers that `module` has children it did not have when it
  /// first ran (a backend that can notice calls this).
  void children_changed(ModuleRef module);
  /// No observer installed: call sites may skip the frame entirely.
  [[nodiscard]] bool idle() const noexcept { return count_.load(std::memory_order_acquire) == 0; }

  /// One tracked module call: construct it before the forward (the pre
  /// steps run), call finish(output) after it; a Call destroyed unfinished
  /// reports a forward that threw.
  class Call {
   public:
    /// `call.depth` is filled in: Call(d, {.module = m, .inputs = {&in}, .serial = s}).
    Call(ForwardDispatcher& dispatcher, const ForwardCall& call);
    Call(ForwardDispatcher& dispatcher, ModuleRef module, ValuesRef inputs, OwnerProof owner = {},
         ModuleRef likely_next = {})
        : Call(dispatcher, ForwardCall{module, inputs, 0, owner, 0, likely_next}) {}
    /// The next call of a chain: previous.finish(output), then this call,
    /// in one step where the observers allow it (ForwardObserver::
    /// exit_and_enter). If finishing `previous` throws, this call does not start.
    Call(Call& previous, ValuesRef output, const ForwardCall& call);
    Call(Call& previous, ValuesRef output, ModuleRef module, ValuesRef inputs, OwnerProof owner = {},
         ModuleRef likely_next = {})
        : Call(previous, output, ForwardCall{module, inputs, 0, owner, 0, likely_next}) {}
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;
    ~Call();
    /// Runs the post steps with the forward's output (rethrows a step's exception).
    void finish(ValuesRef output);
    /// Will an observer read the inputs after the forward? A call site whose
    /// inputs do not outlive the forward by themselves then keeps them.
    [[nodiscard]] bool inputs_read_after() const noexcept { return inputs_read_after_; }

   private:
    void start();
    void post(ValuesRef output, bool forward_threw);
    void entered(ForwardObserver* observer, std::uint64_t generation, EnterResult r) noexcept;
    ForwardDispatcher* dispatcher_;
    ForwardCall call_;
    struct Seen {
      ForwardObserver* observer;
      std::uint64_t generation;
      std::uintptr_t token;
    };
    std::array<Seen, max_observers> seen_;  // the first n_seen_ are set (no clearing per call)
    std::uint32_t n_seen_ = 0;
    bool finished_ = false;
    bool inputs_read_after_ = false;
  };

 private:
  struct Slot {
    ForwardObserver* observer = nullptr;
    std::uint64_t generation = 0;
  };
  void remove(std::uint64_t generation);
  [[nodiscard]] bool installed(std::uint64_t generation) const noexcept;

  std::array<Slot, max_observers> slots_{};  // in installation order, compact
  std::uint32_t used_ = 0;
  std::uint64_t next_generation_ = 1;
  std::atomic<std::uint32_t> count_{0};
};

}  // namespace modtracker
