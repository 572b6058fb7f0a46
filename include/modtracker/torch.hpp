// modtracker for LibTorch: the one header LibTorch users include, next to
// `import modtracker;`. It holds the LibTorch hook backend, the tensor
// flattening customization point, and the ways module calls reach the
// trackers: tracked holders (MODTRACKER_MODULE, modtracker::libtorch::nn::*),
// a tracked Sequential, and call()/ForwardScope for hand-written calls.
#pragma once

#include <torch/torch.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

import modtracker;

namespace modtracker::libtorch {

/// Tensors by reference: a forward's inputs or output, or the gradients a
/// backward hook gets (what hooks see; valid during the hook only).
class Tensors {
 public:
  Tensors() = default;
  /// Tensors found on first use, by `find(source, *this)`: a call whose
  /// observers never look pays nothing (`source` must outlive every use).
  Tensors(const void* source, void (*find)(const void* source, Tensors& out)) noexcept
      : source_(source), find_(find) {}

  void push(const at::Tensor& t) {
    if (n_ < inline_.size()) inline_[n_] = &t;
    else spill_.push_back(&t);
    ++n_;
  }
  [[nodiscard]] std::size_t size() const {
    resolve();
    return n_;
  }
  [[nodiscard]] bool empty() const { return size() == 0; }
  [[nodiscard]] const at::Tensor& operator[](std::size_t i) const {
    resolve();
    return i < inline_.size() ? *inline_[i] : *spill_[i - inline_.size()];
  }

 private:
  void resolve() const {
    if (find_) [[unlikely]] {
      const auto find = std::exchange(find_, nullptr);
      find(source_, const_cast<Tensors&>(*this));  // Tensors are never const objects, only const views
    }
  }
  std::array<const at::Tensor*, 6> inline_{};
  std::vector<const at::Tensor*> spill_;
  std::size_t n_ = 0;
  const void* source_ = nullptr;
  mutable void (*find_)(const void*, Tensors&) = nullptr;
};

/// Customization point: how to find the tensors in a value of type T.
/// Specialize `Flatten<T>` with `static void into(const T&, Tensors&)` for
/// your own input/output types; tensors, tuples, pairs, vectors, optionals,
/// TensorList and torch::OrderedDict are built in; other types hold none.
template <class T, class = void>
struct Flatten {
  static void into(const T&, Tensors&) {}
};

template <class T>
void flatten_into(const T& value, Tensors& out) {
  Flatten<std::remove_cvref_t<T>>::into(value, out);
}

template <>
struct Flatten<at::Tensor> {
  static void into(const at::Tensor& t, Tensors& out) { out.push(t); }
};
template <class T>
struct Flatten<std::optional<T>> {
  static void into(const std::optional<T>& v, Tensors& out) {
    if (v) flatten_into(*v, out);
  }
};
template <class T>
struct Flatten<c10::optional<T>, std::enable_if_t<!std::is_same_v<c10::optional<T>, std::optional<T>>>> {
  static void into(const c10::optional<T>& v, Tensors& out) {
    if (v) flatten_into(*v, out);
  }
};
template <class T, class A>
struct Flatten<std::vector<T, A>> {
  static void into(const std::vector<T, A>& v, Tensors& out) {
    for (const auto& x : v) flatten_into(x, out);
  }
};
template <class T>
struct Flatten<c10::ArrayRef<T>> {
  static void into(const c10::ArrayRef<T>& v, Tensors& out) {
    for (const auto& x : v) flatten_into(x, out);
  }
};
template <class... Ts>
struct Flatten<std::tuple<Ts...>> {
  static void into(const std::tuple<Ts...>& v, Tensors& out) {
    std::apply([&](const auto&... xs) { (flatten_into(xs, out), ...); }, v);
  }
};
template <class A, class B>
struct Flatten<std::pair<A, B>> {
  static void into(const std::pair<A, B>& v, Tensors& out) {
    flatten_into(v.first, out);
    flatten_into(v.second, out);
  }
};
template <class K, class V>
struct Flatten<torch::OrderedDict<K, V>> {
  static void into(const torch::OrderedDict<K, V>& v, Tensors& out) {
    for (const auto& item : v) flatten_into(item.value(), out);
  }
};

/// The LibTorch hook backend (one per process: backend()).
class Backend final : public HookBackend {
 public:
  using module_type = torch::nn::Module;
  using inputs_type = Tensors;
  using output_type = Tensors;
  using grads_type = Tensors;

