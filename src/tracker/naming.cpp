// The naming rules (docs/semantics.md, "Names"): a root is named after its
// type, a child `parent.child`, lazily when a module first runs, for its
// whole subtree; a module reachable under two names keeps the first.
module;
#include "tracker/includes.hpp"
module modtracker;
import modtracker.backend;
import :engine;

namespace modtracker::detail {

std::string root_name_from_type(std::string_view type_name) {
  // Namespaces end at the last "::" before any template arguments.
  const auto args = type_name.find('<');
  const auto head = type_name.substr(0, args);
  const auto colons = head.rfind("::");
  auto name = colons == std::string_view::npos ? type_name : type_name.substr(colons + 2);
  // A module implementation (NetImpl, or a class template ResNetImpl<Block>)
  // is named after its holder: without Impl, and without template arguments.
  const auto template_name = name.substr(0, name.find('<'));
  if (template_name.size() > 4 && template_name.ends_with("Impl")) return std::string(template_name.substr(0, template_name.size() - 4));
  return std::string(name);
}

std::uint32_t ModuleNames::intern(std::string fqn) {
  if (auto it = ids_.find(fqn); it != ids_.end()) return it->second;
  const auto id = gsl::narrow<std::uint32_t>(names_.size());  // throws past 2^32 names
  names_.push_back(std::move(fqn));
  ids_.emplace(names_.back(), id);
  owners_.emplace_back();
  grad_stamps_.emplace_back();
  parents_.emplace_back(0);
  outside_.push_back(0);
  inside_layer_.push_back(0);
  return id;
}

bool ModuleNames::held_by_another(std::uint32_t id, ModuleRef module) const noexcept {
  const Owner& owner = owners_[id];
  // A module at this very address took over the entry of the one there before.
  if (!owner.module || owner.module == module.ptr) return false;
  const auto* info = modules_.find(owner.module);
  if (!info || info->generation != owner.generation) return false;  // its entry went to another module
  return !(info->weak_known && info->weak.expired());  // alive, or nobody can tell
}

std::uint32_t ModuleNames::unique_id(std::string fqn, ModuleRef module) {
  const auto id = intern(fqn);
  if (!held_by_another(id, module)) return id;
  for (unsigned k = 2;; ++k) {
    const auto alt = intern(fqn + "#" + std::to_string(k));
    if (held_by_another(alt, module)) continue;
    pending_.push_back({Diagnostic::Code::fqn_collision, names_[alt],
                        "two distinct modules would both be named '" + fqn + "'; the later one is '" + names_[alt] +
                            "'. Usually their parent's call is not tracked, so each became a root; two models of their own "
                            "are told apart by naming each with name_root()"});
    return alt;
  }
}

// With its liveness and the filter's verdict (asked once per module here,
// or again by set_filter).
const ModuleInfo& ModuleNames::remember(ModuleRef module, std::string fqn, bool root, const ErasedFilter& filter) {
  auto weak = backend_.weak(module);
  const bool weak_known = !weak.expired();
  const auto id = unique_id(std::move(fqn), module);
  const bool reported = !filter || filter(names_[id], module);
  if (!weak_known && backend_.grad_enabled())
    pending_.push_back({Diagnostic::Code::unowned_module, names_[id],
                        "module '" + names_[id] + "' is not owned by a std::shared_ptr (a module on the stack?): "
                            "its backward hooks get no module, since nothing tells when it is freed"});
  const auto generation = ++generation_;
  owners_[id] = Owner{module.ptr, generation};
  grad_stamps_[id] = backend_.gradient_stamp(module);
  return modules_.assign(module.ptr, ModuleInfo{id, reported, weak_known, root, std::move(weak), generation});
}

void ModuleNames::name_subtree(ModuleRef module, std::uint32_t fqn, const ErasedFilter& filter) {
  backend_.for_each_child(module, [&](std::string_view name, ModuleRef child) {
    if (!child) return;
    if (const auto* known = named(child)) {
      if (known->root && known->fqn != fqn)
        pending_.push_back(
            {Diagnostic::Code::root_inside_module, names_[known->fqn],
             "module '" + names_[known->fqn] + "' ran as a root before its parent '" + names_[fqn] +
                 "' was tracked, so it keeps that name instead of '" + names_[fqn] + "." + std::string(name) +
                 "'. A call between them is not tracked"});
      // Registered under a second parent too (a shared layer): it runs in
      // either's calls, so no one parent's call is its place.
      if (!known->root && parents_[known->fqn] != runs_in(module, fqn)) parents_[known->fqn] = global_id;
      return;  // the first name wins
    }
    std::string child_fqn = names_[fqn];
    child_fqn.append(".").append(name);
    const auto id = remember(child, std::move(child_fqn), false, filter).fqn;
    parents_[id] = runs_in(module, fqn);
    inside_layer_[id] = backend_.is_framework_layer(module) ? 1 : 0;
    if (backend_.calls_untracked(module, child))
      pending_.push_back({Diagnostic::Code::untracked_child, names_[id],
                          "module '" + names_[id] + "' is called by '" + names_[fqn] +
                              "' where the backend cannot see the call: its forward and backward are counted as '" +
                              names_[fqn] + "''s own"});
    name_subtree(child, id, filter);
  });
}

void ModuleNames::request_root_name(ModuleRef module, std::string name) {
  if (const auto* info = named(module)) {
    if (names_[info->fqn] == name) return;
    throw std::logic_error("modtracker: name_root('" + name + "'): the module is named '" + names_[info->fqn] +
                           "' already (a module is named at its first tracked call): call name_root before it runs");
  }
  auto weak = backend_.weak(module);
  const bool known = !weak.expired();
  root_names_.insert_or_assign(module.ptr, RootName{std::move(weak), known, std::move(name)});
}

const ModuleInfo& ModuleNames::name_root(ModuleRef module, std::uint64_t serial, const ErasedFilter& filter) {
  std::string fqn;
  if (const auto it = root_names_.find(module.ptr); it != root_names_.end()) {
    if (!(it->second.weak_known && it->second.weak.expired())) fqn = std::move(it->second.name);  // else a freed module's
    root_names_.erase(it);
  }
  if (fqn.empty()) fqn = root_name_from_type(backend_.type_name(module));
  const auto id = remember(module, std::move(fqn), true, filter).fqn;
  if (backend_.is_framework_layer(module)) layer_roots_.push_back(id);
  modules_.find(module.ptr)->serial = serial;
  name_subtree(module, id, filter);
  return *modules_.find(module.ptr);  // naming the subtree may have moved it
}

void Engine::name_root(ModuleRef module, std::string name) {
  if (!module) throw std::invalid_argument("modtracker: name_root of a null module");
  if (name.empty() || name == "Global" || name.find('.') != std::string::npos)
    throw std::invalid_argument("modtracker: name_root('" + name +
                                "'): a root's name is not empty, not 'Global', and has no '.' (which separates a "
                                "child's name)");
  std::lock_guard<SpinLock> lock(state_);
  names_.request_root_name(module, std::move(name));
}

void Engine::children_changed(ModuleRef module) {
  if (!module) return;
  {
    std::lock_guard<SpinLock> lock(state_);
    if (const auto* info = names_.named(module)) names_.name_subtree(module, info->fqn, filter_);  // else its first call names it
  }
  say_pending();
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

}  // namespace modtracker::detail
