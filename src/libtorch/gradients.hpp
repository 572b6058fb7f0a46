// The LibTorch backend's gradient hooks (gradients.cpp). Private; include
// after importing modtracker.backend.
#pragma once

namespace modtracker::libtorch::detail {

/// HookBackend::add_gradient_hooks for values that point to Tensors.
bool add_gradient_hooks(ValuesRef values, std::span<GradientHook> hooks, Registration* removal);

}  // namespace modtracker::libtorch::detail
