// TorchScript modules (torch::jit::load, torch::jit::script::Module built in
// C++) as tracked modules: instrument() edits each module class's forward
// graph once, so that every call of the model and of its submodules is a
// module call for the trackers, forward and backward, like an eager module's.
#pragma once

#include <torch/torch.h>
#include <torch/script.h>

#include <memory>
#include <optional>
#include <string>

#include <modtracker/libtorch/calls.hpp>

namespace modtracker::libtorch::jit {

/// How a tracker sees one TorchScript module: a torch::nn::Module named by the
/// TorchScript class (`__torch__.Net` -> `Net`), whose children are the
/// stand-ins of its submodules and whose parameters and buffers are the
/// TorchScript module's own tensors (shared, not copied). Hooks get it as
/// the module of a TorchScript call; as_scripted() tells it from an eager one.
class ScriptedModule : public torch::nn::Module, public StandIn {
 public:
  /// The TorchScript module it stands for, or nothing once that is freed.
  [[nodiscard]] std::optional<torch::jit::Module> script() const;
  /// Its TorchScript class, qualified (`__torch__.Net`).
  [[nodiscard]] const std::string& qualified_class() const noexcept override { return qualified_; }

  /// The stand-in of the TorchScript module holding this one (the first
  /// seen), or null for a root.
  [[nodiscard]] const ScriptedModule* parent() const noexcept { return parent_; }

  /// Internal: use module_of().
  ScriptedModule(const torch::jit::Module& module, std::string qualified);

 private:
  c10::weak_intrusive_ptr<c10::ivalue::Object> object_;
  std::string qualified_;
  const ScriptedModule* parent_ = nullptr;
  friend std::shared_ptr<ScriptedModule> make_stand_in(const torch::jit::Module&, const ScriptedModule*);
};

/// Instruments `model` and its submodules (every TorchScript class in its
/// tree, once: instances of a class share the class's graphs): afterwards
/// every call of their `forward` is a tracked module call for any active
/// modtracker::libtorch::Tracker. Outputs and gradients stay bit-identical.
/// Instrumenting again is a no-op. Call it before the model first runs
/// (a model that ran keeps its compiled plan: load it again, and instrument that).
/// Throws std::invalid_argument for a frozen model (instrument before
/// torch::jit::freeze) or a module whose forward cannot be instrumented.
void instrument(torch::jit::Module& model);

/// Whether `model`'s class has been instrumented (by this process, or saved
/// after instrument() and loaded again).
[[nodiscard]] bool is_instrumented(const torch::jit::Module& model);

/// The stand-in of a TorchScript module: register it as a submodule of an
/// eager module (`register_module("backbone", jit::module_of(backbone))`)
/// and the two are one tree, named `Model.backbone...`; its parameters are
/// then the eager model's too.
[[nodiscard]] std::shared_ptr<ScriptedModule> module_of(const torch::jit::Module& module);

/// The stand-in `m` is, or null for an eager module.
[[nodiscard]] const ScriptedModule* as_scripted(const torch::nn::Module& m) noexcept;

namespace detail {
/// The file that registers the `modtracker::` operators (enter, exit) with
/// LibTorch. Every file that includes this header calls it once at start-up,
/// so a program using modtracker's TorchScript support links that file and
/// loads instrumented models even if it never calls instrument().
bool link_operators() noexcept;
namespace {
[[maybe_unused]] const bool operators_linked = link_operators();
}
}  // namespace detail

}  // namespace modtracker::libtorch::jit
