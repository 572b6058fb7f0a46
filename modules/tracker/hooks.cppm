// The four user hooks and the module filter, each a named concept over the
// backend's types, and the marker of an unused hook slot.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <concepts>
#include <string_view>
export module modtracker:hooks;
import modtracker.backend;

export namespace modtracker {

/// Marks an unused user-hook slot. It satisfies every hook concept (it takes
/// anything and does nothing), so a slot's concept is all a wrong hook is
/// checked against.
struct NoHook {
  template <class... Args>
  constexpr void operator()(Args&&...) const noexcept {}
};
inline constexpr NoHook no_hook{};

/// Called before a module's forward with the module and its inputs.
template <class F, class B>
concept PreForwardHook = TypedBackend<B> &&
    std::invocable<F&, typename B::module_type&, const typename B::inputs_type&>;
/// Called after a module's forward with its output (null when the forward threw).
template <class F, class B>
concept PostForwardHook = TypedBackend<B> &&
    std::invocable<F&, typename B::module_type&, const typename B::inputs_type&, const typename B::output_type*>;
/// Called when a module enters backward, with the gradients of its outputs
/// (the module is null when it no longer exists).
template <class F, class B>
concept PreBackwardHook = TypedBackend<B> &&
    std::invocable<F&, typename B::module_type*, const typename B::grads_type&>;
/// Called when a module exits backward, with the gradients of its inputs.
template <class F, class B>
concept PostBackwardHook = TypedBackend<B> &&
    std::invocable<F&, typename B::module_type*, const typename B::grads_type&>;
/// Decides from (fqn, module) whether a module calls the user hooks and
/// appears in the transitions.
template <class F, class B>
concept ModuleFilter = TypedBackend<B> && std::predicate<F&, std::string_view, typename B::module_type&>;

}  // namespace modtracker
