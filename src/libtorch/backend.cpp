// The LibTorch hook backend: modules by torch::nn::Module's own names and
// children, backward from LibTorch's autograd engine.
#include <torch/torch.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/graph_task.h>

#include <ATen/record_function.h>
#include <ATen/SequenceNumber.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "libtorch/passes.hpp"
#include "modtracker/libtorch/backend.hpp"
#include "modtracker/libtorch/calls.hpp"
#include "modtracker/libtorch/sequential.hpp"

// `modtracker` first: clang 16 then merges the std headers of both modules cleanly.
import modtracker;
import modtracker.backend;
#include "libtorch/gradients.hpp"

namespace modtracker::libtorch {

namespace {
const torch::nn::Module& checked_module(ModuleRef m) {
  if (!m) throw std::invalid_argument("modtracker: null module");
  return module_of(m);
}

// The class of a module as its user wrote it: a Tracked<Impl> is its Impl.
std::string user_type_name(std::string name) {
  static constexpr std::string_view wrapper = "modtracker::libtorch::Tracked<";
  if (!name.starts_with(wrapper) || !name.ends_with('>')) return name;
  name.erase(0, wrapper.size());
  name.pop_back();
  while (!name.empty() && name.back() == ' ') name.pop_back();
  return name;
}

// --- the watch: the work of modules in a scope before its first tracked call.
// A RecordFunction callback counts the operators that modules run and the
// autograd nodes of backward passes, installed only while a watch is open
// (each operator then costs what any RecordFunction callback costs, about
// 0.17 us here: docs/tracking.md).
constexpr std::array<std::string_view, 36> module_operators{
    "aten::linear", "aten::addmm", "aten::matmul", "aten::mm", "aten::bmm", "aten::bilinear",
    "aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::convolution",
    "aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d",
    "aten::batch_norm", "aten::layer_norm", "aten::group_norm", "aten::instance_norm",
    "aten::embedding", "aten::embedding_bag", "aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::rnn_relu",
    "aten::lstm_cell", "aten::gru_cell", "aten::rnn_tanh_cell", "aten::rnn_relu_cell",
    "aten::max_pool1d", "aten::max_pool2d", "aten::max_pool3d", "aten::avg_pool1d", "aten::avg_pool2d",
    "aten::avg_pool3d", "aten::adaptive_avg_pool2d", "aten::dropout", "aten::prelu"};

struct WorkCounts {
  std::array<std::uint64_t, module_operators.size()> operators{};
  std::uint64_t backward_nodes = 0, accumulations = 0;
};

struct Watches {
  std::mutex mutex;  // guards all but the counters
  at::CallbackHandle callback = 0;
  std::map<std::uint64_t, WorkCounts> open;  // watch -> the counts at its start
  std::uint64_t next = 1;
  std::array<std::atomic<std::uint64_t>, module_operators.size()> operators{};
  std::atomic<std::uint64_t> backward_nodes{0}, accumulations{0};

