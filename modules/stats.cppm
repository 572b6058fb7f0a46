// Statistics and traces built on the transitions a tracker yields: spans
// matched from enter/exit pairs, per-module tables, Chrome trace JSON.
// Framework-neutral; LibTorch adds parameter counts and output shapes.
module;
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>
export module modtracker:stats;
import :backend;
import :core;

export namespace modtracker {

/// One activation of a module in one phase, from its enter to its exit
/// (fqn valid while the tracker that yielded the transitions lives).
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

/// Everything measured about one module.
struct ModuleStats {
  std::string fqn;
  std::uint64_t fw_calls = 0, bw_calls = 0;
  std::chrono::nanoseconds fw_inclusive{}, fw_exclusive{}, bw_inclusive{}, bw_exclusive{};
  std::uint64_t params_trainable = 0, params_frozen = 0;  ///< of the module and its children
  std::uint64_t bytes_trainable = 0, bytes_frozen = 0;
  std::string output_shape;  ///< of the last forward call, as the backend spells it
  [[nodiscard]] std::size_t depth() const noexcept;  ///< dots in the fqn + 1
};

/// Table columns (also the keys of --sort).
enum class Column { module, fw_calls, fw_inclusive, fw_exclusive, bw_calls, bw_inclusive, bw_exclusive, params, bytes };
/// "fw_incl" etc. to a Column; nothing for an unknown name.
[[nodiscard]] std::optional<Column> column_from_name(std::string_view name);
[[nodiscard]] std::string_view column_name(Column c);

struct TableOptions {
  std::size_t max_depth = 0;          ///< 0: every depth
  std::optional<Column> sort_by;      ///< none: tree order (natural), indented
};

/// "layer.2" before "layer.10": segments compared, digit runs as numbers.
[[nodiscard]] bool natural_less(std::string_view a, std::string_view b);
[[nodiscard]] std::string format_duration(std::chrono::nanoseconds d);
[[nodiscard]] std::string format_count(std::uint64_t n);
[[nodiscard]] std::string format_bytes(std::uint64_t n);

/// Per-module statistics from a stream of transitions.
class Statistics {
 public:
  /// Feeds one transition (in the order the tracker yielded them).
  void consume(const Transition& t);
  template <class Range>
  void consume_all(Range&& transitions) {
    for (const auto& t : transitions) consume(t);
  }
  /// The row of `fqn`, created empty if absent (to add parameters, shapes).
  ModuleStats& at(std::string_view fqn);
  [[nodiscard]] const ModuleStats* find(std::string_view fqn) const;
  /// Rows in natural tree order.
  [[nodiscard]] std::vector<const ModuleStats*> rows() const;
  /// The printable table with totals.
  [[nodiscard]] std::string table(const TableOptions& options = {}) const;
  /// Forward exclusive time over all modules (= the roots' inclusive time).
  [[nodiscard]] std::chrono::nanoseconds total(Phase phase) const;
  [[nodiscard]] std::uint64_t activations() const noexcept { return activations_; }

 private:
  struct NaturalLess {
    using is_transparent = void;
    bool operator()(std::string_view a, std::string_view b) const { return natural_less(a, b); }
  };
  std::map<std::string, ModuleStats, NaturalLess> rows_;
  SpanMatcher matcher_;
  std::uint64_t activations_ = 0;
};

/// Writes spans as Chrome trace-event JSON (ui.perfetto.dev, chrome://tracing):
/// one complete slice per activation, on the thread it ran on. A span that
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
  /// Closes the JSON document (also done by the destructor).
  void finish();
  [[nodiscard]] std::uint64_t slices() const noexcept { return slices_; }

 private:
  void write(const Span& s);
  std::ostream& out_;
  SpanMatcher matcher_;
  std::uint64_t slices_ = 0, async_ids_ = 0;
  bool finished_ = false;
};

}  // namespace modtracker
