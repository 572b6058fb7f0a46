// The engine behind TrackerBase: its state, and where each rule lives.
//   scope.cpp     tracking scopes and their epochs
//   forward.cpp   the forward rules (enter, exit, chained calls)
//   backward.cpp  the backward rules (entries, exits, the end of a pass)
//   naming.cpp    root and child names, walk()
//   parents.cpp   `parents`, known_fqn()
//   journal.cpp   the journal and drain_transitions()
//   config.cpp    user hooks, the filter, diagnostics
module;
#include "tracker/includes.hpp"
module modtracker:engine;
import modtracker.backend;
import :generator;
import :transitions;
import :tracker;
import :epoch;
import :activation;
import :journal;
import :names;
import :parents;

namespace modtracker::detail {

// The gradient callbacks of an activation (its context), in backward.cpp.
void on_output_gradient(void* activation, ValuesRef grads);
void on_input_gradients(void* activation, ValuesRef grads);

class Engine final : public ForwardObserver {
 public:
  Engine(HookBackend& backend, TrackerOptions options, DiagnosticRemedy remedy);
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  ~Engine();

  // scope.cpp
  void start();
  void stop();
  [[nodiscard]] bool tracking() const noexcept { return epoch_ != nullptr; }

  // parents.cpp
  [[nodiscard]] Parents parents() const;
  [[nodiscard]] bool is_bw() const { return backend_.in_backward(); }
  [[nodiscard]] std::optional<std::string> known_fqn(ModuleRef module) const;

  // naming.cpp
  void children_changed(ModuleRef module) override;
  void name_root(ModuleRef module, std::string name);
  Generator<std::pair<std::string, ModuleRef>> walk(ModuleRef root) const;

  // journal.cpp
  Generator<Transition> drain();
  [[nodiscard]] std::uint64_t dropped() const;
  /// The transitions' clock: time from the engine's creation to `tick`.
  [[nodiscard]] std::chrono::nanoseconds since_start(std::uint64_t tick) const noexcept {
    return std::chrono::nanoseconds(static_cast<std::int64_t>(static_cast<double>(tick - tick0_) * ns_per_tick()));
  }
  Registration add_listener(TransitionListener& listener);

  // config.cpp
  void set_hooks(ErasedHooks hooks, const std::array<bool, 4>& given);
  void clear_hooks();
  void set_filter(ErasedFilter filter);
  void set_sink(DiagnosticSink sink);

  // forward.cpp
  EnterResult pre_forward(const ForwardCall& call) override;
  void post_forward(const ForwardCall& call, ValuesRef output, std::uintptr_t token) override;
  EnterResult exit_and_enter(const ForwardCall& done, ValuesRef output, std::uintptr_t token,
                             const ForwardCall& next) override;

  // backward.cpp, from the gradient callbacks (through their epoch)
  void backward_enter(Activation& act, ValuesRef grads);
  void backward_exit(Activation& act, ValuesRef grads);
  void finish_pass(std::uint64_t pass);

 private:
  struct PendingEnter;
  // forward.cpp: an enter in three steps (before, under and after the state
  // lock), and the exit under the lock.
  void begin_enter(const ForwardCall& call, PendingEnter& e);
  void enter_locked(const ForwardCall& call, PendingEnter& e, StepClock& clock);
  EnterResult end_enter(const ForwardCall& call, PendingEnter& e);
  void undo_enter(const ForwardCall& call, PendingEnter& e) noexcept;
  void exit_forward_locked(std::uint32_t fqn, bool reported, const ForwardCall& call, StepClock& clock);
  ActivationRef exit_locked(const ForwardCall& call, std::uintptr_t token, StepClock& clock);
  void finish_forward(const ForwardCall& call, ValuesRef output, std::uintptr_t token, const ErasedHooks* h);
  void register_output(ActivationRef act, ValuesRef output, PendingEnter* next = nullptr);
  void link_running(Activation& a) noexcept;
  void unlink_running(Activation& a) noexcept;

