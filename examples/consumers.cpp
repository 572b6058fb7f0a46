// The demo's "biggest consumers": FLOPs by owner, bytes kept for backward,
// and the peak with its categories, as lines for the terminal and the report.
#include "consumers.hpp"

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace demo {

namespace lt = modtracker::libtorch;

namespace {

// The modules without children (a layer's cost, not its parents' sum).
std::vector<const modtracker::ModuleStats*> leaves(const modtracker::Statistics& stats) {
  const auto rows = stats.rows();  // tree order: a module's children right after it
  std::vector<const modtracker::ModuleStats*> out;
  for (std::size_t i = 0; i < rows.size(); ++i)
    if (i + 1 == rows.size() || !rows[i + 1]->fqn.starts_with(rows[i]->fqn + ".")) out.push_back(rows[i]);
  return out;
}

// "what: a 3.54 M (19%), b 2.36 M (13%), ..." for the three largest of (name, value) pairs.
std::string top3(const char* what, std::vector<std::pair<std::string, std::uint64_t>> items, std::uint64_t total,
                 std::string (*format)(std::uint64_t)) {
  std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::string line = what;
  for (std::size_t i = 0; i < items.size() && i < 3 && items[i].second > 0; ++i) {
    char share[16];
    std::snprintf(share, sizeof share, " (%.0f%%)",
                  total ? 100.0 * static_cast<double>(items[i].second) / static_cast<double>(total) : 0.0);
    line += (i ? ", " : " ") + items[i].first + " " + format(items[i].second) + share;
  }
  return line;
}

}  // namespace

std::vector<std::string> consumers(const modtracker::Statistics& stats, const lt::FlopCounter& flops,
                                   const lt::MemoryTracker& memory) {
  using modtracker::Phase;
  const auto total = flops.total(Phase::forward) + flops.total(Phase::backward);
  // Each FLOP has one owner (backward work by the node's module), so the
  // shares of all owners add up to 100 %.
  std::map<std::string, std::uint64_t> own;
  for (const auto phase : {Phase::forward, Phase::backward})
    for (const auto& [fqn, ops] : flops.exclusive_counts(phase))
      for (const auto& [op, n] : ops) own[fqn == "Global" ? "(outside modules)" : fqn] += n;
  std::vector<std::string> lines{top3("FLOPs (fw + bw, own):", {own.begin(), own.end()}, total, modtracker::format_count)};
  std::uint64_t kept = 0;
  std::vector<std::pair<std::string, std::uint64_t>> kept_by;
  for (const auto* r : leaves(stats)) {
    kept += r->fw_kept_bytes.value_or(0);
    kept_by.emplace_back(r->fqn, r->fw_kept_bytes.value_or(0));
  }
  lines.push_back(top3("kept for backward:", std::move(kept_by), kept, modtracker::format_bytes));
  const auto peak = memory.peak();
  std::string line = "peak memory: " + modtracker::format_bytes(peak.bytes) + " in " +
                     (peak.fqn.empty() ? "no module" : peak.fqn) +
                     (peak.phase == Phase::forward ? " (forward):" : " (backward):");
  for (std::size_t c = 0; c < lt::memory_categories; ++c)
    if (peak.by_category[c])
      line += " " + std::string(lt::category_name(static_cast<lt::MemoryCategory>(c))) + " " +
              modtracker::format_bytes(peak.by_category[c]);
  lines.push_back(std::move(line));
  const auto uncounted = flops.uncounted_operators();
  lines.push_back("FLOPs count the matmul and convolution family; " + std::to_string(uncounted.size()) +
                  " other operators ran and count zero" + (uncounted.empty() ? "" : " (" + uncounted.front() + ", ...)"));
  return lines;
}

}  // namespace demo
