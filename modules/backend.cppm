// The hook-backend interface: everything the tracker needs from a framework.
// A backend (LibTorch, the scripted one, or a user's own) implements
// HookBackend and routes its module calls through a ForwardDispatcher.
module;
#include <atomic>
#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
export module modtracker:backend;

export namespace modtracker {

/// An opaque reference to one framework module; identity is the pointer.
struct ModuleRef {
  const void* ptr = nullptr;
  explicit operator bool() const noexcept { return ptr != nullptr; }
  friend bool operator==(ModuleRef, ModuleRef) = default;
};

/// A weak reference to a module: lock().get() == the module's ModuleRef::ptr,
/// or empty when the module is gone (or its liveness cannot be known).
using WeakModule = std::weak_ptr<const void>;

/// A backend-typed value (forward inputs or output, gradients) seen as opaque.
struct Payload {
  const void* ptr = nullptr;
  explicit operator bool() const noexcept { return ptr != nullptr; }
};

enum class Phase : std::uint8_t { forward, backward };
enum class Kind : std::uint8_t { enter, exit };

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

/// Handle of one registration: removes what it registered exactly once,
/// explicitly (a second remove() throws) or at destruction.
class Registration {
 public:
  Registration() = default;
  /// Removal by any callable.
  explicit Registration(std::function<void()> remover) : generic_(std::move(remover)) {}
  /// Removal by `remove(target)` if `target` still exists; never allocates.
  Registration(std::weak_ptr<void> target, void (*remove)(void*)) noexcept
      : target_(std::move(target)), remove_(remove) {}
  Registration(Registration&& other) noexcept { take(other); }
  Registration& operator=(Registration&& other) noexcept {
    if (this != &other) {
      reset();
      take(other);
    }
    return *this;
  }
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;
  ~Registration() { reset(); }

  [[nodiscard]] bool active() const noexcept { return remove_ != nullptr || static_cast<bool>(generic_); }
  /// Removes the registration; throws std::logic_error if already removed.
  void remove();
  /// Keeps the registration for good and empties the handle.
  void release() noexcept {
    generic_ = {};
    target_.reset();
    remove_ = nullptr;
  }

