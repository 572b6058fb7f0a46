// Backward provenance: the node callback, and the owner of a node number.
#include <torch/torch.h>
#include <ATen/SequenceNumber.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/graph_task.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "libtorch_tools/provenance.hpp"

namespace modtracker::libtorch::detail {

namespace {

// The nodes running on this thread, innermost last (a node may run a
// backward of its own: reentrant backward, checkpointing).
struct NodeFrame {
  RunningNode node;
  std::uint64_t made_from;  // this thread's node counter at the node's start
  bool grad_mode;           // the node builds a graph (create_graph): its nodes are its owner's
  std::chrono::steady_clock::time_point start{};  // timed nodes only
  std::chrono::nanoseconds inner{};               // the nodes run inside it
};
thread_local std::vector<NodeFrame> node_stack;
// The node that ended last on this thread: the engine's work on its outputs
// (reducing a gradient to its input's shape, summing gradients that meet)
// runs after the node's record ends, and is still that node's.
thread_local RunningNode last_node{0, -1, 0};
std::atomic<std::uint64_t> node_serials{1};

// Nodes made while another node ran (double backward): [from, to) on the
// thread `made_on` came from node (forward_thread, sequence). Rare, so one
// mutex; `any_derived` keeps lookups from taking it otherwise.
struct Derived {
  std::uint64_t to, forward_thread;
  std::int64_t sequence;
};
std::mutex derived_mutex;
std::map<std::pair<std::uint64_t, std::uint64_t>, Derived> derived;  // (made_on, from) -> range
std::deque<std::pair<std::uint64_t, std::uint64_t>> derived_order;   // the latest 65536 ranges are kept
std::atomic<bool> any_derived{false};

std::mutex listeners_mutex;
std::vector<NodeListener*> listeners;
std::atomic<bool> timing{false};

std::unique_ptr<at::ObserverContext> node_started(const at::RecordFunction& fn) {
  node_stack.push_back({{fn.forwardThreadId(), fn.seqNr(), node_serials.fetch_add(1, std::memory_order_relaxed)},
                        at::sequence_number::peek(), at::GradMode::is_enabled()});
  if (timing.load(std::memory_order_relaxed)) node_stack.back().start = std::chrono::steady_clock::now();
  return nullptr;
}

void node_ended(const at::RecordFunction&, at::ObserverContext*) {
  if (node_stack.empty()) return;  // started before the callback was installed
  const auto frame = node_stack.back();
  node_stack.pop_back();
  last_node = frame.node;
  if (timing.load(std::memory_order_relaxed) && frame.start != std::chrono::steady_clock::time_point{}) {
    const auto end = std::chrono::steady_clock::now();
    const auto ran = std::chrono::duration_cast<std::chrono::nanoseconds>(end - frame.start);
    if (!node_stack.empty()) node_stack.back().inner += ran;
    std::lock_guard<std::mutex> lock(listeners_mutex);
    for (auto* l : listeners) l->on_node(frame.node, ran - frame.inner, frame.start, end);
  }
  const auto now = at::sequence_number::peek();
  if (!frame.grad_mode || now == frame.made_from || frame.node.sequence < 0) return;
  const std::pair key{at::RecordFunction::currentThreadId(), frame.made_from};
  std::lock_guard<std::mutex> lock(derived_mutex);
  if (derived.insert_or_assign(key, Derived{now, frame.node.forward_thread, frame.node.sequence}).second)
    derived_order.push_back(key);
  if (derived_order.size() > (std::size_t{1} << 16)) {
    derived.erase(derived_order.front());
    derived_order.pop_front();
  }
  any_derived.store(true, std::memory_order_release);
}

std::mutex watch_mutex;
std::size_t watchers = 0;
at::CallbackHandle watch_handle = 0;

}  // namespace

const RunningNode* running_node() noexcept {
  if (!node_stack.empty()) return &node_stack.back().node;
  if (last_node.serial != 0 && torch::autograd::get_current_graph_task_exec_info()) return &last_node;
  last_node.serial = 0;  // the pass is over
  return nullptr;
}

void add_node_listener(NodeListener& listener) {
  std::lock_guard<std::mutex> lock(listeners_mutex);
  listeners.push_back(&listener);
  timing.store(true, std::memory_order_relaxed);
}

void remove_node_listener(NodeListener& listener) {
  std::lock_guard<std::mutex> lock(listeners_mutex);
  std::erase(listeners, &listener);
  timing.store(!listeners.empty(), std::memory_order_relaxed);
}

NodeWatch::NodeWatch() {
  std::lock_guard<std::mutex> lock(watch_mutex);
  if (watchers++ == 0)
    watch_handle = at::addGlobalCallback(
        at::RecordFunctionCallback(&node_started, &node_ended).scopes({at::RecordScope::BACKWARD_FUNCTION}));
}

NodeWatch::~NodeWatch() {
  std::lock_guard<std::mutex> lock(watch_mutex);
  if (--watchers == 0) at::removeCallback(std::exchange(watch_handle, 0));
}

void Provenance::mark(Thread& t, std::uint64_t sequence, std::uint32_t owner) {
  if (!t.boundaries.empty() && t.boundaries.back().sequence == sequence) {
    t.boundaries.back().owner = owner;  // no node made since the last boundary
  } else {
    // A bound on memory in long scopes: the older half goes (a node made
    // that long ago is counted as unresolved and charged to Global).
    if (t.boundaries.size() >= (std::size_t{1} << 18)) {
      t.boundaries.erase(t.boundaries.begin(), t.boundaries.begin() + static_cast<std::ptrdiff_t>(t.boundaries.size() / 2));
      t.pruned = true;
    }
    t.boundaries.push_back({sequence, owner});
  }
}

void Provenance::forward(Kind kind, std::uint32_t module) {
  ++forward_events_;
  auto& t = threads_[at::RecordFunction::currentThreadId()];
  const auto sequence = at::sequence_number::peek();
  if (kind == Kind::enter) {
    // A forward run inside a backward node (recomputation) nests in the
    // node's module.
    const auto* node = t.stack.empty() ? running_node() : nullptr;
    const auto parent = !t.stack.empty() ? t.stack.back() : node ? lookup(node->forward_thread, node->sequence) : none;
    const auto [it, fresh] =
        interned_.try_emplace(std::uint64_t{module} << 32 | parent, static_cast<std::uint32_t>(activations_.size()));
    if (fresh) activations_.push_back({module, parent});
    const auto a = it->second;
    t.stack.push_back(a);
    mark(t, sequence, a);
    return;
  }
  // An exit closes the innermost open activation of its module (an exit
  // without its enter, from before this tool listened, closes nothing).
  const auto it = std::find_if(t.stack.rbegin(), t.stack.rend(), [&](std::uint32_t a) { return activations_[a].module == module; });
  if (it == t.stack.rend()) return;
  t.stack.erase(std::next(it).base(), t.stack.end());
  mark(t, sequence, t.stack.empty() ? none : t.stack.back());
}

std::uint32_t Provenance::innermost() const {
  const auto it = threads_.find(at::RecordFunction::currentThreadId());
  return it == threads_.end() || it->second.stack.empty() ? none : it->second.stack.back();
}

std::uint32_t Provenance::lookup(std::uint64_t forward_thread, std::int64_t sequence) {
  if (sequence < 0) return none;
  auto number = static_cast<std::uint64_t>(sequence);
  for (int hops = 0; any_derived.load(std::memory_order_acquire) && hops < 16; ++hops) {
    std::lock_guard<std::mutex> lock(derived_mutex);
    auto it = derived.upper_bound({forward_thread, number});
    if (it == derived.begin()) break;
    --it;
    if (it->first.first != forward_thread || number >= it->second.to) break;
    // Made while a node ran: that node's owner owns it.
    std::tie(forward_thread, sequence) = std::pair{it->second.forward_thread, it->second.sequence};
    number = static_cast<std::uint64_t>(sequence);
  }
  const auto t = threads_.find(forward_thread);
  if (t == threads_.end()) return none;
  const auto& b = t->second.boundaries;
  const auto it = std::upper_bound(b.begin(), b.end(), number, [](std::uint64_t n, const Boundary& x) { return n < x.sequence; });
  if (it == b.begin()) {
    if (t->second.pruned) ++unresolved_;
    return none;
  }
  return std::prev(it)->owner;
}

std::uint32_t Provenance::owner_now() {
  // Every operator and allocation of a node asks again: the answer holds for
  // the node's execution until a forward transition (of recomputation).
  const auto* node = running_node();
  const auto serial = node ? node->serial : 0;
  if (serial != 0 && serial == cached_serial_ && forward_events_ == cached_events_) return cached_owner_;
  // A forward running inside backward (recomputation) owns its own work.
  auto owner = innermost();
  if (owner == none && node) owner = lookup(node->forward_thread, node->sequence);
  cached_serial_ = serial;
  cached_events_ = forward_events_;
  return cached_owner_ = owner;
}

void Provenance::clear() {
  activations_.assign(1, Activation{0, none});
  interned_.clear();
  threads_.clear();
  cached_serial_ = 0;
}

}  // namespace modtracker::libtorch::detail
