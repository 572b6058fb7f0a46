// Spans: one activation of a module in one phase, from its enter to its
// exit, matched from a stream of transitions.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
export module modtracker.stats:spans;
import modtracker;

export namespace modtracker {

/// One activation (fqn valid while the tracker that yielded the transitions lives).
struct Span {
  std::string_view fqn;
  Phase phase;
  std::uint32_t thread;
  std::uint32_t depth;
  std::uint64_t call;  ///< 0 for the first activation of this fqn in this phase
  std::chrono::nanoseconds start, end;
  /// Time when another span of this thread and phase, entered later, ran
  /// innermost (a child, or in a backward whose branches interleave, a span
  /// that outlives this one): exclusive() is the time this one ran innermost.
  std::chrono::nanoseconds children;
  /// False when it closed below another open span (they overlap: backward
  /// through a graph whose branches share an input).
  bool nested = true;
  std::uint64_t exit_sequence = 0;  ///< the sequence number of its exit transition
  [[nodiscard]] std::chrono::nanoseconds inclusive() const noexcept { return end - start; }
  [[nodiscard]] std::chrono::nanoseconds exclusive() const noexcept { return inclusive() - children; }
};

/// Pairs enters with exits (per thread and phase) into Spans.
class SpanMatcher {
 public:
  /// Feeds one transition; returns the span it closes, if any.
  std::optional<Span> consume(const Transition& t);
  /// Activations entered and not exited yet.
  [[nodiscard]] std::size_t open() const noexcept;

 private:
  struct Open {
    std::string_view fqn;  // interned by the tracker: stable while it lives
    std::uint32_t depth;
    std::chrono::nanoseconds start, innermost;  // innermost: time on top of its stack
  };
  struct Stack {
    std::vector<Open> open;
    std::chrono::nanoseconds last{};  // the stack's latest transition
  };
  std::map<std::pair<std::uint32_t, Phase>, Stack> stacks_;
  std::map<std::pair<std::string_view, Phase>, std::uint64_t> calls_;
};

/// Keeps every span of a stream of transitions, with its own copy of the
/// names: a trace written later, or sent to another process (ranks). A
/// copy has the closed spans only.
class SpanLog {
 public:
  SpanLog() = default;
  SpanLog(const SpanLog& o) { *this = o; }
  SpanLog& operator=(const SpanLog& o);
  SpanLog(SpanLog&&) noexcept = default;
  SpanLog& operator=(SpanLog&&) noexcept = default;
  /// Feeds one transition (in the order the tracker yielded them).
  void consume(const Transition& t);
  template <class Range>
  void consume_all(Range&& transitions) {
    for (const auto& t : transitions) consume(t);
  }
  /// Adds a span as it is (its fqn copied).
  void add(const Span& span);
  /// In the order they closed.
  [[nodiscard]] const std::vector<Span>& spans() const noexcept { return spans_; }
  [[nodiscard]] std::size_t size() const noexcept { return spans_.size(); }
  void clear();

 private:
  std::string_view intern(std::string_view fqn);
  SpanMatcher matcher_;
  std::deque<std::string> names_;  // a deque: growing it keeps the views valid
  std::set<std::string_view> index_;  // views of names_
  std::vector<Span> spans_;
};

}  // namespace modtracker
