// The tracker: TrackerBase holds everything that does not depend on a
// backend's types (the engine is behind a pointer, defined in the library);
// Tracker<B> adds the typed user hooks, module filter and module lookups.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <array>
#include <chrono>
#include <concepts>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
export module modtracker:tracker;
import modtracker.backend;
import :generator;
import :transitions;
import :hooks;

namespace modtracker::detail {
class Engine;

/// User hooks with their values still opaque.
struct ErasedHooks {
  std::function<void(ModuleRef, ValuesRef)> pre_fw;
  std::function<void(ModuleRef, ValuesRef, ValuesRef)> post_fw;
  std::function<void(ModuleRef, ValuesRef)> pre_bw;
  std::function<void(ModuleRef, ValuesRef)> post_bw;
};
using ErasedFilter = std::function<bool(std::string_view, ModuleRef)>;
}  // namespace modtracker::detail

export namespace modtracker {

/// Sees each transition as the tracker records it, on the thread that makes
/// it, under the tracker's state lock: for tools that attribute what happens
/// meanwhile (FLOPs, memory) to the modules running. It must be quick and
/// must not call into the tracker. Transitions of modules the filter leaves
/// out are not seen, as in the journal.
class TransitionListener {
 public:
  virtual void on_transition(const Transition& t) = 0;
  /// A tracking scope of the tracker started (true) or ended (false).
  virtual void on_scope(bool started) { (void)started; }

 protected:
  ~TransitionListener() = default;
};

/// What every tracker has, whatever its backend: tracking scopes, `parents`,
/// `is_bw`, the journal of transitions, diagnostics.
class TrackerBase {
 public:
  TrackerBase(const TrackerBase&) = delete;
  TrackerBase& operator=(const TrackerBase&) = delete;
  ~TrackerBase();

  /// Tracking is on while a Scope lives (C++'s form of Python's `with`).
  class [[nodiscard]] Scope {
   public:
    Scope(Scope&& o) noexcept : tracker_(std::exchange(o.tracker_, nullptr)) {}
    Scope& operator=(Scope&&) = delete;
    ~Scope();
    /// Ends tracking now; throws std::logic_error if already ended, or if
    /// called from inside one of this tracker's forward hooks (the scope
    /// then stays active, and can be ended later).
    void end();
    [[nodiscard]] bool active() const noexcept { return tracker_ != nullptr; }

   private:
    friend TrackerBase;
    explicit Scope(TrackerBase& tracker);
    TrackerBase* tracker_;
  };

  /// Starts tracking until the returned scope ends; throws std::logic_error
  /// if this tracker is tracking already.
  Scope track() { return Scope(*this); }
  [[nodiscard]] bool tracking() const noexcept;

  /// The fqns of the modules running now (forward or backward), with "Global".
  [[nodiscard]] Parents parents() const;
  /// True while this thread runs a backward pass.
  [[nodiscard]] bool is_bw() const;

  /// Empties all four user-hook slots.
  void clear_user_hooks();
  /// Every module calls the user hooks and appears in transitions again.
  void clear_filter();
  /// Where diagnostics go (default, or an empty sink: stderr, once per code and
  /// fqn, at most 8 of one code).
  void set_diagnostics(DiagnosticSink sink);

  /// Yields the recorded transitions in order and removes them from the
  /// journal, including those recorded while iterating: each transition is
  /// yielded once.
  Generator<Transition> drain_transitions();
  /// Transitions lost to the journal's bounded capacity so far.
  [[nodiscard]] std::uint64_t dropped_transitions() const;
  /// The transitions' clock now: the time since this tracker was created.
  [[nodiscard]] std::chrono::nanoseconds now() const;

  /// Calls `listener` for every transition from now on, until the returned
  /// handle is removed or destroyed (a handle that outlives the tracker
  /// removes nothing).
  [[nodiscard]] Registration add_listener(TransitionListener& listener);

 protected:
  TrackerBase(HookBackend& backend, TrackerOptions options, DiagnosticRemedy remedy = nullptr);
  [[nodiscard]] std::optional<std::string> known_fqn(ModuleRef module) const;
  void name_root(ModuleRef module, std::string name);
  [[nodiscard]] Generator<std::pair<std::string, ModuleRef>> walk(ModuleRef root) const;
  void set_hooks(detail::ErasedHooks hooks, const std::array<bool, 4>& given);
  void set_filter(detail::ErasedFilter filter);