  // backward.cpp
  struct OpenPass {
    std::uint64_t id;
    std::thread::id thread;
    std::vector<ActivationRef> open;  // entered in this pass, not exited yet
    std::uint32_t entered = 0;        // activations entered so far: the next backward rank
  };
  OpenPass* find_pass(std::uint64_t id) noexcept;
  void close_stale_passes();
  void exit_backward(Activation& act, ValuesRef grads);
  void exit_backward_locked(const Activation& act);
  [[nodiscard]] std::shared_ptr<const void> live_module(const Activation& act) const;

  // scope.cpp: what a scope could not see
  void check_scope_end();
  void say_outside_parent(std::uint32_t fqn, std::uint32_t parent);
  void first_call_seen();

  // journal.cpp: every transition goes to the journal and the listeners (state lock held).
  // Inline: the hot paths make it without a call (seven arguments would
  // pass one on the stack); the listeners' part is out of line.
  void record(Phase phase, Kind kind, std::uint32_t fqn, std::uint32_t depth, std::uint16_t method, StepClock& clock) {
    journal_.record(phase, kind, fqn, depth, method, clock);
    if (!listeners_.empty()) [[unlikely]]
      notify_listeners(phase, kind, fqn, depth, method, clock);
  }
  void notify_listeners(Phase phase, Kind kind, std::uint32_t fqn, std::uint32_t depth, std::uint16_t method,
                        StepClock& clock);
  void record(Phase phase, Kind kind, std::uint32_t fqn, std::uint32_t depth, std::uint16_t method) {
    StepClock clock;
    record(phase, kind, fqn, depth, method, clock);
  }
  // The id of a call's method name (0: forward), interned (state lock held).
  std::uint16_t method_id(std::string_view method);
  void notify_scope(bool started);

  // config.cpp
  void diagnose(Diagnostic d);
  // Says `d` unless this tracker said the same code for the same fqn before.
  void diagnose_once(Diagnostic d);
  [[nodiscard]] bool said(Diagnostic::Code code, const std::string& fqn) const;
  // The diagnostics collected under the state lock (naming), said after it.
  void say_pending();
  [[nodiscard]] std::shared_ptr<const ErasedHooks> hooks() const;
  // False in the common case (no user hooks): then the hot paths hold no
  // hooks pointer at all (its null copy costs a store and a reload).
  [[nodiscard]] bool may_have_hooks() const noexcept { return has_hooks_.load(std::memory_order_acquire); }

  HookBackend& backend_;
  mutable SpinLock state_;  // guards everything below except the config section
  std::vector<Diagnostic> pending_;  // found under the lock, said after it
  ModuleNames names_;
  ParentCounts counts_;
  Journal journal_;
  std::vector<TransitionListener*> listeners_;
  // What a listener's handle holds: it outlives the engine harmlessly.
  std::shared_ptr<Engine*> self_ = std::make_shared<Engine*>(this);
  std::uint64_t tick0_;
  std::uint64_t activations_ = 0;          // activations started: the next one's sequence
  std::uint32_t last_activation_fqn_ = 0;  // see Activation::previous_fqn
  std::vector<OpenPass> passes_;
  Activation* running_ = nullptr;  // activations between pre_ and post_forward
  ErasedFilter filter_;

  mutable std::mutex config_;  // guards hooks_, sink_, said_
  std::shared_ptr<const ErasedHooks> hooks_;
  std::atomic<bool> has_hooks_{false};
  DiagnosticSink sink_;
  DiagnosticRemedy remedy_;  // the backend's advice, added to each diagnostic (may be null)
  std::set<std::pair<Diagnostic::Code, std::string>> said_;

  Epoch* epoch_ = nullptr;  // set while tracking
  std::uint64_t epoch_generation_ = 0;
  Registration observer_;
  // Until the scope's first tracked call, the backend watches for work done
  // without one (HookBackend::start_watch).
  std::atomic<bool> seen_call_{true};
  std::uint64_t watch_ = 0;
  // Method names by id (0: forward), guarded by the state lock: a deque, so
  // that the names a Transition holds stay where they are as it grows. Last:
  // cold, and out of the way of the lock's hot members above.
  std::deque<std::string> methods_{"forward"};
};

}  // namespace modtracker::detail
