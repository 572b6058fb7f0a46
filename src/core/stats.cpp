// Span matching, per-module statistics and the Chrome trace writer.
module;
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>
module modtracker;

namespace modtracker {

std::optional<Span> SpanMatcher::consume(const Transition& t) {
  // The time since the stack's last transition belongs to its top: every
  // moment counts once, also where spans do not nest (an exit below the top).
  auto& stack = stacks_[{t.thread, t.phase}];
  if (!stack.open.empty() && t.time > stack.last) stack.open.back().innermost += t.time - stack.last;
  stack.last = std::max(stack.last, t.time);
  auto& open = stack.open;
  if (t.kind == Kind::enter) {
    open.push_back(Open{t.fqn, t.depth, t.time, {}});
    return std::nullopt;
  }
  // Normally the top; search down for transitions that do not nest.
  auto it = std::find_if(open.rbegin(), open.rend(), [&](const Open& o) { return o.fqn == t.fqn; });
  if (it == open.rend()) return std::nullopt;  // its enter was not seen (dropped or before reading)
  const Open closed = *it;
  const bool top = it == open.rbegin();
  open.erase(std::next(it).base());
  auto& calls = calls_[{closed.fqn, t.phase}];
  return Span{closed.fqn, t.phase, t.thread, closed.depth, calls++, closed.start, t.time,
              (t.time - closed.start) - closed.innermost, top};
}

std::size_t SpanMatcher::open() const noexcept {
  std::size_t n = 0;
  for (const auto& [key, stack] : stacks_) n += stack.open.size();
  return n;
}

std::size_t ModuleStats::depth() const noexcept {
  return static_cast<std::size_t>(std::count(fqn.begin(), fqn.end(), '.')) + 1;
}

namespace {
constexpr std::pair<Column, std::string_view> column_names[] = {
    {Column::module, "module"},       {Column::fw_calls, "fw_calls"},       {Column::fw_inclusive, "fw_incl"},
    {Column::fw_exclusive, "fw_excl"}, {Column::bw_calls, "bw_calls"},      {Column::bw_inclusive, "bw_incl"},
    {Column::bw_exclusive, "bw_excl"}, {Column::params, "params"},          {Column::bytes, "bytes"},
};

std::string fixed(double v, const char* unit) {
  char buf[32];
  std::snprintf(buf, sizeof buf, v < 10 ? "%.2f %s" : v < 100 ? "%.1f %s" : "%.0f %s", v, unit);
  return buf;
}

// Digit runs compare as numbers, the rest as bytes.
int compare_segment(std::string_view a, std::string_view b) {
  std::size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const bool da = a[i] >= '0' && a[i] <= '9', db = b[j] >= '0' && b[j] <= '9';
    if (da && db) {
      std::size_t ei = i, ej = j;
      while (ei < a.size() && a[ei] >= '0' && a[ei] <= '9') ++ei;
      while (ej < b.size() && b[ej] >= '0' && b[ej] <= '9') ++ej;
      auto na = a.substr(i, ei - i), nb = b.substr(j, ej - j);
      while (na.size() > 1 && na.front() == '0') na.remove_prefix(1);
      while (nb.size() > 1 && nb.front() == '0') nb.remove_prefix(1);
      if (na.size() != nb.size()) return na.size() < nb.size() ? -1 : 1;
      if (const int c = na.compare(nb); c != 0) return c;
      i = ei, j = ej;
      continue;
    }
    if (a[i] != b[j]) return static_cast<unsigned char>(a[i]) < static_cast<unsigned char>(b[j]) ? -1 : 1;
    ++i, ++j;
  }
  return (i == a.size()) == (j == b.size()) ? 0 : (i == a.size() ? -1 : 1);
}

std::string json_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}
}  // namespace

std::optional<Column> column_from_name(std::string_view name) {
  for (const auto& [c, n] : column_names)
    if (n == name) return c;
  return std::nullopt;
}

std::string_view column_name(Column c) {
  for (const auto& [col, n] : column_names)
    if (col == c) return n;
  return "?";
}

bool natural_less(std::string_view a, std::string_view b) {
  // Segment by segment, so a module sorts right before its children.
  while (true) {
    const auto ea = a.find('.'), eb = b.find('.');
    if (const int c = compare_segment(a.substr(0, ea), b.substr(0, eb)); c != 0) return c < 0;
    if (ea == std::string_view::npos || eb == std::string_view::npos) return ea == std::string_view::npos && eb != std::string_view::npos;
    a.remove_prefix(ea + 1);
    b.remove_prefix(eb + 1);
  }
}

