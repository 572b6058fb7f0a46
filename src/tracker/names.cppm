// Names: interned fqns, and which module has which (the lookup made on
// every module call). The naming rules themselves are in naming.cpp.
module;
#include "tracker/includes.hpp"
module modtracker:names;
import modtracker.backend;
import :tracker;

namespace modtracker::detail {

/// What the engine knows of one module.
struct ModuleInfo {
  std::uint32_t fqn;
  bool reported;    // the filter accepted it: journaled, calls user hooks
  bool weak_known;  // `weak` can tell whether it was freed
  WeakModule weak;
  std::uint64_t generation;  // which module at this address (addresses are reused)
};

/// Not thread-safe: the engine's state lock guards it. The backend and filter
/// calls made while naming must not call back into the tracker.
class ModuleNames {
 public:
  explicit ModuleNames(HookBackend& backend) : backend_(backend) { intern("Global"); }

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
  /// Its info, naming it (and its subtree) first if needed; valid until
  /// the next naming.
  const ModuleInfo& info_for(ModuleRef module, OwnerProof owner, const ErasedFilter& filter) {
    if (const auto* info = named(module, owner)) return *info;
    return name_root(module, filter);
  }
  /// Names every child below `module` not named yet (first name wins).
  void name_subtree(ModuleRef module, std::uint32_t fqn, const ErasedFilter& filter);
  /// The entry at an address, whatever module it was.
  [[nodiscard]] const ModuleInfo* at(const void* address) const noexcept { return modules_.find(address); }
  /// Starts loading the lookup of `module` (it is likely called next).
  void prefetch(ModuleRef module) const noexcept { modules_.prefetch(module.ptr); }
  template <class F>
  void for_each(F&& f) {
    modules_.for_each(f);
  }

 private:
  // A new root (or a new module at a freed one's address, which takes over its entry).
  const ModuleInfo& name_root(ModuleRef module, const ErasedFilter& filter);
  const ModuleInfo& remember(ModuleRef module, std::string fqn, const ErasedFilter& filter);

  HookBackend& backend_;
  std::deque<std::string> names_;  // interned fqns; stable addresses
  std::unordered_map<std::string_view, std::uint32_t> ids_;
  AddressMap<ModuleInfo> modules_;
  std::uint64_t generation_ = 0;
};

}  // namespace modtracker::detail
