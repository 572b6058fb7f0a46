// The LibTorch hook backend: modules by torch::nn::Module's own names and
// children, backward from LibTorch's autograd engine.
#include <torch/torch.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/graph_task.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

#include "libtorch/passes.hpp"
#include "modtracker/libtorch/backend.hpp"

// `modtracker` first: clang 16 then merges the std headers of both modules cleanly.
import modtracker;
import modtracker.backend;
#include "libtorch/gradients.hpp"

namespace modtracker::libtorch {

namespace {
const torch::nn::Module& module_of(ModuleRef m) {
  if (!m) throw std::invalid_argument("modtracker: null module");
  return *static_cast<const torch::nn::Module*>(m.ptr);
}
}  // namespace

Backend::Backend() = default;
Backend::~Backend() = default;

Backend& backend() {
  static Backend instance;
  return instance;
}

std::string Backend::type_name(ModuleRef module) const { return module_of(module).name(); }

void Backend::for_each_child(ModuleRef module, const std::function<void(std::string_view, ModuleRef)>& fn) const {
  for (const auto& item : module_of(module).named_children())
    fn(item.key(), ModuleRef{static_cast<const void*>(item.value().get())});
}

WeakModule Backend::weak(ModuleRef module) const {
  auto& m = const_cast<torch::nn::Module&>(module_of(module));
  std::weak_ptr<torch::nn::Module> w = m.weak_from_this();
  return w;
}

bool Backend::grad_enabled() const { return at::GradMode::is_enabled(); }

bool Backend::in_backward() const { return torch::autograd::get_current_graph_task_exec_info() != nullptr; }

std::uint64_t Backend::backward_pass() const {
  const auto firing = detail::firing_pass();
  return firing != 0 ? firing : detail::current_pass();
}

bool Backend::add_gradient_hooks(ValuesRef values, std::span<GradientHook> hooks, Registration* removal) {
  return detail::add_gradient_hooks(values, hooks, removal);
}

void Backend::at_end_of_backward(std::function<void()> fn) {
  if (!in_backward()) throw std::logic_error("modtracker: at_end_of_backward outside a backward pass");
  torch::autograd::Engine::get_default_engine().queue_callback(std::move(fn));
}

}  // namespace modtracker::libtorch