std::string format_duration(std::chrono::nanoseconds d) {
  const double ns = static_cast<double>(d.count());
  if (ns < 1e3) return fixed(ns, "ns");
  if (ns < 1e6) return fixed(ns / 1e3, "us");
  if (ns < 1e9) return fixed(ns / 1e6, "ms");
  return fixed(ns / 1e9, "s");
}

std::string format_count(std::uint64_t n) {
  if (n < 1000) return std::to_string(n);
  if (n < 1000000) return fixed(static_cast<double>(n) / 1e3, "K");
  if (n < 1000000000) return fixed(static_cast<double>(n) / 1e6, "M");
  return fixed(static_cast<double>(n) / 1e9, "G");
}

std::string format_bytes(std::uint64_t n) {
  if (n < 1024) return std::to_string(n) + " B";
  if (n < 1024 * 1024) return fixed(static_cast<double>(n) / 1024, "KiB");
  if (n < 1024ull * 1024 * 1024) return fixed(static_cast<double>(n) / (1024 * 1024), "MiB");
  return fixed(static_cast<double>(n) / (1024.0 * 1024 * 1024), "GiB");
}

void Statistics::consume(const Transition& t) {
  if (t.kind == Kind::enter) ++activations_;
  const auto span = matcher_.consume(t);
  if (!span) return;
  auto& row = at(span->fqn);
  if (span->phase == Phase::forward) {
    ++row.fw_calls;
    row.fw_inclusive += span->inclusive();
    row.fw_exclusive += span->exclusive();
  } else {
    ++row.bw_calls;
    row.bw_inclusive += span->inclusive();
    row.bw_exclusive += span->exclusive();
  }
}

ModuleStats& Statistics::at(std::string_view fqn) {
  auto it = rows_.find(fqn);
  if (it == rows_.end()) {
    it = rows_.emplace(std::string(fqn), ModuleStats{}).first;
    it->second.fqn = it->first;
  }
  return it->second;
}

const ModuleStats* Statistics::find(std::string_view fqn) const {
  const auto it = rows_.find(fqn);
  return it == rows_.end() ? nullptr : &it->second;
}

std::vector<const ModuleStats*> Statistics::rows() const {
  std::vector<const ModuleStats*> out;
  out.reserve(rows_.size());
  for (const auto& [fqn, row] : rows_) out.push_back(&row);
  return out;
}

std::chrono::nanoseconds Statistics::total(Phase phase) const {
  std::chrono::nanoseconds sum{};
  for (const auto& [fqn, row] : rows_) sum += phase == Phase::forward ? row.fw_exclusive : row.bw_exclusive;
  return sum;
}

