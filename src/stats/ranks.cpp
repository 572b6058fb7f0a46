// Ranks merged: rows joined by module name, spreads over the ranks, the
// straggler, and a trace with a process per rank.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <algorithm>
#include <array>
#include <chrono>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>
module modtracker.stats;
import modtracker;

namespace modtracker {

namespace {

std::uint64_t calls_of(const ModuleStats& r, Phase p) { return p == Phase::forward ? r.fw_calls : r.bw_calls; }
std::chrono::nanoseconds inclusive_of(const ModuleStats& r, Phase p) {
  return p == Phase::forward ? r.fw_inclusive : r.bw_inclusive;
}
std::chrono::nanoseconds exclusive_of(const ModuleStats& r, Phase p) {
  return p == Phase::forward ? r.fw_exclusive : r.bw_exclusive;
}

// Over (time, rank) pairs: min, median (of an even count, the mean of the
// middle two), max, and the rank of the max.
struct Order {
  std::chrono::nanoseconds min{}, median{}, max{};
  int slowest = -1;
};
Order order(std::vector<std::pair<std::chrono::nanoseconds, int>> v) {
  if (v.empty()) return {};
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return {v.front().first, n % 2 ? v[n / 2].first : (v[n / 2 - 1].first + v[n / 2].first) / 2, v.back().first,
          v.back().second};
}

RankSpread spread(const CrossRankRow& row, const std::vector<RankRecord>& records, Phase phase) {
  std::vector<std::pair<std::chrono::nanoseconds, int>> times;
  RankSpread s;
  for (std::size_t i = 0; i < row.per_rank.size(); ++i) {
    const auto calls = row.per_rank[i] ? calls_of(*row.per_rank[i], phase) : 0;
    if (calls == 0) continue;
    s.calls_min = times.empty() ? calls : std::min(s.calls_min, calls);
    s.calls_max = std::max(s.calls_max, calls);
    times.emplace_back(inclusive_of(*row.per_rank[i], phase), records[i].rank);
  }
  s.ranks = times.size();
  const auto o = order(std::move(times));
  s.min = o.min;
  s.median = o.median;
  s.max = o.max;
  s.slowest = o.slowest;
  return s;
}

// Over the ranks that have a value: min, median (of an even count, the
// mean of the middle two), max and the lowest rank that has the max.
ValueSpread value_spread(const CrossRankRow& row, const std::vector<RankRecord>& records,
                         std::optional<std::uint64_t> (*of)(const ModuleStats&)) {
  std::vector<std::pair<std::uint64_t, int>> v;
  for (std::size_t i = 0; i < row.per_rank.size(); ++i)
    if (const auto* r = row.per_rank[i])
      if (const auto value = of(*r)) v.emplace_back(*value, records[i].rank);
  if (v.empty()) return {};
  std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first != b.first ? a.first < b.first : a.second > b.second; });
  const auto n = v.size();
  return {n, v.front().first, n % 2 ? v[n / 2].first : (v[n / 2 - 1].first + v[n / 2].first) / 2, v.back().first,
          v.back().second};
}

std::optional<std::uint64_t> peak_of(const ModuleStats& r) {
  if (!r.fw_peak_bytes && !r.bw_peak_bytes) return std::nullopt;
  return std::max(r.fw_peak_bytes.value_or(0), r.bw_peak_bytes.value_or(0));
}

std::string calls_cell(const RankSpread& s) {
  if (s.ranks == 0) return "-";
  return s.calls_min == s.calls_max ? std::to_string(s.calls_min)
                                    : std::to_string(s.calls_min) + "-" + std::to_string(s.calls_max);
}

std::string time_cell(const RankSpread& s, std::chrono::nanoseconds d) { return s.ranks ? format_duration(d) : "-"; }
std::string rank_cell(const RankSpread& s) { return s.ranks > 1 ? std::to_string(s.slowest) : "-"; }

std::string some(const std::vector<std::string>& names) {
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < 3; ++i) out += (i ? ", " : "") + names[i];
  return names.size() > 3 ? out + ", ..." : out;
}

}  // namespace

