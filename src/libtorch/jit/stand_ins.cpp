// ScriptedModule stand-ins: one per TorchScript object, kept in a registry by
// the object's address with a weak reference that tells a freed object from
// a new one at the same address.
#include <torch/torch.h>
#include <torch/script.h>

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "backend/spin_lock.hpp"
#include "libtorch/jit/jit.hpp"

namespace modtracker::libtorch::jit {

std::shared_ptr<ScriptedModule> make_stand_in(const torch::jit::Module& module, const ScriptedModule* parent) {
  const auto& type = module.type()->name();
  auto standin = std::make_shared<ScriptedModule>(module, type ? type->qualifiedName() : std::string("Module"));
  standin->parent_ = parent;
  return standin;
}

namespace {
using c10::ivalue::Object;

// --- the stand-ins, by TorchScript object
struct Known {
  c10::weak_intrusive_ptr<Object> object;
  std::shared_ptr<ScriptedModule> stand_in;
};
struct Registry {
  modtracker::detail::SpinLock lock;  // per module call: find() only
  std::unordered_map<const Object*, Known> known;
  std::size_t swept_at = 64;
};
Registry& registry() {
  static auto* r = new Registry;  // never freed: operators may run during static destruction
  return *r;
}

// An entry is its object's, not a freed object's at the same address.
bool alive(const Known& k) { return !k.object.expired(); }

// The stand-in of `obj` and of its subtree, made where missing (lock held).
std::shared_ptr<ScriptedModule> stand_in_locked(Registry& r, const c10::intrusive_ptr<Object>& obj,
                                                const ScriptedModule* parent) {
  if (const auto it = r.known.find(obj.get()); it != r.known.end() && alive(it->second))
    return it->second.stand_in;
  if (r.known.size() >= r.swept_at) {  // forget the freed (their stand-ins expire with them)
    std::erase_if(r.known, [](const auto& kv) { return !alive(kv.second); });
    r.swept_at = 2 * r.known.size() + 64;
  }
  const torch::jit::Module module(obj);
  auto standin = make_stand_in(module, parent);
  r.known.insert_or_assign(obj.get(), Known{c10::weak_intrusive_ptr<Object>(obj), standin});
  for (const auto& p : module.named_parameters(/*recurse=*/false))
    standin->register_parameter(p.name, p.value, p.value.requires_grad());
  for (const auto& b : module.named_buffers(/*recurse=*/false)) standin->register_buffer(b.name, b.value);
  for (const auto& c : module.named_children())
    standin->register_module(c.name, stand_in_locked(r, c.value._ivalue(), standin.get()));
  return standin;
}

}  // namespace

std::shared_ptr<ScriptedModule> detail::stand_in(const c10::intrusive_ptr<Object>& obj) {
  auto& r = registry();
  std::lock_guard<modtracker::detail::SpinLock> guard(r.lock);
  return stand_in_locked(r, obj, nullptr);
}

const ScriptedModule& detail::stand_in_of(const c10::IValue& self) {
  auto& r = registry();
  const auto* obj = &self.toObjectRef();
  {
    std::lock_guard<modtracker::detail::SpinLock> guard(r.lock);
    if (const auto it = r.known.find(obj); it != r.known.end() && alive(it->second)) return *it->second.stand_in;
  }
  return *stand_in(self.toObject());
}

ScriptedModule::ScriptedModule(const torch::jit::Module& module, std::string qualified)
    : torch::nn::Module(c10::QualifiedName(qualified).name()),
      object_(module._ivalue()),
      qualified_(std::move(qualified)) {}

std::optional<torch::jit::Module> ScriptedModule::script() const {
  if (auto obj = object_.lock()) return torch::jit::Module(std::move(obj));
  return std::nullopt;
}

std::shared_ptr<ScriptedModule> module_of(const torch::jit::Module& module) { return detail::stand_in(module._ivalue()); }

const ScriptedModule* as_scripted(const torch::nn::Module& m) noexcept { return dynamic_cast<const ScriptedModule*>(&m); }

}  // namespace modtracker::libtorch::jit
