// The calls of TorchScript modules: `modtracker::enter` at a method's start
// opens a ForwardDispatcher::Call on this thread's stack of open calls,
// `modtracker::exit` before its return finishes it. The operators are
// pass-through (tensors in, the same tensors out) and registered with
// CONSERVATIVE alias analysis, which keeps the JIT from removing or moving
// them (with FROM_SCHEMA an operator whose outputs look unused is dead
// code). The LibTorch backend's gradient hooks go on the call's tensors as
// on an eager call's, so the calls need no autograd nodes of their own.
#include <torch/torch.h>
#include <torch/script.h>

#include <cstddef>
#include <deque>
#include <optional>
#include <vector>

#include <gsl/gsl>

#include "libtorch/jit/jit.hpp"
#include "modtracker/libtorch/backend.hpp"

import modtracker.libtorch;

namespace modtracker::libtorch::jit {

namespace {
using c10::ivalue::Object;

// --- the calls running on this thread, innermost last
struct Frame {
  const Object* object;  // what the exit operator gets, compared without a lookup
  const ScriptedModule* module;
  std::string method;  // "" for forward; the call's ForwardCall views it
  Tensors seen;
  std::optional<ForwardDispatcher::Call> call;
  Frame(const Object* o, const ScriptedModule* m, std::string_view name) : object(o), module(m), method(name) {}
};
thread_local std::deque<Frame> frames;
thread_local int operators_running = 0;  // operators of this thread running (a hook may end a scope)

bool encloses(const ScriptedModule* outer, const ScriptedModule* inner) {
  for (const auto* p = inner->parent(); p != nullptr; p = p->parent())
    if (p == outer) return true;
  return false;
}

// A call's start: `xs` are the tensors among its arguments; `method` is
// "" for forward.
void enter_call(const c10::IValue& self, c10::ArrayRef<at::Tensor> xs, std::string_view method = {}) {
  ++operators_running;
  const auto done = gsl::finally([] { --operators_running; });
  auto& d = backend().dispatcher();
  detail::observe_scopes(false);
  const auto* module = &detail::stand_in_of(self);
  // A call still open here that does not enclose this one was unwound by an
  // exception in scripted code (which skips the exit operators): it exits now.
  while (!frames.empty() && frames.back().module != module && !encloses(frames.back().module, module))
    frames.pop_back();
  // A method of the module running now (self.helper(x) in its forward) is
  // part of that call, not a call of its own.
  const bool own_method = !frames.empty() && frames.back().module == module;
  auto& f = frames.emplace_back(&self.toObjectRef(), module, own_method ? std::string_view{} : method);
  if (own_method) return;
  for (const auto& t : xs) f.seen.push(t);
  try {
    f.call.emplace(d, ForwardCall{.module = module_ref(*f.module),
                                  .inputs = ValuesRef{&f.seen},
                                  .method = f.method.empty() ? nullptr : f.method.c_str()});
  } catch (...) {
    frames.pop_back();
    throw;
  }
}

// A call's end: `ys` are the tensors of its output.
void exit_call(const c10::IValue& self, c10::ArrayRef<at::Tensor> ys) {
  ++operators_running;
  const auto done = gsl::finally([] { --operators_running; });
  const auto* object = &self.toObjectRef();
  auto match = frames.rbegin();
  while (match != frames.rend() && match->object != object) ++match;
  if (match == frames.rend()) return;  // its call started untracked
  while (&frames.back() != &*match) frames.pop_back();     // unwound inside it (see enter_call)
  Tensors seen;
  for (const auto& t : ys) seen.push(t);
  try {
    if (frames.back().call) frames.back().call->finish(ValuesRef{&seen});
  } catch (...) {
    frames.pop_back();
    throw;
  }
  frames.pop_back();
}

// The operators: the tensors pass through unchanged (the pass-through makes
// the module's body depend on `enter` and `exit` on the body). One tensor in
// or out, the common case, has operators of its own: no list to build and
// unpack in the graph.
// A call's start or end, as the operator is enter or exit.
template <bool enter>
void report(const c10::IValue& self, c10::ArrayRef<at::Tensor> xs, std::string_view method = {}) {
  if constexpr (enter) enter_call(self, xs, method);
  else exit_call(self, xs);
}

template <bool enter, bool one>
void pass_operator(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  auto values = torch::jit::pop(*stack);  // the tensors, or the one tensor
  const auto self = torch::jit::pop(*stack);
  if (!backend().dispatcher().idle()) {
    if constexpr (one) report<enter>(self, values.toTensor());
    else report<enter>(self, values.toTensorList().vec());
  }
  torch::jit::push(*stack, std::move(values));
}

// The tensors inside a value (an Optional, a list, a tuple, a dict, an
// object of a TorchScript class), in order; objects that hold each other
// are read to a depth of 8.
void flatten(const c10::IValue& v, std::vector<at::Tensor>& out, int depth = 0) {
  if (depth > 8) return;
  if (v.isTensor()) {
    if (v.toTensor().defined()) out.push_back(v.toTensor());
  } else if (v.isList()) {
    for (const auto& e : v.toListRef()) flatten(e, out, depth + 1);
  } else if (v.isTuple()) {
    for (const auto& e : v.toTupleRef().elements()) flatten(e, out, depth + 1);
  } else if (v.isGenericDict()) {
    for (const auto& kv : v.toGenericDict()) {
      flatten(kv.key(), out, depth + 1);
      flatten(kv.value(), out, depth + 1);
    }
  } else if (v.isObject() && !v.toObjectRef().type()->is_module()) {
    for (const auto& slot : v.toObjectRef().slots()) flatten(slot, out, depth + 1);
  }  // None, numbers, strings, modules: no tensor of the call's
}

// enter_values / exit_values: the tensors, then those inside the other
// values; enter_method / exit_method also take the method's name.
template <bool enter, bool named>
void values_operator(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  c10::IValue method;
  if constexpr (named) method = torch::jit::pop(*stack);
  const auto others = torch::jit::pop(*stack);
  auto values = torch::jit::pop(*stack);
  const auto self = torch::jit::pop(*stack);
  if (!backend().dispatcher().idle()) {
    auto all = values.toTensorList().vec();
    for (const auto& o : others.toListRef()) flatten(o, all);
    report<enter>(self, all, named ? std::string_view(method.toStringRef()) : std::string_view{});
  }
  torch::jit::push(*stack, std::move(values));
}

}  // namespace

std::size_t detail::open_calls() noexcept { return frames.size(); }
void detail::close_calls(std::size_t keep) noexcept {
  while (frames.size() > keep) frames.pop_back();  // each reports a forward that threw
}
bool detail::in_operator() noexcept { return operators_running != 0; }

// The anchor of <modtracker/libtorch/jit.hpp>: every program that includes it
// links this file, and with it the operators' registration below.
bool detail::link_operators() noexcept { return true; }

}  // namespace modtracker::libtorch::jit