std::string RankRecord::label() const {
  std::string out = "rank " + std::to_string(rank);
  if (!host.empty() || pid) out += " (" + (host.empty() ? std::string("?") : host) + ", pid " + std::to_string(pid) + ")";
  return out;
}

std::string_view kind_name(RankProblem::Kind kind) {
  switch (kind) {
    case RankProblem::Kind::absent: return "absent";
    case RankProblem::Kind::lost: return "lost";
    case RankProblem::Kind::timed_out: return "timed out";
    case RankProblem::Kind::rejected: return "rejected";
    case RankProblem::Kind::differs: return "differs";
    case RankProblem::Kind::no_root: return "no root";
  }
  return "?";
}

CrossRankStatistics::CrossRankStatistics(std::vector<RankRecord> records) : records_(std::move(records)) {
  std::stable_sort(records_.begin(), records_.end(), [](const auto& a, const auto& b) { return a.rank < b.rank; });
  for (std::size_t i = 1; i < records_.size(); ++i)
    if (records_[i].rank == records_[i - 1].rank)
      throw std::invalid_argument("modtracker: two records of rank " + std::to_string(records_[i].rank));
  // Joined by name through a hash map, then sorted once: the natural order's
  // comparisons (the costly part) are per module, not per module and rank.
  std::unordered_map<std::string_view, std::size_t> index;
  std::vector<std::pair<std::string_view, std::vector<const ModuleStats*>>> by_fqn;
  for (std::size_t i = 0; i < records_.size(); ++i)
    for (const auto& row : records_[i].rows) {
      const auto [it, added] = index.try_emplace(row.fqn, by_fqn.size());
      if (added) by_fqn.emplace_back(row.fqn, std::vector<const ModuleStats*>(records_.size(), nullptr));
      by_fqn[it->second].second[i] = &row;
    }
  std::sort(by_fqn.begin(), by_fqn.end(), [](const auto& a, const auto& b) { return natural_less(a.first, b.first); });
  rows_.reserve(by_fqn.size());
  for (auto& [fqn, per_rank] : by_fqn) {
    CrossRankRow row{std::string(fqn), std::move(per_rank), {}, {}, {}, {}, {}, {}};
    row.fw = spread(row, records_, Phase::forward);
    row.bw = spread(row, records_, Phase::backward);
    row.fw_flops = value_spread(row, records_, [](const ModuleStats& r) { return r.fw_flops; });
    row.bw_flops = value_spread(row, records_, [](const ModuleStats& r) { return r.bw_flops; });
    row.kept = value_spread(row, records_, [](const ModuleStats& r) { return r.fw_kept_bytes; });
    row.peak = value_spread(row, records_, peak_of);
    rows_.push_back(std::move(row));
  }
}

const CrossRankRow* CrossRankStatistics::find(std::string_view fqn) const {
  const auto it = std::lower_bound(rows_.begin(), rows_.end(), fqn,
                                   [](const CrossRankRow& r, std::string_view f) { return natural_less(r.fqn, f); });
  return it != rows_.end() && it->fqn == fqn ? &*it : nullptr;
}

std::vector<RankProblem> CrossRankStatistics::shape_differences() const {
  std::vector<RankProblem> out;
  if (records_.size() < 2) return out;
  for (std::size_t i = 1; i < records_.size(); ++i) {
    std::vector<std::string> missing, extra;
    for (const auto& row : rows_) {
      if (row.per_rank[0] && !row.per_rank[i]) missing.push_back(row.fqn);
      if (!row.per_rank[0] && row.per_rank[i]) extra.push_back(row.fqn);
    }
    // A rank that kept no spans while the lowest did has an empty process in the merged trace: said, not silent.
    const bool no_spans = records_[i].spans.size() == 0 && records_[0].spans.size() != 0;
    if (no_spans)
      out.push_back({records_[i].rank, RankProblem::Kind::differs,
                     "rank " + std::to_string(records_[i].rank) + " sent no spans while rank " +
                         std::to_string(records_[0].rank) +
                         " did: its process in the merged trace is empty (pass its SpanLog to gather())"});
    if (missing.empty() && extra.empty()) continue;
    std::string message = "rank " + std::to_string(records_[i].rank) + "'s table differs in shape from rank " +
                          std::to_string(records_[0].rank) + "'s:";
    if (!missing.empty()) message += " " + std::to_string(missing.size()) + " module(s) missing (" + some(missing) + ")";
    if (!extra.empty())
      message += std::string(missing.empty() ? "" : ";") + " " + std::to_string(extra.size()) + " module(s) only there (" +
                 some(extra) + ")";
    out.push_back({records_[i].rank, RankProblem::Kind::differs,
                   message + "; rows are merged by module name (does every rank build the same model?)"});
  }
  return out;
}

