// Gradient hooks on LibTorch tensors: one dispatcher per autograd node (or
// leaf), installed as a pre-hook of the tensor's grad_fn (a leaf: one tensor
// hook), which fires that node's registrations in GradOrder. Hooks on one
// tensor fire in registration order in LibTorch, so one hook per module
// could never nest; "all inputs done" counts only the edges that the
// engine's exec info says this pass runs.
#include <torch/torch.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

#include <gsl/gsl>

#include "backend/pool.hpp"
#include "libtorch/small_vector.hpp"
#include "backend/spin_lock.hpp"
#include "libtorch/passes.hpp"
#include "modtracker/libtorch/tensors.hpp"

// `modtracker` first: clang 16 then merges the std headers of both modules cleanly.
import modtracker;
import modtracker.backend;
#include "libtorch/gradients.hpp"

namespace modtracker::libtorch::detail {

namespace {

using modtracker::detail::BlockPool;
using modtracker::detail::PoolAllocator;
using modtracker::detail::SmallVector;
using modtracker::detail::SpinLock;
using torch::autograd::Node;

// A removable registration, or one over several edges: its state is shared
// by its entries on those edges.
struct Hook {
  GradCallback fn;
  std::atomic<bool> removed{false};
  // All-of over several edges: the edges' nodes (leaf: its grad accumulator),
  // to ask the exec info which of them this pass runs. Empty for one edge:
  // its gradient arriving is all there is to wait for.
  std::vector<std::pair<std::weak_ptr<Node>, bool>> waits;  // (node, leaf)
  // Per-pass state, guarded by hooks_lock.
  std::uint64_t pass = 0;
  bool fired = false;
  std::size_t needed = 0, arrived = 0;
  std::vector<at::Tensor> kept;  // all-of over several edges: gradients that came first
};

// An entry's callback when it shares a Hook: the Hook is its context (owned
// by the dispatcher, see Dispatch::entries), and this function marks it.
void call_hook(void* hook, ValuesRef grads) { static_cast<Hook*>(hook)->fn(grads); }
constexpr ContextRefs unowned{[](void*) noexcept {}, [](void*) noexcept {}};

// A registration on one autograd edge, 40 bytes (two fit a dispatcher's two
// cache lines). A ranked exit keeps its rank's address where the others keep
// their sequence, which ranked exits never compare. A registration kept with
// the graph on one edge (a tracker's module boundary, the common case) lives
// entirely here, with no Hook and no state: the engine runs a node once per
// pass, so it fires once per pass. The others share a Hook.
struct Entry {
  GradCallback fn;  // own callback, or call_hook on the shared Hook
  union {
    std::uint64_t sequence;                   // GradOrder::sequence
    const std::atomic<std::uint32_t>* rank;  // GradOrder::rank, if ranked
  };
  std::uint32_t output_nr;
  std::uint32_t depth : 30;  // GradOrder::depth (saturated)
  std::uint32_t ranked : 1;
  std::uint32_t exit : 1;

