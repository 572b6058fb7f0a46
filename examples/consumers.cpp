// The demo's "biggest consumers": FLOPs by owner, bytes kept for backward,
// and the peak with its categories.
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

template <class Key>
void print_top(const char* what, std::vector<const modtracker::ModuleStats*> rows, Key key, std::uint64_t total,
               std::string (*format)(std::uint64_t)) {
  std::stable_sort(rows.begin(), rows.end(), [&](auto* a, auto* b) { return key(*a) > key(*b); });
  std::printf("  %-24s", what);
  for (std::size_t i = 0; i < rows.size() && i < 3 && key(*rows[i]) > 0; ++i)
    std::printf("%s%s %s (%.0f%%)", i ? ", " : "", rows[i]->fqn.c_str(), format(key(*rows[i])).c_str(),
                total ? 100.0 * static_cast<double>(key(*rows[i])) / static_cast<double>(total) : 0.0);
  std::printf("\n");
}

}  // namespace

void print_consumers(const modtracker::Statistics& stats, const lt::FlopCounter& flops, const lt::MemoryTracker& memory) {
  using modtracker::Phase;
  const auto layers = leaves(stats);
  const auto total = flops.total(Phase::forward) + flops.total(Phase::backward);
  std::printf("biggest consumers (of all the steps):\n");
  // Each FLOP has one owner (backward work by the node's module), so the
  // shares of all owners add up to 100 %.
  std::map<std::string, std::uint64_t> own;
  for (const auto phase : {Phase::forward, Phase::backward})
    for (const auto& [fqn, ops] : flops.exclusive_counts(phase))
      for (const auto& [op, n] : ops) own[fqn == "Global" ? "(outside modules)" : fqn] += n;
  std::vector<std::pair<std::string, std::uint64_t>> owners(own.begin(), own.end());
  std::stable_sort(owners.begin(), owners.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::printf("  %-24s", "FLOPs (fw + bw, own):");
  for (std::size_t i = 0; i < owners.size() && i < 3 && owners[i].second > 0; ++i)
    std::printf("%s%s %s (%.0f%%)", i ? ", " : "", owners[i].first.c_str(), modtracker::format_count(owners[i].second).c_str(),
                total ? 100.0 * static_cast<double>(owners[i].second) / static_cast<double>(total) : 0.0);
  std::printf("\n");
  std::uint64_t kept = 0;
  for (const auto* r : layers) kept += r->fw_kept_bytes.value_or(0);
  print_top("kept for backward:", layers, [](const auto& r) { return r.fw_kept_bytes.value_or(0); }, kept,
            modtracker::format_bytes);
  const auto peak = memory.peak();
  std::printf("  %-24s%s in %s (%s):", "peak memory:", modtracker::format_bytes(peak.bytes).c_str(),
              peak.fqn.empty() ? "no module" : peak.fqn.c_str(), peak.phase == Phase::forward ? "forward" : "backward");
  for (std::size_t c = 0; c < lt::memory_categories; ++c)
    if (peak.by_category[c])
      std::printf(" %s %s", std::string(lt::category_name(static_cast<lt::MemoryCategory>(c))).c_str(),
                  modtracker::format_bytes(peak.by_category[c]).c_str());
  const auto uncounted = flops.uncounted_operators();
  std::printf("\n  FLOPs count the matmul and convolution family; %zu other operators ran and count zero%s\n",
              uncounted.size(), uncounted.empty() ? "" : (" (" + uncounted.front() + ", ...)").c_str());
}

}  // namespace demo
