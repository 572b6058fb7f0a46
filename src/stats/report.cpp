// The report page: the run's rows as JSON inside one HTML file whose CSS and
// script (src/stats/report_page.html, compiled in) draw the icicle and the
// table. Hand-written, small and offline: no charting library is a Debian
// package a page could inline, and the page must not load one from a network.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <chrono>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>
module modtracker.stats;
import modtracker;

namespace modtracker {

namespace {

constexpr std::string_view page =
#include "report_page.inc"
    ;
constexpr std::string_view data_marker = "/*@MODTRACKER_DATA@*/";

std::string quoted(std::string_view s) { return '"' + json_escape(s) + '"'; }

void number(std::ostream& out, const std::optional<std::uint64_t>& v) {
  if (v) out << *v;
  else out << "null";
}

// One row as the page reads it: [fqn, fw calls, fw incl, fw excl, bw calls,
// bw incl, bw excl, params, frozen, param bytes, output, fw FLOPs, bw FLOPs,
// fw peak, kept, bw peak]; times in ns, a tool's value null without it.
void row(std::ostream& out, const ModuleStats& r) {
  out << '[' << quoted(r.fqn) << ',' << r.fw_calls << ',' << r.fw_inclusive.count() << ',' << r.fw_exclusive.count()
      << ',' << r.bw_calls << ',' << r.bw_inclusive.count() << ',' << r.bw_exclusive.count() << ','
      << r.params_trainable + r.params_frozen << ',' << r.params_frozen << ',' << r.bytes_trainable + r.bytes_frozen
      << ',' << quoted(r.output_shape);
  for (const auto* v : {&r.fw_flops, &r.bw_flops, &r.fw_peak_bytes, &r.fw_kept_bytes, &r.bw_peak_bytes}) {
    out << ',';
    number(out, *v);
  }
  out << ']';
}

const ModuleStats& deref(const ModuleStats& r) { return r; }
const ModuleStats& deref(const ModuleStats* r) { return *r; }

// A view: a rank's rows (values) or a Statistics' (pointers).
template <class Rows>
void view(std::ostream& out, std::string_view name, const Rows& rows) {
  out << "{\"name\":" << quoted(name) << ",\"rows\":[";
  bool first = true;
  for (const auto& r : rows) {
    out << (first ? "\n" : ",\n");
    row(out, deref(r));
    first = false;
  }
  out << "]}";
}

void value_spread(std::ostream& out, const ValueSpread& v) {
  if (v.ranks == 0) out << "null";
  else out << '[' << v.min << ',' << v.median << ',' << v.max << ',' << v.most << ']';
}

void rank_spread(std::ostream& out, const RankSpread& s) {
  if (s.ranks == 0) out << "null";
  else
    out << '[' << s.min.count() << ',' << s.median.count() << ',' << s.max.count() << ',' << s.slowest << ','
        << s.calls_min << ',' << s.calls_max << ']';
}

void page_with(std::ostream& out, const ReportOptions& options, const auto& write_data) {
  const auto at = page.find(data_marker);
  out << page.substr(0, at);
  out << "{\"title\":" << quoted(options.title) << ",\"subtitle\":" << quoted(options.subtitle) << ",\"notes\":[";
  for (std::size_t i = 0; i < options.notes.size(); ++i) out << (i ? "," : "") << quoted(options.notes[i]);
  out << "],";
  write_data();
  out << '}';
  out << page.substr(at + data_marker.size());
}

}  // namespace

void write_report(std::ostream& out, const Statistics& stats, const ReportOptions& options) {
  const auto rows = stats.rows();
  page_with(out, options, [&] {
    out << "\"views\":[";
    view(out, "", rows);
    out << "],\"spread\":null,\"straggler\":null,\"peak\":null";
  });
}

void write_report(std::ostream& out, const CrossRankStatistics& ranks, const ReportOptions& options) {
  page_with(out, options, [&] {
    out << "\"views\":[";
    bool first = true;
    for (const auto& record : ranks.records()) {
      out << (first ? "\n" : ",\n");
      view(out, record.label(), record.rows);
      first = false;
    }
    // Per module: [fqn, ranks, fw, bw, fw FLOPs, bw FLOPs, kept, peak] (each
    // spread null where no rank has it).
    out << "],\"ranks\":[";
    first = true;
    for (const auto& record : ranks.records()) {
      out << (first ? "" : ",") << record.rank;
      first = false;
    }
    out << "],\"spread\":[";
    first = true;
    for (const auto& r : ranks.rows()) {
      std::size_t present = 0;
      for (const auto* p : r.per_rank) present += p != nullptr;
      out << (first ? "\n[" : ",\n[") << quoted(r.fqn) << ',' << present << ',';
      rank_spread(out, r.fw);
      out << ',';
      rank_spread(out, r.bw);
      for (const auto* v : {&r.fw_flops, &r.bw_flops, &r.kept, &r.peak}) {
        out << ',';
        value_spread(out, *v);
      }
      out << ']';
      first = false;
    }
    out << "],\"straggler\":";
    if (const auto s = ranks.straggler())
      out << "{\"fqn\":" << quoted(s->fqn) << ",\"rank\":" << s->rank << ",\"phase\":"
          << (s->phase == Phase::forward ? "\"forward\"" : "\"backward\"") << ",\"time\":" << s->time.count()
          << ",\"median\":" << s->median.count() << '}';
    else
      out << "null";
    out << ",\"peak\":";
    if (const auto p = ranks.peak())
      out << "{\"fqn\":" << quoted(p->fqn) << ",\"rank\":" << p->rank << ",\"phase\":"
          << (p->phase == Phase::forward ? "\"forward\"" : "\"backward\"") << ",\"bytes\":" << p->bytes
          << ",\"median\":" << p->median << '}';
    else
      out << "null";
  });
}

}  // namespace modtracker
