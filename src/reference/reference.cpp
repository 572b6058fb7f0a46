// The reference backend: module programs replayed without a framework.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <algorithm>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <gsl/gsl>
module modtracker.reference;
import modtracker.backend;

namespace modtracker::reference {

std::shared_ptr<Module> Module::add(std::string name, std::shared_ptr<Module> child) {
  if (!child) throw std::invalid_argument("modtracker.reference: null child '" + name + "'");
  for (const auto& [n, c] : children_)
    if (n == name) throw std::invalid_argument("modtracker.reference: child '" + name + "' registered twice");
  children_.emplace_back(std::move(name), child);
  return child;
}

std::shared_ptr<Module> Module::child(std::string_view name) const {
  for (const auto& [n, c] : children_)
    if (n == name) return c;
  throw std::out_of_range("modtracker.reference: no child '" + std::string(name) + "' in " + type_);
}

std::shared_ptr<Module> Backend::module(std::string type_name,
                                        std::initializer_list<std::pair<std::string, std::shared_ptr<Module>>> children) {
  auto m = std::make_shared<Module>(std::move(type_name));
  for (const auto& [name, child] : children) m->add(name, child);
  return adopt(std::move(m));
}

std::shared_ptr<Module> Backend::adopt(std::shared_ptr<Module> module) {
  if (!module) throw std::invalid_argument("modtracker.reference: adopt of a null module");
  std::erase_if(modules_, [](const auto& kv) { return kv.second.expired(); });
  modules_[module.get()] = module;
  return module;
}

Value Backend::value(bool requires_grad) { return Value{next_value_++, requires_grad}; }

Value Backend::op(std::span<const Value> inputs) {
  const bool rg = grad_mode_ && std::any_of(inputs.begin(), inputs.end(), [](const Value& v) { return v.requires_grad; });
  return value(rg);
}

Values Backend::call(Module& m, const Values& inputs, const std::function<Values(const Values&)>& body) {
  if (!modules_.contains(&m)) throw std::invalid_argument("modtracker.reference: module not made by this backend");
  if (dispatcher().idle()) return body ? body(inputs) : Values{op(inputs)};
  ForwardDispatcher::Call frame(dispatcher(), ModuleRef{&m}, ValuesRef{&inputs});
  Values out = body ? body(inputs) : Values{op(inputs)};
  frame.finish(ValuesRef{&out});
  return out;
}

bool Backend::add_gradient_hooks(ValuesRef values, std::span<GradientHook> hooks, Registration* removal) {
  if (!values) return false;
  std::vector<std::uint64_t> ids;  // the values that require grad, once each
  for (const auto& v : *static_cast<const Values*>(values.ptr))
    if (v.requires_grad && std::find(ids.begin(), ids.end(), v.id) == ids.end()) ids.push_back(v.id);
  if (ids.empty()) return false;
  std::vector<std::weak_ptr<Hook>> added;
  for (auto& h : hooks) {
    auto hook = std::make_shared<Hook>(Hook{h.order, h.wait, ids, std::move(h.fn)});
    for (auto id : ids) hooks_[id].push_back(hook);
    added.push_back(hook);
  }
  if (removal)
    *removal = Registration([added = std::move(added)] {
      for (const auto& w : added)
        if (const auto h = w.lock()) h->removed = true;
    });
  return true;
}

void Backend::at_end_of_backward(std::function<void()> fn) {
  if (!current_) throw std::logic_error("modtracker.reference: at_end_of_backward outside a backward pass");
  current_->at_end.push_back(std::move(fn));
}

void Backend::backward(const Values& arrivals, std::optional<std::set<std::uint64_t>> computes,
                       const std::function<void(const Value&)>& during) {
  if (current_) throw std::logic_error("modtracker.reference: backward inside backward is not supported");
  Pass pass{++pass_counter_, std::move(computes), {}};
  current_ = &pass;
  const auto reset = gsl::finally([this] { current_ = nullptr; });
  for (const auto& v : arrivals) {
    if (!pass.will_compute(v.id)) continue;
    auto it = hooks_.find(v.id);
    if (it != hooks_.end()) {
      auto due = it->second;  // copy: callbacks may register more
      std::stable_sort(due.begin(), due.end(),
                       [](const auto& a, const auto& b) { return fires_before(a->order, b->order); });
      const Values grads{v};
      for (const auto& h : due) {
        if (h->removed || h->fired_pass == pass.id) continue;
        if (h->wait == GradientWait::all) {
          if (h->counted_pass != pass.id) {
            h->counted_pass = pass.id;
            h->arrived = 0;
          }
          const auto needed = static_cast<std::size_t>(
              std::count_if(h->values.begin(), h->values.end(), [&](auto id) { return pass.will_compute(id); }));
          if (++h->arrived < needed) continue;
        }
        h->fired_pass = pass.id;
        h->fn(ValuesRef{&grads});
      }
    }
    if (during) during(v);
  }
  // End callbacks may queue more; run them all, in order.
  for (std::size_t i = 0; i < pass.at_end.size(); ++i) {
    auto fn = std::move(pass.at_end[i]);
    fn();
  }
}

std::size_t Backend::live_registrations() const {
  std::size_t n = 0;
  for (const auto& [id, hs] : hooks_)
    n += static_cast<std::size_t>(std::count_if(hs.begin(), hs.end(), [](const auto& h) { return !h->removed; }));
  return n;
}

const Module& Backend::checked(ModuleRef module) const {
  if (!module) throw std::invalid_argument("modtracker.reference: null module");
  const auto it = modules_.find(module.ptr);
  if (it == modules_.end() || it->second.expired())
    throw std::invalid_argument("modtracker.reference: not a live module of this backend");
  return *static_cast<const Module*>(module.ptr);
}

std::string Backend::type_name(ModuleRef module) const { return checked(module).type_name(); }

void Backend::for_each_child(ModuleRef module, const std::function<void(std::string_view, ModuleRef)>& fn) const {
  for (const auto& [name, child] : checked(module).children()) fn(name, ModuleRef{child.get()});
}

WeakModule Backend::weak(ModuleRef module) const {
  return std::const_pointer_cast<const Module>(const_cast<Module&>(checked(module)).shared_from_this());
}

}  // namespace modtracker::reference