  Entry(std::uint32_t nr, GradOrder order, GradCallback callback)
      : fn(std::move(callback)),
        output_nr(nr),
        depth(std::min(order.depth, (1u << 30) - 1)),
        ranked(order.kind == Kind::exit && order.rank != nullptr),
        exit(order.kind == Kind::exit) {
    if (ranked) rank = order.rank;
    else sequence = order.sequence;
  }
  [[nodiscard]] GradOrder order() const noexcept {
    const auto kind = exit ? Kind::exit : Kind::enter;
    if (ranked) return GradOrder{kind, depth, 0, rank};
    return GradOrder{kind, depth, sequence};
  }
  [[nodiscard]] Hook* hook() const noexcept {
    const auto r = fn.ref();
    return r.fn == &call_hook ? static_cast<Hook*>(r.context) : nullptr;
  }
};
static_assert(sizeof(Entry) == 40);

SpinLock hooks_lock;  // guards Dispatch entries and links, Hook pass state, and the leaves

// The registrations on the edges of one autograd node (or one leaf). Entries
// are never erased while the node lives (a removed one is skipped), so hooks
// fired outside the lock stay alive.
struct Dispatch {
  // Two inline: a module boundary in a chain. Their extra: the shared Hooks
  // of the entries (rare, so beside the spilled ones).
  SmallVector<Entry, 2, std::vector<std::shared_ptr<Hook>>> entries;
  Dispatch() = default;
  Dispatch(const Dispatch&) = delete;
  Dispatch& operator=(const Dispatch&) = delete;
  void add(std::uint32_t output_nr, GradOrder order, GradCallback fn) { entries.emplace_back(output_nr, order, std::move(fn)); }
  void add(std::uint32_t output_nr, GradOrder order, const std::shared_ptr<Hook>& hook) {
    entries.extra().push_back(hook);
    entries.emplace_back(output_nr, order, GradCallback(hook.get(), unowned, &call_hook));
  }
  void fire(const at::Tensor* grads, std::size_t n);
};

// Non-leaf tensors: the dispatcher is a pre-hook of the tensor's grad_fn,
// owned by the node (no global table, no per-tensor hook list).
struct NodeHook final : torch::autograd::FunctionPreHook {
  Dispatch dispatch;
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    dispatch.fire(grads.data(), grads.size());
    // The engine calls every pre-hook as `inputs = (*hook)(inputs)` on its
    // own non-const list (call_pre_hooks in engine.cpp, in every LibTorch
    // version): handing that list back by move saves copying it (an
    // allocation and a reference count per gradient).
    return std::move(const_cast<torch::autograd::variable_list&>(grads));
  }
  // From the free lists (the class is final: every one has this size), two cache lines.
  static void* operator new(std::size_t) { return BlockPool<sizeof(NodeHook)>::allocate(); }
  static void operator delete(void* p) noexcept { BlockPool<sizeof(NodeHook)>::deallocate(p); }
};
static_assert(sizeof(NodeHook) <= 128);

// Leaf tensors have no grad_fn: one tensor hook per leaf, found through a
// table keyed by the TensorImpl (entries expire with the tensor's hook).
std::unordered_map<const void*, std::weak_ptr<Dispatch>> leaves;
std::size_t leaf_inserts_since_sweep = 0;

bool will_run(const std::unordered_map<Node*, torch::autograd::GraphTask::ExecInfo>& info,
              const std::shared_ptr<Node>& node, bool leaf) {
  if (info.empty()) return true;  // a plain backward(): every node runs
  if (!node) return !leaf;
  const auto it = info.find(node.get());
  return it != info.end() && it->second.needed_;
}

// A registration whose condition this gradient completed, with what it
// hands on. The callback is borrowed: its entry outlives the firing.
struct Ready {
  GradOrder order;
  GradCallback::Ref fn;
  const at::Tensor* grad = nullptr;  // one edge: the gradient itself
  std::vector<at::Tensor> kept;      // several edges: all of their gradients
};

void Dispatch::fire(const at::Tensor* grads, std::size_t n) {
  const auto pass = current_pass();
  if (pass == 0) return;
  SmallVector<Ready, 4> run;
  {
    std::lock_guard<SpinLock> lock(hooks_lock);
    for (std::size_t i = 0; i < entries.size(); ++i) {
      Entry& e = entries[i];
      if (e.output_nr >= n || !grads[e.output_nr].defined()) continue;  // no gradient on this edge
      Hook* shared = e.hook();
      if (!shared) {  // kept, one edge: its node runs once per pass
        run.emplace_back(e.order(), e.fn.ref(), &grads[e.output_nr]);
        continue;
      }
      Hook& h = *shared;  // its entries all carry the same order
      if (h.removed.load(std::memory_order_relaxed)) continue;
      if (h.pass != pass) {
        h.pass = pass;
        h.fired = false;
        h.arrived = 0;
        h.kept.clear();
        if (!h.waits.empty()) {
          const auto* info = torch::autograd::get_current_graph_task_exec_info();
          h.needed = 0;
          for (const auto& [node, leaf] : h.waits)
            if (will_run(*info, node.lock(), leaf)) ++h.needed;
        }
      }
      if (h.fired) continue;
      if (h.waits.empty()) {  // first-of-any, or all-of over one edge
        h.fired = true;
        run.emplace_back(e.order(), h.fn.ref(), &grads[e.output_nr]);
        continue;
      }
      h.kept.push_back(grads[e.output_nr]);
      if (++h.arrived < h.needed) continue;
      h.fired = true;
      run.emplace_back(e.order(), h.fn.ref(), nullptr, std::move(h.kept));
      h.kept.clear();
    }
  }
  // In GradOrder (a handful at most: insertion sort).
  for (std::size_t i = 1; i < run.size(); ++i)
    for (std::size_t j = i; j > 0 && fires_before(run[j].order, run[j - 1].order); --j) std::swap(run[j], run[j - 1]);
  // What backward_pass() answers meanwhile, also when a callback throws.
  const auto outer = set_firing_pass(pass);
  const auto restore = gsl::finally([outer] { set_firing_pass(outer); });
  for (std::size_t i = 0; i < run.size(); ++i) {  // outside the lock
    Tensors view;
    if (run[i].grad) view.push(*run[i].grad);
    for (const auto& g : run[i].kept) view.push(g);
    run[i].fn(ValuesRef{&view});
  }
}

NodeHook* node_hook_of(Node& node) {
  // Ours is usually the last. (By index: clang 16 finds two definitions of
  // <compare>'s internals when a reverse_iterator comparison meets the modules.)
  const auto& hooks = node.pre_hooks();
  for (std::size_t i = hooks.size(); i-- > 0;)
    if (const auto& hook = *hooks[i]; typeid(hook) == typeid(NodeHook)) return static_cast<NodeHook*>(hooks[i].get());
  return nullptr;
}

// Whether a tensor requires grad, and its grad_fn and output number: read
// from its AutogradMeta for a plain tensor (the public accessors each go
// through LibTorch's variable hooks); a view takes the public path, which
// may regenerate its grad_fn.
struct TensorEdge {
  bool needs_grad = false;
  Node* node = nullptr;  // null: a leaf
  std::uint32_t output_nr = 0;
};
TensorEdge edge_of(const at::Tensor& t) {
  const auto* meta = torch::autograd::impl::get_autograd_meta(t);
  if (!meta) return {};  // no autograd metadata: requires no grad
  if (!meta->is_view_) {
    Node* node = meta->grad_fn_.get();
    return {meta->requires_grad_ || node != nullptr, node, node ? meta->output_nr_ : 0u};
  }
  if (!t.requires_grad()) return {};
  Node* node = t.grad_fn().get();
  return {true, node, node ? static_cast<std::uint32_t>(t.output_nr()) : 0u};
}

// One edge of the values: a tensor that requires grad, by node (or leaf) and output.
struct Edge {
  const at::Tensor* tensor = nullptr;
  Node* node = nullptr;       // null: a leaf
  const void* key = nullptr;  // node or leaf impl
  std::uint32_t output_nr = 0;
};

// The dispatcher of an edge, made if it has none (hooks_lock held). A new
// leaf dispatcher goes to `fresh`, to be owned by the leaf's tensor hook.
Dispatch& dispatch_of(const Edge& e, std::shared_ptr<Dispatch>& leaf,
                      SmallVector<std::pair<const at::Tensor*, std::shared_ptr<Dispatch>>, 2>& fresh) {
  if (e.node) {
    auto* nh = node_hook_of(*e.node);
    if (!nh) {
      auto owned = std::make_unique<NodeHook>();
      nh = owned.get();
      e.node->add_pre_hook(std::move(owned));
    }
    return nh->dispatch;
  }
  if (++leaf_inserts_since_sweep > 1024) {  // forget leaves that are gone
    std::erase_if(leaves, [](const auto& kv) { return kv.second.expired(); });
    leaf_inserts_since_sweep = 0;
  }
  auto& slot = leaves[e.key];
  leaf = slot.lock();
  if (!leaf) {
    leaf = std::make_shared<Dispatch>();
    slot = leaf;
    fresh.emplace_back(e.tensor, leaf);
  }
  return *leaf;
}

}  // namespace

