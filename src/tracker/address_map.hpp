// AddressMap: module address -> value, for the lookup made on every module
// call. Private to the library.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "tracker/prefetch.hpp"

namespace modtracker::detail {

/// Open addressing in one flat array of (address, value) slots, so a lookup
/// is one probe that finds the value in the same cache line
/// (std::unordered_map costs two dependent cache misses per lookup once a
/// model has a thousand modules). Nothing is ever erased: a new module at a
/// freed module's address takes over its entry (assign). Growth moves the
/// values: a reference is valid until the next assign.
template <class V>
class AddressMap {
 public:
  [[nodiscard]] V* find(const void* key) noexcept {
    if (slots_.empty()) return nullptr;
    for (std::size_t i = home(key);; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.key == key) return &s.value;
      if (!s.key) return nullptr;
    }
  }
  [[nodiscard]] const V* find(const void* key) const noexcept { return const_cast<AddressMap*>(this)->find(key); }
  /// Sets the value of `key` (inserting it if absent); returns it.
  V& assign(const void* key, V value) {
    if (V* v = find(key)) return *v = std::move(value);
    if ((size_ + 1) * 2 > slots_.size()) grow();
    ++size_;
    return place(key, std::move(value));
  }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  /// Starts loading the home slot of `key` into the cache (a lookup soon).
  void prefetch(const void* key) const noexcept {
    if (slots_.empty()) return;
    const auto* first = reinterpret_cast<const char*>(&slots_[home(key)]);
    prefetch_line(first);
    prefetch_line(first + sizeof(Slot) - 1);  // a slot may straddle two lines
  }
  /// Calls f(key, value) for every entry.
  template <class F>
  void for_each(F&& f) {
    for (auto& s : slots_)
      if (s.key) f(s.key, s.value);
  }

 private:
  struct Slot {
    const void* key = nullptr;
    V value{};
  };
  [[nodiscard]] std::size_t home(const void* key) const noexcept {
    const auto h = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(key)) * 0x9E3779B97F4A7C15ull;
    return static_cast<std::size_t>(h >> shift_);
  }
  V& place(const void* key, V value) {
    std::size_t i = home(key);
    while (slots_[i].key) i = (i + 1) & mask_;
    slots_[i].key = key;
    slots_[i].value = std::move(value);
    return slots_[i].value;
  }
  void grow() {
    const std::size_t size = slots_.empty() ? 64 : slots_.size() * 2;
    std::vector<Slot> old(size);
    old.swap(slots_);
    mask_ = size - 1;
    shift_ = 64 - static_cast<unsigned>(std::countr_zero(size));
    for (auto& s : old)
      if (s.key) place(s.key, std::move(s.value));
  }
  std::vector<Slot> slots_;
  std::size_t mask_ = 0, size_ = 0;
  unsigned shift_ = 64;
};

}  // namespace modtracker::detail
