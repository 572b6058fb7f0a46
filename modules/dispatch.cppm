// Forward-call dispatch shared by every backend: the registry of active
// trackers and the per-call frame that runs their pre/post hooks in nesting
// order, also when the forward or a hook throws.
module;
#include <array>
#include <atomic>
#include <cstdint>
export module modtracker:dispatch;
import :backend;

namespace modtracker::detail {

struct ReaderSlot;

/// A stretch in which this thread uses tracker state that a scope's start or
/// end changes or frees (observer calls, gradient callbacks): a WriteSection
/// on another thread waits until it ends. Costs a few plain instructions;
/// reentrant. See dispatch.cpp for the protocol.
class ReadSection {
 public:
  ReadSection();
  ~ReadSection();
  ReadSection(const ReadSection&) = delete;
  ReadSection& operator=(const ReadSection&) = delete;

 private:
  ReaderSlot& slot_;
};

/// Exclusive: waits until no other thread is inside a ReadSection, and keeps
/// new ones out until it ends. Rare and slow (a membarrier, microseconds).
class WriteSection {
 public:
  WriteSection();
  ~WriteSection();
  WriteSection(const WriteSection&) = delete;
  WriteSection& operator=(const WriteSection&) = delete;
};

}  // namespace modtracker::detail

export namespace modtracker {

/// Registry of the forward observers (trackers) active on one backend.
/// Thread-safe; installing or removing an observer waits for observer calls
/// running on other threads to finish. Calls read the registry through a
/// per-thread count (no shared atomic per call, see dispatch.cpp).
class ForwardDispatcher {
 public:
  /// How many trackers can observe one backend at once.
  static constexpr std::size_t max_observers = 8;

  ForwardDispatcher() = default;
  ForwardDispatcher(const ForwardDispatcher&) = delete;
  ForwardDispatcher& operator=(const ForwardDispatcher&) = delete;
  ~ForwardDispatcher();

  /// Installs `observer`; throws std::length_error past max_observers.
  [[nodiscard]] Registration add(ForwardObserver& observer);
  /// Tells the observers that `module` has children it did not have when it
  /// first ran (a backend that can notice calls this; see ForwardObserver).
  void children_changed(ModuleRef module);
  /// No observer installed: callers can skip the frame entirely.
  [[nodiscard]] bool idle() const noexcept { return count_.load(std::memory_order_acquire) == 0; }

  /// One tracked module call. Construct before the forward (runs the pre
  /// hooks), call finish(output) after it; a Call destroyed unfinished
  /// reports a forward that threw.
  class Call {
   public:
    Call(ForwardDispatcher& dispatcher, ModuleRef module, Payload inputs, ModuleOwner owner = {},
         ModuleRef next = {});
    /// previous.finish(output), then this call, for a caller that hands a
    /// call's output straight on to the next call (a Sequential's children):
    /// one step where the observers allow it (ForwardObserver::hand_over).
    /// If finishing `previous` throws, this call does not start.
    Call(Call& previous, Payload output, ModuleRef module, Payload inputs, ModuleOwner owner = {},
         ModuleRef next = {});
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;
    ~Call();
    /// Runs the post hooks with the forward's output (rethrows a hook's exception).
    void finish(Payload output);
    /// Will an observer read the inputs after the forward (ForwardCall::inputs_after)?
    [[nodiscard]] bool inputs_after() const noexcept { return call_.inputs_after; }

   private:
    void start();
    void post(Payload output, bool forward_threw);
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
