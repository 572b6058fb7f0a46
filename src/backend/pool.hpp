// Free lists for the small objects made per tracked module call (activations,
// gradient hooks, per-node dispatchers). glibc's per-thread cache keeps only
// seven blocks of a size, so a forward through hundreds of modules otherwise
// reaches malloc's slow path for nearly every one of them, and again when the
// graph is freed. Each thread keeps its own list (no atomics); a block may be
// freed on another thread than the one that made it (backward threads), and
// a list holds at most `cap` blocks, so memory stays bounded. Under ASan or
// TSan the lists are off: every block goes to operator new/delete, where the
// sanitizers can see it. Private to the library.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MODTRACKER_POOL 0
#endif
#endif
#ifndef MODTRACKER_POOL
#define MODTRACKER_POOL 1
#endif

namespace modtracker::detail {

/// Blocks of `Size` bytes, each starting a cache line: an object of up to
/// 64 bytes is one line, and a larger one touches no line more than it needs.
template <std::size_t Size>
class BlockPool {
 public:
  static constexpr std::uint32_t cap = 1u << 14;
  static constexpr std::size_t line = 64;
  static constexpr std::size_t block = (Size + line - 1) / line * line;

  static void* allocate() {
#if MODTRACKER_POOL
    auto& l = list_;
    if (l.head) {
      Block* b = l.head;
      l.head = b->next;
      --l.count;
      if (l.head) __builtin_prefetch(l.head, 1);  // the next block: in cache when it is asked for
      return b;
    }
#endif
    return ::operator new(block, std::align_val_t{line});
  }

  static void deallocate(void* p) noexcept {
#if MODTRACKER_POOL
    auto& l = list_;
    if (l.count < cap && !l.reaped) {
      if (!l.reaper_armed) arm_reaper();
      auto* b = static_cast<Block*>(p);
      b->next = l.head;
      l.head = b;
      ++l.count;
      return;
    }
#endif
    ::operator delete(p, std::align_val_t{line});
  }

 private:
  static_assert(Size >= sizeof(void*));
  struct Block {
    Block* next;
  };
  // Trivial, so reading it costs no init guard on the hot path.
  struct List {
    Block* head;
    std::uint32_t count;
    bool reaper_armed;
    bool reaped;
  };
  // Frees the thread's blocks when the thread ends.
  struct Reaper {
    ~Reaper() {
      auto& l = list_;
      l.reaped = true;  // frees after this one go straight to operator delete
      while (Block* b = l.head) {
        l.head = b->next;
        ::operator delete(b, std::align_val_t{line});
      }
      l.count = 0;
    }
  };
  [[gnu::noinline]] static void arm_reaper() noexcept {
    static thread_local Reaper reaper;
    (void)&reaper;
    list_.reaper_armed = true;
  }
  [[gnu::tls_model("initial-exec")]] static inline thread_local List list_{};
};

/// An allocator for std::allocate_shared that takes single objects from a BlockPool.
template <class T>
struct PoolAllocator {
  using value_type = T;
  PoolAllocator() = default;
  template <class U>
  PoolAllocator(const PoolAllocator<U>&) noexcept {}  // NOLINT(google-explicit-constructor): rebinding
  T* allocate(std::size_t n) {
    static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__);
    if (n != 1) return std::allocator<T>{}.allocate(n);
    return static_cast<T*>(BlockPool<sizeof(T)>::allocate());
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (n != 1) return std::allocator<T>{}.deallocate(p, n);
    BlockPool<sizeof(T)>::deallocate(p);
  }
  template <class U>
  friend bool operator==(const PoolAllocator&, const PoolAllocator<U>&) noexcept {
    return true;
  }
};

}  // namespace modtracker::detail
