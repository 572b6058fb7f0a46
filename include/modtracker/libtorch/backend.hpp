// The LibTorch hook backend (one per process) and the tracker on it.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include <modtracker/libtorch/tensors.hpp>

import modtracker.libtorch;  // modtracker and modtracker.backend

namespace modtracker::libtorch {

/// Told when a tracking scope starts and ends (the TorchScript part follows
/// its calls across them). Observers live as long as the process.
class ScopeObserver {
 public:
  virtual void scope_starting() = 0;
  /// On the thread that ends the scope.
  virtual void scope_ending() noexcept = 0;

 protected:
  ~ScopeObserver() = default;
};

/// Gradient hooks with one dispatcher per autograd node (events that share a
/// tensor run in GradOrder), the engine's exec info for "will this pass
/// compute it", and queue_callback for the end of a pass.
class Backend final : public HookBackend {
 public:
  using module_type = torch::nn::Module;
  using inputs_type = Tensors;
  using output_type = Tensors;
  using grads_type = Tensors;

  Backend();
  ~Backend() override;

  [[nodiscard]] std::string type_name(ModuleRef module) const override;
  void for_each_child(ModuleRef module, const std::function<void(std::string_view, ModuleRef)>& fn) const override;
  [[nodiscard]] WeakModule weak(ModuleRef module) const override;
  [[nodiscard]] bool grad_enabled() const override;
  [[nodiscard]] bool in_backward() const override;
  [[nodiscard]] std::uint64_t backward_pass() const override;
  bool add_gradient_hooks(ValuesRef values, std::span<GradientHook> hooks, Registration* removal) override;
  void at_end_of_backward(std::function<void()> fn) override;
  [[nodiscard]] bool holds_values(ValuesRef values) const override;
  [[nodiscard]] std::uint64_t graph_nodes_recorded() const override;
  [[nodiscard]] bool is_framework_layer(ModuleRef module) const override;
  [[nodiscard]] bool holds_only_modules(ModuleRef module) const override;
  [[nodiscard]] bool calls_untracked(ModuleRef parent, ModuleRef child) const override;
  [[nodiscard]] std::uint64_t gradient_stamp(ModuleRef module) const override;
  [[nodiscard]] bool has_nonzero_gradient(ModuleRef module) const override;
  std::uint64_t start_watch() override;
  std::string stop_watch(std::uint64_t watch) override;
  void scope_starting() override;
  void scope_ending() override;
  /// Adds an observer of every scope from now on, for the process's lifetime.
  void add_scope_observer(ScopeObserver& observer);

  /// What a LibTorch user does about a diagnostic (Tracker<Backend> adds it
  /// to the engine's account of what happened).
  static std::string_view remedy(Diagnostic::Code code) noexcept;
};

/// The process-wide LibTorch backend.
Backend& backend();

/// A number no other module of this process has (Tracked modules carry one).
std::uint64_t next_module_serial() noexcept;

/// The ModuleRef of a LibTorch module, and back (for a ModuleRef that this backend gave).
inline ModuleRef module_ref(const torch::nn::Module& m) noexcept { return ModuleRef{static_cast<const void*>(&m)}; }
inline const torch::nn::Module& module_of(ModuleRef m) noexcept { return *static_cast<const torch::nn::Module*>(m.ptr); }

/// A tracker of LibTorch modules (on the process-wide backend).
class Tracker : public modtracker::Tracker<Backend> {
 public:
  explicit Tracker(TrackerOptions options = {}) : modtracker::Tracker<Backend>(backend(), options) {}
};

}  // namespace modtracker::libtorch
