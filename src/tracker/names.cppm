// Names: interned fqns, and which module has which (the lookup made on
// every module call). The naming rules themselves are in naming.cpp.
module;
#include "tracker/includes.hpp"
module modtracker:names;
import modtracker.backend;
import :tracker;
import :transitions;

namespace modtracker::detail {

/// The root naming rule: "TypeName" from "ns::TypeNameImpl" (namespaces and
/// a trailing Impl dropped; template arguments kept).
[[nodiscard]] std::string root_name_from_type(std::string_view type_name);


/// What the engine knows of one module.
struct ModuleInfo {
  std::uint32_t fqn;
  bool reported;    // the filter accepted it: journaled, calls user hooks
  bool weak_known;  // `weak` can tell whether it was freed
  bool root;        // named after its type (no tracked parent named it)
  WeakModule weak;
  std::uint64_t generation;  // which module at this address (addresses are reused)
  std::uint64_t serial = 0;  // ForwardCall::serial, once a call gave one
};
static_assert(sizeof(ModuleInfo) == 40);  // with its key, 48 bytes a slot of the lookup: keep it so

/// Not thread-safe: the engine's state lock guards it. The backend and filter
/// calls made while naming must not call back into the tracker.
class ModuleNames {
 public:
  /// What naming finds wrong goes to `pending` (said after the state lock).
  ModuleNames(HookBackend& backend, std::vector<Diagnostic>& pending) : backend_(backend), pending_(pending) {
    intern("Global");
  }

  /// The interned id of `fqn`.
  std::uint32_t intern(std::string fqn);
  [[nodiscard]] const std::string& fqn(std::uint32_t id) const noexcept { return names_[id]; }

  /// Its info if named, and not a freed module's at the same address. A
  /// module's liveness is asked where an address can be reused: of the call
  /// site's owner when it has one (pointer compares), else of the weak
  /// reference (its control block is cold memory: a cache miss per call).
  [[nodiscard]] const ModuleInfo* named(ModuleRef module, OwnerProof owner = {}) const noexcept {
    const auto* info = modules_.find(module.ptr);
    if (!info || !info->weak_known) return info;
    if (owner ? !owner.owns(owner.site, info->weak) : info->weak.expired()) return nullptr;
    return info;
  }
  /// The info of the module a call is for, naming it (and its subtree)
  /// first if needed; valid until the next naming. A serial, when the call
  /// has one, says which module is at the address without any liveness check.
  const ModuleInfo& info_for(const ForwardCall& call, const ErasedFilter& filter) {
    if (auto* info = modules_.find(call.module.ptr)) {
      if (call.serial != 0 && info->serial == call.serial) return *info;
      if (call.serial == 0 || info->serial == 0) {  // nothing to compare: ask the owner or the weak reference
        if (!info->weak_known ||
            (call.owner ? call.owner.owns(call.owner.site, info->weak) : !info->weak.expired())) {
          if (call.serial != 0) info->serial = call.serial;
          return *info;
        }
      }
    }
    return name_root(call.module, call.serial, filter);
  }
  /// The name `module` gets when it is named as a root (Tracker::name_root).
  void request_root_name(ModuleRef module, std::string name);
  /// Names every child below `module` not named yet (first name wins).
  void name_subtree(ModuleRef module, std::uint32_t fqn, const ErasedFilter& filter);
  /// The fqn id of the module in whose calls a child runs: the parent it was
  /// named under, or for a list's or dict's child that container's (global_id
  /// for a root).
  [[nodiscard]] std::uint32_t parent_of(std::uint32_t fqn) const noexcept { return parents_[fqn]; }
  /// Was it named as the child of a framework layer (which may use it as it
  /// pleases: MultiheadAttention's out_proj)?
  [[nodiscard]] bool inside_layer(std::uint32_t fqn) const noexcept { return inside_layer_[fqn] != 0; }
  /// True the first time only, per fqn: it ran outside its parent's call.
  [[nodiscard]] bool first_outside(std::uint32_t fqn) noexcept { return std::exchange(outside_[fqn], std::uint8_t{1}) == 0; }
  /// The roots named since the last call that the backend calls framework layers.
  [[nodiscard]] std::vector<std::uint32_t> take_layer_roots() { return std::exchange(layer_roots_, {}); }
  /// HookBackend::gradient_stamp of the module named `fqn`, at the scope's
  /// start or its naming (cold: kept apart from the lookup's slots).
  [[nodiscard]] std::uint64_t& grad_stamp(std::uint32_t fqn) noexcept { return grad_stamps_[fqn]; }
  /// The entry at an address, whatever module it was.
  [[nodiscard]] const ModuleInfo* at(const void* address) const noexcept { return modules_.find(address); }
  /// Starts loading the lookup of `module` (it is likely called next).
  void prefetch(ModuleRef module) const noexcept { modules_.prefetch(module.ptr); }
  template <class F>
  void for_each(F&& f) {
    modules_.for_each(f);
  }

 private:
  // Which module holds an fqn (distinct live modules never share one).
  struct Owner {
    const void* module = nullptr;
    std::uint64_t generation = 0;
  };
  // The module in whose calls the children of `module` (named `fqn`) run.
  [[nodiscard]] std::uint32_t runs_in(ModuleRef module, std::uint32_t fqn) const {
    return backend_.holds_only_modules(module) ? parents_[fqn] : fqn;
  }
  // A new root (or a new module at a freed one's address, which takes over its entry).
  const ModuleInfo& name_root(ModuleRef module, std::uint64_t serial, const ErasedFilter& filter);
  const ModuleInfo& remember(ModuleRef module, std::string fqn, bool root, const ErasedFilter& filter);
  // The id of `fqn`, or of `fqn#2`, `fqn#3`, ... if another live module holds it.
  std::uint32_t unique_id(std::string fqn, ModuleRef module);
  [[nodiscard]] bool held_by_another(std::uint32_t id, ModuleRef module) const noexcept;

  HookBackend& backend_;
  std::vector<Diagnostic>& pending_;
  std::deque<std::string> names_;  // interned fqns; stable addresses
  std::unordered_map<std::string_view, std::uint32_t> ids_;
  std::vector<Owner> owners_;  // by fqn id
  std::vector<std::uint64_t> grad_stamps_;  // by fqn id
  std::vector<std::uint32_t> parents_;      // by fqn id
  std::vector<std::uint8_t> outside_;       // by fqn id: first_outside() answered
  std::vector<std::uint8_t> inside_layer_;  // by fqn id
  std::vector<std::uint32_t> layer_roots_;
  AddressMap<ModuleInfo> modules_;
  // Root names asked for, until the module is named (the weak handle tells a
  // freed module's request from the new module's at its address).
  struct RootName {
    WeakModule weak;
    bool weak_known;
    std::string name;
  };
  std::unordered_map<const void*, RootName> root_names_;
  std::uint64_t generation_ = 0;
};

}  // namespace modtracker::detail
