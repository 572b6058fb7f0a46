// What a tracker asks of a backend's autograd: callbacks on the gradients of
// values (GradientHook), with the order in which the callbacks that one
// gradient triggers must run (GradOrder).
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <atomic>
#include <concepts>
#include <memory>
#include <type_traits>
#include <utility>
export module modtracker.backend:gradients;
import :values;

export namespace modtracker {

/// Order of the backward events that one gradient triggers: exits before
/// entries, so that backward transitions nest like forward ones.
/// - Exits with a rank (the tracker gives every exit one) run first, the
///   highest rank first. The rank is read when the events fire: the tracker
///   sets it when the activation enters backward (1, 2, ... within a pass),
///   so the activation that entered last exits first, however the engine
///   ordered the branches that share the tensor.
/// - Other exits: innermost (deepest) first; of one depth, earliest first.
/// - Entries: outermost (shallowest) first; of one depth, latest first, as
///   the engine runs the nodes made last first.
struct GradOrder {
  Kind kind = Kind::enter;
  std::uint32_t depth = 0;     ///< forward call depth of the activation
  std::uint64_t sequence = 0;  ///< forward sequence number of the activation
  /// Exits only, optional: the activation's backward rank, read at firing;
  /// must stay valid as long as the registration does.
  const std::atomic<std::uint32_t>* rank = nullptr;

  /// True when the event keyed `a` must run before the one keyed `b`.
  friend bool fires_before(const GradOrder& a, const GradOrder& b) noexcept {
    if (a.kind != b.kind) return a.kind == Kind::exit;
    if (a.kind == Kind::exit && (a.rank || b.rank)) {
      if (!a.rank || !b.rank) return a.rank != nullptr;
      return a.rank->load(std::memory_order_relaxed) > b.rank->load(std::memory_order_relaxed);
    }
    if (a.depth != b.depth) return a.kind == Kind::exit ? a.depth > b.depth : a.depth < b.depth;
    return a.kind == Kind::exit ? a.sequence < b.sequence : a.sequence > b.sequence;
  }
};

/// How a context that counts its own references is kept alive: `retain`
/// adds one reference, `release` drops one (and frees the context with the
/// last). Both may run on any thread.
struct ContextRefs {
  void (*retain)(void* context) noexcept;
  void (*release)(void* context) noexcept;
};

/// Called back with the gradients (backend-typed values) that triggered it.
/// Keeps its context alive; copying it never allocates.
class GradCallback {
 public:
  GradCallback() = default;
  /// Calls `fn(context, grads)`; the callback adopts one reference to
  /// `context` that the caller holds (no count changes here), and copies
  /// count through `refs`. The tracker's own callbacks are of this kind.
  GradCallback(void* context, const ContextRefs& refs, void (*fn)(void*, ValuesRef)) noexcept
      : context_(context), refs_(&refs), fn_(fn) {}
  /// Calls `fn(context, grads)`; owns the shared context (one allocation).
  GradCallback(std::shared_ptr<void> context, void (*fn)(void*, ValuesRef))
      : GradCallback([c = std::move(context), fn](ValuesRef grads) { fn(c.get(), grads); }) {}
  /// Any callable taking the gradients (stored once on the heap).
  template <class F>
    requires(!std::same_as<std::remove_cvref_t<F>, GradCallback>) && std::invocable<F&, ValuesRef>
  GradCallback(F f)  // NOLINT(google-explicit-constructor): a callback is its callable
      : context_(new Boxed<F>{{1}, std::move(f)}), refs_(&Boxed<F>::refs), fn_([](void* c, ValuesRef grads) {
          static_cast<Boxed<F>*>(c)->f(grads);
        }) {}
  GradCallback(const GradCallback& other) noexcept : context_(other.context_), refs_(other.refs_), fn_(other.fn_) {
    if (refs_) refs_->retain(context_);
  }
  GradCallback(GradCallback&& other) noexcept
      : context_(std::exchange(other.context_, nullptr)),
        refs_(std::exchange(other.refs_, nullptr)),
        fn_(std::exchange(other.fn_, nullptr)) {}
  GradCallback& operator=(GradCallback other) noexcept {
    std::swap(context_, other.context_);
    std::swap(refs_, other.refs_);
    std::swap(fn_, other.fn_);
    return *this;
  }
  ~GradCallback() {
    if (refs_) refs_->release(context_);
  }

  void operator()(ValuesRef grads) const { fn_(context_, grads); }
  explicit operator bool() const noexcept { return fn_ != nullptr; }

  /// A non-owning form of this callback, for calling it after a lock is
  /// released: valid while some GradCallback owning the same context lives.
  struct Ref {
    void* context = nullptr;
    void (*fn)(void*, ValuesRef) = nullptr;
    void operator()(ValuesRef grads) const { fn(context, grads); }
  };
  [[nodiscard]] Ref ref() const noexcept { return Ref{context_, fn_}; }

 private:
  // A callable with its own reference count: one allocation, like make_shared.
  template <class F>
  struct Boxed {
    std::atomic<std::uint32_t> count;
    F f;
    static void retain(void* c) noexcept { static_cast<Boxed*>(c)->count.fetch_add(1, std::memory_order_relaxed); }
    static void release(void* c) noexcept {
      auto* b = static_cast<Boxed*>(c);
      if (b->count.fetch_sub(1, std::memory_order_acq_rel) == 1) delete b;
    }
    static constexpr ContextRefs refs{&retain, &release};
  };

  void* context_ = nullptr;
  const ContextRefs* refs_ = nullptr;
  void (*fn_)(void*, ValuesRef) = nullptr;
};

/// What a gradient hook waits for, once per backward pass.
enum class GradientWait : std::uint8_t {
  first,  ///< the first gradient of any of the values (a module's outputs: backward entry)
  all,    ///< the gradients of all the values this pass computes (its inputs: backward exit)
};

/// One callback on the gradients of some values.
struct GradientHook {
  GradientWait wait = GradientWait::first;
  GradOrder order;
  GradCallback fn;
};

}  // namespace modtracker
