// How LibTorch module calls reach the trackers:
// - Tracked<Impl>: a module implementation whose forward is a tracked call,
//   so `m->forward(x)` and `m(x)` are tracked alike;
// - Holder<Impl>: a torch::nn::ModuleHolder<Impl> that holds a Tracked<Impl>
//   (what MODTRACKER_MODULE and modtracker::libtorch::nn declare);
// - call() and ForwardScope: a call of any module, written out by hand.
#pragma once

#include <torch/torch.h>

#include <concepts>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include <modtracker/libtorch/backend.hpp>

import modtracker.libtorch;  // modtracker and modtracker.backend

namespace modtracker::libtorch {

/// What every Tracked<Impl> has, whatever its Impl: a serial number (which
/// module this is, without a liveness check) and a liveness token (so that
/// backward hooks get the module, while it lives, even when no
/// std::shared_ptr owns it). A copy is a module of its own: new serial, new token.
class TrackedModule {
 public:
  TrackedModule() : serial_(next_module_serial()), alive_(std::make_shared<char>()) {}
  TrackedModule(const TrackedModule&) : TrackedModule() {}
  TrackedModule& operator=(const TrackedModule&) noexcept { return *this; }
  virtual ~TrackedModule() = default;
  [[nodiscard]] std::uint64_t tracking_serial() const noexcept { return serial_; }
  /// A weak reference that expires when this module is destroyed, pointing at `self`.
  [[nodiscard]] WeakModule liveness(const torch::nn::Module& self) const {
    return std::shared_ptr<const void>(alive_, static_cast<const void*>(&self));
  }

 private:
  std::uint64_t serial_;
  std::shared_ptr<char> alive_;
};

/// A module that stands for one of another runtime (TorchScript's
/// stand-ins, jit::ScriptedModule): the backend reads its class by that
/// runtime's qualified name (`__torch__.torch.nn.modules.container.ModuleList`)
/// to tell torch.nn's containers and layers from the user's modules.
class StandIn {
 public:
  [[nodiscard]] virtual const std::string& qualified_class() const noexcept = 0;

