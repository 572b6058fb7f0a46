// Tracker<B>: the typed front of TrackerCore for a backend B, with the four
// user callbacks and the module filter checked by named concepts.
module;
#include <array>
#include <concepts>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
export module modtracker:tracker;
import :backend;
import :core;
import :generator;

export namespace modtracker {

/// Marks an unused user-hook slot.
struct NoHook {};
inline constexpr NoHook no_hook{};

/// Called before a module's forward with the module and its inputs.
template <class F, class B>
concept PreForwardHook = TypedBackend<B> &&
    std::invocable<F&, typename B::module_type&, const typename B::inputs_type&>;
/// Called after a module's forward with its output (null when the forward threw).
template <class F, class B>
concept PostForwardHook = TypedBackend<B> &&
    std::invocable<F&, typename B::module_type&, const typename B::inputs_type&,
                   const typename B::output_type*>;
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
concept ModuleFilter = TypedBackend<B> &&
    std::predicate<F&, std::string_view, typename B::module_type&>;

/// A hook slot argument: NoHook or a callable of the named concept.
template <class F>
concept Unset = std::same_as<std::remove_cvref_t<F>, NoHook>;

template <TypedBackend B>
class Tracker {
 public:
  using backend_type = B;
  using module_type = typename B::module_type;
  using inputs_type = typename B::inputs_type;
  using output_type = typename B::output_type;
  using grads_type = typename B::grads_type;

  explicit Tracker(B& backend, TrackerOptions options = {})
      : core_(std::make_unique<detail::TrackerCore>(backend, options)) {}

  /// Tracking is on while a Scope lives (C++'s form of Python's `with`).
  class [[nodiscard]] Scope {
   public:
    explicit Scope(detail::TrackerCore& core) : core_(&core) { core.start(); }
    Scope(Scope&& o) noexcept : core_(std::exchange(o.core_, nullptr)) {}
    Scope& operator=(Scope&&) = delete;
    ~Scope() {
      if (core_) core_->stop();
    }
    /// Ends tracking now; throws std::logic_error if already ended, or if
    /// called from inside one of this tracker's hooks (the scope then stays
    /// active, and can be ended later).
    void end() {
      if (!core_) throw std::logic_error("modtracker: tracking scope ended twice");
      core_->stop();
      core_ = nullptr;
    }
    [[nodiscard]] bool active() const noexcept { return core_ != nullptr; }

   private:
    detail::TrackerCore* core_;
  };

  /// Starts tracking until the returned scope ends; throws std::logic_error
  /// if this tracker is tracking already.
  Scope track() { return Scope(*core_); }
  [[nodiscard]] bool tracking() const noexcept { return core_->tracking(); }

  /// The fqns of the modules running now (forward or backward), with "Global".
  [[nodiscard]] Parents parents() const { return core_->parents(); }
  /// True while this thread runs a backward pass.
  [[nodiscard]] bool is_bw() const { return core_->is_bw(); }
  /// The fqn of a module this tracker has seen, or nothing.
  [[nodiscard]] std::optional<std::string> known_fqn(const module_type& m) const {
    return core_->known_fqn(ModuleRef{static_cast<const void*>(&m)});
  }

  /// Sets any of the four user hooks; pass no_hook to leave a slot alone.
  /// Throws HooksAlreadySet (changing nothing) if a given slot is taken.
  template <class PreFw = NoHook, class PostFw = NoHook, class PreBw = NoHook, class PostBw = NoHook>
    requires(Unset<PreFw> || PreForwardHook<PreFw, B>) && (Unset<PostFw> || PostForwardHook<PostFw, B>) &&
            (Unset<PreBw> || PreBackwardHook<PreBw, B>) && (Unset<PostBw> || PostBackwardHook<PostBw, B>)
  void register_user_hooks(PreFw pre_fw = {}, PostFw post_fw = {}, PreBw pre_bw = {}, PostBw post_bw = {}) {
    detail::ErasedHooks h;
    if constexpr (!Unset<PreFw>)
      h.pre_fw = [f = std::move(pre_fw)](ModuleRef m, Payload in) mutable { f(module(m), inputs(in)); };
    if constexpr (!Unset<PostFw>)
      h.post_fw = [f = std::move(post_fw)](ModuleRef m, Payload in, Payload out) mutable {
        f(module(m), inputs(in), static_cast<const output_type*>(out.ptr));
      };
    if constexpr (!Unset<PreBw>)
      h.pre_bw = [f = std::move(pre_bw)](ModuleRef m, Payload g) mutable { f(module_or_null(m), grads(g)); };
    if constexpr (!Unset<PostBw>)
      h.post_bw = [f = std::move(post_bw)](ModuleRef m, Payload g) mutable { f(module_or_null(m), grads(g)); };
    core_->set_hooks(std::move(h), {!Unset<PreFw>, !Unset<PostFw>, !Unset<PreBw>, !Unset<PostBw>});
  }
  /// Empties all four user-hook slots.
  void clear_user_hooks() { core_->clear_hooks(); }

  /// Only modules the filter accepts call user hooks and appear in transitions.
  template <ModuleFilter<B> F>
  void set_filter(F filter) {
    core_->set_filter([f = std::move(filter)](std::string_view fqn, ModuleRef m) mutable {
      return static_cast<bool>(f(fqn, module(m)));
    });
  }
  void clear_filter() { core_->set_filter({}); }

  /// Where diagnostics go (default: stderr, once per code and fqn).
  void set_diagnostics(DiagnosticSink sink) { core_->set_sink(std::move(sink)); }

  /// Yields (and removes) the recorded transitions in order, including those
  /// recorded while iterating.
  Generator<Transition> transitions() { return core_->transitions(); }
  /// Transitions lost to the journal's bounded capacity so far.
  [[nodiscard]] std::uint64_t dropped_transitions() const { return core_->dropped_transitions(); }
  /// Yields (fqn, module) for `root` and every module below it, pre-order.
  Generator<std::pair<std::string, ModuleRef>> walk(const module_type& root) const {
    return core_->walk(ModuleRef{static_cast<const void*>(&root)});
  }

  /// The framework-neutral core (for tools built on the tracker).
  [[nodiscard]] detail::TrackerCore& core() noexcept { return *core_; }

  /// The typed module behind a ModuleRef of this backend.
  static module_type& module(ModuleRef m) {
    return *static_cast<module_type*>(const_cast<void*>(m.ptr));
  }

 private:
  static module_type* module_or_null(ModuleRef m) {
    return static_cast<module_type*>(const_cast<void*>(m.ptr));
  }
  static const inputs_type& inputs(Payload p) { return *static_cast<const inputs_type*>(p.ptr); }
  static const grads_type& grads(Payload p) {
    static const grads_type none{};
    return p ? *static_cast<const grads_type*>(p.ptr) : none;
  }

  std::unique_ptr<detail::TrackerCore> core_;
};

}  // namespace modtracker
