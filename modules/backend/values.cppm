// The vocabulary that trackers and backends share: opaque references to a
// framework's modules and values, and the phase and kind of a transition.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <memory>
export module modtracker.backend:values;

export namespace modtracker {

/// An opaque reference to one framework module; identity is the pointer.
struct ModuleRef {
  const void* ptr = nullptr;
  explicit operator bool() const noexcept { return ptr != nullptr; }
  friend bool operator==(ModuleRef, ModuleRef) = default;
};

/// A weak reference to a module: lock().get() == the module's ModuleRef::ptr,
/// or empty when the module is gone (or its liveness cannot be known).
using WeakModule = std::weak_ptr<const void>;

/// Backend-typed values seen as opaque: a forward's inputs or output, or the
/// gradients a backward event carries (what the backend's inputs_type,
/// output_type and grads_type name). Null: no values (a forward that threw).
struct ValuesRef {
  const void* ptr = nullptr;
  explicit operator bool() const noexcept { return ptr != nullptr; }
};

enum class Phase : std::uint8_t { forward, backward };
enum class Kind : std::uint8_t { enter, exit };

}  // namespace modtracker
