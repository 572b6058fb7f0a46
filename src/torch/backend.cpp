// The LibTorch hook backend: gradient hooks with one dispatcher per autograd
// edge (so events that share a tensor run in GradOrder), the engine's exec
// info for "will this pass compute it", and queue_callback for pass ends.
#include <torch/torch.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <unordered_map>

import modtracker;
#include "modtracker/torch.hpp"

namespace modtracker::libtorch {
namespace {

using torch::autograd::Node;

// The autograd edge a tensor's gradient arrives on, at registration time:
// (grad_fn, output_nr) for non-leaves, the TensorImpl for leaves.
struct EdgeKey {
  const void* node;
  std::uint32_t output_nr;
  bool leaf;
  friend bool operator==(const EdgeKey&, const EdgeKey&) = default;
};
struct EdgeKeyHash {
  std::size_t operator()(const EdgeKey& k) const noexcept {
    return std::hash<const void*>{}(k.node) ^ (static_cast<std::size_t>(k.output_nr) * 0x9e3779b97f4a7c15ULL) ^ k.leaf;
  }
};

// One gradient registration (first-of-any or all-of) across its edges.
struct Hook {
  GradOrder order;
  bool all;
  GradCallback fn;
  std::atomic<bool> removed{false};
  // For `all`: the edges it waits on, to ask the exec info which will run.
  std::vector<std::pair<std::weak_ptr<Node>, bool>> waits;  // (node, leaf)
  // Per-pass state, guarded by the owning Backend's state mutex.
  std::uint64_t pass = 0;
  bool fired = false;
  std::size_t needed = 0, arrived = 0;
  std::vector<at::Tensor> grads;
};

// All registrations on one edge; its tensor hook fires them in GradOrder.
struct EdgeDispatch {
  std::vector<std::shared_ptr<Hook>> hooks;  // guarded by state mutex
};

struct PassInfo {
  std::uint64_t id;
};

std::mutex state_mutex;  // guards edges, passes and Hook/EdgeDispatch state
std::unordered_map<EdgeKey, std::weak_ptr<EdgeDispatch>, EdgeKeyHash> edges;
std::unordered_map<const void*, std::uint64_t> passes;  // exec-info address -> pass id
std::uint64_t pass_counter = 0;
std::size_t inserts_since_sweep = 0;

bool will_run(const std::unordered_map<Node*, torch::autograd::GraphTask::ExecInfo>& info,
              const std::shared_ptr<Node>& node, bool leaf) {
  if (info.empty()) return true;  // a plain backward(): every node runs
  if (!node) return !leaf;
  const auto it = info.find(node.get());
  return it != info.end() && it->second.needed_;
}

// The current pass's id; opens one (and queues its close) on first sight.
std::uint64_t current_pass_locked() {
  const auto* info = torch::autograd::get_current_graph_task_exec_info();
  if (!info) return 0;
  if (auto it = passes.find(info); it != passes.end()) return it->second;
  const auto id = ++pass_counter;
  passes.emplace(info, id);
  torch::autograd::Engine::get_default_engine().queue_callback([info] {
    std::lock_guard<std::mutex> lock(state_mutex);
    passes.erase(info);
  });
  return id;
}

void fire(EdgeDispatch& edge, const at::Tensor& grad) {
  std::vector<std::shared_ptr<Hook>> due;
  std::vector<std::pair<std::shared_ptr<Hook>, std::vector<at::Tensor>>> run;
  {
    std::lock_guard<std::mutex> lock(state_mutex);
    const auto pass = current_pass_locked();
    if (pass == 0) return;
    const auto* info = torch::autograd::get_current_graph_task_exec_info();
    std::erase_if(edge.hooks, [](const auto& h) { return h->removed.load(std::memory_order_relaxed); });
    due = edge.hooks;
    std::stable_sort(due.begin(), due.end(),
                     [](const auto& a, const auto& b) { return fires_before(a->order, b->order); });
    for (const auto& h : due) {
      if (h->pass != pass) {
        h->pass = pass;
        h->fired = false;
        h->arrived = 0;
        h->grads.clear();
        if (h->all) {
          h->needed = 0;
          for (const auto& [node, leaf] : h->waits)
            if (will_run(*info, node.lock(), leaf)) ++h->needed;
        }
      }
      if (h->fired) continue;
      if (h->all) {
        h->grads.push_back(grad);
        if (++h->arrived < h->needed) continue;
        h->fired = true;
        run.emplace_back(h, std::move(h->grads));
        h->grads.clear();
      } else {
        h->fired = true;
        run.emplace_back(h, std::vector<at::Tensor>{grad});
      }
    }
  }
  for (auto& [h, grads] : run) h->fn(Payload{&grads});  // outside the lock: they call into trackers
}

std::optional<Registration> register_hook(Payload values, GradOrder order, GradCallback fn, bool all) {
  if (!values) return std::nullopt;
  const auto& tensors = *static_cast<const Tensors*>(values.ptr);
  auto hook = std::make_shared<Hook>();
  hook->order = order;
  hook->all = all;
  hook->fn = std::move(fn);
  std::vector<std::pair<EdgeKey, const at::Tensor*>> targets;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    if (!t.defined() || !t.requires_grad()) continue;
    const auto& grad_fn = t.grad_fn();
    const EdgeKey key = grad_fn ? EdgeKey{grad_fn.get(), static_cast<std::uint32_t>(t.output_nr()), false}
                                : EdgeKey{t.unsafeGetTensorImpl(), 0, true};
    if (std::any_of(targets.begin(), targets.end(), [&](const auto& p) { return p.first == key; })) continue;
    targets.emplace_back(key, &t);
    if (all) {
      hook->waits.emplace_back(grad_fn ? grad_fn : torch::autograd::impl::grad_accumulator(t), !grad_fn);
    }
  }
  if (targets.empty()) return std::nullopt;
  std::vector<std::pair<const at::Tensor*, std::shared_ptr<EdgeDispatch>>> fresh;
  {
    std::lock_guard<std::mutex> lock(state_mutex);
    if (++inserts_since_sweep > 4096) {  // forget edges of freed graphs
      std::erase_if(edges, [](const auto& kv) { return kv.second.expired(); });
      inserts_since_sweep = 0;
    }
    for (const auto& [key, tensor] : targets) {
      auto& slot = edges[key];
      auto edge = slot.lock();
      if (!edge) {
        edge = std::make_shared<EdgeDispatch>();
        slot = edge;
        fresh.emplace_back(tensor, edge);
      }
      edge->hooks.push_back(hook);
    }
  }
  // One tensor hook per edge, owning its dispatcher: it lives with the graph.
  for (auto& [tensor, edge] : fresh) {
    tensor->register_hook([edge = std::move(edge)](const at::Tensor& grad) { fire(*edge, grad); });
  }
  return Registration([weak = std::weak_ptr<Hook>(hook)] {
    if (auto h = weak.lock()) h->removed.store(true, std::memory_order_relaxed);
  });
}

const torch::nn::Module& module_of(ModuleRef m) {
  if (!m) throw std::invalid_argument("modtracker: null module");
  return *static_cast<const torch::nn::Module*>(m.ptr);
}

}  // namespace