  WorkCounts now() const {
    WorkCounts c;
    for (std::size_t i = 0; i < operators.size(); ++i) c.operators[i] = operators[i].load(std::memory_order_relaxed);
    c.backward_nodes = backward_nodes.load(std::memory_order_relaxed);
    c.accumulations = accumulations.load(std::memory_order_relaxed);
    return c;
  }
};
Watches& watches() {
  static Watches w;
  return w;
}

// Which of module_operators a name is (-1: none), remembered per thread by
// the name's address: operator names are stable strings.
int module_operator(const char* name) {
  struct Slot {
    const char* name = nullptr;
    int index = -1;
  };
  thread_local std::array<Slot, 64> cache{};
  auto& slot = cache[(reinterpret_cast<std::uintptr_t>(name) >> 4) & 63];
  if (slot.name == name) return slot.index;
  const std::string_view s = name;
  const auto it = std::find(module_operators.begin(), module_operators.end(), s);
  slot = {name, it == module_operators.end() ? -1 : static_cast<int>(it - module_operators.begin())};
  return slot.index;
}

std::unique_ptr<at::ObserverContext> count_work(const at::RecordFunction& fn) {
  auto& w = watches();
  if (fn.scope() == at::RecordScope::BACKWARD_FUNCTION) {
    w.backward_nodes.fetch_add(1, std::memory_order_relaxed);
    if (std::string_view(fn.name()).find("AccumulateGrad") != std::string_view::npos)
      w.accumulations.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  if (const auto i = module_operator(fn.name()); i >= 0)
    w.operators[static_cast<std::size_t>(i)].fetch_add(1, std::memory_order_relaxed);
  return nullptr;
}

std::string describe(const WorkCounts& before, const WorkCounts& after) {
  std::string ops;
  for (std::size_t i = 0; i < module_operators.size(); ++i)
    if (const auto n = after.operators[i] - before.operators[i])
      ops += (ops.empty() ? "" : ", ") + std::string(module_operators[i]) + " x" + std::to_string(n);
  const auto nodes = after.backward_nodes - before.backward_nodes;
  const auto grads = after.accumulations - before.accumulations;
  std::string out;
  if (!ops.empty()) out = "operators that modules run were called (" + ops + ")";
  if (nodes != 0)
    out += (out.empty() ? "" : " and ") + std::string("backward ran ") + std::to_string(nodes) + " autograd nodes (" +
           std::to_string(grads) + " of them accumulating gradients into leaves such as parameters)";
  return out;
}
}  // namespace

std::uint64_t next_module_serial() noexcept {
  static std::atomic<std::uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

namespace detail {
void throw_untracked(const std::type_info& impl) {
  const auto name = c10::demangle(impl.name());
  throw std::invalid_argument("modtracker: a tracked holder of " + name +
                              " cannot hold a module built untracked (by a torch::nn holder, or std::make_shared<" +
                              name + ">): build it through modtracker::libtorch::nn or a MODTRACKER_MODULE holder");
}
}  // namespace detail

Backend::Backend() = default;
Backend::~Backend() = default;

Backend& backend() {
  static Backend instance;
  return instance;
}

std::string Backend::type_name(ModuleRef module) const { return user_type_name(checked_module(module).name()); }

void Backend::for_each_child(ModuleRef module, const std::function<void(std::string_view, ModuleRef)>& fn) const {
  for (const auto& item : checked_module(module).named_children())
    fn(item.key(), ModuleRef{static_cast<const void*>(item.value().get())});
}

WeakModule Backend::weak(ModuleRef module) const {
  auto& m = const_cast<torch::nn::Module&>(checked_module(module));
  std::weak_ptr<torch::nn::Module> w = m.weak_from_this();
  if (!w.expired()) return w;
  // Not owned by a std::shared_ptr (on the stack): a tracked module still
  // knows when it dies.
  if (const auto* tracked = dynamic_cast<const TrackedModule*>(&m)) return tracked->liveness(m);
  return {};
}

bool Backend::grad_enabled() const { return at::GradMode::is_enabled(); }

bool Backend::in_backward() const { return torch::autograd::get_current_graph_task_exec_info() != nullptr; }

std::uint64_t Backend::backward_pass() const {
  const auto firing = detail::firing_pass();
  return firing != 0 ? firing : detail::current_pass();
}

bool Backend::add_gradient_hooks(ValuesRef values, std::span<GradientHook> hooks, Registration* removal) {
  return detail::add_gradient_hooks(values, hooks, removal);
}

void Backend::at_end_of_backward(std::function<void()> fn) {
  if (!in_backward()) throw std::logic_error("modtracker: at_end_of_backward outside a backward pass");
  torch::autograd::Engine::get_default_engine().queue_callback(std::move(fn));
}

bool Backend::holds_values(ValuesRef values) const {
  return values && !static_cast<const Tensors*>(values.ptr)->empty();
}

std::uint64_t Backend::gradient_stamp(ModuleRef module) const {
  std::uint64_t stamp = 0;
  for (const auto& p : checked_module(module).parameters(/*recurse=*/false)) {
    if (!p.is_leaf()) continue;  // gets no .grad (LibTorch warns when asked)
    const auto& g = p.grad();
    if (!g.defined()) continue;
    // A new gradient tensor, or one accumulated into in place (its version moves).
    const auto impl = reinterpret_cast<std::uintptr_t>(g.unsafeGetTensorImpl());
    stamp = stamp * 0x100000001b3ull ^ (impl + static_cast<std::uint64_t>(g._version()) * 0x9E3779B97F4A7C15ull);
  }
  return stamp;
}

bool Backend::has_nonzero_gradient(ModuleRef module) const {
  torch::NoGradGuard no_grad;
  for (const auto& p : checked_module(module).parameters(/*recurse=*/false))
    if (const auto& g = p.is_leaf() ? p.grad() : at::Tensor(); g.defined() && torch::any(g != 0).item<bool>()) return true;
  return false;
}

std::uint64_t Backend::start_watch() {
  auto& w = watches();
  std::lock_guard<std::mutex> lock(w.mutex);
  if (w.open.empty())
    w.callback = at::addGlobalCallback(at::RecordFunctionCallback(&count_work)
                                           .needsInputs(false)
                                           .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
  const auto id = w.next++;
  w.open.emplace(id, w.now());
  return id;
}

std::string Backend::stop_watch(std::uint64_t watch) {
  auto& w = watches();
  std::lock_guard<std::mutex> lock(w.mutex);
  const auto it = w.open.find(watch);
  if (it == w.open.end()) return {};
  const auto report = describe(it->second, w.now());
  w.open.erase(it);
  if (w.open.empty()) at::removeCallback(std::exchange(w.callback, 0));
  return report;
}

namespace {
struct ScopeObservers {
  std::mutex mutex;
  std::vector<ScopeObserver*> all;
};
ScopeObservers& scope_observers() {
  static auto* o = new ScopeObservers;  // never freed: scopes may end during static destruction
  return *o;
}
std::vector<ScopeObserver*> observers_now() {
  auto& o = scope_observers();
  std::lock_guard<std::mutex> lock(o.mutex);
  return o.all;
}
}  // namespace

void Backend::add_scope_observer(ScopeObserver& observer) {
  auto& o = scope_observers();
  std::lock_guard<std::mutex> lock(o.mutex);
  o.all.push_back(&observer);
}

void Backend::scope_starting() {
  for (auto* o : observers_now()) o->scope_starting();
}
void Backend::scope_ending() {
  for (auto* o : observers_now()) o->scope_ending();
}


namespace {
bool built_in(std::string_view type) { return type.starts_with("torch::nn::"); }
// Containers that run no forward of their own, eager or scripted from Python
// ("__torch__.torch.nn.modules.container[.___torch_mangle_N].ModuleList").
bool holds_only(std::string_view type) {
  static constexpr std::string_view scripted = "__torch__.torch.nn.modules.container.";
  if (type.starts_with(scripted))
    return type.ends_with(".ModuleList") || type.ends_with(".ModuleDict") || type.ends_with(".ParameterList") ||
           type.ends_with(".ParameterDict");
  return type == "torch::nn::ModuleListImpl" || type == "torch::nn::ModuleDictImpl" ||
         type == "torch::nn::ParameterListImpl" || type == "torch::nn::ParameterDictImpl";
}
}  // namespace

namespace {
// The class of a module, a stand-in's by its runtime's qualified name.
std::string class_of(const torch::nn::Module& m) {
  if (const auto* s = dynamic_cast<const StandIn*>(&m)) return s->qualified_class();
  return user_type_name(m.name());
}
}  // namespace

// A torch::nn layer, eager or scripted from Python, not a container (a
// Sequential is a model as often as not).
bool Backend::is_framework_layer(ModuleRef module) const {
  static constexpr std::string_view scripted = "__torch__.torch.nn.modules.";
  const auto type = class_of(checked_module(module));
  if (type.starts_with(scripted)) return !type.starts_with(std::string(scripted) + "container.");
  return built_in(type) && !holds_only(type) && type != "torch::nn::SequentialImpl";
}

bool Backend::holds_only_modules(ModuleRef module) const { return holds_only(class_of(checked_module(module))); }

// A plain torch::nn layer (not Tracked) registered in a module of the user's:
// its forward will call it untracked. torch::nn's own modules use their
// children as they please (MultiheadAttention's out_proj), and the tracked
// Sequential tracks its children itself.
bool Backend::calls_untracked(ModuleRef parent, ModuleRef child) const {
  const auto& p = checked_module(parent);
  const auto& c = checked_module(child);
  if (built_in(type_name(parent)) || dynamic_cast<const SequentialImpl*>(&p)) return false;
  const auto type = c.name();
  return built_in(type) && !holds_only(type) && !dynamic_cast<const TrackedModule*>(&c);
}

// Autograd numbers the nodes of one thread's forward in order (thread local).
std::uint64_t Backend::graph_nodes_recorded() const { return at::sequence_number::peek(); }

std::string_view Backend::remedy(Diagnostic::Code code) noexcept {
  using enum Diagnostic::Code;
  switch (code) {
    case untracked_scope:
      return "Declare them with modtracker::libtorch::nn (namespace nn = modtracker::libtorch::nn;) and "
             "MODTRACKER_MODULE in place of TORCH_MODULE, or call them through modtracker::libtorch::call; a "
             "TorchScript model needs modtracker::libtorch::jit::instrument before its first run (a model that ran "
             "keeps its compiled plan: load it again and instrument the new one) (docs/tracking.md)";
    case fqn_collision:
      return "Make the parent a tracked module (MODTRACKER_MODULE, modtracker::libtorch::nn) or call it through "
             "modtracker::libtorch::call";
    case root_inside_module:
      return "Make each module on the way a tracked module (MODTRACKER_MODULE, modtracker::libtorch::nn) or call "
             "it through modtracker::libtorch::call";
    case opaque_output:
      return "If it returns a type of your own, specialize modtracker::libtorch::Flatten<T> for it "
             "(docs/tracking.md)";
    case unowned_module:
      return "Hold it in a holder (MODTRACKER_MODULE) or a std::shared_ptr";
    case untracked_gradients:
      return "A plain torch::nn holder, or ->forward on a plain module, is not tracked: track it "
             "(modtracker::libtorch::nn, MODTRACKER_MODULE, modtracker::libtorch::call)";
    case untracked_child:
      return "Declare it with modtracker::libtorch::nn (namespace nn = modtracker::libtorch::nn;) in place of "
             "torch::nn, or call it through modtracker::libtorch::call (docs/tracking.md)";
    case outside_parent:
      return "To nest it, make the parent's method a tracked call: modtracker::libtorch::ForwardScope "
             "call(*this, modtracker::libtorch::Method{\"decode\"}, z); ...; call.finish(y); (docs/tracking.md)";
    case untracked_parent:
      return "Call the model through modtracker::libtorch::call(model, x), or declare it as a tracked module "
             "(struct NetImpl : nn::Module {...}; MODTRACKER_MODULE(Net);) (docs/tracking.md)";
    case reentrant_forward:
    case unfinished_backward:
    case journal_overflow:
      break;
  }
  return {};
}

}  // namespace modtracker::libtorch
