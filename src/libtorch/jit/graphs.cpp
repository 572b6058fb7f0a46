// Editing the method graphs: instrument() puts into every method of every
// TorchScript class of a model, once, a `modtracker::enter(self, inputs)` at
// its start and a `modtracker::exit(self, outputs)` before its return
// (calls.cpp runs them); `enter_values` and `exit_values` where tensors also
// come inside Optional, List, Tuple or Dict values.
#include <torch/torch.h>
#include <torch/script.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <vector>

#include "libtorch/jit/jit.hpp"

namespace modtracker::libtorch::jit {

namespace {
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

const c10::Symbol enter_symbol = c10::Symbol::fromQualString("modtracker::enter");
const c10::Symbol exit_symbol = c10::Symbol::fromQualString("modtracker::exit");
const c10::Symbol enter1_symbol = c10::Symbol::fromQualString("modtracker::enter1");
const c10::Symbol exit1_symbol = c10::Symbol::fromQualString("modtracker::exit1");
const c10::Symbol enter_values_symbol = c10::Symbol::fromQualString("modtracker::enter_values");
const c10::Symbol exit_values_symbol = c10::Symbol::fromQualString("modtracker::exit_values");
const c10::Symbol enter_method_symbol = c10::Symbol::fromQualString("modtracker::enter_method");
const c10::Symbol exit_method_symbol = c10::Symbol::fromQualString("modtracker::exit_method");

// --- the graphs
bool instrumented(const Graph& g) {
  for (const auto* n : g.nodes())
    if (n->kind() == enter_symbol || n->kind() == enter1_symbol || n->kind() == enter_values_symbol ||
        n->kind() == enter_method_symbol)
      return true;
  return false;
}

// Whether a value of this type can hold tensors inside (an Optional[Tensor],
// a List[Tensor], a tuple, a dict or an object of a TorchScript class with
// tensors, nested): they are the call's values too, as Flatten<T> makes them
// in eager code.
bool holds_tensors(const c10::TypePtr& type, int depth = 0) {
  if (depth > 8) return false;  // a class that holds itself (a linked list): deep enough
  if (type->cast<c10::TensorType>()) return true;
  // An object of a TorchScript class of one's own (not a module): its attributes.
  if (const auto c = type->cast<c10::ClassType>()) {
    if (c->is_module()) return false;
    for (const auto& attribute : c->getAttributes())
      if (holds_tensors(attribute.getType(), depth + 1)) return true;
    return false;
  }
  if (const auto o = type->cast<c10::OptionalType>()) return holds_tensors(o->getElementType(), depth + 1);
  if (const auto l = type->cast<c10::ListType>()) return holds_tensors(l->getElementType(), depth + 1);
  if (const auto d = type->cast<c10::DictType>())
    return holds_tensors(d->getKeyType(), depth + 1) || holds_tensors(d->getValueType(), depth + 1);
  if (const auto t = type->cast<c10::TupleType>())
    return std::any_of(t->elements().begin(), t->elements().end(),
                       [depth](const auto& e) { return holds_tensors(e, depth + 1); });
  return false;
}

// The call a method's graph makes: its module, and its method's name
// ("" for forward, whose operators need no name).
struct Callee {
  Value* self;
  std::string method;
};

// `op` (enter or exit) over `tensors`, at the insertion point: what replaces
// them. `others` (values that hold tensors inside) are read, not replaced:
// the operators change no value, and the tensors already order the body.
std::vector<Value*> pass(Graph& g, bool enter, const Callee& callee, const std::vector<Value*>& tensors,
                         const std::vector<Value*>& others = {}) {
  auto* self = callee.self;
  if (!callee.method.empty()) {  // another method than forward: its name goes along
    auto* list = g.insertNode(g.createList(c10::TensorType::get(), tensors))->output();
    auto* any = g.insertNode(g.createList(c10::AnyType::get(), others))->output();
    auto* call = g.insertNode(g.create(enter ? enter_method_symbol : exit_method_symbol,
                                       {self, list, any, g.insertConstant(callee.method)}, 1));
    call->output()->setType(c10::ListType::ofTensors());
    auto* unpack = g.insertNode(g.createListUnpack(call->output(), tensors.size()));
    return {unpack->outputs().begin(), unpack->outputs().end()};
  }
  if (tensors.size() == 1 && others.empty()) {
    auto* call = g.insertNode(g.create(enter ? enter1_symbol : exit1_symbol, {self, tensors[0]}, 1));
    call->output()->setType(tensors[0]->type());
    return {call->output()};
  }
  auto* list = g.insertNode(g.createList(c10::TensorType::get(), tensors))->output();
  std::vector<Value*> args{self, list};
  if (!others.empty()) args.push_back(g.insertNode(g.createList(c10::AnyType::get(), others))->output());
  const auto op = others.empty() ? (enter ? enter_symbol : exit_symbol) : (enter ? enter_values_symbol : exit_values_symbol);
  auto* call = g.insertNode(g.create(op, args, 1));
  call->output()->setType(c10::ListType::ofTensors());
  auto* unpack = g.insertNode(g.createListUnpack(call->output(), tensors.size()));
  return {unpack->outputs().begin(), unpack->outputs().end()};
}

bool is_tensor(const Value* v) { return v->type()->cast<c10::TensorType>() != nullptr; }

void instrument_graph(Graph& g, const std::string& method, const std::string& where) {
  if (g.inputs().empty()) throw std::invalid_argument("modtracker: " + where + " has no self");
  if (g.outputs().size() != 1) throw std::invalid_argument("modtracker: " + where + " does not return one value");
  const Callee self{g.inputs()[0], method == "forward" ? "" : method};
  std::vector<Value*> inputs, holders;
  for (std::size_t i = 1; i < g.inputs().size(); ++i) {
    if (is_tensor(g.inputs()[i])) inputs.push_back(g.inputs()[i]);
    else if (holds_tensors(g.inputs()[i]->type())) holders.push_back(g.inputs()[i]);
  }
  {
    torch::jit::WithInsertPoint at_start(g.block()->nodes().front());
    const auto passed = pass(g, true, self, inputs, holders);
    for (std::size_t k = 0; k < inputs.size(); ++k)
      inputs[k]->replaceAllUsesAfterNodeWith(passed[k]->node(), passed[k]);
  }
  torch::jit::WithInsertPoint at_return(g.return_node());
  auto* out = g.outputs()[0];
  if (is_tensor(out)) {
    g.return_node()->replaceInput(0, pass(g, false, self, {out})[0]);
  } else if (const auto tuple = out->type()->cast<c10::TupleType>()) {
    auto* parts = g.insertNode(g.createTupleUnpack(out));
    std::vector<Value*> elements(parts->outputs().begin(), parts->outputs().end()), tensors, holders;
    for (auto* e : elements) {
      if (is_tensor(e)) tensors.push_back(e);
      else if (holds_tensors(e->type())) holders.push_back(e);
    }
    const auto passed = pass(g, false, self, tensors, holders);
    for (std::size_t i = 0, k = 0; i < elements.size(); ++i)
      if (is_tensor(elements[i])) elements[i] = passed[k++];
    auto* rebuilt = g.insertNode(g.createTuple(elements, tuple->schema() ? tuple : nullptr));
    g.return_node()->replaceInput(0, rebuilt->output());
  } else if (holds_tensors(out->type())) {
    pass(g, false, self, {}, {out});  // a list, dict or Optional of tensors
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
      instrument_graph(g, method.name(), "method " + method.name() + " of " + type->repr_str());
      fn.clear_optimized_graphs();  // callers inline the edited graph
    }
  }
  (void)detail::stand_in(model._ivalue());
  detail::observe_scopes(/*instrumented=*/true);
}

bool is_instrumented(const torch::jit::Module& model) {
  const auto forward = model.find_method("forward");
  return forward && instrumented(*torch::jit::toGraphFunction(forward->function()).graph());
}

}  // namespace modtracker::libtorch::jit
