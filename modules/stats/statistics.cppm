// Statistics: per-module calls and times from a stream of transitions, with
// what a backend adds (parameters, output shapes), as a printable table.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>
export module modtracker.stats:statistics;
import modtracker;
import :spans;
import :format;

export namespace modtracker {

/// Everything measured about one module.
struct ModuleStats {
  std::string fqn;
  std::uint64_t fw_calls = 0, bw_calls = 0;
  std::chrono::nanoseconds fw_inclusive{}, fw_exclusive{}, bw_inclusive{}, bw_exclusive{};
  std::uint64_t params_trainable = 0, params_frozen = 0;  ///< of the module and its children
  std::uint64_t bytes_trainable = 0, bytes_frozen = 0;
  std::string output_shape;  ///< of the last forward call, as the backend spells it
  /// From tools, when attached (their columns show only then): FLOPs of
  /// each phase (summed over calls, submodules included), and memory: the
  /// most live bytes above the level at entry in forward and in backward
  /// (over calls), and the bytes its forwards kept (summed).
  std::optional<std::uint64_t> fw_flops, bw_flops, fw_peak_bytes, fw_kept_bytes, bw_peak_bytes;
  [[nodiscard]] std::size_t depth() const noexcept;  ///< dots in the fqn + 1
};

/// The table's sortable columns (their names are the keys of --sort).
enum class Column {
  module, fw_calls, fw_inclusive, fw_exclusive, bw_calls, bw_inclusive, bw_exclusive, params, bytes,
  fw_flops, bw_flops, fw_peak, fw_kept, bw_peak
};
/// "fw_incl" etc. to a Column; nothing for an unknown name.
[[nodiscard]] std::optional<Column> column_from_name(std::string_view name);
[[nodiscard]] std::string_view column_name(Column c);

struct TableOptions {
  std::size_t max_depth = 0;      ///< 0: every depth
  std::optional<Column> sort_by;  ///< none: tree order (natural), indented
};

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
  /// Exclusive time over all modules (= the roots' inclusive time).
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

}  // namespace modtracker
