// Numbers and names for reading: units, natural order.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>
module modtracker.stats;

namespace modtracker {

namespace {
std::string fixed(double v, const char* unit) {
  char buf[32];
  std::snprintf(buf, sizeof buf, v < 10 ? "%.2f %s" : v < 100 ? "%.1f %s" : "%.0f %s", v, unit);
  return buf;
}

bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

// Digit runs compare as numbers, the rest as bytes.
int compare_segment(std::string_view a, std::string_view b) {
  std::size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (is_digit(a[i]) && is_digit(b[j])) {
      std::size_t ei = i, ej = j;
      while (ei < a.size() && is_digit(a[ei])) ++ei;
      while (ej < b.size() && is_digit(b[ej])) ++ej;
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
}  // namespace

bool natural_less(std::string_view a, std::string_view b) {
  // Segment by segment, so a module sorts right before its children.
  while (true) {
    const auto ea = a.find('.'), eb = b.find('.');
    if (const int c = compare_segment(a.substr(0, ea), b.substr(0, eb)); c != 0) return c < 0;
    if (ea == std::string_view::npos || eb == std::string_view::npos)
      return ea == std::string_view::npos && eb != std::string_view::npos;
    a.remove_prefix(ea + 1);
    b.remove_prefix(eb + 1);
  }
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
        if (static_cast<unsigned char>(c) < 0x20 || c == '<') {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
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

std::string format_table(const std::vector<std::vector<std::string>>& cells, const std::vector<bool>& left_aligned,
                         bool totals) {
  std::vector<std::size_t> width(left_aligned.size(), 0);
  for (const auto& row : cells)
    for (std::size_t i = 0; i < row.size() && i < width.size(); ++i) width[i] = std::max(width[i], row[i].size());
  std::size_t rule = 0;
  for (const auto w : width) rule += w + 2;
  rule = rule >= 2 ? rule - 2 : 0;
  std::string out;
  for (std::size_t r = 0; r < cells.size(); ++r) {
    if (totals && r + 1 == cells.size() && r > 0) out += std::string(rule, '-') + '\n';
    std::string line;
    for (std::size_t i = 0; i < cells[r].size() && i < width.size(); ++i) {
      const std::string pad(width[i] - cells[r][i].size(), ' ');
      line += left_aligned[i] ? cells[r][i] + pad : pad + cells[r][i];
      if (i + 1 != cells[r].size()) line += "  ";
    }
    line.erase(line.find_last_not_of(' ') + 1);
    out += line + '\n';
  }
  return out;
}

}  // namespace modtracker