bool add_gradient_hooks(ValuesRef values, std::span<GradientHook> hooks, Registration* removal) {
  if (!values) return false;
  const auto& tensors = *static_cast<const Tensors*>(values.ptr);
  SmallVector<Edge, 4> edges;  // found once, for every hook
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    if (!t.defined()) continue;
    const auto [needs_grad, node, output_nr] = edge_of(t);
    if (!needs_grad) continue;
    const void* key = node ? static_cast<const void*>(node) : t.unsafeGetTensorImpl();
    if (edges.any_of([&](const Edge& e) { return e.key == key && e.output_nr == output_nr; })) continue;
    edges.emplace_back(&t, node, key, output_nr);
  }
  if (edges.size() == 0) return false;
  // A Hook for each hook that is removable or spans several edges; the rest
  // live in their entry alone.
  SmallVector<std::shared_ptr<Hook>, 2> shared;
  for (auto& h : hooks) {
    std::shared_ptr<Hook> hook;
    if (removal || edges.size() > 1) {
      hook = std::allocate_shared<Hook>(PoolAllocator<Hook>{});
      hook->fn = std::move(h.fn);
      if (h.wait == GradientWait::all && edges.size() > 1) {
        hook->waits.reserve(edges.size());
        for (std::size_t i = 0; i < edges.size(); ++i) {
          const auto& t = *edges[i].tensor;
          hook->waits.emplace_back(edges[i].node ? t.grad_fn() : torch::autograd::impl::grad_accumulator(t),
                                   !edges[i].node);
        }
      }
    }
    shared.emplace_back(std::move(hook));
  }
  SmallVector<std::pair<const at::Tensor*, std::shared_ptr<Dispatch>>, 2> fresh_leaves;
  {
    std::lock_guard<SpinLock> lock(hooks_lock);
    for (std::size_t i = 0; i < edges.size(); ++i) {
      std::shared_ptr<Dispatch> leaf;  // a leaf's dispatcher, held while we add to it
      Dispatch& d = dispatch_of(edges[i], leaf, fresh_leaves);
      for (std::size_t k = 0; k < hooks.size(); ++k) {
        if (shared[k]) {
          d.add(edges[i].output_nr, hooks[k].order, shared[k]);
        } else {
          d.add(edges[i].output_nr, hooks[k].order, std::move(hooks[k].fn));  // one edge: moved once
        }
      }
    }
  }
  // A leaf's tensor hook owns its dispatcher: it lives as long as the tensor.
  for (std::size_t i = 0; i < fresh_leaves.size(); ++i)
    fresh_leaves[i].first->register_hook(
        [d = std::move(fresh_leaves[i].second)](const at::Tensor& grad) { d->fire(&grad, 1); });
  if (removal) {
    std::vector<std::weak_ptr<Hook>> handles;
    for (std::size_t k = 0; k < shared.size(); ++k) handles.emplace_back(shared[k]);
    *removal = Registration([handles = std::move(handles)] {
      for (const auto& w : handles)
        if (const auto h = w.lock()) h->removed.store(true, std::memory_order_relaxed);
    });
  }
  return true;
}

}  // namespace modtracker::libtorch::detail
