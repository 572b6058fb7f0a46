// Registration: the handle of something a backend registered (a forward
// observer, removable gradient hooks), which removes it exactly once.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
export module modtracker.backend:registration;

export namespace modtracker {

/// Removes what it registered exactly once, explicitly (a second remove()
/// throws) or at destruction. An empty handle is inactive.
class Registration {
 public:
  Registration() = default;
  /// Removal by any callable.
  explicit Registration(std::function<void()> remover) : generic_(std::move(remover)) {}
  /// Removal by `remove(target)` if `target` still exists; never allocates.
  Registration(std::weak_ptr<void> target, void (*remove)(void*)) noexcept
      : target_(std::move(target)), remove_(remove) {}
  Registration(Registration&& other) noexcept { take(other); }
  Registration& operator=(Registration&& other) noexcept {
    if (this != &other) {
      reset();
      take(other);
    }
    return *this;
  }
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;
  ~Registration() { reset(); }

  [[nodiscard]] bool active() const noexcept { return remove_ != nullptr || static_cast<bool>(generic_); }
  /// Removes the registration; throws std::logic_error if already removed.
  /// A remover that throws leaves the registration active.
  void remove();
  /// Keeps the registration for good and empties the handle.
  void release() noexcept {
    generic_ = {};
    target_.reset();
    remove_ = nullptr;
  }

 private:
  void take(Registration& other) noexcept {
    generic_ = std::exchange(other.generic_, {});
    target_ = std::exchange(other.target_, {});
    remove_ = std::exchange(other.remove_, nullptr);
  }
  void reset() noexcept;
  std::function<void()> generic_;
  std::weak_ptr<void> target_;
  void (*remove_)(void*) = nullptr;
};

}  // namespace modtracker
