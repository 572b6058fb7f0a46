// Compile-time claims, checked by compiling this file (no test binary runs
// it): the hook concepts accept the right signatures and reject wrong ones,
// no_hook fills any slot, and the transitions generator is a view.
#include <iterator>
#include <ranges>
#include <string_view>

#include "support/reference.hpp"

using namespace support;

static_assert(PreForwardHook<void (*)(Module&, const Values&), Backend>);
static_assert(!PreForwardHook<void (*)(Module&), Backend>);                 // missing inputs
static_assert(!PreForwardHook<void (*)(int, const Values&), Backend>);      // not a module
static_assert(PostForwardHook<void (*)(Module&, const Values&, const Values*), Backend>);
static_assert(!PostForwardHook<void (*)(Module&, const Values&), Backend>);  // no output
static_assert(PreBackwardHook<void (*)(Module*, const Values&), Backend>);
static_assert(!PreBackwardHook<void (*)(Module&, const Values&), Backend>);  // module may be gone: pointer
static_assert(PostBackwardHook<void (*)(Module*, const Values&), Backend>);
static_assert(ModuleFilter<bool (*)(std::string_view, Module&), Backend>);
static_assert(!ModuleFilter<void (*)(std::string_view, Module&), Backend>);  // not a predicate
static_assert(TypedBackend<Backend>);
static_assert(!TypedBackend<HookBackend>);
static_assert(std::input_iterator<Generator<Transition>::iterator>);
static_assert(std::ranges::input_range<Generator<Transition>>);
static_assert(std::ranges::view<Generator<Transition>>);

static_assert(PreForwardHook<NoHook, Backend> && PostForwardHook<NoHook, Backend> && PreBackwardHook<NoHook, Backend> &&
              PostBackwardHook<NoHook, Backend>);
static_assert(!ModuleFilter<NoHook, Backend>);  // a filter must decide
static_assert(std::derived_from<Tracker<Backend>, TrackerBase>);
static_assert(!std::is_copy_constructible_v<TrackerBase> && !std::is_move_constructible_v<TrackerBase>);
static_assert(!std::is_copy_constructible_v<TrackerBase::Scope> && std::is_move_constructible_v<TrackerBase::Scope>);
