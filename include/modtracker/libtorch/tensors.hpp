// Tensors: how hooks see a call's inputs, output or gradients, and the
// Flatten customization point that finds the tensors in a value.
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstddef>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace modtracker::libtorch {

namespace detail {
class TensorsAccess;  // the library's own door to lazily found Tensors (defined where it is used)
}

/// Tensors by reference: a forward's inputs or output, or the gradients a
/// backward hook gets (what hooks see; valid during the hook only).
class Tensors {
 public:
  Tensors() = default;

  void push(const at::Tensor& t) {
    resolve();
    items_.push(t);
  }
  [[nodiscard]] std::size_t size() const {
    resolve();
    return items_.n;
  }
  [[nodiscard]] bool empty() const { return size() == 0; }
  [[nodiscard]] const at::Tensor& operator[](std::size_t i) const {
    resolve();
    return items_[i];
  }

 private:
  friend class detail::TensorsAccess;
  /// Tensors found on first use, by `find(source, out)`: a call whose
  /// observers never look pays nothing (`source` must outlive every use).
  Tensors(const void* source, void (*find)(const void* source, Tensors& out)) noexcept
      : source_(source), find_(find) {}

  struct Items {
    std::array<const at::Tensor*, 6> inline_{};
    std::vector<const at::Tensor*> spill;
    std::size_t n = 0;
    void push(const at::Tensor& t) {
      if (n < inline_.size()) inline_[n] = &t;
      else spill.push_back(&t);
      ++n;
    }
    const at::Tensor& operator[](std::size_t i) const { return i < inline_.size() ? *inline_[i] : *spill[i - inline_.size()]; }
  };
  void resolve() const {
    if (!find_) [[likely]] return;
    Tensors found;
    std::exchange(find_, nullptr)(source_, found);
    items_ = std::move(found.items_);
  }
  // A cache when made lazily: found, then written, on the first read.
  mutable Items items_;
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

template <>
struct Flatten<torch::nn::ASMoutput> {  // AdaptiveLogSoftmaxWithLoss (its loss is a double)
  static void into(const torch::nn::ASMoutput& v, Tensors& out) { out.push(v.output); }
};
template <>
struct Flatten<torch::nn::utils::rnn::PackedSequence> {  // packed RNN inputs and outputs
  static void into(const torch::nn::utils::rnn::PackedSequence& v, Tensors& out) { out.push(v.data()); }
};

}  // namespace modtracker::libtorch
