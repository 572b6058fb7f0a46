// Statistics: spans summed into per-module rows.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>
module modtracker.stats;
import modtracker;

namespace modtracker {

std::size_t ModuleStats::depth() const noexcept {
  return static_cast<std::size_t>(std::count(fqn.begin(), fqn.end(), '.')) + 1;
}

void Statistics::consume(const Transition& t) {
  if (t.kind == Kind::enter) ++activations_;
  const auto span = matcher_.consume(t);
  if (!span) return;
  auto& row = at(span->fqn);
  const bool forward = span->phase == Phase::forward;
  ++(forward ? row.fw_calls : row.bw_calls);
  (forward ? row.fw_inclusive : row.bw_inclusive) += span->inclusive();
  (forward ? row.fw_exclusive : row.bw_exclusive) += span->exclusive();
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

}  // namespace modtracker
