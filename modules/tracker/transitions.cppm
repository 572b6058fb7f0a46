// What a tracker reports: transitions, the `parents` snapshot, diagnostics,
// and the options a tracker is made with.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <chrono>
#include <functional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
export module modtracker:transitions;
import modtracker.backend;

export namespace modtracker {

/// One enter or exit of a module, forward or backward.
struct Transition {
  Phase phase;
  Kind kind;
  std::string_view fqn;           ///< valid as long as the tracker lives
  std::uint32_t depth;            ///< forward call depth of the activation
  std::uint64_t sequence;         ///< order of the transition within its tracker
  std::chrono::nanoseconds time;  ///< since the tracker was created (steady clock)
  std::uint32_t thread;           ///< small index of the thread it happened on (0, 1, ...)
  /// The method of the call ("forward", or another method of a TorchScript
  /// module called from outside it); a backward transition names its
  /// forward call's. Valid as long as the tracker lives.
  std::string_view method = "forward";
};

/// What the tracker reports through its diagnostics sink.
struct Diagnostic {
  enum class Code : std::uint8_t {
    reentrant_forward,    ///< a module entered while already active outside backward
    unfinished_backward,  ///< a backward pass ended without its end callback (it threw)
    journal_overflow,     ///< the transition journal dropped its oldest entries
    // What the tracker cannot see (docs/tracking.md), each said once per module:
    untracked_scope,     ///< modules ran in a scope that saw no tracked call
    root_inside_module,  ///< a module named as a root turned out to sit inside a tracked module
    fqn_collision,       ///< two distinct modules would share one fqn: the later one got a suffix
    opaque_output,       ///< a call's output holds no tensor to follow while it is in the backward graph
    unowned_module,      ///< a module no std::shared_ptr owns: backward hooks cannot get it
    untracked_gradients, ///< a module's parameters got gradients in a scope where it never entered backward
    untracked_child,     ///< a child its parent calls where the backend cannot see the call (a plain layer)
    outside_parent,      ///< a module ran outside a call of the parent it is named under (information)
    untracked_parent,    ///< several framework layers ran as roots: their parent's call is not tracked
  };
  Code code;
  std::string fqn;      ///< the module concerned ("" for a scope)
  std::string message;  ///< what happened and the fix
};
using DiagnosticSink = std::function<void(const Diagnostic&)>;
/// A backend's advice for a diagnostic code, added to the engine's account of
/// what happened ("" : nothing to add). A backend type B gives it as a static
/// member `B::remedy(Diagnostic::Code)`, which Tracker<B> finds.
using DiagnosticRemedy = std::string_view (*)(Diagnostic::Code);

/// Thrown when user hooks are registered into slots that are already set.
class HooksAlreadySet : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

/// Sizes and switches of a tracker.
struct TrackerOptions {
  std::size_t journal_capacity = std::size_t{1} << 16;  ///< transitions kept before the oldest drop
};

/// A snapshot of `parents`: sorted fqns, always holding "Global".
class Parents {
 public:
  Parents() = default;
  explicit Parents(std::vector<std::string_view> sorted) : names_(std::move(sorted)) {}
  [[nodiscard]] bool contains(std::string_view fqn) const noexcept;
  [[nodiscard]] std::size_t size() const noexcept { return names_.size(); }
  [[nodiscard]] auto begin() const noexcept { return names_.begin(); }
  [[nodiscard]] auto end() const noexcept { return names_.end(); }
  [[nodiscard]] std::set<std::string> to_set() const;
  friend bool operator==(const Parents&, const Parents&) = default;

 private:
  std::vector<std::string_view> names_;
};

}  // namespace modtracker
