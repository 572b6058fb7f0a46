// Backward provenance (docs/semantics.md, "Backward attribution"): which
// module activation made each autograd node, so that a tool charges the
// node's work to that module instead of to every module whose backward span
// is open.
//
// LibTorch numbers the nodes one thread's forward makes in order
// (at::sequence_number, thread local) and reports each node's execution to
// RecordFunction callbacks of scope BACKWARD_FUNCTION with that number and the
// forward thread's id. A forward enter or exit notes the thread's counter:
// from that number on, nodes belong to the activation innermost on that
// thread. So a node's owner is found by a binary search among its forward
// thread's boundaries.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

import modtracker.libtorch;  // modtracker and modtracker.backend

namespace modtracker::libtorch::detail {

/// The autograd node running on this thread (innermost), as LibTorch reported
/// it, or between two nodes of a pass the one that ended last (the engine's
/// work on its outputs); null outside backward. Valid while a NodeWatch lives.
struct RunningNode {
  std::uint64_t forward_thread;
  std::int64_t sequence;   // -1: AccumulateGrad (a leaf's gradient), which belongs to no activation
  std::uint64_t serial;    // one per execution in the process: tells two runs of one node apart
};
[[nodiscard]] const RunningNode* running_node() noexcept;

/// Told of each node execution's end, on the thread that ran it, with the
/// time the node ran less the nodes run inside it (reentrant backward), and
/// when it started and ended.
class NodeListener {
 public:
  virtual void on_node(const RunningNode& node, std::chrono::nanoseconds own_time,
                       std::chrono::steady_clock::time_point start, std::chrono::steady_clock::time_point end) = 0;

 protected:
  ~NodeListener() = default;
};
/// Nodes are timed only while a listener is added (two clock reads a node).
void add_node_listener(NodeListener& listener);
void remove_node_listener(NodeListener& listener);

/// Keeps the process's one BACKWARD_FUNCTION callback installed while any lives.
class NodeWatch {
 public:
  NodeWatch();
  NodeWatch(const NodeWatch&) = delete;
  NodeWatch& operator=(const NodeWatch&) = delete;
  ~NodeWatch();
};

/// One tracker's forward activations and the node numbers they made. Not
/// thread-safe: its tool calls it under the tool's own lock.
class Provenance {
 public:
  static constexpr std::uint32_t none = 0;  ///< no activation: the work is Global's alone

  /// A module under a chain of parents. Calls with the same chain share
  /// one (attribution needs the chain, not the call), so there are about as
  /// many as modules, however many steps run.
  struct Activation {
    std::uint32_t module;  ///< the tool's index of the fqn
    std::uint32_t parent;  ///< the activation around it on its thread (none at a root)
  };

  /// A forward transition of module index `module`, on the calling thread.
  void forward(Kind kind, std::uint32_t module);
  /// Who owns the work of this thread now: the activation whose forward runs
  /// on it (outside backward, or recomputed inside a node), else the one
  /// whose forward made the node running; none for AccumulateGrad and for
  /// nodes made outside every module.
  [[nodiscard]] std::uint32_t owner_now();
  /// The activation innermost on this thread's forward stack (none if empty).
  [[nodiscard]] std::uint32_t innermost() const;
  /// The activation whose forward made `node` (none: Global's).
  [[nodiscard]] std::uint32_t owner_of(const RunningNode& node) { return lookup(node.forward_thread, node.sequence); }
  [[nodiscard]] const Activation& activation(std::uint32_t a) const { return activations_[a]; }
  /// The modules of `a` and its ancestors, innermost first, each once.
  template <class F>
  void for_each_module(std::uint32_t a, F&& f) const {
    std::uint32_t seen[64];
    std::size_t n = 0;
    for (; a != none; a = activations_[a].parent) {
      const auto m = activations_[a].module;
      bool again = false;
      for (std::size_t i = 0; i < n; ++i) again |= seen[i] == m;
      if (again) continue;
      if (n < 64) seen[n++] = m;
      f(m);
    }
  }
  /// Forgets everything (a scope ended: its graphs' nodes are not followed).
  void clear();
  /// Nodes looked up that were made before the oldest boundary kept (each
  /// thread keeps the latest 2^18, two per module call): charged to Global.
  [[nodiscard]] std::uint64_t unresolved() const noexcept { return unresolved_; }

 private:
  struct Boundary {
    std::uint64_t sequence;  // from this node number on...
    std::uint32_t owner;     // ...nodes belong to this activation
  };
  struct Thread {
    std::vector<Boundary> boundaries;  // sequence numbers never decrease
    std::vector<std::uint32_t> stack;  // the activations open on this thread
    bool pruned = false;               // older boundaries were dropped
  };
  void mark(Thread& t, std::uint64_t sequence, std::uint32_t owner);
  [[nodiscard]] std::uint32_t lookup(std::uint64_t forward_thread, std::int64_t sequence);

  std::vector<Activation> activations_{Activation{0, none}};
  std::unordered_map<std::uint64_t, std::uint32_t> interned_;  // (module << 32 | parent) -> activation
  std::unordered_map<std::uint64_t, Thread> threads_;
  std::uint64_t unresolved_ = 0;
  // The last answer of owner_now(), for a node execution (serial 0: none)
  // and the forward transitions seen so far.
  std::uint64_t forward_events_ = 0, cached_serial_ = 0, cached_events_ = 0;
  std::uint32_t cached_owner_ = none;
};

}  // namespace modtracker::libtorch::detail
