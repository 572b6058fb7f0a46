// HookBackend: everything the tracker needs from a framework. A backend
// names its modules and their children, routes its module calls through its
// dispatcher(), and, if it has autograd, registers gradient hooks. Every
// backward function has a default that describes a framework without
// autograd, so a forward-only backend overrides type_name and for_each_child.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <concepts>
#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
export module modtracker.backend:hook_backend;
import :values;
import :registration;
import :gradients;
import :dispatch;

export namespace modtracker {

class HookBackend {
 public:
  HookBackend() = default;
  HookBackend(const HookBackend&) = delete;
  HookBackend& operator=(const HookBackend&) = delete;
  virtual ~HookBackend() = default;

  /// The forward dispatch of this backend: its call sites open a
  /// ForwardDispatcher::Call here, trackers install themselves here.
  [[nodiscard]] ForwardDispatcher& dispatcher() noexcept { return dispatcher_; }

  // --- modules ---
  /// The module's type name as the framework spells it (namespaces allowed).
  [[nodiscard]] virtual std::string type_name(ModuleRef module) const = 0;
  /// Calls `fn(name, child)` for each direct child, in registration order.
  virtual void for_each_child(ModuleRef module, const std::function<void(std::string_view, ModuleRef)>& fn) const = 0;
  /// A weak handle to the module (see WeakModule); by default none (the
  /// tracker then knows a module by its address alone, and backward hooks
  /// get no module).
  [[nodiscard]] virtual WeakModule weak(ModuleRef module) const {
    (void)module;
    return {};
  }

  // --- backward (the defaults: no autograd) ---
  /// Would a forward run now record a graph (grad mode on)?
  [[nodiscard]] virtual bool grad_enabled() const { return false; }
  /// Is this thread running a backward pass right now?
  [[nodiscard]] virtual bool in_backward() const { return false; }
  /// Identity of the backward pass running on this thread (0 outside one).
  [[nodiscard]] virtual std::uint64_t backward_pass() const { return 0; }
  /// Registers `hooks` on those of `values` that require grad; each hook
  /// fires once per backward pass (see GradientWait), the hooks that one
  /// gradient triggers in GradOrder. Takes the hooks' callbacks. False when
  /// no value requires grad (nothing registered). With `removal`, the hooks
  /// stay until that handle removes them; without, as long as the values'
  /// graph (a tracker's own, whose callbacks turn inert when its scope
  /// ends), which a backend may store without the bookkeeping of a removal.
  virtual bool add_gradient_hooks(ValuesRef values, std::span<GradientHook> hooks, Registration* removal) {
    (void)values, (void)hooks, (void)removal;
    return false;
  }
  /// Runs `fn` when the current backward pass ends; throws outside one.
  virtual void at_end_of_backward(std::function<void()> fn) {
    (void)fn;
    throw std::logic_error("modtracker: this backend runs no backward passes");
  }

  // --- reach (optional): what a tracker would otherwise miss in silence ---
  /// Do `values` hold anything the backend could hook (for a forward's
  /// output: any tensor at all)? Asked when an output got no gradient hook.
  [[nodiscard]] virtual bool holds_values(ValuesRef values) const { return static_cast<bool>(values); }
  /// Is the module a building block of the framework (a layer), not a model
  /// of the user's? Several layers running as roots means their parent's
  /// call was not seen.
  [[nodiscard]] virtual bool is_framework_layer(ModuleRef module) const {
    (void)module;
    return false;
  }
  /// Does the module only hold modules, with no forward of its own (a list
  /// or a dict of them)? Its children run in the calls of its parent.
  [[nodiscard]] virtual bool holds_only_modules(ModuleRef module) const {
    (void)module;
    return false;
  }
  /// Will `parent`'s forward call `child` where the backend cannot see the
  /// call (a plain layer inside a tracked module)? Asked once, at naming.
  [[nodiscard]] virtual bool calls_untracked(ModuleRef parent, ModuleRef child) const {
    (void)parent, (void)child;
    return false;
  }
  /// A count that grows with every node of the backward graph that this
  /// thread's forward records (0 throughout: the backend cannot tell). Read at
  /// a call's enter and compared at its exit: a call that recorded nodes but
  /// returned nothing to follow is opaque, whatever its inputs.
  [[nodiscard]] virtual std::uint64_t graph_nodes_recorded() const { return 0; }
  /// A number that changes when the gradients of the module's own
  /// parameters change (0: none, or the backend cannot tell), and whether
  /// any of them is nonzero now. A tracker compares the stamps at a scope's
  /// start and end for the modules that never entered backward in it.
  [[nodiscard]] virtual std::uint64_t gradient_stamp(ModuleRef module) const {
    (void)module;
    return 0;
  }
  [[nodiscard]] virtual bool has_nonzero_gradient(ModuleRef module) const {
    (void)module;
    return false;
  }
  /// Starts watching for the framework's work (operators that modules run,
  /// backward passes) until stop_watch: a scope that has seen no tracked call
  /// yet. Returns a handle for stop_watch (0: the backend cannot watch).
  virtual std::uint64_t start_watch() { return 0; }
  /// Ends a watch; says what work it saw ("" if none).
  virtual std::string stop_watch(std::uint64_t watch) {
    (void)watch;
    return {};
  }
  /// A tracking scope is starting (each is ended by one scope_ending).
  virtual void scope_starting() {}
  /// A tracking scope is ending on this thread, still observing: report now
  /// the ends of calls the backend knows were abandoned (a TorchScript call
  /// unwound by an exception, whose exit operator never ran).
  virtual void scope_ending() {}

 private:
  ForwardDispatcher dispatcher_;
};

/// A concrete backend that names the types its values point to, so a
/// Tracker<B> can hand user hooks typed arguments.
template <class B>
concept TypedBackend = std::derived_from<B, HookBackend> && requires {
  typename B::module_type;   // what ModuleRef::ptr points to
  typename B::inputs_type;   // what a forward's inputs ValuesRef points to
  typename B::output_type;   // what a forward's output ValuesRef points to
  typename B::grads_type;    // what a GradCallback's ValuesRef points to
};

}  // namespace modtracker
