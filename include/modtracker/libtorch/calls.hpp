// Tracked module calls written out: a holder whose operator() is tracked
// (Holder, MODTRACKER_MODULE), call(), and ForwardScope for a call made by hand.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <type_traits>
#include <utility>

#include <modtracker/libtorch/backend.hpp>

import modtracker.libtorch;  // modtracker and modtracker.backend

namespace modtracker::libtorch {

/// RAII form of one module call written by hand:
///   ForwardScope s(*layer, x); auto y = layer->forward(x); s.finish(y);
/// A scope destroyed unfinished reports a forward that threw.
class ForwardScope {
 public:
  template <class... Inputs>
  explicit ForwardScope(const torch::nn::Module& module, const Inputs&... inputs) {
    auto& d = backend().dispatcher();
    if (d.idle()) return;
    (flatten_into(inputs, inputs_), ...);
    call_.emplace(d, module_ref(module), ValuesRef{&inputs_});
  }
  template <class Output>
  void finish(const Output& output) {
    if (!call_) return;
    Tensors out;
    flatten_into(output, out);
    call_->finish(ValuesRef{&out});
  }
  void finish() {
    if (!call_) return;
    Tensors out;
    call_->finish(ValuesRef{&out});
  }

 private:
  Tensors inputs_;
  std::optional<ForwardDispatcher::Call> call_;
};

namespace detail {
/// The OwnerProof of a call site holding its module through `p` (a
/// std::shared_ptr that outlives the call).
template <class P>
OwnerProof owner_of(const P& p) noexcept {
  return OwnerProof{&p, [](const void* site, const WeakModule& known) noexcept {
                       const auto& held = *static_cast<const P*>(site);
                       return !held.owner_before(known) && !known.owner_before(held);
                     }};
}

template <class M, class... Args>
decltype(auto) call_as(M& module, OwnerProof owner, Args&&... args) {
  auto& d = backend().dispatcher();
  if (d.idle()) return module.forward(std::forward<Args>(args)...);
  Tensors in;
  (flatten_into(args, in), ...);
  ForwardDispatcher::Call frame(d, module_ref(module), ValuesRef{&in}, owner);
  using R = decltype(module.forward(std::forward<Args>(args)...));
  if constexpr (std::is_void_v<R>) {
    module.forward(std::forward<Args>(args)...);
    Tensors out;
    frame.finish(ValuesRef{&out});
  } else {
    R out = module.forward(std::forward<Args>(args)...);
    Tensors outs;
    flatten_into(out, outs);
    frame.finish(ValuesRef{&outs});
    return out;
  }
}
}  // namespace detail

/// Calls module.forward(args...) as a tracked module call.
template <class M, class... Args>
decltype(auto) call(M& module, Args&&... args) {
  return detail::call_as(module, OwnerProof{}, std::forward<Args>(args)...);
}

/// A drop-in torch::nn::ModuleHolder whose operator() is a tracked call.
template <class Impl>
class Holder : public torch::nn::ModuleHolder<Impl> {
 public:
  using torch::nn::ModuleHolder<Impl>::ModuleHolder;
  Holder() : torch::nn::ModuleHolder<Impl>() {}
  Holder(torch::nn::ModuleHolder<Impl> other) : torch::nn::ModuleHolder<Impl>(std::move(other)) {}

  template <class... Args>
  decltype(auto) operator()(Args&&... args) {
    // The holder's shared_ptr proves which module this is (see OwnerProof).
    return detail::call_as(*this->get(), detail::owner_of(this->ptr()), std::forward<Args>(args)...);
  }
};

}  // namespace modtracker::libtorch

/// Declares `Name` as a tracked holder of `NameImpl` (like TORCH_MODULE).
#define MODTRACKER_MODULE(Name) \
  class Name : public ::modtracker::libtorch::Holder<Name##Impl> { \
   public: \
    using ::modtracker::libtorch::Holder<Name##Impl>::Holder; \
  }