 private:
  void take(Registration& other) noexcept {
    generic_ = std::exchange(other.generic_, {});
    target_ = std::exchange(other.target_, {});
    remove_ = std::exchange(other.remove_, nullptr);
  }
  void reset() noexcept;
  std::function<void()> generic_;
  std::weak_ptr<void> target_;
  void (*remove_)(void*) = nullptr;
};

/// How a context that counts its own references is kept alive: `retain`
/// adds one reference, `release` drops one (and frees the context with the
/// last). Both may run on any thread.
struct ContextRefs {
  void (*retain)(void* context) noexcept;
  void (*release)(void* context) noexcept;
};

/// Called back with the gradients (backend-typed payload) that triggered it.
/// Keeps its context alive; copying it never allocates.
class GradCallback {
 public:
  GradCallback() = default;
  /// Calls `fn(context, grads)`; the callback adopts one reference to
  /// `context` that the caller holds (no count changes here), and copies
  /// count through `refs`. The tracker's own callbacks are of this kind.
  GradCallback(void* context, const ContextRefs& refs, void (*fn)(void*, Payload)) noexcept
      : context_(context), refs_(&refs), fn_(fn) {}
  /// Calls `fn(context, grads)`; owns the shared context (one allocation).
  GradCallback(std::shared_ptr<void> context, void (*fn)(void*, Payload))
      : GradCallback([c = std::move(context), fn](Payload grads) { fn(c.get(), grads); }) {}
  /// Any callable taking the gradients' Payload (stored once on the heap).
  template <class F>
    requires(!std::same_as<std::remove_cvref_t<F>, GradCallback>) && std::invocable<F&, Payload>
  GradCallback(F f)  // NOLINT(google-explicit-constructor): a callback is its callable
      : context_(new Boxed<F>{{1}, std::move(f)}), refs_(&Boxed<F>::refs), fn_([](void* c, Payload grads) {
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

  void operator()(Payload grads) const { fn_(context_, grads); }
  explicit operator bool() const noexcept { return fn_ != nullptr; }

  /// A non-owning form of this callback, for calling it after a lock is
  /// released: valid while some GradCallback owning the same context lives.
  struct Ref {
    void* context = nullptr;
    void (*fn)(void*, Payload) = nullptr;
    void operator()(Payload grads) const { fn(context, grads); }
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
  void (*fn_)(void*, Payload) = nullptr;
};

/// A call site that holds its module (a holder, a container) can say cheaply
/// which module it is: `same(owner, known)` tells whether `known` refers to
/// the module it holds, by comparing control blocks (no reference count, no
/// cold memory touched). Without it, the tracker asks `known` whether it has
/// expired to tell a module from a freed one at the same address.
struct ModuleOwner {
  const void* owner = nullptr;
  bool (*same)(const void* owner, const WeakModule& known) noexcept = nullptr;
  explicit operator bool() const noexcept { return same != nullptr; }
};

/// One module call as a backend reports it to the trackers.
struct ForwardCall {
  ModuleRef module;
  Payload inputs;
  std::uint32_t depth = 0;  ///< tracked calls already running on this thread
  /// Set by an observer's pre_forward when it will read the inputs again
  /// after the forward (a post hook): a caller whose inputs do not outlive
  /// the forward by themselves then keeps them.
  mutable bool inputs_after = false;
  ModuleOwner owner;  ///< optional: see ModuleOwner
  /// Optional hint: the module this thread will likely call next (a
  /// Sequential's next child). Observers may start loading what they keep
  /// for it; nothing else depends on it.
  ModuleRef next;
};

/// What a tracker installs into a backend to see forward calls.
class ForwardObserver {
 public:
  /// Before the module's forward. Returns a token handed back to post_forward.
  /// May throw: the observer has then undone its own pre work.
  virtual std::uintptr_t pre_forward(const ForwardCall& call) = 0;
  /// After the forward; `output` is empty when the forward threw. Always
  /// called once for each pre_forward that returned.
  virtual void post_forward(const ForwardCall& call, Payload output, std::uintptr_t token) = 0;
  /// post_forward(done, output, token), then pre_forward(next), for a caller
  /// that hands one call's output straight on to the next call (a
  /// Sequential's children): nothing runs between the two. An observer may
  /// do both at once (one lock, one clock read for the exit and the enter).
  /// Returns next's token. If it throws, `done` has been finished anyway and
  /// `next` was not entered.
  virtual std::uintptr_t hand_over(const ForwardCall& done, Payload output, std::uintptr_t token,
                                   const ForwardCall& next) {
    post_forward(done, output, token);
    return pre_forward(next);
  }
  /// Children were added to `module` after it first ran: a tracker that
  /// knows it names the new ones below it (first name still wins).
  virtual void children_changed(ModuleRef module) { (void)module; }

 protected:
  ~ForwardObserver() = default;
};

/// The extension point: what any framework gives the tracker.
class HookBackend {
 public:
  virtual ~HookBackend() = default;

  // --- forward ---
  /// Installs global forward pre/post hooks; the handle removes them.
  virtual Registration add_forward_observer(ForwardObserver& observer) = 0;

  // --- backward ---
  /// Would a forward run now record a graph (grad mode on)?
  [[nodiscard]] virtual bool grad_enabled() const = 0;
  /// Is this thread running a backward pass right now?
  [[nodiscard]] virtual bool in_backward() const = 0;
  /// Identity of the backward pass running on this thread (0 outside one).
  [[nodiscard]] virtual std::uint64_t backward_pass() const = 0;
  /// Calls `fn` once per backward pass, when the first gradient of any of
  /// `values` that require grad arrives. Nothing (nullopt) when none does.
  virtual std::optional<Registration> on_first_gradient(Payload values, GradOrder order, GradCallback fn) = 0;
  /// Calls `fn` once per backward pass, when the gradients of all of
  /// `values` that this pass computes are done. Nothing when none requires grad.
  virtual std::optional<Registration> on_all_gradients(Payload values, GradOrder order, GradCallback fn) = 0;
  /// The same two for a registration kept for good (the tracker's own, whose
  /// callbacks turn inert when its scope ends): true when anything was
  /// registered. The defaults register removably and drop the handle; a
  /// backend may do without the handle's bookkeeping.
  virtual bool keep_first_gradient(Payload values, GradOrder order, GradCallback fn) {
    auto reg = on_first_gradient(values, order, std::move(fn));
    if (reg) reg->release();
    return reg.has_value();
  }
  virtual bool keep_all_gradients(Payload values, GradOrder order, GradCallback fn) {
    auto reg = on_all_gradients(values, order, std::move(fn));
    if (reg) reg->release();
    return reg.has_value();
  }
  /// keep_first_gradient(values, first_order, first_fn), then
  /// keep_all_gradients(values, all_order, all_fn): one call's output that
  /// is the next call's input (a Sequential's children), which a backend may
  /// look up once for both. True when anything was registered.
  virtual bool keep_boundary(Payload values, GradOrder first_order, GradCallback first_fn, GradOrder all_order,
                             GradCallback all_fn) {
    const bool kept = keep_first_gradient(values, first_order, std::move(first_fn));
    return keep_all_gradients(values, all_order, std::move(all_fn)) || kept;
  }
  /// Runs `fn` when the current backward pass ends; throws outside one.
  virtual void at_end_of_backward(std::function<void()> fn) = 0;

  // --- modules ---
  /// The module's type name as the framework spells it (namespaces allowed).
  [[nodiscard]] virtual std::string type_name(ModuleRef module) const = 0;
  /// Calls `fn(name, child)` for each direct child, in registration order.
  virtual void for_each_child(ModuleRef module,
                              const std::function<void(std::string_view, ModuleRef)>& fn) const = 0;
  /// A weak handle to the module (see WeakModule).
  [[nodiscard]] virtual WeakModule weak(ModuleRef module) const = 0;
};

/// A concrete backend that names the types its payloads point to, so a
/// Tracker<B> can hand user hooks typed arguments.
template <class B>
concept TypedBackend = std::derived_from<B, HookBackend> && requires {
  typename B::module_type;   // what ModuleRef::ptr points to
  typename B::inputs_type;   // what a forward's inputs Payload points to
  typename B::output_type;   // what a forward's output Payload points to
  typename B::grads_type;    // what a GradCallback's Payload points to
};

}  // namespace modtracker
