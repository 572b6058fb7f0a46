// Registration: removal exactly once.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
module modtracker.backend;

namespace modtracker {

void Registration::remove() {
  if (!active()) throw std::logic_error("modtracker: registration removed twice (or never registered)");
  // Spent only once the removal succeeded: a remover that throws (a scope
  // ending inside its own hook) leaves the registration in place, and active.
  if (remove_) {
    if (const auto target = target_.lock()) remove_(target.get());
    remove_ = nullptr;
    target_.reset();
    return;
  }
  generic_();
  generic_ = {};
}

void Registration::reset() noexcept {
  if (!active()) return;
  try {
    remove();
  } catch (...) {  // a destructor must not throw; the remover's state is gone anyway
  }
}

}  // namespace modtracker
