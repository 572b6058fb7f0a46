// Pass identity: a graph task's exec-info address names its pass while it
// runs; the pass is closed when the engine runs its end callbacks or, for a
// backward that threw (LibTorch runs none then), when the graph task frees
// them, so a later graph task at the same address is a new pass.
#include <torch/torch.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/graph_task.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "backend/spin_lock.hpp"
#include "libtorch/passes.hpp"

namespace modtracker::libtorch::detail {

namespace {

using modtracker::detail::SpinLock;

SpinLock passes_lock;                                   // guards the two below
std::unordered_map<const void*, std::uint64_t> passes;  // exec-info address -> pass id
std::uint64_t pass_counter = 0;
std::atomic<std::uint64_t> passes_closed{0};  // invalidates the per-thread caches below

// This thread's last answer to "which pass is this exec info", valid while no
// pass has closed since: most gradient callbacks then skip the lock.
struct PassCache {
  const void* info = nullptr;
  std::uint64_t id = 0;
  std::uint64_t closed = 0;
};
[[gnu::tls_model("initial-exec")]] thread_local PassCache pass_cache;
[[gnu::tls_model("initial-exec")]] thread_local std::uint64_t firing = 0;

struct PassCloser {
  const void* info;
  std::uint64_t id;
  std::atomic<bool> done{false};
  PassCloser(const void* i, std::uint64_t n) : info(i), id(n) {}
  PassCloser(const PassCloser&) = delete;
  PassCloser& operator=(const PassCloser&) = delete;
  void close() noexcept {
    if (done.exchange(true)) return;
    std::lock_guard<SpinLock> lock(passes_lock);
    if (const auto it = passes.find(info); it != passes.end() && it->second == id) passes.erase(it);
    passes_closed.fetch_add(1, std::memory_order_release);
  }
  ~PassCloser() { close(); }
};

}  // namespace

std::uint64_t current_pass() {
  const auto* info = torch::autograd::get_current_graph_task_exec_info();
  if (!info) return 0;
  const auto closed = passes_closed.load(std::memory_order_acquire);
  if (pass_cache.info == info && pass_cache.closed == closed) return pass_cache.id;
  std::uint64_t id = 0;
  bool opened = false;
  {
    std::lock_guard<SpinLock> lock(passes_lock);
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

std::uint64_t firing_pass() noexcept { return firing; }

std::uint64_t set_firing_pass(std::uint64_t pass) noexcept { return std::exchange(firing, pass); }

}  // namespace modtracker::libtorch::detail