  Backend();
  ~Backend() override;

  [[nodiscard]] ForwardDispatcher& dispatcher() noexcept { return dispatcher_; }

  Registration add_forward_observer(ForwardObserver& observer) override;
  [[nodiscard]] bool grad_enabled() const override;
  [[nodiscard]] bool in_backward() const override;
  [[nodiscard]] std::uint64_t backward_pass() const override;
  std::optional<Registration> on_first_gradient(Payload values, GradOrder order, GradCallback fn) override;
  std::optional<Registration> on_all_gradients(Payload values, GradOrder order, GradCallback fn) override;
  bool keep_first_gradient(Payload values, GradOrder order, GradCallback fn) override;
  bool keep_all_gradients(Payload values, GradOrder order, GradCallback fn) override;
  bool keep_boundary(Payload values, GradOrder first_order, GradCallback first_fn, GradOrder all_order,
                     GradCallback all_fn) override;
  void at_end_of_backward(std::function<void()> fn) override;
  [[nodiscard]] std::string type_name(ModuleRef module) const override;
  void for_each_child(ModuleRef module, const std::function<void(std::string_view, ModuleRef)>& fn) const override;
  [[nodiscard]] WeakModule weak(ModuleRef module) const override;

 private:
  ForwardDispatcher dispatcher_;
};

/// The process-wide LibTorch backend.
Backend& backend();

/// The ModuleRef of a LibTorch module.
inline ModuleRef module_ref(const torch::nn::Module& m) noexcept { return ModuleRef{static_cast<const void*>(&m)}; }

/// A tracker of LibTorch modules (on the process-wide backend).
class Tracker : public modtracker::Tracker<Backend> {
 public:
  explicit Tracker(TrackerOptions options = {}) : modtracker::Tracker<Backend>(backend(), options) {}
};

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
    call_.emplace(d, module_ref(module), Payload{&inputs_});
  }
  template <class Output>
  void finish(const Output& output) {
    if (!call_) return;
    Tensors out;
    flatten_into(output, out);
    call_->finish(Payload{&out});
  }
  void finish() {
    if (!call_) return;
    Tensors out;
    call_->finish(Payload{&out});
  }

 private:
  Tensors inputs_;
  std::optional<ForwardDispatcher::Call> call_;
};

namespace detail {
/// The ModuleOwner of a call site holding its module through `p` (a
/// std::shared_ptr that outlives the call).
template <class P>
ModuleOwner owner_of(const P& p) noexcept {
  return ModuleOwner{&p, [](const void* site, const WeakModule& known) noexcept {
                       const auto& held = *static_cast<const P*>(site);
                       return !held.owner_before(known) && !known.owner_before(held);
                     }};
}

template <class M, class... Args>
decltype(auto) call_as(M& module, ModuleOwner owner, Args&&... args) {
  auto& d = backend().dispatcher();
  if (d.idle()) return module.forward(std::forward<Args>(args)...);
  Tensors in;
  (flatten_into(args, in), ...);
  ForwardDispatcher::Call frame(d, module_ref(module), Payload{&in}, owner);
  using R = decltype(module.forward(std::forward<Args>(args)...));
  if constexpr (std::is_void_v<R>) {
    module.forward(std::forward<Args>(args)...);
    Tensors out;
    frame.finish(Payload{&out});
  } else {
    R out = module.forward(std::forward<Args>(args)...);
    Tensors outs;
    flatten_into(out, outs);
    frame.finish(Payload{&outs});
    return out;
  }
}
}  // namespace detail

