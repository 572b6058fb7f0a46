// The naming rules (docs/semantics.md, "Names"): a root is named after its
// type, a child `parent.child`, lazily when a module first runs, for its
// whole subtree; a module reachable under two names keeps the first.
module;
#include "tracker/includes.hpp"
module modtracker;
import modtracker.backend;
import :engine;

namespace modtracker {

std::string root_name_from_type(std::string_view type_name) {
  // Namespaces end at the last "::" before any template arguments.
  const auto args = type_name.find('<');
  const auto head = type_name.substr(0, args);
  const auto colons = head.rfind("::");
  auto name = colons == std::string_view::npos ? type_name : type_name.substr(colons + 2);
  if (args == std::string_view::npos && name.size() > 4 && name.ends_with("Impl")) name.remove_suffix(4);
  return std::string(name);
}

namespace detail {

std::uint32_t ModuleNames::intern(std::string fqn) {
  if (auto it = ids_.find(fqn); it != ids_.end()) return it->second;
  const auto id = gsl::narrow<std::uint32_t>(names_.size());  // throws past 2^32 names
  names_.push_back(std::move(fqn));
  ids_.emplace(names_.back(), id);
  return id;
}

// With its liveness and the filter's verdict (asked once per module here,
// or again by set_filter).
const ModuleInfo& ModuleNames::remember(ModuleRef module, std::string fqn, const ErasedFilter& filter) {
  auto weak = backend_.weak(module);
  const bool weak_known = !weak.expired();
  const auto id = intern(std::move(fqn));
  const bool reported = !filter || filter(names_[id], module);
  return modules_.assign(module.ptr, ModuleInfo{id, reported, weak_known, std::move(weak), ++generation_});
}

void ModuleNames::name_subtree(ModuleRef module, std::uint32_t fqn, const ErasedFilter& filter) {
  backend_.for_each_child(module, [&](std::string_view name, ModuleRef child) {
    if (!child || named(child)) return;
    std::string child_fqn = names_[fqn];
    child_fqn.append(".").append(name);
    name_subtree(child, remember(child, std::move(child_fqn), filter).fqn, filter);
  });
}

const ModuleInfo& ModuleNames::name_root(ModuleRef module, const ErasedFilter& filter) {
  name_subtree(module, remember(module, root_name_from_type(backend_.type_name(module)), filter).fqn, filter);
  return *modules_.find(module.ptr);  // naming the subtree may have moved it
}

void Engine::children_changed(ModuleRef module) {
  if (!module) return;
  std::lock_guard<SpinLock> lock(state_);
  if (const auto* info = names_.named(module)) names_.name_subtree(module, info->fqn, filter_);  // else its first call names it
}

Generator<std::pair<std::string, ModuleRef>> Engine::walk(ModuleRef root) const {
  if (!root) throw std::invalid_argument("modtracker: walk of a null module");
  std::string root_fqn = known_fqn(root).value_or(root_name_from_type(backend_.type_name(root)));
  std::vector<std::pair<std::string, ModuleRef>> stack{{std::move(root_fqn), root}};
  std::unordered_set<const void*> seen{root.ptr};
  while (!stack.empty()) {
    auto [fqn, module] = std::move(stack.back());
    stack.pop_back();
    std::vector<std::pair<std::string, ModuleRef>> children;
    backend_.for_each_child(module, [&](std::string_view name, ModuleRef child) {
      if (child && seen.insert(child.ptr).second) children.emplace_back(fqn + "." + std::string(name), child);
    });
    std::move(children.rbegin(), children.rend(), std::back_inserter(stack));
    co_yield std::pair<std::string, ModuleRef>{std::move(fqn), module};
  }
}

}  // namespace detail
}  // namespace modtracker