TORCH_LIBRARY(modtracker, m) {
  using modtracker::libtorch::jit::enter_call;
  using modtracker::libtorch::jit::exit_call;
  using modtracker::libtorch::jit::pass_operator;
  using modtracker::libtorch::jit::values_operator;
  constexpr auto conservative = c10::AliasAnalysisKind::CONSERVATIVE;
  constexpr auto composite = c10::DispatchKey::CompositeImplicitAutograd;
  m.def(torch::schema("enter(Any self, Tensor[] inputs) -> Tensor[]", conservative));
  m.def(torch::schema("exit(Any self, Tensor[] outputs) -> Tensor[]", conservative));
  m.def(torch::schema("enter1(Any self, Tensor input) -> Tensor", conservative));
  m.def(torch::schema("exit1(Any self, Tensor output) -> Tensor", conservative));
  m.def(torch::schema("enter_values(Any self, Tensor[] inputs, Any[] others) -> Tensor[]", conservative));
  m.def(torch::schema("exit_values(Any self, Tensor[] outputs, Any[] others) -> Tensor[]", conservative));
  m.def(torch::schema("enter_method(Any self, Tensor[] inputs, Any[] others, str method) -> Tensor[]", conservative));
  m.def(torch::schema("exit_method(Any self, Tensor[] outputs, Any[] others, str method) -> Tensor[]", conservative));
  m.impl("enter_values", composite, torch::CppFunction::makeFromBoxedFunction<&values_operator<true, false>>());
  m.impl("exit_values", composite, torch::CppFunction::makeFromBoxedFunction<&values_operator<false, false>>());
  m.impl("enter_method", composite, torch::CppFunction::makeFromBoxedFunction<&values_operator<true, true>>());
  m.impl("exit_method", composite, torch::CppFunction::makeFromBoxedFunction<&values_operator<false, true>>());
  m.impl("enter", composite, torch::CppFunction::makeFromBoxedFunction<&pass_operator<true, false>>());
  m.impl("exit", composite, torch::CppFunction::makeFromBoxedFunction<&pass_operator<false, false>>());
  m.impl("enter1", composite, torch::CppFunction::makeFromBoxedFunction<&pass_operator<true, true>>());
  m.impl("exit1", composite, torch::CppFunction::makeFromBoxedFunction<&pass_operator<false, true>>());
}