Backend::Backend() = default;
Backend::~Backend() = default;

Backend& backend() {
  static Backend instance;
  return instance;
}

Registration Backend::add_forward_observer(ForwardObserver& observer) { return dispatcher_.add(observer); }

bool Backend::grad_enabled() const { return at::GradMode::is_enabled(); }

bool Backend::in_backward() const { return torch::autograd::get_current_graph_task_exec_info() != nullptr; }

std::uint64_t Backend::backward_pass() const {
  if (!in_backward()) return 0;
  std::lock_guard<std::mutex> lock(state_mutex);
  return current_pass_locked();
}

std::optional<Registration> Backend::on_first_gradient(Payload values, GradOrder order, GradCallback fn) {
  return register_hook(values, order, std::move(fn), false);
}

std::optional<Registration> Backend::on_all_gradients(Payload values, GradOrder order, GradCallback fn) {
  return register_hook(values, order, std::move(fn), true);
}

void Backend::at_end_of_backward(std::function<void()> fn) {
  if (!in_backward()) throw std::logic_error("modtracker: at_end_of_backward outside a backward pass");
  torch::autograd::Engine::get_default_engine().queue_callback(std::move(fn));
}

std::string Backend::type_name(ModuleRef module) const { return module_of(module).name(); }

void Backend::for_each_child(ModuleRef module, const std::function<void(std::string_view, ModuleRef)>& fn) const {
  for (const auto& item : module_of(module).named_children())
    fn(item.key(), ModuleRef{static_cast<const void*>(item.value().get())});
}

WeakModule Backend::weak(ModuleRef module) const {
  auto& m = const_cast<torch::nn::Module&>(module_of(module));
  std::weak_ptr<torch::nn::Module> w = m.weak_from_this();
  return w;
}

}  // namespace modtracker::libtorch