std::optional<Straggler> CrossRankStatistics::straggler() const {
  if (records_.size() < 2) return std::nullopt;
  std::optional<Straggler> best;
  for (const auto& row : rows_)
    for (const Phase phase : {Phase::forward, Phase::backward}) {
      std::vector<std::pair<std::chrono::nanoseconds, int>> times;
      for (std::size_t i = 0; i < row.per_rank.size(); ++i)
        if (const auto* r = row.per_rank[i]; r && calls_of(*r, phase) > 0)
          times.emplace_back(exclusive_of(*r, phase), records_[i].rank);
      if (times.size() < 2) continue;
      const auto o = order(std::move(times));
      if (o.max > o.median && (!best || o.max - o.median > best->time - best->median))
        best = Straggler{row.fqn, o.slowest, phase, o.max, o.median};
    }
  return best;
}

std::optional<PeakRank> CrossRankStatistics::peak() const {
  // Each rank's highest module peak, then the highest of those.
  std::vector<std::pair<std::uint64_t, int>> highest;
  std::optional<PeakRank> best;
  for (const auto& record : records_) {
    std::optional<PeakRank> mine;
    for (const auto& r : record.rows)
      for (const auto& [value, phase] : {std::pair{r.fw_peak_bytes, Phase::forward}, std::pair{r.bw_peak_bytes, Phase::backward}})
        if (value && (!mine || *value > mine->bytes)) mine = PeakRank{record.rank, r.fqn, phase, *value, 0};
    if (!mine) continue;
    highest.emplace_back(mine->bytes, record.rank);
    if (!best || mine->bytes > best->bytes) best = std::move(mine);
  }
  if (!best) return std::nullopt;
  std::sort(highest.begin(), highest.end());
  const auto n = highest.size();
  best->median = n % 2 ? highest[n / 2].first : (highest[n / 2 - 1].first + highest[n / 2].first) / 2;
  return best;
}

