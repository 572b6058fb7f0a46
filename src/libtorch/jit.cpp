// TorchScript modules as tracked modules. instrument() edits every method
// graph of every TorchScript class in a model once: at its start a
// `modtracker::enter(self, inputs)` and before its return a
// `modtracker::exit(self, outputs)`, both pass-through operators (tensors in,
// the same tensors out) registered with CONSERVATIVE alias analysis, which
// keeps the JIT from removing or moving them (with FROM_SCHEMA an operator
// whose outputs look unused is dead code). They report the call to the
// trackers as an eager call is reported, and the LibTorch backend's
// gradient hooks go on the call's tensors as on an eager call's: its
// per-node dispatch orders shared tensors, residuals and f(f(x)) as in eager
// code, so the calls need no autograd nodes of their own (an autograd node
// per operator, the first design, cost more: docs/performance.md).
// A tracker sees each TorchScript module through a ScriptedModule stand-in.
#include <torch/torch.h>
#include <torch/script.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>

#include <ATen/record_function.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <gsl/gsl>

#include "detail/spin_lock.hpp"
#include "libtorch/jit_calls.hpp"
#include "modtracker/libtorch/backend.hpp"
#include "modtracker/libtorch/jit.hpp"

import modtracker.libtorch;

namespace modtracker::libtorch::jit {

std::shared_ptr<ScriptedModule> make_stand_in(const torch::jit::Module& module, const ScriptedModule* parent) {
  const auto& type = module.type()->name();
  auto standin = std::make_shared<ScriptedModule>(module, type ? type->qualifiedName() : std::string("Module"));
  standin->parent_ = parent;
  return standin;
}

namespace {
using c10::ivalue::Object;
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

const c10::Symbol enter_symbol = c10::Symbol::fromQualString("modtracker::enter");
const c10::Symbol exit_symbol = c10::Symbol::fromQualString("modtracker::exit");
const c10::Symbol enter1_symbol = c10::Symbol::fromQualString("modtracker::enter1");
const c10::Symbol exit1_symbol = c10::Symbol::fromQualString("modtracker::exit1");

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

std::shared_ptr<ScriptedModule> stand_in(const c10::intrusive_ptr<Object>& obj) {
  auto& r = registry();
  std::lock_guard<modtracker::detail::SpinLock> guard(r.lock);
  return stand_in_locked(r, obj, nullptr);
}

// The stand-in of the module running an operator (made on first sight: an
// instance of an instrumented class that instrument() never saw).
const Known* known_of(const c10::IValue& self) {
  auto& r = registry();
  const auto* obj = &self.toObjectRef();
  {
    std::lock_guard<modtracker::detail::SpinLock> guard(r.lock);
    if (const auto it = r.known.find(obj); it != r.known.end() && alive(it->second)) return &it->second;
  }
  (void)stand_in(self.toObject());
  std::lock_guard<modtracker::detail::SpinLock> guard(r.lock);
  return &r.known.at(obj);  // node-based map: the entry stays put
}

// --- the calls running on this thread, innermost last
struct Frame {
  const Object* object;  // what the exit operator gets, compared without a lookup
  const ScriptedModule* module;
  Tensors seen;
  std::optional<ForwardDispatcher::Call> call;
  Frame(const Object* o, const ScriptedModule* m) : object(o), module(m) {}
};
thread_local std::deque<Frame> frames;
thread_local int in_operator = 0;  // operators of this thread running (a hook may end a scope)

bool encloses(const ScriptedModule* outer, const ScriptedModule* inner) {
  for (const auto* p = inner->parent(); p != nullptr; p = p->parent())
    if (p == outer) return true;
  return false;
}

// A call's start: `xs` are the tensors among its arguments.
void enter_call(const c10::IValue& self, c10::ArrayRef<at::Tensor> xs) {
  ++in_operator;
  const auto done = gsl::finally([] { --in_operator; });
  auto& d = backend().dispatcher();
  const auto* module = known_of(self)->stand_in.get();
  // A call still open here that does not enclose this one was unwound by an
  // exception in scripted code (which skips the exit operators): it exits now.
  while (!frames.empty() && frames.back().module != module && !encloses(frames.back().module, module))
    frames.pop_back();
  // A method of the module running now (self.helper(x) in its forward) is
  // part of that call, not a call of its own.
  const bool own_method = !frames.empty() && frames.back().module == module;
  auto& f = frames.emplace_back(&self.toObjectRef(), module);
  if (own_method) return;
  for (const auto& t : xs) f.seen.push(t);
  try {
    f.call.emplace(d, ForwardCall{.module = module_ref(*f.module), .inputs = ValuesRef{&f.seen}});
  } catch (...) {
    frames.pop_back();
    throw;
  }
}

// A call's end: `ys` are the tensors of its output.
void exit_call(const c10::IValue& self, c10::ArrayRef<at::Tensor> ys) {
  ++in_operator;
  const auto done = gsl::finally([] { --in_operator; });
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
template <void (*report)(const c10::IValue&, c10::ArrayRef<at::Tensor>), bool one>
void pass_operator(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  auto values = torch::jit::pop(*stack);  // the tensors, or the one tensor
  const auto self = torch::jit::pop(*stack);
  if (!backend().dispatcher().idle()) {
    if constexpr (one) report(self, c10::ArrayRef<at::Tensor>(values.toTensor()));
    else report(self, values.toTensorList().vec());
  }
  torch::jit::push(*stack, std::move(values));
}


// The unwinding watch: a TorchScript function frame notes how many calls were
// open when it started; when it ends (returning, or destroyed by the
// exception unwinding it) the calls opened inside it and still open exit.
struct Depth final : at::ObserverContext {
  std::size_t open;
  explicit Depth(std::size_t n) : open(n) {}
};
std::unique_ptr<at::ObserverContext> frame_starts(const at::RecordFunction&) {
  return std::make_unique<Depth>(frames.size());
}
void frame_ends(const at::RecordFunction&, at::ObserverContext* ctx) {
  const auto open = static_cast<Depth*>(ctx)->open;
  while (frames.size() > open) frames.pop_back();  // each reports a forward that threw
}

struct Watch {
  std::mutex mutex;
  int scopes = 0;
  bool wanted = false;  // a model was instrumented
  at::CallbackHandle handle = 0;
  void update() {  // mutex held
    const bool on = wanted && scopes > 0;
    if (on && handle == 0)
      handle = at::addGlobalCallback(at::RecordFunctionCallback(&frame_starts, &frame_ends)
                                         .needsInputs(false)
                                         .scopes({at::RecordScope::TORCHSCRIPT_FUNCTION}));
    else if (!on && handle != 0)
      at::removeCallback(std::exchange(handle, 0));
  }
};
Watch& watch() {
  static auto* w = new Watch;  // never freed: scopes may end during static destruction
  return *w;
}
}  // namespace

namespace detail {
void scope_started() {
  auto& w = watch();
  std::lock_guard<std::mutex> lock(w.mutex);
  ++w.scopes;
  w.update();
}

void scope_ended() noexcept {
  {
    auto& w = watch();
    std::lock_guard<std::mutex> lock(w.mutex);
    --w.scopes;
    try {
      w.update();
    } catch (...) {  // the callback stays: it costs time, not correctness
    }
  }
  if (in_operator != 0) return;
  while (!frames.empty()) frames.pop_back();  // each reports a forward that threw
}
}  // namespace detail

namespace {

// --- the graphs
bool instrumented(const Graph& g) {
  for (const auto* n : g.nodes())
    if (n->kind() == enter_symbol || n->kind() == enter1_symbol) return true;
  return false;
}

// `op` (enter or exit) over `tensors`, at the insertion point: what replaces them.
std::vector<Value*> pass(Graph& g, bool enter, Value* self, const std::vector<Value*>& tensors) {
  if (tensors.size() == 1) {
    auto* call = g.insertNode(g.create(enter ? enter1_symbol : exit1_symbol, {self, tensors[0]}, 1));
    call->output()->setType(tensors[0]->type());
    return {call->output()};
  }
  auto* list = g.insertNode(g.createList(c10::TensorType::get(), tensors))->output();
  auto* call = g.insertNode(g.create(enter ? enter_symbol : exit_symbol, {self, list}, 1));
  call->output()->setType(c10::ListType::ofTensors());
  auto* unpack = g.insertNode(g.createListUnpack(call->output(), tensors.size()));
  return {unpack->outputs().begin(), unpack->outputs().end()};
}

bool is_tensor(const Value* v) { return v->type()->cast<c10::TensorType>() != nullptr; }

void instrument_graph(Graph& g, const std::string& where) {
  if (g.inputs().empty()) throw std::invalid_argument("modtracker: " + where + " has no self");
  if (g.outputs().size() != 1) throw std::invalid_argument("modtracker: " + where + " does not return one value");
  auto* self = g.inputs()[0];
  std::vector<Value*> inputs;
  for (std::size_t i = 1; i < g.inputs().size(); ++i)
    if (is_tensor(g.inputs()[i])) inputs.push_back(g.inputs()[i]);
  {
    torch::jit::WithInsertPoint at_start(g.block()->nodes().front());
    const auto passed = pass(g, true, self, inputs);
    for (std::size_t k = 0; k < inputs.size(); ++k)
      inputs[k]->replaceAllUsesAfterNodeWith(passed[k]->node(), passed[k]);
  }
  torch::jit::WithInsertPoint at_return(g.return_node());
  auto* out = g.outputs()[0];
  if (is_tensor(out)) {
    g.return_node()->replaceInput(0, pass(g, false, self, {out})[0]);
  } else if (const auto tuple = out->type()->cast<c10::TupleType>()) {
    auto* parts = g.insertNode(g.createTupleUnpack(out));
    std::vector<Value*> elements(parts->outputs().begin(), parts->outputs().end()), tensors;
    for (auto* e : elements)
      if (is_tensor(e)) tensors.push_back(e);
    const auto passed = pass(g, false, self, tensors);
    for (std::size_t i = 0, k = 0; i < elements.size(); ++i)
      if (is_tensor(elements[i])) elements[i] = passed[k++];
    auto* rebuilt = g.insertNode(g.createTuple(elements, tuple->schema() ? tuple : nullptr));
    g.return_node()->replaceInput(0, rebuilt->output());
  } else {
    pass(g, false, self, {});  // a module call all the same (no tensor out: no backward)
  }
}

// torch::jit::freeze drops the `training` attribute (Python-scripted modules
// have it, C++-built ones may not) and folds the parameters into constants.
bool frozen(const torch::jit::Module& model) {
  if (model.hasattr("training")) return false;
  const auto forward = model.find_method("forward");
  if (!forward) return false;
  for (const auto* n : torch::jit::toGraphFunction(forward->function()).graph()->nodes())
    if (n->kind() == c10::prim::Constant && n->output()->type()->cast<c10::TensorType>()) return true;
  return false;
}
}  // namespace

ScriptedModule::ScriptedModule(const torch::jit::Module& module, std::string qualified)
    : torch::nn::Module(c10::QualifiedName(qualified).name()),
      object_(module._ivalue()),
      qualified_(std::move(qualified)) {}

std::optional<torch::jit::Module> ScriptedModule::script() const {
  if (auto obj = object_.lock()) return torch::jit::Module(std::move(obj));
  return std::nullopt;
}

void instrument(torch::jit::Module& model) {
  if (frozen(model))
    throw std::invalid_argument("modtracker: cannot instrument a frozen TorchScript model (torch::jit::freeze, or "
                                "saved after freezing): its submodules are gone. Instrument it before freezing");
  std::unordered_set<const c10::ClassType*> done;
  for (const auto& m : model.modules()) {
    const auto type = m.type();
    if (!done.insert(type.get()).second) continue;
    // forward and the other methods (a parent's self.encoder.encode(x) is a
    // call of encoder); not the special ones (__getstate__, ...).
    for (const auto& method : m.get_methods()) {
      if (method.name().starts_with("__")) continue;
      auto& fn = torch::jit::toGraphFunction(method.function());
      auto& g = *fn.graph();
      if (instrumented(g)) continue;
      instrument_graph(g, "method " + method.name() + " of " + type->repr_str());
      fn.clear_optimized_graphs();  // callers inline the edited graph
    }
  }
  (void)stand_in(model._ivalue());
  auto& w = watch();
  std::lock_guard<std::mutex> lock(w.mutex);
  w.wanted = true;
  w.update();
}

bool is_instrumented(const torch::jit::Module& model) {
  const auto forward = model.find_method("forward");
  return forward && instrumented(*torch::jit::toGraphFunction(forward->function()).graph());
}

std::shared_ptr<ScriptedModule> module_of(const torch::jit::Module& module) { return stand_in(module._ivalue()); }

const ScriptedModule* as_scripted(const torch::nn::Module& m) noexcept { return dynamic_cast<const ScriptedModule*>(&m); }

}  // namespace modtracker::libtorch::jit

TORCH_LIBRARY(modtracker, m) {
  using modtracker::libtorch::jit::enter_call;
  using modtracker::libtorch::jit::exit_call;
  using modtracker::libtorch::jit::pass_operator;
  constexpr auto conservative = c10::AliasAnalysisKind::CONSERVATIVE;
  constexpr auto composite = c10::DispatchKey::CompositeImplicitAutograd;
  m.def(torch::schema("enter(Any self, Tensor[] inputs) -> Tensor[]", conservative));
  m.def(torch::schema("exit(Any self, Tensor[] outputs) -> Tensor[]", conservative));
  m.def(torch::schema("enter1(Any self, Tensor input) -> Tensor", conservative));
  m.def(torch::schema("exit1(Any self, Tensor output) -> Tensor", conservative));
  m.impl("enter", composite, torch::CppFunction::makeFromBoxedFunction<&pass_operator<&enter_call, false>>());
  m.impl("exit", composite, torch::CppFunction::makeFromBoxedFunction<&pass_operator<&exit_call, false>>());
  m.impl("enter1", composite, torch::CppFunction::makeFromBoxedFunction<&pass_operator<&enter_call, true>>());
  m.impl("exit1", composite, torch::CppFunction::makeFromBoxedFunction<&pass_operator<&exit_call, true>>());
}
