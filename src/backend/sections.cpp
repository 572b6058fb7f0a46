// The read/write section protocol (sections.hpp): readers mark their own
// thread's slot, the rare writer makes every slot visible with membarrier(2)
// and waits for the readers to leave.
#include "backend/sections.hpp"

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <utility>
#if defined(__linux__)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace modtracker::detail {

struct alignas(64) ReaderSlot {
  std::atomic<std::uint32_t> depth{0};  // read sections running on the owning thread
  std::atomic<bool> owned{false};
  ReaderSlot* next = nullptr;  // registry list; slots are reused, never freed
};

namespace {

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

}  // namespace

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

}  // namespace modtracker::detail
