// Read and write sections: the lifetime protocol between the hot paths
// (observer calls, gradient callbacks) and the rare scope start or end that
// changes or frees what they read. Private to the library.
#pragma once
#include <cstdint>

namespace modtracker::detail {

struct ReaderSlot;

/// A stretch in which this thread uses tracker state that a scope's start or
/// end changes or frees: a WriteSection on another thread waits until it
/// ends. Costs a few plain instructions; reentrant. See sections.cpp.
class ReadSection {
 public:
  ReadSection();
  ~ReadSection();
  ReadSection(const ReadSection&) = delete;
  ReadSection& operator=(const ReadSection&) = delete;

 private:
  ReaderSlot& slot_;
};

/// Exclusive: waits until no other thread is inside a ReadSection, and keeps
/// new ones out until it ends. Rare and slow (a membarrier, microseconds).
/// A writer does not wait for its own thread's read sections.
class WriteSection {
 public:
  WriteSection();
  ~WriteSection();
  WriteSection(const WriteSection&) = delete;
  WriteSection& operator=(const WriteSection&) = delete;
};

}  // namespace modtracker::detail
