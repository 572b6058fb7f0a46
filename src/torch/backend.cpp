// The LibTorch hook backend: gradient hooks with one dispatcher per autograd
// node (so events that share a tensor run in GradOrder), the engine's exec
// info for "will this pass compute it", and queue_callback for pass ends.
#include <torch/torch.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <memory>
#include <new>
#include <span>
#include <mutex>
#include <typeinfo>
#include <unordered_map>
#include <variant>

import modtracker;
#include "modtracker/torch.hpp"
#include "../core/pool.hpp"

namespace modtracker::libtorch {
namespace {

using torch::autograd::Node;
using modtracker::detail::PoolAllocator;
using modtracker::detail::prefetch_line;
using modtracker::detail::SpinLock;

// A vector whose first N elements live inline (no allocation for the usual
// one to three registrations per node, tensors per call, events per
// gradient). The inline storage is raw: nothing is built or zeroed up front;
// the rest spill to a vector made on first need (one pointer until then),
// which also holds `Extra`, state that the owner needs as rarely.
template <class T, std::size_t N, class Extra = std::monostate>
class SmallVector {
 public:
  SmallVector() = default;
  SmallVector(const SmallVector&) = delete;
  SmallVector& operator=(const SmallVector&) = delete;
  ~SmallVector() {
    for (std::size_t i = 0; i < std::min(size_, N); ++i) std::destroy_at(slot(i));
  }
  template <class... Args>
  void emplace_back(Args&&... args) {
    if (size_ < N) {
      ::new (static_cast<void*>(slot(size_))) T{std::forward<Args>(args)...};
    } else {
      spill().items.push_back(T{std::forward<Args>(args)...});
    }
    ++size_;
  }
  T& operator[](std::size_t i) { return i < N ? *slot(i) : spill_->items[i - N]; }
  Extra& extra() { return spill().extra; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  template <class F>
  bool any_of(F&& f) {
    for (std::size_t i = 0; i < size_; ++i)
      if (f((*this)[i])) return true;
    return false;
  }

 private:
  struct Spill {
    std::vector<T> items;
    [[no_unique_address]] Extra extra;
  };
  T* slot(std::size_t i) noexcept { return std::launder(reinterpret_cast<T*>(inline_ + i * sizeof(T))); }
  Spill& spill() {
    if (!spill_) spill_ = std::make_unique<Spill>();
    return *spill_;
  }
  std::size_t size_ = 0;  // first: read before the elements
  alignas(T) std::byte inline_[N * sizeof(T)];
  std::unique_ptr<Spill> spill_;
};

// A removable registration, or one over several edges: its state is shared
// by its entries on those edges.
struct Hook {
  GradCallback fn;
  std::atomic<bool> removed{false};
  // All-of over several edges: the edges' nodes (leaf: its grad accumulator),
  // to ask the exec info which of them this pass runs. Empty for one edge:
  // its gradient arriving is all there is to wait for.
  std::vector<std::pair<std::weak_ptr<Node>, bool>> waits;  // (node, leaf)
  // Per-pass state, guarded by state_lock.
  std::uint64_t pass = 0;
  bool fired = false;
  std::size_t needed = 0, arrived = 0;
  std::vector<at::Tensor> kept;  // all-of over several edges: gradients that came first
};

// An entry's callback when it shares a Hook: the Hook is its context (owned
// by the dispatcher, see Dispatch::entries), and this function marks it.
void call_hook(void* hook, Payload grads) { static_cast<Hook*>(hook)->fn(grads); }
constexpr ContextRefs unowned{[](void*) noexcept {}, [](void*) noexcept {}};

// A registration on one autograd edge, 40 bytes (two fit a dispatcher's two
// cache lines): an exit with a rank keeps the rank's address instead of its
// sequence, which ranked exits do not compare. A kept registration on one
// edge (a tracker's module boundary, the common case) lives entirely here,
// with no Hook object and no state: the engine runs a node once per pass, so
// it fires once per pass. The others share a Hook (which holds their
// callback and state).
struct Entry {
  GradCallback fn;  // own callback, or call_hook on the shared Hook
  union {
    std::uint64_t sequence;                   // GradOrder::sequence
    const std::atomic<std::uint32_t>* rank;  // GradOrder::rank, if ranked
  };
  std::uint32_t output_nr;
  std::uint32_t depth_kind;  // GradOrder::depth << 2 | ranked << 1 | (kind == exit)

