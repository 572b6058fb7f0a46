// The per-module table: one list of columns says each column's header,
// cell, sort key and total; filtering, sorting and layout read it.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <algorithm>
#include <chrono>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <range/v3/algorithm/any_of.hpp>
#include <range/v3/algorithm/find_if.hpp>
#include <range/v3/range/conversion.hpp>
#include <range/v3/view/filter.hpp>
#include <range/v3/view/transform.hpp>
module modtracker.stats;
import modtracker;

namespace modtracker {

namespace {

// The totals line: calls and exclusive times over every module, parameters of the roots.
// FLOPs and kept bytes of the roots summed, peaks the largest root's.
struct Totals {
  std::uint64_t fw_calls = 0, bw_calls = 0, params = 0, frozen = 0, bytes = 0;
  std::chrono::nanoseconds fw{}, bw{};
  std::uint64_t fw_flops = 0, bw_flops = 0, fw_peak = 0, fw_kept = 0, bw_peak = 0;
};

struct ColumnSpec {
  std::string_view header;
  bool text;                   // left-aligned (else a number: right-aligned)
  std::optional<Column> key;   // sortable, under column_name(*key)
  std::string_view sort_name;  // the name of `key` (--sort)
  std::string (*cell)(const ModuleStats&);
  double (*sort_key)(const ModuleStats&);  // larger first; null: by name
  std::string (*total)(const Totals&);
  // A tool's column: shown when some row has its value.
  const std::optional<std::uint64_t> ModuleStats::*tool = nullptr;
};

// A container never called itself (a ModuleList) shows no times, not zeros.
std::string time_cell(std::uint64_t calls, std::chrono::nanoseconds d) { return calls ? format_duration(d) : "-"; }
double as_key(std::uint64_t n) { return static_cast<double>(n); }
double as_key(std::chrono::nanoseconds d) { return static_cast<double>(d.count()); }
std::string none(const Totals&) { return {}; }
template <auto Field>
double tool_key(const ModuleStats& r) { return as_key((r.*Field).value_or(0)); }
// A tool's cell: "-" where the tool gave nothing or the phase never ran (a container's).
template <auto Field, auto Calls, std::string (*Format)(std::uint64_t)>
std::string tool_cell(const ModuleStats& r) { return (r.*Field) && r.*Calls ? Format(*(r.*Field)) : "-"; }

constexpr ColumnSpec columns[] = {
    {"module", true, Column::module, "module", [](const ModuleStats& r) { return r.fqn; }, nullptr,
     [](const Totals&) { return std::string("total"); }},
    {"fw calls", false, Column::fw_calls, "fw_calls", [](const ModuleStats& r) { return std::to_string(r.fw_calls); },
     [](const ModuleStats& r) { return as_key(r.fw_calls); }, [](const Totals& t) { return std::to_string(t.fw_calls); }},
    {"fw incl", false, Column::fw_inclusive, "fw_incl",
     [](const ModuleStats& r) { return time_cell(r.fw_calls, r.fw_inclusive); },
     [](const ModuleStats& r) { return as_key(r.fw_inclusive); }, [](const Totals& t) { return format_duration(t.fw); }},
    {"fw excl", false, Column::fw_exclusive, "fw_excl",
     [](const ModuleStats& r) { return time_cell(r.fw_calls, r.fw_exclusive); },
     [](const ModuleStats& r) { return as_key(r.fw_exclusive); }, none},
    {"bw calls", false, Column::bw_calls, "bw_calls", [](const ModuleStats& r) { return std::to_string(r.bw_calls); },
     [](const ModuleStats& r) { return as_key(r.bw_calls); }, [](const Totals& t) { return std::to_string(t.bw_calls); }},
    {"bw incl", false, Column::bw_inclusive, "bw_incl",
     [](const ModuleStats& r) { return time_cell(r.bw_calls, r.bw_inclusive); },
     [](const ModuleStats& r) { return as_key(r.bw_inclusive); }, [](const Totals& t) { return format_duration(t.bw); }},
    {"bw excl", false, Column::bw_exclusive, "bw_excl",
     [](const ModuleStats& r) { return time_cell(r.bw_calls, r.bw_exclusive); },
     [](const ModuleStats& r) { return as_key(r.bw_exclusive); }, none},
    {"params", false, Column::params, "params",
     [](const ModuleStats& r) { return format_count(r.params_trainable + r.params_frozen); },
     [](const ModuleStats& r) { return as_key(r.params_trainable + r.params_frozen); },
     [](const Totals& t) { return format_count(t.params); }},
    {"frozen", false, std::nullopt, "", [](const ModuleStats& r) { return format_count(r.params_frozen); }, nullptr,
     [](const Totals& t) { return format_count(t.frozen); }},
    {"param bytes", false, Column::bytes, "bytes",
     [](const ModuleStats& r) { return format_bytes(r.bytes_trainable + r.bytes_frozen); },
     [](const ModuleStats& r) { return as_key(r.bytes_trainable + r.bytes_frozen); },
     [](const Totals& t) { return format_bytes(t.bytes); }},
    {"output", true, std::nullopt, "", [](const ModuleStats& r) { return r.output_shape; }, nullptr, none},
    {"fw FLOPs", false, Column::fw_flops, "fw_flops", tool_cell<&ModuleStats::fw_flops, &ModuleStats::fw_calls, format_count>,
     tool_key<&ModuleStats::fw_flops>, [](const Totals& t) { return format_count(t.fw_flops); }, &ModuleStats::fw_flops},
    {"bw FLOPs", false, Column::bw_flops, "bw_flops", tool_cell<&ModuleStats::bw_flops, &ModuleStats::bw_calls, format_count>,
     tool_key<&ModuleStats::bw_flops>, [](const Totals& t) { return format_count(t.bw_flops); }, &ModuleStats::bw_flops},
    {"fw peak", false, Column::fw_peak, "fw_peak", tool_cell<&ModuleStats::fw_peak_bytes, &ModuleStats::fw_calls, format_bytes>,
     tool_key<&ModuleStats::fw_peak_bytes>, [](const Totals& t) { return format_bytes(t.fw_peak); },
     &ModuleStats::fw_peak_bytes},
    {"kept", false, Column::fw_kept, "kept", tool_cell<&ModuleStats::fw_kept_bytes, &ModuleStats::fw_calls, format_bytes>,
     tool_key<&ModuleStats::fw_kept_bytes>, [](const Totals& t) { return format_bytes(t.fw_kept); },
     &ModuleStats::fw_kept_bytes},
    {"bw peak", false, Column::bw_peak, "bw_peak", tool_cell<&ModuleStats::bw_peak_bytes, &ModuleStats::bw_calls, format_bytes>,
     tool_key<&ModuleStats::bw_peak_bytes>, [](const Totals& t) { return format_bytes(t.bw_peak); },
     &ModuleStats::bw_peak_bytes},
};

constexpr std::span<const ColumnSpec> all_columns{columns};

const ColumnSpec* spec_of(Column c) {
  const auto it = ranges::find_if(columns, [c](const ColumnSpec& s) { return s.key == c; });
  return it == ranges::end(columns) ? nullptr : &*it;
}

}  // namespace

std::optional<Column> column_from_name(std::string_view name) {
  const auto it = ranges::find_if(columns, [&](const ColumnSpec& s) { return s.key && s.sort_name == name; });
  return it == ranges::end(columns) ? std::nullopt : it->key;
}

std::string_view column_name(Column c) {
  const auto* spec = spec_of(c);
  return spec ? spec->sort_name : "?";
}

std::string Statistics::table(const TableOptions& options) const {
  const auto depth_ok = [&](const ModuleStats* r) { return options.max_depth == 0 || r->depth() <= options.max_depth; };
  const auto all = rows();
  auto shown = all | ranges::views::filter(depth_ok) | ranges::to<std::vector>();
  const bool tree = !options.sort_by;
  if (const auto* spec = options.sort_by ? spec_of(*options.sort_by) : nullptr; spec && spec->sort_key)
    std::stable_sort(shown.begin(), shown.end(),
                     [&](const ModuleStats* a, const ModuleStats* b) { return spec->sort_key(*a) > spec->sort_key(*b); });

  Totals totals{.fw = total(Phase::forward), .bw = total(Phase::backward)};
  for (const auto& [fqn, r] : rows_) {
    totals.fw_calls += r.fw_calls;
    totals.bw_calls += r.bw_calls;
    if (r.depth() != 1) continue;
    totals.params += r.params_trainable + r.params_frozen;
    totals.frozen += r.params_frozen;
    totals.bytes += r.bytes_trainable + r.bytes_frozen;
    totals.fw_flops += r.fw_flops.value_or(0);
    totals.bw_flops += r.bw_flops.value_or(0);
    totals.fw_kept += r.fw_kept_bytes.value_or(0);
    totals.fw_peak = std::max(totals.fw_peak, r.fw_peak_bytes.value_or(0));
    totals.bw_peak = std::max(totals.bw_peak, r.bw_peak_bytes.value_or(0));
  }

  // The tools' columns only where a tool gave a row its value.
  const auto used = all_columns | ranges::views::filter([&](const ColumnSpec& s) {
                      return !s.tool || ranges::any_of(rows_, [&](const auto& kv) { return (kv.second.*s.tool).has_value(); });
                    }) |
                    ranges::views::transform([](const ColumnSpec& s) { return &s; }) | ranges::to<std::vector>();
  std::vector<std::vector<std::string>> cells;
  cells.push_back(used | ranges::views::transform([](const ColumnSpec* s) { return std::string(s->header); }) |
                  ranges::to<std::vector>());
  for (const auto* r : shown) {
    auto row = used | ranges::views::transform([r](const ColumnSpec* s) { return s->cell(*r); }) |
               ranges::to<std::vector>();
    if (tree) {  // indented, by the last segment of the fqn
      const auto dot = r->fqn.rfind('.');
      row.front() = std::string(2 * (r->depth() - 1), ' ') + (dot == std::string::npos ? r->fqn : r->fqn.substr(dot + 1));
    }
    cells.push_back(std::move(row));
  }
  cells.push_back(used | ranges::views::transform([&](const ColumnSpec* s) { return s->total(totals); }) |
                  ranges::to<std::vector>());

  const auto left = used | ranges::views::transform([](const ColumnSpec* s) { return s->text; }) |
                    ranges::to<std::vector>();
  return format_table(cells, left, true);
}

}  // namespace modtracker
