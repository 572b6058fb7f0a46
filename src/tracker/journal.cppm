// The journal: the bounded record of transitions that drain_transitions()
// yields, written on every enter and exit.
module;
#include "tracker/includes.hpp"
module modtracker:journal;
import modtracker.backend;

namespace modtracker::detail {

/// A small index of the calling thread: 0, 1, ... in order of first use.
inline std::uint32_t thread_index() noexcept {
  static std::atomic<std::uint32_t> next{0};
  [[gnu::tls_model("initial-exec")]] static thread_local std::uint32_t index = ~0u;  // no init guard
  if (index == ~0u) index = next.fetch_add(1, std::memory_order_relaxed);
  return index;
}

/// One step's clock reading, taken on first need: the transitions of one
/// step (a call's exit and the next call's enter) share a time.
class StepClock {
 public:
  std::uint64_t read() noexcept { return ticks_ ? ticks_ : (ticks_ = ticks()); }

 private:
  std::uint64_t ticks_ = 0;
};

/// 24 bytes. The sequence number is not stored: the entry at the journal's
/// front has sequence `recorded - size`.
struct JournalEntry {
  std::uint64_t ticks;
  std::uint32_t fqn;
  std::uint32_t depth;
  std::uint32_t thread;
  Phase phase;
  Kind kind;
  std::uint16_t method;  ///< the engine's id of the call's method (0: forward)
};
static_assert(sizeof(JournalEntry) == 24);

/// A ring of `capacity` entries that drops its oldest entry when full. Not
/// thread-safe: the engine's state lock guards it.
class Journal {
 public:
  explicit Journal(std::size_t capacity);

  void record(Phase phase, Kind kind, std::uint32_t fqn, std::uint32_t depth, std::uint16_t method,
              StepClock& clock) noexcept {
    if (size_ == capacity_) {  // full: drop the oldest
      head_ = (head_ + 1) & mask_;
      --size_;
      ++dropped_;
    }
    ring_[(head_ + size_) & mask_] = JournalEntry{clock.read(), fqn, depth, thread_index(), phase, kind, method};
    ++recorded_;
    ++size_;
  }

  /// Takes the oldest entry and its sequence number; false when empty.
  bool pop(JournalEntry& entry, std::uint64_t& sequence) noexcept {
    if (size_ == 0) return false;
    entry = ring_[head_];
    sequence = recorded_ - size_;
    // Emptied: the next writes start over at the front, so a journal read as
    // often as it is written stays in the cache lines it used.
    head_ = --size_ == 0 ? 0 : (head_ + 1) & mask_;
    return true;
  }
  /// Entries dropped since the last call.
  std::uint64_t take_unreported_drops() noexcept {
    Ensures(reported_drops_ <= dropped_);
    const auto n = dropped_ - reported_drops_;
    reported_drops_ = dropped_;
    return n;
  }
  [[nodiscard]] std::uint64_t dropped() const noexcept { return dropped_; }
  /// Transitions recorded so far (the next one's sequence number).
  [[nodiscard]] std::uint64_t recorded() const noexcept { return recorded_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }

 private:
  std::vector<JournalEntry> ring_;  // a power of two long: indexed by mask
  std::size_t capacity_, mask_, head_ = 0, size_ = 0;
  std::uint64_t recorded_ = 0, dropped_ = 0, reported_drops_ = 0;
};

}  // namespace modtracker::detail
