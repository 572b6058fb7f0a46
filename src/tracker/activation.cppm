// Activation: one forward call of a module whose backward the engine
// follows, and the counted reference the gradient callbacks hold to it.
module;
#include "tracker/includes.hpp"
module modtracker:activation;
import modtracker.backend;
import :epoch;

namespace modtracker::detail {

/// Two cache lines from the block pool: the first holds all that the
/// gradient callbacks read, so a backward step touches one line of it.
struct alignas(64) Activation {
  std::atomic<std::uint32_t> refs;  // ActivationRef and the gradient callbacks
  std::uint32_t fqn;
  Epoch* epoch;
  std::uint64_t epoch_generation;
  std::uint64_t entered_pass = 0;  // guarded by the engine's state lock
  std::uint64_t exited_pass = 0;
  std::uint64_t sequence;      // activations started before this one
  std::uint32_t depth;
  std::uint32_t previous_fqn;  // of the activation started before it: likely the next in backward
  bool reported;               // the filter accepted its module: journaled, calls user hooks
  std::uint16_t method = 0;    // its call's method (Engine::method_id): backward's transitions name it
  // Its place among the pass's backward entries (GradOrder::rank of its exit).
  std::atomic<std::uint32_t> backward_rank{0};
  // Second line: forward, naming, and backward's rare paths.
  bool forward_running = false;  // in the engine's list of running forwards (which then owns a reference)
  bool inputs_hooked = false;    // its inputs got the exit hook (some require grad)
  std::uint32_t thread;
  std::uint64_t end_sequence;  // activations started before its forward ended
  const void* module;          // with module_generation: see Engine::live_module()
  std::uint64_t module_generation;
  std::uint64_t graph_at_enter;  // HookBackend::graph_nodes_recorded() at its enter
  // Linked into the engine's list of running forwards between pre_forward and
  // post_forward (state lock), so that a scope ending mid-forward frees it.
  Activation* running_prev = nullptr;
  Activation* running_next = nullptr;

  /// Did `other` run inside this activation's forward?
  [[nodiscard]] bool encloses(const Activation& other) const noexcept {
    return other.thread == thread && other.sequence > sequence && other.sequence < end_sequence;
  }
};
static_assert(sizeof(Activation) == 128);

inline Activation* make_activation() { return ::new (BlockPool<sizeof(Activation)>::allocate()) Activation; }
inline void retain_activation(Activation* a) noexcept { a->refs.fetch_add(1, std::memory_order_relaxed); }
inline void release_activation(Activation* a) noexcept {
  if (a->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  a->~Activation();
  BlockPool<sizeof(Activation)>::deallocate(a);
}
/// How a GradCallback whose context is an Activation counts it.
inline constexpr ContextRefs activation_refs{
    [](void* a) noexcept { retain_activation(static_cast<Activation*>(a)); },
    [](void* a) noexcept { release_activation(static_cast<Activation*>(a)); },
};

/// A counted reference to an Activation, whose count lives in it (no control
/// block, and the references made with it cost no atomic operation).
class ActivationRef {
 public:
  ActivationRef() = default;
  /// Takes over a reference already counted.
  static ActivationRef adopt(Activation* a) noexcept {
    ActivationRef r;
    r.p_ = a;
    return r;
  }
  /// Adds a reference.
  explicit ActivationRef(Activation& a) noexcept : p_(&a) { retain_activation(p_); }
  ActivationRef(const ActivationRef& o) noexcept : p_(o.p_) {
    if (p_) retain_activation(p_);
  }
  ActivationRef(ActivationRef&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  ActivationRef& operator=(ActivationRef o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~ActivationRef() {
    if (p_) release_activation(p_);
  }
  [[nodiscard]] Activation* get() const noexcept { return p_; }
  Activation* operator->() const noexcept { return p_; }
  Activation& operator*() const noexcept { return *p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }
  /// Hands the reference on (to an adopting owner).
  [[nodiscard]] Activation* release() noexcept { return std::exchange(p_, nullptr); }

 private:
  Activation* p_ = nullptr;
};

}  // namespace modtracker::detail
