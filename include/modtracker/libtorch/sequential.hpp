// The tracked Sequential: itself and every child, named by index, are
// tracked calls; the children's loop is in the library (sequential.cpp).
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <concepts>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include <modtracker/libtorch/backend.hpp>

import modtracker.libtorch;  // modtracker and modtracker.backend

namespace modtracker::libtorch {

namespace detail {
/// A Sequential's children by index (AnyModule::ptr() copies a shared_ptr
/// per call). A Sequential only grows, so the size says whether the list is
/// current; an older list stays valid for calls still using it.
class ChildPointers {
 public:
  using Children = std::vector<std::shared_ptr<torch::nn::Module>>;
  ChildPointers() = default;
  ChildPointers(const ChildPointers&) {}  // a copy (clone) starts empty
  ChildPointers& operator=(const ChildPointers&) { return *this; }
  /// The current list; tells the dispatcher when the Sequential grew since it last ran.
  const Children& get(const torch::nn::SequentialImpl& seq, ForwardDispatcher& d);

 private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<Children>> all_;
  std::atomic<const Children*> current_{nullptr};
};
}  // namespace detail

class SequentialImpl : public torch::nn::SequentialImpl {
 public:
  using torch::nn::SequentialImpl::SequentialImpl;

  template <class Return = at::Tensor, class... Inputs>
  Return forward(Inputs&&... inputs) {
    auto& d = backend().dispatcher();
    if (d.idle()) return torch::nn::SequentialImpl::forward<Return>(std::forward<Inputs>(inputs)...);
    TORCH_CHECK(!is_empty(), "Cannot call forward() on an empty Sequential");
    Tensors in;
    (flatten_into(inputs, in), ...);
    ForwardDispatcher::Call frame(d, module_ref(*this), ValuesRef{&in});
    // The inputs go to the first child as lvalues: the Sequential's post hooks still see them.
    auto value = run_children(d, in, [&] { return begin()->any_forward(inputs...); });
    Return result = std::move(value).template get<Return>();
    Tensors outs;
    flatten_into(result, outs);
    frame.finish(ValuesRef{&outs});
    return result;
  }

 private:
  // The children as a chain of tracked calls, the first one made by `first`;
  // returns the last one's output.
  torch::nn::AnyValue run_children(ForwardDispatcher& d, Tensors& in, c10::function_ref<torch::nn::AnyValue()> first);
  detail::ChildPointers children_;
};

namespace nn {
/// The holder of the tracked SequentialImpl, built like torch::nn::Sequential.
class Sequential : public torch::nn::ModuleHolder<libtorch::SequentialImpl> {
 public:
  using torch::nn::ModuleHolder<libtorch::SequentialImpl>::ModuleHolder;
  Sequential() : torch::nn::ModuleHolder<libtorch::SequentialImpl>() {}
  Sequential(std::initializer_list<torch::nn::NamedAnyModule> named);
  /// A tracked Sequential over the same children (shared, not copied).
  explicit Sequential(const torch::nn::Sequential& plain);
  explicit Sequential(torch::nn::Sequential& plain) : Sequential(std::as_const(plain)) {}  // not the variadic one
  explicit Sequential(torch::nn::Sequential&& plain) : Sequential(std::as_const(plain)) {}
  /// Refused, naming the fix: a torch::nn::Sequential would call the same
  /// children untracked.
  template <class T>
    requires std::same_as<T, torch::nn::Sequential>
  operator T() const {  // NOLINT(google-explicit-constructor): only here to refuse
    static_assert(!std::same_as<T, T>,
                  "modtracker: a torch::nn::Sequential made from a tracked one would call its children untracked; "
                  "keep modtracker::libtorch::nn::Sequential, or say so: std::shared_ptr<torch::nn::SequentialImpl>(seq.ptr())");
  }
  template <class... Args>
  decltype(auto) operator()(Args&&... args) {
    return this->get()->forward(std::forward<Args>(args)...);
  }
};
}  // namespace nn

}  // namespace modtracker::libtorch
