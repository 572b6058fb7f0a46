// How the tools write numbers and order module names for reading.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <chrono>
#include <string>
#include <string_view>
#include <vector>
export module modtracker.stats:format;

export namespace modtracker {

/// "layer.2" before "layer.10": segments compared, digit runs as numbers;
/// a module sorts right before its children.
[[nodiscard]] bool natural_less(std::string_view a, std::string_view b);
[[nodiscard]] std::string format_duration(std::chrono::nanoseconds d);
[[nodiscard]] std::string format_count(std::uint64_t n);
[[nodiscard]] std::string format_bytes(std::uint64_t n);
/// Rows of cells (the first the header) laid out in columns two blanks
/// apart, each `left_aligned` or right-aligned, with no trailing blanks; a
/// rule above the last row if `totals` (it sums the others).
[[nodiscard]] std::string format_table(const std::vector<std::vector<std::string>>& cells,
                                       const std::vector<bool>& left_aligned, bool totals);

}  // namespace modtracker

namespace modtracker {
// Inside the module only (the trace and the report): `s` as the inside of a
// JSON string; '<' as \u003c, so the text is also safe inside an HTML <script>.
[[nodiscard]] std::string json_escape(std::string_view s);
}  // namespace modtracker