 private:
  std::unique_ptr<detail::Engine> engine_;
};

/// A backend that advises its users on diagnostics (see DiagnosticRemedy).
template <class B>
concept BackendWithRemedy = requires(Diagnostic::Code code) {
  { B::remedy(code) } -> std::convertible_to<std::string_view>;
};

/// A tracker for backend B, whose hooks and filter get B's typed modules,
/// inputs, outputs and gradients.
template <TypedBackend B>
class Tracker : public TrackerBase {
 public:
  using backend_type = B;
  using module_type = typename B::module_type;
  using inputs_type = typename B::inputs_type;
  using output_type = typename B::output_type;
  using grads_type = typename B::grads_type;

  explicit Tracker(B& backend, TrackerOptions options = {}) : TrackerBase(backend, options, remedy_of()) {}

  /// The fqn of a module this tracker has seen, or nothing.
  [[nodiscard]] std::optional<std::string> known_fqn(const module_type& m) const {
    return TrackerBase::known_fqn(ModuleRef{static_cast<const void*>(&m)});
  }

  /// Names a root module (and so its submodules, "name.child"), instead of
  /// after its type: two models of one type, or a GAN's D and G, keep their
  /// names whichever runs first. Before the module's first tracked call:
  /// throws std::logic_error if it is named already under another name,
  /// std::invalid_argument for an empty name, "Global" or one with a '.'.
  void name_root(const module_type& m, std::string name) {
    TrackerBase::name_root(ModuleRef{static_cast<const void*>(&m)}, std::move(name));
  }

  /// Sets any of the four user hooks; pass no_hook to leave a slot alone.
  /// Throws HooksAlreadySet (changing nothing) if a given slot is taken.
  template <PreForwardHook<B> PreFw = NoHook, PostForwardHook<B> PostFw = NoHook,
            PreBackwardHook<B> PreBw = NoHook, PostBackwardHook<B> PostBw = NoHook>
  void register_user_hooks(PreFw pre_fw = {}, PostFw post_fw = {}, PreBw pre_bw = {}, PostBw post_bw = {}) {
    detail::ErasedHooks h;
    if constexpr (!unset<PreFw>)
      h.pre_fw = [f = std::move(pre_fw)](ModuleRef m, ValuesRef in) mutable { f(module(m), inputs(in)); };
    if constexpr (!unset<PostFw>)
      h.post_fw = [f = std::move(post_fw)](ModuleRef m, ValuesRef in, ValuesRef out) mutable {
        f(module(m), inputs(in), static_cast<const output_type*>(out.ptr));
      };
    if constexpr (!unset<PreBw>)
      h.pre_bw = [f = std::move(pre_bw)](ModuleRef m, ValuesRef g) mutable { f(module_or_null(m), grads(g)); };
    if constexpr (!unset<PostBw>)
      h.post_bw = [f = std::move(post_bw)](ModuleRef m, ValuesRef g) mutable { f(module_or_null(m), grads(g)); };
    set_hooks(std::move(h), {!unset<PreFw>, !unset<PostFw>, !unset<PreBw>, !unset<PostBw>});
  }

  /// Only modules the filter accepts call user hooks and appear in
  /// transitions. It is asked once per module (when the module is named, or
  /// now for the known ones) and must not call back into the tracker.
  template <ModuleFilter<B> F>
  void set_filter(F filter) {
    TrackerBase::set_filter([f = std::move(filter)](std::string_view fqn, ModuleRef m) mutable {
      return static_cast<bool>(f(fqn, module(m)));
    });
  }

  /// Yields (fqn, module) for `root` and every module below it, pre-order.
  [[nodiscard]] Generator<std::pair<std::string, ModuleRef>> walk(const module_type& root) const {
    return TrackerBase::walk(ModuleRef{static_cast<const void*>(&root)});
  }

 private:
  static DiagnosticRemedy remedy_of() {
    if constexpr (BackendWithRemedy<B>)
      return [](Diagnostic::Code code) -> std::string_view { return B::remedy(code); };
    else
      return nullptr;
  }
  static module_type& module(ModuleRef m) { return *static_cast<module_type*>(const_cast<void*>(m.ptr)); }
  template <class F>
  static constexpr bool unset = std::same_as<F, NoHook>;
  static module_type* module_or_null(ModuleRef m) { return static_cast<module_type*>(const_cast<void*>(m.ptr)); }
  static const inputs_type& inputs(ValuesRef v) { return *static_cast<const inputs_type*>(v.ptr); }
  static const grads_type& grads(ValuesRef v) {
    static const grads_type none{};
    return v ? *static_cast<const grads_type*>(v.ptr) : none;
  }
};

}  // namespace modtracker
