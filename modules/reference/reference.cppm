// import modtracker.reference; -- a backend in plain C++ that replays module
// programs without any framework: module trees, forward calls with values
// that do or do not require grad, and backward passes in which gradients
// arrive value by value. The executable specification of docs/semantics.md.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <atomic>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>
export module modtracker.reference;
import modtracker.backend;

export namespace modtracker::reference {

/// A module: a type name and named children (shared children allowed).
class Module : public std::enable_shared_from_this<Module> {
 public:
  explicit Module(std::string type_name) : type_(std::move(type_name)) {}
  /// Registers `child` under `name`; returns it.
  std::shared_ptr<Module> add(std::string name, std::shared_ptr<Module> child);
  [[nodiscard]] const std::string& type_name() const noexcept { return type_; }
  [[nodiscard]] const auto& children() const noexcept { return children_; }
  [[nodiscard]] std::shared_ptr<Module> child(std::string_view name) const;

 private:
  std::string type_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

/// A tensor stand-in: an identity and whether it requires grad.
struct Value {
  std::uint64_t id = 0;
  bool requires_grad = false;
  friend bool operator==(const Value&, const Value&) = default;
};
using Values = std::vector<Value>;

/// The reference framework. Not thread-safe beyond what the tracker needs:
/// drive one backend from one thread at a time.
class Backend final : public HookBackend {
 public:
  using module_type = Module;
  using inputs_type = Values;
  using output_type = Values;
  using grads_type = Values;

  Backend() = default;

  /// A module owned by the caller and known to this backend.
  std::shared_ptr<Module> module(std::string type_name,
                                 std::initializer_list<std::pair<std::string, std::shared_ptr<Module>>> children = {});
  /// Makes a module allocated elsewhere (any way: own storage, a custom
  /// deleter) known to this backend; returns it.
  std::shared_ptr<Module> adopt(std::shared_ptr<Module> module);

  /// A fresh leaf value.
  Value value(bool requires_grad);
  /// A value computed from `inputs`: requires grad iff grad mode is on and
  /// an input does (what an autograd op gives).
  Value op(std::span<const Value> inputs);
  Value op(std::initializer_list<Value> inputs) { return op(std::span<const Value>(inputs.begin(), inputs.size())); }

  /// Calls module `m` on `inputs`; `body` is its forward (default: one op
  /// over all inputs). Exceptions from `body` reach the caller.
  Values call(Module& m, const Values& inputs, const std::function<Values(const Values&)>& body = {});

  /// Grad mode for the forwards that follow (as a no-grad guard sets it).
  void set_grad_mode(bool on) noexcept { grad_mode_ = on; }

  /// One backward pass: gradients arrive for `arrivals`, in that order;
  /// the pass computes the gradients of `computes` (default: every value).
  /// `during(v)` runs just after the gradient of v is handled (e.g. a
  /// recomputation forward). Registered end callbacks run at the end.
  void backward(const Values& arrivals, std::optional<std::set<std::uint64_t>> computes = std::nullopt,
                const std::function<void(const Value&)>& during = {});
  /// Backward passes run so far.
  [[nodiscard]] std::uint64_t passes() const noexcept { return pass_counter_; }
  /// Gradient registrations alive on values (for leak checks).
  [[nodiscard]] std::size_t live_registrations() const;

  // HookBackend
  bool grad_enabled() const override { return grad_mode_; }
  bool in_backward() const override { return current_ != nullptr; }
  std::uint64_t backward_pass() const override { return current_ ? current_->id : 0; }
  bool add_gradient_hooks(ValuesRef values, std::span<GradientHook> hooks, Registration* removal) override;
  void at_end_of_backward(std::function<void()> fn) override;
  std::string type_name(ModuleRef module) const override;
  void for_each_child(ModuleRef module, const std::function<void(std::string_view, ModuleRef)>& fn) const override;
  WeakModule weak(ModuleRef module) const override;

 private:
  struct Hook {
    GradOrder order;
    GradientWait wait;
    std::vector<std::uint64_t> values;  // for `all`: every value it waits on
    GradCallback fn;
    bool removed = false;
    std::uint64_t fired_pass = 0;
    std::uint64_t counted_pass = 0;
    std::size_t arrived = 0;
  };
  struct Pass {
    std::uint64_t id;
    std::optional<std::set<std::uint64_t>> computes;
    std::vector<std::function<void()>> at_end;
    bool will_compute(std::uint64_t v) const { return !computes || computes->contains(v); }
  };
  const Module& checked(ModuleRef module) const;

  std::unordered_map<const void*, std::weak_ptr<Module>> modules_;
  std::unordered_map<std::uint64_t, std::vector<std::shared_ptr<Hook>>> hooks_;  // by value id
  std::atomic<std::uint64_t> next_value_{1};  // values may be made on several threads
  std::uint64_t pass_counter_ = 0;
  bool grad_mode_ = true;
  Pass* current_ = nullptr;
};

}  // namespace modtracker::reference
