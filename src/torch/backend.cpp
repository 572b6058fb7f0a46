// The LibTorch hook backend: gradient hooks with one dispatcher per autograd
// edge (so events that share a tensor run in GradOrder), the engine's exec
// info for "will this pass compute it", and queue_callback for pass ends.
#include <torch/torch.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <mutex>
#include <unordered_map>

import modtracker;
#include "modtracker/torch.hpp"

namespace modtracker::libtorch {
namespace {

using torch::autograd::Node;

// A vector whose first N elements live inline (no allocation for the usual
// one or two hooks per node and tensors per call).
template <class T, std::size_t N>
class SmallVector {
 public:
  template <class... Args>
  void emplace_back(Args&&... args) {
    if (size_ < N) inline_[size_] = T{std::forward<Args>(args)...};
    else spill_.emplace_back(std::forward<Args>(args)...);
    ++size_;
  }
  T& operator[](std::size_t i) { return i < N ? inline_[i] : spill_[i - N]; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  template <class F>
  bool any_of(F&& f) {
    for (std::size_t i = 0; i < size_; ++i)
      if (f((*this)[i])) return true;
    return false;
  }

 private:
  std::array<T, N> inline_{};
  std::vector<T> spill_;
  std::size_t size_ = 0;
};

// One gradient registration (first-of-any or all-of) across its edges.
struct Hook {
  GradOrder order;
  bool all;
  GradCallback fn;
  std::atomic<bool> removed{false};
  // For `all`: the edges it waits on, to ask the exec info which will run.
  SmallVector<std::pair<std::weak_ptr<Node>, bool>, 2> waits;  // (node, leaf)
  // Per-pass state, guarded by state_mutex.
  std::uint64_t pass = 0;
  bool fired = false;
  std::size_t needed = 0, arrived = 0;
  std::vector<at::Tensor> grads;
};

// A registration on one autograd edge: the edge's output number and its hook.
struct Entry {
  std::uint32_t output_nr;
  std::shared_ptr<Hook> hook;
};

// Registrations on the edges of one autograd node (or one leaf), kept in
// GradOrder: one dispatcher per node, so that the events of every module that
// shares a boundary tensor run in the nesting order, whatever the order in
// which the modules registered.
struct Dispatch {
  std::vector<Entry> entries;  // guarded by state_mutex
  void add(std::uint32_t output_nr, const std::shared_ptr<Hook>& hook) {
    const auto at = std::upper_bound(entries.begin(), entries.end(), hook, [](const auto& h, const Entry& e) {
      return fires_before(h->order, e.hook->order);
    });
    entries.insert(at, Entry{output_nr, hook});
  }
  void fire(const torch::autograd::variable_list& grads);
};

// Non-leaf tensors: the dispatcher is a pre-hook of the tensor's grad_fn,
// owned by the node (no global table, no per-tensor hook list).
struct NodeHook final : torch::autograd::FunctionPreHook {
  Dispatch dispatch;
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    dispatch.fire(grads);
    return grads;
  }
};

// Leaf tensors have no grad_fn: one tensor hook per leaf, found through a
// table keyed by the TensorImpl (entries expire with the tensor's hook).
std::unordered_map<const void*, std::weak_ptr<Dispatch>> leaves;
std::size_t leaf_inserts_since_sweep = 0;

std::mutex state_mutex;  // guards leaves, passes and Hook/Dispatch state
std::unordered_map<const void*, std::uint64_t> passes;  // exec-info address -> pass id
std::uint64_t pass_counter = 0;
std::atomic<std::uint64_t> passes_closed{0};  // invalidates the per-thread caches below

// This thread's last answer to "which pass is this exec info", valid while no
// pass has closed since: most gradient callbacks then skip the global lock.
struct PassCache {
  const void* info = nullptr;
  std::uint64_t id = 0;
  std::uint64_t closed = 0;
};
[[gnu::tls_model("initial-exec")]] thread_local PassCache pass_cache;

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
    passes_closed.fetch_add(1, std::memory_order_release);
  });
  return id;
}

// The current pass's id through this thread's cache (the lock only on a miss).
std::uint64_t current_pass() {
  const auto* info = torch::autograd::get_current_graph_task_exec_info();
  if (!info) return 0;
  const auto closed = passes_closed.load(std::memory_order_acquire);
  if (pass_cache.info == info && pass_cache.closed == closed) return pass_cache.id;
  std::lock_guard<std::mutex> lock(state_mutex);
  const auto id = current_pass_locked();
  pass_cache = PassCache{info, id, closed};
  return id;
}