std::string CrossRankStatistics::table(const TableOptions& options) const {
  const auto world = std::to_string(records_.size());
  // The rows shown, each with its indented name.
  std::vector<std::pair<const CrossRankRow*, std::string>> shown;
  for (const auto& row : rows_) {
    const auto depth = static_cast<std::size_t>(std::count(row.fqn.begin(), row.fqn.end(), '.')) + 1;
    if (options.max_depth && depth > options.max_depth) continue;
    const auto dot = row.fqn.rfind('.');
    shown.emplace_back(&row, std::string(2 * (depth - 1), ' ') + (dot == std::string::npos ? row.fqn : row.fqn.substr(dot + 1)));
  }
  std::vector<std::vector<std::string>> cells{{"module", "ranks", "fw calls", "fw min", "fw median", "fw max", "slowest",
                                               "bw calls", "bw min", "bw median", "bw max", "slowest"}};
  for (const auto& [row, name] : shown) {
    const auto present = static_cast<std::size_t>(std::count_if(row->per_rank.begin(), row->per_rank.end(),
                                                                 [](const auto* r) { return r != nullptr; }));
    cells.push_back({name, present == records_.size() ? world : std::to_string(present) + "/" + world,
                     calls_cell(row->fw), time_cell(row->fw, row->fw.min), time_cell(row->fw, row->fw.median),
                     time_cell(row->fw, row->fw.max), rank_cell(row->fw), calls_cell(row->bw),
                     time_cell(row->bw, row->bw.min), time_cell(row->bw, row->bw.median),
                     time_cell(row->bw, row->bw.max), rank_cell(row->bw)});
  }
  std::string out = format_table(cells, {true, false, false, false, false, false, false, false, false, false, false, false},
                                 false);
  // FLOPs and memory: a table each, where some rank's tool gave them.
  using Member = ValueSpread CrossRankRow::*;
  auto values = [&](const char* title, std::array<std::pair<const char*, Member>, 2> columns,
                    std::string (*format)(std::uint64_t)) {
    if (std::none_of(shown.begin(), shown.end(), [&](const auto& r) {
          return (r.first->*columns[0].second).ranks || (r.first->*columns[1].second).ranks;
        }))
      return;
    std::vector<std::vector<std::string>> t{{"module"}};
    for (const auto& [label, member] : columns)
      for (const char* what : {" min", " median", " max"}) t[0].push_back(std::string(label) + what);
    t[0].insert(t[0].begin() + 4, "most");
    t[0].push_back("most");
    for (const auto& [row, name] : shown) {
      t.push_back({name});
      for (const auto& [label, member] : columns) {
        const auto& v = row->*member;
        for (const auto x : {v.min, v.median, v.max}) t.back().push_back(v.ranks ? format(x) : "-");
        // The rank with the most, where the ranks differ.
        t.back().push_back(v.ranks > 1 && v.min != v.max ? std::to_string(v.most) : "-");
      }
    }
    out += "\n" + std::string(title) + "\n" +
           format_table(t, {true, false, false, false, false, false, false, false, false}, false);
  };
  values("FLOPs across ranks (inclusive of submodules; most: the rank with the most, where the ranks differ):",
         {std::pair{"fw", &CrossRankRow::fw_flops}, std::pair{"bw", &CrossRankRow::bw_flops}}, format_count);
  values("memory across ranks (kept: bytes its forwards kept for backward; peak: the higher of its forward and "
         "backward peaks):",
         {std::pair{"kept", &CrossRankRow::kept}, std::pair{"peak", &CrossRankRow::peak}}, format_bytes);
  // The slowest rank overall: the most time in its roots, forward and backward.
  if (records_.size() > 1) {
    std::vector<std::pair<std::chrono::nanoseconds, int>> totals;
    for (const auto& record : records_) {
      std::chrono::nanoseconds sum{};
      for (const auto& r : record.rows)
        if (r.depth() == 1) sum += r.fw_inclusive + r.bw_inclusive;
      totals.emplace_back(sum, record.rank);
    }
    const auto o = order(std::move(totals));
    out += "slowest rank: " + std::to_string(o.slowest) + " (" + format_duration(o.max) +
           " in forward and backward, median of the ranks " + format_duration(o.median) + ")\n";
  }
  if (const auto s = straggler())
    out += "straggler: rank " + std::to_string(s->rank) + " in " + s->fqn + " (" +
           (s->phase == Phase::forward ? "forward" : "backward") + ", its own time): " + format_duration(s->time) +
           " against a median of " + format_duration(s->median) + "\n";
  if (const auto p = peak())
    out += "highest peak: rank " + std::to_string(p->rank) + ", " + format_bytes(p->bytes) + " in " + p->fqn + " (" +
           (p->phase == Phase::forward ? "forward" : "backward") + "); median of the ranks' highest peaks " +
           format_bytes(p->median) + "\n";
  return out;
}

std::uint64_t CrossRankStatistics::write_trace(std::ostream& out) const {
  const bool rank0 = !records_.empty() && records_.front().rank == 0;  // process 1, named by the writer
  ChromeTraceWriter trace(out, rank0 ? records_.front().label() : std::string("modtracker ranks"));
  for (const auto& record : records_) {
    const auto process = static_cast<std::uint32_t>(record.rank + 1);
    if (!rank0 || &record != &records_.front()) trace.name_process(process, record.label());
    const auto& spans = record.spans.spans();
    const bool flops = record.span_flops.size() == spans.size();
    std::vector<std::pair<std::string_view, std::uint64_t>> args;
    for (std::size_t i = 0; i < spans.size(); ++i) {
      args.clear();
      if (flops && record.span_flops[i]) args.emplace_back("flops", record.span_flops[i]);
      trace.span(spans[i], process, record.clock_offset, args);
    }
    for (const auto& [time, bytes] : record.memory)
      trace.counter("memory", "live bytes", time, static_cast<double>(bytes), process, record.clock_offset);
  }
  trace.finish();
  return trace.slices();
}

}  // namespace modtracker
