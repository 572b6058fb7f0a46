// A minimal C++20 coroutine generator (libstdc++ 12 has no std::generator):
// an input range usable with std::ranges and range-v3 views.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <coroutine>
#include <exception>
#include <iterator>
#include <memory>
#include <type_traits>
#include <utility>
export module modtracker:generator;

export namespace modtracker {

/// Lazily yields values of type T; single pass, move-only.
template <class T>
class Generator : public std::ranges::view_base {
 public:
  using value_type = std::remove_cvref_t<T>;

  struct promise_type {
    std::add_pointer_t<const value_type> current = nullptr;
    std::exception_ptr error;

    Generator get_return_object() noexcept {
      return Generator{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() const noexcept { return {}; }
    std::suspend_always final_suspend() const noexcept { return {}; }
    std::suspend_always yield_value(const value_type& v) noexcept {
      current = std::addressof(v);
      return {};
    }
    void return_void() const noexcept {}
    void unhandled_exception() noexcept { error = std::current_exception(); }
    template <class U>
    std::suspend_never await_transform(U&&) = delete;  // no co_await inside
  };

  class iterator {
   public:
    using value_type = Generator::value_type;
    using difference_type = std::ptrdiff_t;
    using reference = const value_type&;

    iterator() = default;
    explicit iterator(std::coroutine_handle<promise_type> h) : h_(h) {}
    reference operator*() const { return *h_.promise().current; }
    const value_type* operator->() const { return h_.promise().current; }
    iterator& operator++() {
      h_.resume();
      rethrow_if_failed();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) noexcept {
      return !it.h_ || it.h_.done();
    }
    void rethrow_if_failed() const {
      if (h_.done() && h_.promise().error) std::rethrow_exception(h_.promise().error);
    }

   private:
    std::coroutine_handle<promise_type> h_{};
  };

  Generator() = default;
  explicit Generator(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
  Generator(Generator&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  Generator& operator=(Generator&& o) noexcept {
    if (this != &o) {
      if (h_) h_.destroy();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  ~Generator() {
    if (h_) h_.destroy();
  }

  /// Starts the coroutine; call once.
  iterator begin() {
    if (!h_) return iterator{};
    h_.resume();
    iterator it{h_};
    it.rethrow_if_failed();
    return it;
  }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  std::coroutine_handle<promise_type> h_{};
};

}  // namespace modtracker
