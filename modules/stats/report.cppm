// The report: one self-contained HTML page of a run's cost per module (an
// icicle of the module tree by time, FLOPs, memory or parameters, and the
// sortable table), for a browser with no network.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>
export module modtracker.stats:report;
import :statistics;
import :ranks;

export namespace modtracker {

struct ReportOptions {
  std::string title = "modtracker report";  ///< the page's heading and title
  std::string subtitle;                     ///< a line under it (the model, the steps), if any
  std::vector<std::string> notes;           ///< lines shown under the summary, as given
};

/// Writes the report of one tracker's statistics: what the table shows
/// (Statistics::table()), the FLOP and memory columns where a tool gave
/// them (annotate(stats, flops) etc.), as one HTML file with its CSS, script
/// and data inline. The page makes no network request.
void write_report(std::ostream& out, const Statistics& stats, const ReportOptions& options = {});
/// The report of a job's ranks: one view per rank, and the spread across
/// ranks (CrossRankStatistics::table()) with the straggler marked.
void write_report(std::ostream& out, const CrossRankStatistics& ranks, const ReportOptions& options = {});

}  // namespace modtracker
