// SmallVector: a vector whose first N elements live inline. Private to the
// library; used where a handful of elements is the rule (registrations per
// autograd node, tensors per call, events per gradient) and an allocation
// per call would show in the benchmark.
#pragma once
#include <algorithm>
#include <cstddef>
#include <memory>
#include <new>
#include <utility>
#include <variant>
#include <vector>

namespace modtracker::detail {

/// The inline storage is raw: nothing is built or zeroed up front;
/// the rest spill to a vector made on first need (one pointer until then),
/// which also holds `Extra`, state that the owner needs as rarely.
template <class T, std::size_t N, class Extra = std::monostate>
class SmallVector {
 public:
  SmallVector() = default;
  SmallVector(const SmallVector&) = delete;
  SmallVector& operator=(const SmallVector&) = delete;
  ~SmallVector() {
    for (std::size_t i = 0; i < std::min(size_, N); ++i) std::destroy_at(slot(i));
  }
  template <class... Args>
  void emplace_back(Args&&... args) {
    if (size_ < N) {
      ::new (static_cast<void*>(slot(size_))) T{std::forward<Args>(args)...};
    } else {
      spill().items.push_back(T{std::forward<Args>(args)...});
    }
    ++size_;
  }
  T& operator[](std::size_t i) { return i < N ? *slot(i) : spill_->items[i - N]; }
  Extra& extra() { return spill().extra; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  template <class F>
  bool any_of(F&& f) {
    for (std::size_t i = 0; i < size_; ++i)
      if (f((*this)[i])) return true;
    return false;
  }

 private:
  struct Spill {
    std::vector<T> items;
    [[no_unique_address]] Extra extra;
  };
  T* slot(std::size_t i) noexcept { return std::launder(reinterpret_cast<T*>(inline_ + i * sizeof(T))); }
  Spill& spill() {
    if (!spill_) spill_ = std::make_unique<Spill>();
    return *spill_;
  }
  std::size_t size_ = 0;  // first: read before the elements
  alignas(T) std::byte inline_[N * sizeof(T)];
  std::unique_ptr<Spill> spill_;
};

}  // namespace modtracker::detail
