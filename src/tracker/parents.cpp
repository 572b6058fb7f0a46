// `parents` and known_fqn(): what a user reads of the running modules.
module;
#include "tracker/includes.hpp"
module modtracker;
import modtracker.backend;
import :engine;

namespace modtracker {

bool Parents::contains(std::string_view fqn) const noexcept {
  return std::binary_search(names_.begin(), names_.end(), fqn);
}

std::set<std::string> Parents::to_set() const { return {names_.begin(), names_.end()}; }

namespace detail {

Parents Engine::parents() const {
  std::vector<std::string_view> names;
  {
    std::lock_guard<SpinLock> lock(state_);
    names.reserve(counts_.ids().size());
    for (const auto id : counts_.ids()) names.emplace_back(names_.fqn(id));
  }
  std::sort(names.begin(), names.end());
  return Parents(std::move(names));
}

std::optional<std::string> Engine::known_fqn(ModuleRef module) const {
  if (!module) return std::nullopt;
  std::lock_guard<SpinLock> lock(state_);
  const auto* info = names_.named(module);
  if (!info) return std::nullopt;
  return names_.fqn(info->fqn);
}

}  // namespace detail
}  // namespace modtracker