  Entry(std::uint32_t nr, GradOrder order, GradCallback callback)
      : fn(std::move(callback)),
        output_nr(nr),
        depth_kind(std::min(order.depth, 0x3fffffffu) << 2 | (ranked(order) ? 2u : 0u) |
                   (order.kind == Kind::exit ? 1u : 0u)) {
    if (ranked(order)) rank = order.rank;
    else sequence = order.sequence;
  }
  [[nodiscard]] GradOrder order() const noexcept {
    const auto kind = (depth_kind & 1u) ? Kind::exit : Kind::enter;
    if (depth_kind & 2u) return GradOrder{kind, depth_kind >> 2, 0, rank};
    return GradOrder{kind, depth_kind >> 2, sequence};
  }
  static bool ranked(const GradOrder& order) noexcept { return order.kind == Kind::exit && order.rank; }
  [[nodiscard]] Hook* hook() const noexcept {
    const auto r = fn.ref();
    return r.fn == &call_hook ? static_cast<Hook*>(r.context) : nullptr;
  }
};
static_assert(sizeof(Entry) == 40);

SpinLock state_lock;  // guards Dispatch entries, Hook pass state, leaves and passes

// Registrations on the edges of one autograd node (or one leaf): one
// dispatcher per node, which fires the events of every module sharing a
// boundary tensor in GradOrder (nesting order), whatever the order in which
// the modules registered. Entries are never erased while the node lives (a
// removed one is skipped), so hooks fired outside the lock stay alive.
struct Dispatch {
  // Where the next backward step will likely look, prefetched when this one
  // fires (at 1000 modules all are out of cache by then): the dispatcher on
  // this module's input, the module entered there, and that node's pre-hook
  // list (a separate allocation of LibTorch's, which the engine reads to find
  // the dispatcher). Addresses only: never read through (they may be gone),
  // guarded by state_lock.
  const Dispatch* next = nullptr;
  const void* next_context = nullptr;
  const void* next_hooks = nullptr;
  // Guarded by state_lock; two inline: a module boundary in a chain. Their
  // extra: the shared Hooks of the entries (rare, so beside the spilled ones).
  SmallVector<Entry, 2, std::vector<std::shared_ptr<Hook>>> entries;
  ~Dispatch() {  // a graph is freed from its output on: the same next step
    prefetch_line(next);
    prefetch_line(next_context);
    prefetch_line(next_hooks);
  }
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
  // From the free lists (the class is final: every one has this size), two
  // cache lines.
  static void* operator new(std::size_t) { return modtracker::detail::BlockPool<sizeof(NodeHook)>::allocate(); }
  static void operator delete(void* p) noexcept { modtracker::detail::BlockPool<sizeof(NodeHook)>::deallocate(p); }
};
static_assert(sizeof(NodeHook) <= 128);

// Leaf tensors have no grad_fn: one tensor hook per leaf, found through a
// table keyed by the TensorImpl (entries expire with the tensor's hook).
std::unordered_map<const void*, std::weak_ptr<Dispatch>> leaves;
std::size_t leaf_inserts_since_sweep = 0;

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
// The pass whose callbacks this thread is running (Dispatch::fire), so that
// they learn it without asking the engine again; 0 outside them.
[[gnu::tls_model("initial-exec")]] thread_local std::uint64_t firing_pass = 0;

bool will_run(const std::unordered_map<Node*, torch::autograd::GraphTask::ExecInfo>& info,
              const std::shared_ptr<Node>& node, bool leaf) {
  if (info.empty()) return true;  // a plain backward(): every node runs
  if (!node) return !leaf;
  const auto it = info.find(node.get());
  return it != info.end() && it->second.needed_;
}

// Closes a pass: when the engine runs the end-of-pass callbacks, or, for a
// backward that threw (LibTorch runs none then), when the graph task frees
// them. Either way the exec info's address is forgotten before it can be
// reused by a later graph task.
struct PassCloser {
  const void* info;
  std::uint64_t id;
  std::atomic<bool> done{false};
  PassCloser(const void* i, std::uint64_t n) : info(i), id(n) {}
  PassCloser(const PassCloser&) = delete;
  PassCloser& operator=(const PassCloser&) = delete;
  void close() noexcept {
    if (done.exchange(true)) return;
    std::lock_guard<SpinLock> lock(state_lock);
    if (const auto it = passes.find(info); it != passes.end() && it->second == id) passes.erase(it);
    passes_closed.fetch_add(1, std::memory_order_release);
  }
  ~PassCloser() { close(); }
};

// The current pass's id through this thread's cache (the lock only on a
// miss); opens the pass, and queues its close, on first sight.
std::uint64_t current_pass() {
  const auto* info = torch::autograd::get_current_graph_task_exec_info();
  if (!info) return 0;
  const auto closed = passes_closed.load(std::memory_order_acquire);
  if (pass_cache.info == info && pass_cache.closed == closed) return pass_cache.id;
  std::uint64_t id = 0;
  bool opened = false;
  {
    std::lock_guard<SpinLock> lock(state_lock);
    if (const auto it = passes.find(info); it != passes.end()) {
      id = it->second;
    } else {
      id = ++pass_counter;
      passes.emplace(info, id);
      opened = true;
    }
  }
  if (opened) {  // outside the lock: the closer's destructor takes it
    auto closer = std::make_shared<PassCloser>(info, id);
    torch::autograd::Engine::get_default_engine().queue_callback([closer] { closer->close(); });
  }
  pass_cache = PassCache{info, id, closed};
  return id;
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
    std::lock_guard<SpinLock> lock(state_lock);
    if (next) {
      prefetch_line(next);
      prefetch_line(reinterpret_cast<const char*>(next) + 64);
      prefetch_line(next_context);
      prefetch_line(next_hooks);
    }
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
    for (std::size_t j = i; j > 0 && fires_before(run[j].order, run[j - 1].order); --j)
      std::swap(run[j], run[j - 1]);
  struct Firing {  // what backward_pass() answers meanwhile, also when a callback throws
    std::uint64_t outer = std::exchange(firing_pass, 0);
    explicit Firing(std::uint64_t p) { firing_pass = p; }
    ~Firing() { firing_pass = outer; }
  } firing(pass);
  for (std::size_t i = 0; i < run.size(); ++i) {  // outside the lock
    Tensors view;
    if (run[i].grad) view.push(*run[i].grad);
    for (const auto& g : run[i].kept) view.push(g);
    run[i].fn(Payload{&view});
  }
}

NodeHook* node_hook_of(Node& node) {
  const auto& hooks = node.pre_hooks();
  for (auto it = hooks.rbegin(); it != hooks.rend(); ++it)  // ours is usually the last
    if (const auto& hook = **it; typeid(hook) == typeid(NodeHook)) return static_cast<NodeHook*>(it->get());
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

// The last kept exit registered on this thread: a module's input dispatcher,
// its node's pre-hook list and the module entered there, found again when the
// same module (the same callback context) registers its output's entry (see
// Dispatch::next).
struct LastExit {
  const void* context = nullptr;
  const Dispatch* where = nullptr;
  const void* hooks = nullptr;
  const void* entered = nullptr;
};
[[gnu::tls_model("initial-exec")]] thread_local LastExit last_exit;

// `hooks`: the pre-hook list of d's node (null for a leaf).
void link_boundary(Dispatch& d, const void* hooks, const void* context, Kind kind) {  // state_lock held
  if (kind == Kind::exit) {
    const void* entered = nullptr;  // the latest kept entry there: the outermost module
    for (std::size_t i = 0; i < d.entries.size(); ++i)
      if (const Entry& e = d.entries[i]; !e.hook() && e.order().kind == Kind::enter) entered = e.fn.ref().context;
    last_exit = LastExit{context, &d, hooks, entered};
  } else if (last_exit.context == context) {
    d.next = last_exit.where;
    d.next_hooks = last_exit.hooks;
    d.next_context = last_exit.entered;
  }
}

// One registration of register_hooks: `fn` in `order`, first-of-any or
// all-of; a removable one (`removable` given) gets a Hook, handed back there.
struct Request {
  GradOrder order;
  GradCallback fn;
  bool all;
  std::shared_ptr<Hook>* removable = nullptr;
  std::shared_ptr<Hook> hook;  // shared by its entries on several edges, or removable
};

// Registers each request on the edges of `values` that require grad (found
// once, under one lock for all); false if none does. A kept registration on
// one edge has no Hook object.
bool register_hooks(Payload values, std::span<Request> requests) {
  if (!values) return false;
  const auto& tensors = *static_cast<const Tensors*>(values.ptr);
  struct Edge {
    const at::Tensor* tensor = nullptr;
    Node* node = nullptr;  // null: a leaf
    const void* key = nullptr;  // node or leaf impl
    std::uint32_t output_nr = 0;
  };
  SmallVector<Edge, 4> edges;
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
  for (auto& r : requests) {
    if (!r.removable && edges.size() == 1) continue;
    r.hook = std::allocate_shared<Hook>(PoolAllocator<Hook>{});
    r.hook->fn = std::move(r.fn);
    if (!r.all || edges.size() == 1) continue;
    r.hook->waits.reserve(edges.size());
    for (std::size_t i = 0; i < edges.size(); ++i) {
      const auto& t = *edges[i].tensor;
      r.hook->waits.emplace_back(edges[i].node ? t.grad_fn() : torch::autograd::impl::grad_accumulator(t),
                                 !edges[i].node);
    }
  }
  SmallVector<std::pair<const at::Tensor*, std::shared_ptr<Dispatch>>, 2> fresh_leaves;
  {
    std::lock_guard<SpinLock> lock(state_lock);
    for (std::size_t i = 0; i < edges.size(); ++i) {
      const Edge& e = edges[i];
      Dispatch* d = nullptr;
      const void* node_hooks = nullptr;  // the node's pre-hook list (its storage)
      std::shared_ptr<Dispatch> leaf;  // a leaf's dispatcher, held while we add to it
      if (e.node) {
        auto* nh = node_hook_of(*e.node);
        if (!nh) {
          auto owned = std::make_unique<NodeHook>();
          nh = owned.get();
          e.node->add_pre_hook(std::move(owned));
        }
        d = &nh->dispatch;
        node_hooks = e.node->pre_hooks().data();
      } else {
        if (++leaf_inserts_since_sweep > 1024) {  // forget leaves that are gone
          std::erase_if(leaves, [](const auto& kv) { return kv.second.expired(); });
          leaf_inserts_since_sweep = 0;
        }
        auto& slot = leaves[e.key];
        leaf = slot.lock();
        if (!leaf) {
          leaf = std::make_shared<Dispatch>();
          slot = leaf;
          fresh_leaves.emplace_back(e.tensor, leaf);
        }
        d = leaf.get();
      }
      for (auto& r : requests) {
        if (r.hook) {
          d->add(e.output_nr, r.order, r.hook);
        } else {
          link_boundary(*d, node_hooks, r.fn.ref().context, r.order.kind);
          d->add(e.output_nr, r.order, std::move(r.fn));  // one edge: moved once
        }
      }
    }
  }
  // A leaf's tensor hook owns its dispatcher: it lives as long as the tensor.
  for (std::size_t i = 0; i < fresh_leaves.size(); ++i)
    fresh_leaves[i].first->register_hook(
        [d = std::move(fresh_leaves[i].second)](const at::Tensor& grad) { d->fire(&grad, 1); });
  for (auto& r : requests)
    if (r.removable) *r.removable = std::move(r.hook);
  return true;
}

bool register_hook(Payload values, GradOrder order, GradCallback fn, bool all, std::shared_ptr<Hook>* removable) {
  Request r{order, std::move(fn), all, removable};
  return register_hooks(values, std::span<Request>(&r, 1));
}

std::optional<Registration> removable_hook(Payload values, GradOrder order, GradCallback fn, bool all) {
  std::shared_ptr<Hook> hook;
  if (!register_hook(values, order, std::move(fn), all, &hook)) return std::nullopt;
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

std::uint64_t Backend::backward_pass() const { return firing_pass != 0 ? firing_pass : current_pass(); }

std::optional<Registration> Backend::on_first_gradient(Payload values, GradOrder order, GradCallback fn) {
  return removable_hook(values, order, std::move(fn), false);
}

bool Backend::keep_first_gradient(Payload values, GradOrder order, GradCallback fn) {
  return register_hook(values, order, std::move(fn), false, nullptr);
}

bool Backend::keep_all_gradients(Payload values, GradOrder order, GradCallback fn) {
  return register_hook(values, order, std::move(fn), true, nullptr);
}

bool Backend::keep_boundary(Payload values, GradOrder first_order, GradCallback first_fn, GradOrder all_order,
                            GradCallback all_fn) {
  std::array<Request, 2> both{Request{first_order, std::move(first_fn), false}, Request{all_order, std::move(all_fn), true}};
  return register_hooks(values, both);
}

std::optional<Registration> Backend::on_all_gradients(Payload values, GradOrder order, GradCallback fn) {
  return removable_hook(values, order, std::move(fn), true);
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