std::string Statistics::table(const TableOptions& options) const {
  auto shown = rows();
  if (options.max_depth != 0)
    std::erase_if(shown, [&](const ModuleStats* r) { return r->depth() > options.max_depth; });
  const bool tree = !options.sort_by;
  if (!tree) {
    const auto key = [c = *options.sort_by](const ModuleStats* r) -> double {
      switch (c) {
        case Column::fw_calls: return static_cast<double>(r->fw_calls);
        case Column::fw_inclusive: return static_cast<double>(r->fw_inclusive.count());
        case Column::fw_exclusive: return static_cast<double>(r->fw_exclusive.count());
        case Column::bw_calls: return static_cast<double>(r->bw_calls);
        case Column::bw_inclusive: return static_cast<double>(r->bw_inclusive.count());
        case Column::bw_exclusive: return static_cast<double>(r->bw_exclusive.count());
        case Column::params: return static_cast<double>(r->params_trainable + r->params_frozen);
        case Column::bytes: return static_cast<double>(r->bytes_trainable + r->bytes_frozen);
        case Column::module: return 0;
      }
      return 0;
    };
    if (*options.sort_by != Column::module)
      std::stable_sort(shown.begin(), shown.end(), [&](auto* a, auto* b) { return key(a) > key(b); });
  }
  std::vector<std::vector<std::string>> cells;
  cells.push_back({"module", "fw calls", "fw incl", "fw excl", "bw calls", "bw incl", "bw excl", "params", "frozen",
                   "param bytes", "output"});
  for (const auto* r : shown) {
    std::string name = r->fqn;
    if (tree) {
      const auto dot = r->fqn.rfind('.');
      name = std::string(2 * (r->depth() - 1), ' ') + (dot == std::string::npos ? r->fqn : r->fqn.substr(dot + 1));
    }
    // A container never called itself (a ModuleList) shows no times, not zeros.
    const auto time = [](std::uint64_t calls, std::chrono::nanoseconds d) { return calls ? format_duration(d) : "-"; };
    cells.push_back({name, std::to_string(r->fw_calls), time(r->fw_calls, r->fw_inclusive),
                     time(r->fw_calls, r->fw_exclusive), std::to_string(r->bw_calls), time(r->bw_calls, r->bw_inclusive),
                     time(r->bw_calls, r->bw_exclusive), format_count(r->params_trainable + r->params_frozen),
                     format_count(r->params_frozen), format_bytes(r->bytes_trainable + r->bytes_frozen), r->output_shape});
  }
  // Totals: calls and exclusive times over every module; parameters of the roots.
  std::uint64_t fw_calls = 0, bw_calls = 0, params = 0, frozen = 0, bytes = 0;
  for (const auto& [fqn, r] : rows_) {
    fw_calls += r.fw_calls;
    bw_calls += r.bw_calls;
    if (r.depth() != 1) continue;
    params += r.params_trainable + r.params_frozen;
    frozen += r.params_frozen;
    bytes += r.bytes_trainable + r.bytes_frozen;
  }
  cells.push_back({"total", std::to_string(fw_calls), format_duration(total(Phase::forward)), "",
                   std::to_string(bw_calls), format_duration(total(Phase::backward)), "", format_count(params),
                   format_count(frozen), format_bytes(bytes), ""});
  std::vector<std::size_t> width(cells.front().size(), 0);
  for (const auto& row : cells)
    for (std::size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  std::ostringstream out;
  const auto end_line = [&out] {  // no trailing blanks
    auto text = out.str();
    text.erase(text.find_last_not_of(' ') + 1);
    out.str(text);
    out.seekp(0, std::ios_base::end);
    out << '\n';
  };
  for (std::size_t r = 0; r < cells.size(); ++r) {
    if (r == cells.size() - 1) {
      std::size_t line = 0;
      for (auto w : width) line += w + 2;
      out << std::string(line - 2, '-') << '\n';
    }
    for (std::size_t i = 0; i < cells[r].size(); ++i) {
      const auto pad = width[i] - cells[r][i].size();
      if (i == 0 || i + 1 == cells[r].size()) out << cells[r][i] << std::string(pad, ' ');  // text: left
      else out << std::string(pad, ' ') << cells[r][i];                                  // numbers: right
      if (i + 1 != cells[r].size()) out << "  ";
    }
    end_line();
  }
  return out.str();
}

ChromeTraceWriter::ChromeTraceWriter(std::ostream& out, std::string process_name) : out_(out) {
  out_ << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n"
       << "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":1,\"tid\":0,\"args\":{\"name\":\"" << json_escape(process_name)
       << "\"}}";
}

ChromeTraceWriter::~ChromeTraceWriter() { finish(); }

void ChromeTraceWriter::consume(const Transition& t) {
  if (finished_) return;
  if (const auto span = matcher_.consume(t)) write(*span);
}

void ChromeTraceWriter::write(const Span& s) {
  const char* phase = s.phase == Phase::forward ? "forward" : "backward";
  const auto fqn = json_escape(s.fqn);
  char num[48];
  auto us = [&](std::chrono::nanoseconds t) {
    std::snprintf(num, sizeof num, "%.3f", static_cast<double>(t.count()) / 1e3);
    return num;
  };
  auto head = [&](const char* ph) -> std::ostream& {
    return out_ << ",\n{\"ph\":\"" << ph << "\",\"pid\":1,\"tid\":" << s.thread << ",\"name\":\"" << fqn
                << "\",\"cat\":\"" << phase << "\",";
  };
  auto args = [&]() -> std::ostream& {
    return out_ << "\"args\":{\"fqn\":\"" << fqn << "\",\"phase\":\"" << phase << "\",\"call\":" << s.call << "}}";
  };
  if (s.nested) {
    head("X") << "\"ts\":" << us(s.start) << ",";
    out_ << "\"dur\":" << us(s.end - s.start) << ",";
    args();
  } else {  // an async slice: its own row, so the thread's slices still nest
    const auto id = ++async_ids_;
    head("b") << "\"id\":" << id << ",\"ts\":" << us(s.start) << ",";
    args();
    head("e") << "\"id\":" << id << ",\"ts\":" << us(s.end) << "}";
  }
  ++slices_;
}

void ChromeTraceWriter::finish() {
  if (finished_) return;
  finished_ = true;
  out_ << "\n]}\n";
  out_.flush();
}

}  // namespace modtracker