/// Calls module.forward(args...) as a tracked module call.
template <class M, class... Args>
decltype(auto) call(M& module, Args&&... args) {
  return detail::call_as(module, ModuleOwner{}, std::forward<Args>(args)...);
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
    // The holder's shared_ptr says which module this is (see ModuleOwner).
    return detail::call_as(*this->get(), detail::owner_of(this->ptr()), std::forward<Args>(args)...);
  }
};

/// Tracked Sequential: itself and every child, named by index, are tracked.
class SequentialImpl : public torch::nn::SequentialImpl {
 public:
  using torch::nn::SequentialImpl::SequentialImpl;

  template <class Return = at::Tensor, class... Inputs>
  Return forward(Inputs&&... inputs) {
    auto& d = backend().dispatcher();
    if (d.idle()) return torch::nn::SequentialImpl::forward<Return>(std::forward<Inputs>(inputs)...);
    TORCH_CHECK(!is_empty(), "Cannot call forward() on an empty Sequential");
    const std::shared_ptr<torch::nn::Module>* children = children_.get(*this, d);
    Tensors in;
    (flatten_into(inputs, in), ...);
    ForwardDispatcher::Call frame(d, module_ref(*this), Payload{&in});
    auto it = begin();
    // The inputs are passed on as lvalues: the Sequential's post hooks still see them.
    std::optional<torch::nn::AnyValue> value;
    // A child's output is the next child's input: one Tensors for both
    // (found once, if an observer looks), two in turn.
    std::array<Tensors, 2> io;
    // A child's input kept for observers that look at it after the forward
    // (the call consumes the value): outlives the calls, even a throwing one's.
    at::Tensor kept;
    // The running child's call, and the previous one's, which hands over to it.
    std::array<std::optional<ForwardDispatcher::Call>, 2> calls;
    calls[0].emplace(d, module_ref(*children[0]), Payload{&in}, detail::owner_of(children[0]), next_of(children, 1));
    value.emplace(it->any_forward(inputs...));
    io[0] = Tensors(&*value, &tensor_in);
    std::size_t i = 0;
    while (++it != end()) {
      ++i;
      Tensors& child_in = io[(i - 1) & 1];  // the previous output, which the call consumes
      auto& previous = calls[(i - 1) & 1];
      auto& child = calls[i & 1].emplace(*previous, Payload{&child_in}, module_ref(*children[i]), Payload{&child_in},
                                         detail::owner_of(children[i]), next_of(children, i + 1));
      previous.reset();
      kept = at::Tensor();
      if (child.inputs_after()) {
        if (!child_in.empty()) kept = child_in[0];
        child_in = Tensors();
        if (kept.defined()) child_in.push(kept);
      }
      struct Forget {  // the value child_in may point into dies inside the call
        Tensors& in;
        const at::Tensor& kept;
        void operator()() const {
          if (!kept.defined()) in = Tensors();
        }
        ~Forget() { (*this)(); }  // also before a throwing call's post hooks
      } forget{child_in, kept};
      value.emplace(it->any_forward(std::move(*value)));
      forget();
      io[i & 1] = Tensors(&*value, &tensor_in);
    }
    calls[i & 1]->finish(Payload{&io[i & 1]});
    Return result = std::move(*value).template get<Return>();
    Tensors outs;
    flatten_into(result, outs);
    frame.finish(Payload{&outs});
    return result;
  }

