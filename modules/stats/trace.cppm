// ChromeTraceWriter: spans as Chrome trace-event JSON, for ui.perfetto.dev
// and chrome://tracing.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <chrono>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
export module modtracker.stats:trace;
import modtracker;
import :spans;

export namespace modtracker {

/// One complete slice per activation, on the thread it ran on. A span that
/// overlaps others instead of nesting (Span::nested false) would break the
/// thread's stack of slices: it becomes an async slice (a "b"/"e" pair in
/// its own row of the process) instead.
class ChromeTraceWriter {
 public:
  explicit ChromeTraceWriter(std::ostream& out, std::string process_name = "modtracker");
  ChromeTraceWriter(const ChromeTraceWriter&) = delete;
  ChromeTraceWriter& operator=(const ChromeTraceWriter&) = delete;
  ~ChromeTraceWriter();
  void consume(const Transition& t);
  template <class Range>
  void consume_all(Range&& transitions) {
    for (const auto& t : transitions) consume(t);
  }
  /// Writes one span as a slice of process `process` (a rank: one process
  /// of the trace per rank), its times shifted by `shift` onto the trace's
  /// clock. consume() writes process 1, unshifted.
  void span(const Span& s, std::uint32_t process = 1, std::chrono::nanoseconds shift = {});
  /// Names process `process` and orders it by `process` in the viewer
  /// (the constructor names process 1).
  void name_process(std::uint32_t process, std::string_view name);
  /// Gives every slice consumed from now on the argument `name`, valued
  /// `value(span)` where that is not empty (a tool's FLOPs, for instance).
  void add_slice_arg(std::string name, std::function<std::optional<std::uint64_t>(const Span&)> value);
  /// A sample of counter track `track` (series `series`) of process
  /// `process` at `time` (the transitions' clock, shifted by `shift`): a
  /// memory curve, for instance.
  void counter(std::string_view track, std::string_view series, std::chrono::nanoseconds time, double value,
               std::uint32_t process = 1, std::chrono::nanoseconds shift = {});
  /// Writes one span like span(), with `args` as extra slice arguments
  /// (after the ones add_slice_arg() gives).
  void span(const Span& s, std::uint32_t process, std::chrono::nanoseconds shift,
            const std::vector<std::pair<std::string_view, std::uint64_t>>& args);
  /// One slice of something inside the modules' slices (an operator):
  /// `name` on track `thread` of `process` from `start` to `end` (the
  /// transitions' clock, shifted by `shift`), in category `category`, with
  /// text and number arguments.
  void slice(std::string_view name, std::string_view category, std::uint32_t thread, std::chrono::nanoseconds start,
             std::chrono::nanoseconds end, const std::vector<std::pair<std::string_view, std::string>>& text = {},
             const std::vector<std::pair<std::string_view, std::uint64_t>>& numbers = {}, std::uint32_t process = 1,
             std::chrono::nanoseconds shift = {});
  /// Closes the JSON document (also done by the destructor).
  void finish();
  [[nodiscard]] std::uint64_t slices() const noexcept { return slices_; }

 private:
  std::ostream& out_;
  SpanMatcher matcher_;
  std::vector<std::pair<std::string, std::function<std::optional<std::uint64_t>(const Span&)>>> slice_args_;
  std::uint64_t slices_ = 0, async_ids_ = 0;
  bool finished_ = false;
};

}  // namespace modtracker
