// Ranks: the statistics and spans of every rank of a multi-process job,
// merged into one table across ranks and one trace with a process per rank.
// Framework-neutral: how the records travel is the LibTorch layer's
// (modtracker/libtorch_tools/ranks.hpp).
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <chrono>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
export module modtracker.stats:ranks;
import modtracker;
import :spans;
import :statistics;

export namespace modtracker {

/// What one rank of a job contributes: its table's rows and, where it kept
/// them, its spans, with how its clock maps onto rank 0's.
struct RankRecord {
  int rank = 0;
  std::string host;               ///< its host name
  std::int64_t pid = 0;           ///< its process id
  std::vector<ModuleStats> rows;  ///< its Statistics::rows()
  SpanLog spans;                  ///< empty unless it sent a trace
  /// Per span of `spans`, in order: the FLOPs of that activation (0 for
  /// none); empty if the rank had no FLOP counter.
  std::vector<std::uint64_t> span_flops;
  /// Its live bytes over time (its clock), as its memory tool sampled them;
  /// empty without one.
  std::vector<std::pair<std::chrono::nanoseconds, std::uint64_t>> memory;
  /// Added to this rank's times, gives rank 0's clock (the merged trace's);
  /// the true offset lies within clock_uncertainty of it.
  std::chrono::nanoseconds clock_offset{}, clock_uncertainty{};
  /// "rank 1 (host, pid 4242)"
  [[nodiscard]] std::string label() const;
};

/// Why a rank is missing from a merged result, or why its data is suspect.
struct RankProblem {
  enum class Kind : std::uint8_t {
    absent,     ///< it never joined the group (within the timeout)
    lost,       ///< its connection failed: the process died or closed its group
    timed_out,  ///< it did not answer within the timeout: hung, or not calling gather
    rejected,   ///< it sent what this rank cannot use (another version or gather, a bad record)
    differs,    ///< its table has other modules than the lowest rank's (merged by name)
    no_root,    ///< (on a rank other than 0) rank 0 did not take this rank's record
  };
  int rank = 0;
  Kind kind = Kind::absent;
  std::string message;  ///< what happened, in a sentence that names the rank
};
[[nodiscard]] std::string_view kind_name(RankProblem::Kind kind);

/// A module's time in one phase across the ranks that ran it.
struct RankSpread {
  std::size_t ranks = 0;  ///< that ran the phase at least once
  std::uint64_t calls_min = 0, calls_max = 0;
  std::chrono::nanoseconds min{}, median{}, max{};  ///< inclusive time, summed over its calls
  int slowest = -1;                                 ///< the rank of `max`; -1 if no rank ran it
};

/// A module's count (FLOPs, bytes) across the ranks that have it.
struct ValueSpread {
  std::size_t ranks = 0;  ///< that have a value (their tool was attached)
  std::uint64_t min = 0, median = 0, max = 0;
  int most = -1;  ///< the rank of `max` (the lowest such rank); -1 if no rank has a value
};

/// One module across the ranks: its row on each rank, and the spreads.
struct CrossRankRow {
  std::string fqn;
  std::vector<const ModuleStats*> per_rank;  ///< like records(); null where a rank lacks the module
  RankSpread fw, bw;
  /// Forward and backward FLOPs (inclusive of submodules), the bytes its
  /// forwards kept for backward, and its peak: the larger of its forward
  /// and backward peaks (ModuleStats' fields, from the FLOP and memory tools).
  ValueSpread fw_flops, bw_flops, kept, peak;
};

/// The rank whose memory peaked highest, and the module it peaked in.
struct PeakRank {
  int rank = 0;
  std::string fqn;  ///< the module whose own peak (forward or backward) is that rank's highest
  Phase phase = Phase::forward;
  std::uint64_t bytes = 0;
  std::uint64_t median = 0;  ///< the median over the ranks of each rank's highest peak
};

/// The module whose time on one rank stands out most above the median of
/// the ranks (exclusive time: the module's own work, not its children's).
struct Straggler {
  std::string fqn;
  int rank = 0;
  Phase phase = Phase::forward;
  std::chrono::nanoseconds time{}, median{};
};

/// Records of several ranks, merged by module name.
class CrossRankStatistics {
 public:
  /// Sorted by rank; two records of one rank throw std::invalid_argument.
  explicit CrossRankStatistics(std::vector<RankRecord> records);
  CrossRankStatistics(CrossRankStatistics&&) noexcept = default;
  CrossRankStatistics& operator=(CrossRankStatistics&&) noexcept = default;
  CrossRankStatistics(const CrossRankStatistics&) = delete;
  CrossRankStatistics& operator=(const CrossRankStatistics&) = delete;

  [[nodiscard]] const std::vector<RankRecord>& records() const noexcept { return records_; }
  /// Natural tree order, every module of any rank.
  [[nodiscard]] const std::vector<CrossRankRow>& rows() const noexcept { return rows_; }
  [[nodiscard]] const CrossRankRow* find(std::string_view fqn) const;
  /// A `differs` problem for each rank whose modules are not the lowest
  /// rank's, and for each that sent no spans where the lowest did.
  [[nodiscard]] std::vector<RankProblem> shape_differences() const;
  /// Nothing with fewer than two ranks, or when no module's time is above its median.
  [[nodiscard]] std::optional<Straggler> straggler() const;
  /// The highest memory peak of any rank, if some rank had a memory tool.
  [[nodiscard]] std::optional<PeakRank> peak() const;
  /// Per module: the ranks, and per phase the calls, min / median / max of
  /// inclusive time and the slowest rank. Where the ranks counted FLOPs, a
  /// second table of forward and backward FLOPs, and where they tracked
  /// memory a third of kept and peak bytes, each with min / median / max
  /// and the rank with the most. Then the slowest rank overall, the
  /// straggler, and the rank with the highest peak. Only options.max_depth
  /// is read.
  [[nodiscard]] std::string table(const TableOptions& options = {}) const;
  /// One Chrome/Perfetto trace, a process per rank (pid = rank + 1), every
  /// rank's spans on rank 0's clock, with the FLOPs of each slice (argument
  /// "flops") and a "memory" counter track per rank where the rank sent
  /// them. Returns the number of slices written.
  std::uint64_t write_trace(std::ostream& out) const;

 private:
  std::vector<RankRecord> records_;
  std::vector<CrossRankRow> rows_;
};

}  // namespace modtracker