 protected:
  ~StandIn() = default;
};

template <class Impl>
class Tracked;

namespace detail {
template <class T>
inline constexpr bool is_tracked = false;
template <class Impl>
inline constexpr bool is_tracked<Tracked<Impl>> = true;

/// The OwnerProof of a call site holding its module through `p` (a
/// std::shared_ptr that outlives the call).
template <class P>
OwnerProof owner_of(const P& p) noexcept {
  return OwnerProof{&p, [](const void* site, const WeakModule& known) noexcept {
                       const auto& held = *static_cast<const P*>(site);
                       return !held.owner_before(known) && !known.owner_before(held);
                     }};
}

/// module.forward(args...) as one tracked call; `module`'s static type says
/// which forward runs (a Tracked<Impl> passes its Impl).
template <class M, class... Args>
decltype(auto) call_as(M& module, std::uint64_t serial, Args&&... args) {
  auto& d = backend().dispatcher();
  if (d.idle()) return module.forward(std::forward<Args>(args)...);
  Tensors in;
  (flatten_into(args, in), ...);
  ForwardDispatcher::Call frame(d, ForwardCall{.module = module_ref(module), .inputs = ValuesRef{&in}, .serial = serial});
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

/// A module implementation whose forward is a tracked call of Impl::forward
/// (any overload, default arguments included). Everything else is Impl's.
template <class Impl>
class Tracked : public Impl, public TrackedModule {
 public:
  using Impl::Impl;
  Tracked() = default;
  /// A tracked copy of a module built untracked: it shares its parameters,
  /// buffers and submodules.
  explicit Tracked(const Impl& plain) : Impl(plain) {}

  template <class... Args>
  decltype(auto) forward(Args&&... args) {
    return detail::call_as(static_cast<Impl&>(*this), tracking_serial(), std::forward<Args>(args)...);
  }

  /// Impl's clone, tracked (Impl's own clone() would give a plain Impl;
  /// an Impl that cannot be copied keeps it).
  std::shared_ptr<torch::nn::Module> clone(const c10::optional<torch::Device>& device = c10::nullopt) const override {
    auto copy = Impl::clone(device);
    if constexpr (std::is_copy_constructible_v<Impl>) {
      if (const auto plain = std::dynamic_pointer_cast<Impl>(copy)) return std::make_shared<Tracked>(*plain);
    }
    return copy;
  }
};

/// Calls module.forward(args...) as a tracked module call (for a module not
/// otherwise tracked: a ModuleList or ModuleDict entry, a module of a plain type).
template <class M, class... Args>
decltype(auto) call(M& module, Args&&... args) {
  if constexpr (detail::is_tracked<M>) return module.forward(std::forward<Args>(args)...);  // tracked already
  else return detail::call_as(module, 0, std::forward<Args>(args)...);
}

/// The name of the method a hand-written call runs, when it is not forward
/// (ForwardScope s(*this, Method{"decode"}, z)): its transitions name it.
struct Method {
  std::string name;
};

/// RAII form of one module call written by hand, for a module not otherwise
/// tracked:  ForwardScope s(*layer, x); auto y = layer->forward(x); s.finish(y);
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
  /// A call of another method of `module` than forward.
  template <class... Inputs>
  ForwardScope(const torch::nn::Module& module, Method method, const Inputs&... inputs) : method_(std::move(method.name)) {
    auto& d = backend().dispatcher();
    if (d.idle()) return;
    (flatten_into(inputs, inputs_), ...);
    call_.emplace(d, ForwardCall{.module = module_ref(module), .inputs = ValuesRef{&inputs_},
                                 .method = method_.empty() ? nullptr : method_.c_str()});
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
  std::string method_;  // the call views it
  Tensors inputs_;
  std::optional<ForwardDispatcher::Call> call_;
};

namespace detail {
template <class T, class Impl>
concept holder_source = std::same_as<std::remove_cvref_t<T>, std::nullptr_t> ||
                        std::derived_from<std::remove_cvref_t<T>, torch::nn::ModuleHolder<Impl>> ||
                        std::same_as<std::remove_cvref_t<T>, std::shared_ptr<Impl>> ||
                        std::same_as<std::remove_cvref_t<T>, std::shared_ptr<Tracked<Impl>>>;
[[noreturn]] void throw_untracked(const std::type_info& impl);
}  // namespace detail

/// A torch::nn::ModuleHolder<Impl> holding a Tracked<Impl>: `m(x)`,
/// `m->forward(x)`, `(*m).forward(x)` and `list[i]->as<Holder>()->forward(x)`
/// are tracked calls. It converts to and from ModuleHolder<Impl> (what
/// register_module takes and gives back); a module built untracked is refused
/// with std::invalid_argument. ptr() is ModuleHolder's: the plain Impl type,
/// which torch::nn containers need (they call the plain forward: the tracked
/// Sequential tracks its children itself).
template <class Impl>
class Holder : public torch::nn::ModuleHolder<Impl> {
  using Base = torch::nn::ModuleHolder<Impl>;

 public:
  using ContainedType = Tracked<Impl>;  // what Module::as<Holder>() casts to

  Holder()
    requires std::is_default_constructible_v<Impl>
      : Base(make()) {}
  Holder(std::nullptr_t) : Base(nullptr) {}  // NOLINT(google-explicit-constructor): as ModuleHolder
  /// Constructs a Tracked<Impl> from Impl's constructor arguments.
  template <class Head, class... Tail>
    requires(sizeof...(Tail) > 0 || !detail::holder_source<Head, Impl>)
  explicit Holder(Head&& head, Tail&&... tail)
      : Base(make(std::forward<Head>(head), std::forward<Tail>(tail)...)) {}
  Holder(std::shared_ptr<Tracked<Impl>> module)  // NOLINT(google-explicit-constructor)
      : Base(std::shared_ptr<Impl>(std::move(module))) {}
  Holder(std::shared_ptr<Impl> module) : Base(checked(std::move(module))) {}  // NOLINT(google-explicit-constructor)
  Holder(const Base& other)  // NOLINT(google-explicit-constructor)
      : Base(checked(other.is_empty() ? nullptr : other.ptr())) {}

  Tracked<Impl>* get() { return static_cast<Tracked<Impl>*>(Base::get()); }
  const Tracked<Impl>* get() const { return static_cast<const Tracked<Impl>*>(Base::get()); }
  Tracked<Impl>* operator->() { return get(); }
  const Tracked<Impl>* operator->() const { return get(); }
  Tracked<Impl>& operator*() { return *get(); }
  const Tracked<Impl>& operator*() const { return *get(); }

  template <class... Args>
  decltype(auto) operator()(Args&&... args) {
    return get()->forward(std::forward<Args>(args)...);
  }

 private:
  // As the plain type: ModuleHolder's constructor from its shared_ptr (its
  // variadic one would take any other pointer type as an Impl argument).
  template <class... Args>
  static std::shared_ptr<Impl> make(Args&&... args) {
    return std::make_shared<Tracked<Impl>>(std::forward<Args>(args)...);
  }
  static std::shared_ptr<Impl> checked(std::shared_ptr<Impl> module) {
    if (module && !dynamic_cast<Tracked<Impl>*>(module.get())) detail::throw_untracked(typeid(Impl));
    return module;
  }
};

}  // namespace modtracker::libtorch

/// Declares `Name` as a tracked holder of `NameImpl`, in place of
/// TORCH_MODULE(Name). A class template's holder is an alias template:
///   template <class Block> using ResNet = modtracker::libtorch::Holder<ResNetImpl<Block>>;
#define MODTRACKER_MODULE(Name)                                   \
  class Name : public ::modtracker::libtorch::Holder<Name##Impl> { \
   public:                                                        \
    using ::modtracker::libtorch::Holder<Name##Impl>::Holder;     \
  }