 private:
  // The children by index (AnyModule::ptr() copies a shared_ptr per call). A
  // Sequential only grows, so the size says whether they are current; an
  // older list stays valid for calls still using it.
  class ChildPointers {
   public:
    ChildPointers() = default;
    ChildPointers(const ChildPointers&) {}  // a copy (clone) starts empty
    ChildPointers& operator=(const ChildPointers&) { return *this; }
    using Children = std::vector<std::shared_ptr<torch::nn::Module>>;
    const std::shared_ptr<torch::nn::Module>* get(const torch::nn::SequentialImpl& seq, ForwardDispatcher& d) {
      const auto* now = current_.load(std::memory_order_acquire);
      if (now && now->size() == seq.size()) [[likely]] return now->data();
      const std::shared_ptr<torch::nn::Module>* data = nullptr;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        auto fresh = std::make_unique<Children>();
        for (const auto& m : seq) fresh->push_back(m.ptr());
        current_.store(fresh.get(), std::memory_order_release);
        all_.push_back(std::move(fresh));
        data = all_.back()->data();
      }
      if (now) d.children_changed(module_ref(seq));  // grown since it last ran: name the new ones
      return data;
    }

   private:
    std::mutex mutex_;
    std::vector<std::unique_ptr<Children>> all_;
    std::atomic<const Children*> current_{nullptr};
  };

  // The child after the one running (ForwardCall::next), if any.
  ModuleRef next_of(const std::shared_ptr<torch::nn::Module>* children, std::size_t i) const noexcept {
    return i < size() ? module_ref(*children[i]) : ModuleRef{};
  }

  // The tensor in a child's output (an AnyValue), if it holds one.
  static void tensor_in(const void* value, Tensors& out) {
    auto& v = *const_cast<torch::nn::AnyValue*>(static_cast<const torch::nn::AnyValue*>(value));
    if (const auto* t = v.try_get<at::Tensor>()) out.push(*t);
  }

  ChildPointers children_;
};

/// Declares `Name` as a tracked holder of `NameImpl` (like TORCH_MODULE).
#define MODTRACKER_MODULE(Name) \
  class Name : public ::modtracker::libtorch::Holder<Name##Impl> { \
   public: \
    using ::modtracker::libtorch::Holder<Name##Impl>::Holder; \
  }

/// Tracked drop-ins for torch::nn layers: `modtracker::libtorch::nn::Linear`
/// wherever `torch::nn::Linear` was.
namespace nn {
class Sequential : public torch::nn::ModuleHolder<libtorch::SequentialImpl> {
 public:
  using torch::nn::ModuleHolder<libtorch::SequentialImpl>::ModuleHolder;
  Sequential() : torch::nn::ModuleHolder<libtorch::SequentialImpl>() {}
  Sequential(std::initializer_list<torch::nn::NamedAnyModule> named)
      : torch::nn::ModuleHolder<libtorch::SequentialImpl>(
            std::make_shared<libtorch::SequentialImpl>(torch::OrderedDict<std::string, torch::nn::AnyModule>(
                [&] {
                  torch::OrderedDict<std::string, torch::nn::AnyModule> d;
                  for (const auto& m : named) d.insert(m.name(), m.module());
                  return d;
                }()))) {}
  template <class... Args>
  decltype(auto) operator()(Args&&... args) {
    return this->get()->forward(std::forward<Args>(args)...);
  }
};
using Linear = Holder<torch::nn::LinearImpl>;
using Conv1d = Holder<torch::nn::Conv1dImpl>;
using Conv2d = Holder<torch::nn::Conv2dImpl>;
using BatchNorm1d = Holder<torch::nn::BatchNorm1dImpl>;
using BatchNorm2d = Holder<torch::nn::BatchNorm2dImpl>;
using LayerNorm = Holder<torch::nn::LayerNormImpl>;
using Dropout = Holder<torch::nn::DropoutImpl>;
using Embedding = Holder<torch::nn::EmbeddingImpl>;
using ReLU = Holder<torch::nn::ReLUImpl>;
using GELU = Holder<torch::nn::GELUImpl>;
using Tanh = Holder<torch::nn::TanhImpl>;
using MaxPool2d = Holder<torch::nn::MaxPool2dImpl>;
using AdaptiveAvgPool2d = Holder<torch::nn::AdaptiveAvgPool2dImpl>;
using Flatten = Holder<torch::nn::FlattenImpl>;
using MultiheadAttention = Holder<torch::nn::MultiheadAttentionImpl>;
}  // namespace nn

}  // namespace modtracker::libtorch
