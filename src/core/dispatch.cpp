// Registration and ForwardDispatcher: the parts every backend shares.
module;
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#if defined(__linux__)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
module modtracker;

namespace modtracker {

void Registration::remove() {
  if (!active()) throw std::logic_error("modtracker: registration removed twice (or never registered)");
  // Spent only once the removal succeeded: a remover that throws (a scope
  // ending inside its own hook) leaves the registration in place, and active.
  if (remove_) {
    if (const auto target = target_.lock()) remove_(target.get());
    remove_ = nullptr;
    target_.reset();
    return;
  }
  generic_();
  generic_ = {};
}

void Registration::reset() noexcept {
  if (!active()) return;
  try {
    remove();
  } catch (...) {  // a destructor must not throw; the remover's state is gone anyway
  }
}

namespace detail {
struct alignas(64) ReaderSlot {
  std::atomic<std::uint32_t> depth{0};  // read sections running on the owning thread
  std::atomic<bool> owned{false};
  ReaderSlot* next = nullptr;  // registry list; slots are reused, never freed
};

}  // namespace detail

namespace {

using detail::ReaderSlot;
using detail::ReadSection;
using detail::WriteSection;

// --- Read and write sections --------------------------------------------------
// Every module call reads the observer registry twice (pre and post hooks),
// and every gradient callback reads its tracker's epoch; both change only
// when a tracking scope starts or ends. So a reader (ReadSection) only marks
// its own thread's slot, and the rare writer (WriteSection) does the
// expensive part: it raises a flag, makes every thread's slot visible with
// membarrier(2) (one IPI round, about a microsecond), and waits until no
// other thread is inside a read section. Where membarrier is missing (or
// under ThreadSanitizer, which cannot see it) readers publish their slot with
// a sequentially consistent store instead: the same protocol, one atomic
// exchange per read.
//
// A thread already inside a read section enters again without looking at
// the flag (a hook may call tracked modules): the writer waits for it anyway.
// The writer skips its own thread's slot, so a scope may start inside a hook,
// and a writer outside any read section steps back for such a nested one.

std::mutex registry_mutex;  // guards the slot list; held by writers throughout
ReaderSlot* slots_head = nullptr;
alignas(64) std::atomic<bool> writer_waiting{false};
std::atomic<std::uint32_t> nested_writers{0};  // writers inside a read section, waiting for the mutex

#if defined(__SANITIZE_THREAD__)
#define MODTRACKER_NO_MEMBARRIER 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MODTRACKER_NO_MEMBARRIER 1
#endif
#endif

// membarrier(2), registered for this process: true when readers may publish
// with a plain store. Decided once, on first use by any thread (a magic
// static), so readers and writers never disagree about the mode.
bool register_membarrier() noexcept {
#if defined(MODTRACKER_NO_MEMBARRIER) || !defined(__linux__)
  return false;
#else
  const long supported = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  if (supported < 0 || !(supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED)) return false;
  return syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
#endif
}
bool plain_readers() noexcept {
  static const bool value = register_membarrier();
  return value;
}

// Makes every thread's earlier stores visible to this one, and this thread's
// earlier stores visible to every thread (a full fence on each CPU running a
// thread of this process).
void heavy_fence() noexcept {
#if !defined(MODTRACKER_NO_MEMBARRIER) && defined(__linux__)
  if (plain_readers()) {
    syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
    return;
  }
#endif
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

[[gnu::tls_model("initial-exec")]] thread_local ReaderSlot* my_slot = nullptr;
[[gnu::tls_model("initial-exec")]] thread_local bool thread_exiting = false;
[[gnu::tls_model("initial-exec")]] thread_local std::uint32_t call_depth_on_thread = 0;

// This thread's slot, taken from the registry on first use and handed back
// when the thread exits.
[[gnu::noinline]] ReaderSlot& claim_slot() {
  ReaderSlot* slot = nullptr;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    for (auto* s = slots_head; s && !slot; s = s->next)
      if (!s->owned.load(std::memory_order_relaxed)) slot = s;
    if (!slot) {
      slot = new ReaderSlot;  // kept for the process: a writer may be reading the list
      slot->next = slots_head;
      slots_head = slot;
    }
    slot->owned.store(true, std::memory_order_relaxed);
  }
  my_slot = slot;
  if (!thread_exiting) {  // a call from a later thread_local destructor keeps its slot
    struct Release {
      ~Release() {
        thread_exiting = true;
        if (auto* s = std::exchange(my_slot, nullptr)) {
          std::lock_guard<std::mutex> lock(registry_mutex);
          s->owned.store(false, std::memory_order_relaxed);
        }
      }
    };
    static thread_local Release release;
    (void)release;
  }
  return *slot;
}

// Forward observer calls running on this thread: a scope cannot end inside
// one (the observer may be running further up this thread's stack).
[[gnu::tls_model("initial-exec")]] thread_local std::uint32_t observer_calls_on_thread = 0;

struct InObserver {
  ReadSection section;
  InObserver() { ++observer_calls_on_thread; }
  ~InObserver() { --observer_calls_on_thread; }
  InObserver(const InObserver&) = delete;
  InObserver& operator=(const InObserver&) = delete;
};

}  // namespace

namespace detail {

ReadSection::ReadSection() : slot_(my_slot ? *my_slot : claim_slot()) {
  const auto depth = slot_.depth.load(std::memory_order_relaxed);
  if (depth > 0) {  // nested: a writer already waits for this thread
    slot_.depth.store(depth + 1, std::memory_order_relaxed);
    return;
  }
  for (;;) {
    if (plain_readers()) {
      slot_.depth.store(1, std::memory_order_relaxed);
      std::atomic_signal_fence(std::memory_order_seq_cst);  // the writer's membarrier orders the CPU
    } else {
      slot_.depth.store(1, std::memory_order_seq_cst);
    }
    if (!writer_waiting.load(std::memory_order_seq_cst)) return;
    slot_.depth.store(0, std::memory_order_release);
    while (writer_waiting.load(std::memory_order_relaxed)) std::this_thread::yield();
  }
}

ReadSection::~ReadSection() {
  slot_.depth.store(slot_.depth.load(std::memory_order_relaxed) - 1, std::memory_order_release);
}

WriteSection::WriteSection() {
  // A writer inside a read section (a scope started from a hook) cannot wait
  // for the others to leave theirs while one of them waits for it: it says
  // so, and a writer from outside any read section steps back for it.
  const bool nested = my_slot && my_slot->depth.load(std::memory_order_relaxed) > 0;
  if (nested) nested_writers.fetch_add(1, std::memory_order_seq_cst);
  for (;;) {
    registry_mutex.lock();
    if (nested) nested_writers.fetch_sub(1, std::memory_order_seq_cst);
    writer_waiting.store(true, std::memory_order_seq_cst);
    heavy_fence();
    bool stepped_back = false;
    for (auto* s = slots_head; s && !stepped_back; s = s->next) {
      if (s == my_slot) continue;
      while (s->depth.load(std::memory_order_acquire) != 0) {
        if (!nested && nested_writers.load(std::memory_order_seq_cst) > 0) {
          stepped_back = true;
          break;
        }
        std::this_thread::yield();
      }
    }
    if (!stepped_back) return;
    writer_waiting.store(false, std::memory_order_release);
    registry_mutex.unlock();
    while (nested_writers.load(std::memory_order_seq_cst) > 0) std::this_thread::yield();
  }
}

WriteSection::~WriteSection() {
  writer_waiting.store(false, std::memory_order_release);
  registry_mutex.unlock();
}

}  // namespace detail

ForwardDispatcher::~ForwardDispatcher() = default;

Registration ForwardDispatcher::add(ForwardObserver& observer) {
  WriteSection lock;  // from inside a hook too: the writer does not wait for its own thread
  if (used_ == max_observers)
    throw std::length_error("modtracker: at most " + std::to_string(max_observers) +
                            " trackers can observe one backend at once");
  const auto generation = next_generation_++;
  slots_[used_++] = Slot{&observer, generation};
  count_.store(used_, std::memory_order_release);
  return Registration([this, generation] { remove(generation); });
}

void ForwardDispatcher::remove(std::uint64_t generation) {
  if (observer_calls_on_thread > 0)  // the observer may be running further up this thread's stack
    throw std::logic_error("modtracker: a tracking scope cannot end inside one of its own hooks");
  WriteSection lock;  // waits for observer calls on other threads
  for (std::uint32_t i = 0; i < used_; ++i) {
    if (slots_[i].generation != generation) continue;
    for (std::uint32_t j = i + 1; j < used_; ++j) slots_[j - 1] = slots_[j];
    slots_[--used_] = Slot{};
    count_.store(used_, std::memory_order_release);
    return;
  }
}

void ForwardDispatcher::children_changed(ModuleRef module) {
  InObserver guard;
  for (std::uint32_t i = 0; i < used_; ++i) slots_[i].observer->children_changed(module);
}

bool ForwardDispatcher::installed(std::uint64_t generation) const noexcept {
  for (std::uint32_t i = 0; i < used_; ++i)
    if (slots_[i].generation == generation) return true;
  return false;
}

ForwardDispatcher::Call::Call(ForwardDispatcher& dispatcher, ModuleRef module, Payload inputs, ModuleOwner owner,
                              ModuleRef next)
    : dispatcher_(&dispatcher), call_{module, inputs, call_depth_on_thread, false, owner, next} {
  start();
}

ForwardDispatcher::Call::Call(Call& previous, Payload output, ModuleRef module, Payload inputs, ModuleOwner owner,
                              ModuleRef next)
    : dispatcher_(previous.dispatcher_), call_{module, inputs, 0, false, owner, next} {
  if (previous.finished_) throw std::logic_error("modtracker: forward call finished twice");
  {
    InObserver guard;
    const auto& d = *dispatcher_;
    // One observer, the one that saw `previous` (the common case): it does
    // both steps. Several: each finishes, then each starts, in their orders.
    if (module && previous.n_seen_ == 1 && d.used_ == 1 && d.slots_[0].generation == previous.seen_[0].generation) {
      previous.finished_ = true;
      call_.depth = --call_depth_on_thread;
      const Seen s = previous.seen_[0];
      previous.n_seen_ = 0;
      seen_[0] = Seen{s.observer, s.generation, s.observer->hand_over(previous.call_, output, s.token, call_)};
      n_seen_ = 1;
      ++call_depth_on_thread;
      return;
    }
  }
  previous.finish(output);
  call_.depth = call_depth_on_thread;
  start();
}

void ForwardDispatcher::Call::start() {
  if (!call_.module) throw std::invalid_argument("modtracker: forward call of a null module");
  auto& dispatcher = *dispatcher_;
  {
    InObserver guard;  // post() below nests in it (read sections are reentrant)
    try {
      for (std::uint32_t i = 0; i < dispatcher.used_; ++i) {
        const Slot slot = dispatcher.slots_[i];
        const auto token = slot.observer->pre_forward(call_);
        seen_[n_seen_++] = Seen{slot.observer, slot.generation, token};
      }
    } catch (...) {
      post(Payload{}, true);  // the observers that did enter see a failed forward
      finished_ = true;
      throw;
    }
  }
  ++call_depth_on_thread;
}

ForwardDispatcher::Call::~Call() {
  if (finished_) return;
  --call_depth_on_thread;
  try {
    post(Payload{}, true);
  } catch (...) {  // the forward's own exception is the one in flight
  }
}

void ForwardDispatcher::Call::finish(Payload output) {
  if (finished_) throw std::logic_error("modtracker: forward call finished twice");
  finished_ = true;
  --call_depth_on_thread;
  post(output, false);
}

void ForwardDispatcher::Call::post(Payload output, bool forward_threw) {
  std::exception_ptr first_error;
  InObserver guard;
  for (auto i = n_seen_; i-- > 0;) {
    const Seen& s = seen_[i];
    if (!dispatcher_->installed(s.generation)) continue;  // its scope ended meanwhile
    try {
      s.observer->post_forward(call_, forward_threw ? Payload{} : output, s.token);
    } catch (...) {
      if (!first_error) first_error = std::current_exception();
    }
  }
  n_seen_ = 0;
  if (first_error && !forward_threw) std::rethrow_exception(first_error);
}

}  // namespace modtracker