void Dispatch::fire(const torch::autograd::variable_list& grads) {
  SmallVector<std::pair<std::shared_ptr<Hook>, std::vector<at::Tensor>>, 4> run;
  const auto pass = current_pass();
  if (pass == 0) return;
  {
    std::lock_guard<std::mutex> lock(state_mutex);
    const auto* info = torch::autograd::get_current_graph_task_exec_info();
    std::erase_if(entries, [](const Entry& e) { return e.hook->removed.load(std::memory_order_relaxed); });
    for (const auto& [output_nr, h] : entries) {  // in GradOrder
      if (output_nr >= grads.size() || !grads[output_nr].defined()) continue;  // no gradient on this edge
      const auto& grad = grads[output_nr];
      if (h->pass != pass) {
        h->pass = pass;
        h->fired = false;
        h->arrived = 0;
        h->grads.clear();
        if (h->all) {
          h->needed = info->empty() ? h->waits.size() : 0;  // a plain backward(): every node runs
          if (!info->empty())
            for (std::size_t i = 0; i < h->waits.size(); ++i)
              if (will_run(*info, h->waits[i].first.lock(), h->waits[i].second)) ++h->needed;
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
  for (std::size_t i = 0; i < run.size(); ++i) run[i].first->fn(Payload{&run[i].second});  // outside the lock
}

NodeHook* node_hook_of(Node& node) {
  for (auto& pre : node.pre_hooks())
    if (auto* mine = dynamic_cast<NodeHook*>(pre.get())) return mine;
  return nullptr;
}

std::optional<Registration> register_hook(Payload values, GradOrder order, GradCallback fn, bool all) {
  if (!values) return std::nullopt;
  const auto& tensors = *static_cast<const Tensors*>(values.ptr);
  std::shared_ptr<Hook> hook;
  std::vector<std::pair<const at::Tensor*, std::shared_ptr<Dispatch>>> fresh_leaves;
  SmallVector<std::pair<const void*, std::uint32_t>, 8> seen;  // (node or leaf impl, output_nr)
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    if (!t.defined() || !t.requires_grad()) continue;
    const auto& grad_fn = t.grad_fn();
    const auto output_nr = grad_fn ? static_cast<std::uint32_t>(t.output_nr()) : 0u;
    const void* key = grad_fn ? static_cast<const void*>(grad_fn.get()) : t.unsafeGetTensorImpl();
    if (seen.any_of([&](const auto& p) { return p.first == key && p.second == output_nr; })) continue;
    seen.emplace_back(key, output_nr);
    if (!hook) {
      hook = std::make_shared<Hook>();
      hook->order = order;
      hook->all = all;
      hook->fn = std::move(fn);
    }
    if (all) hook->waits.emplace_back(grad_fn ? grad_fn : torch::autograd::impl::grad_accumulator(t), !grad_fn);
    std::lock_guard<std::mutex> lock(state_mutex);
    if (grad_fn) {
      auto* nh = node_hook_of(*grad_fn);
      if (!nh) {
        auto owned = std::make_unique<NodeHook>();
        nh = owned.get();
        grad_fn->add_pre_hook(std::move(owned));
      }
      nh->dispatch.add(output_nr, hook);
      continue;
    }
    if (++leaf_inserts_since_sweep > 1024) {  // forget leaves that are gone
      std::erase_if(leaves, [](const auto& kv) { return kv.second.expired(); });
      leaf_inserts_since_sweep = 0;
    }
    auto& slot = leaves[key];
    auto d = slot.lock();
    if (!d) {
      d = std::make_shared<Dispatch>();
      slot = d;
      fresh_leaves.emplace_back(&t, d);
    }
    d->add(0, hook);
  }
  if (!hook) return std::nullopt;
  // A leaf's tensor hook owns its dispatcher: it lives as long as the tensor.
  for (auto& [leaf, d] : fresh_leaves)
    leaf->register_hook([d = std::move(d)](const at::Tensor& grad) { d->fire({grad}); });
  return Registration(hook, [](void* h) { static_cast<Hook*>(h)->removed.store(true, std::memory_order_relaxed); });
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

std::uint64_t Backend::backward_pass() const { return current_pass(); }

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
