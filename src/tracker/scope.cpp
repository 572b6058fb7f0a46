// Tracking scopes: a scope's start installs the engine as a forward observer
// under a fresh epoch; its end removes it, closes the epoch (gradient
// callbacks left on graphs turn inert) and forgets the calls still running.
module;
#include "tracker/includes.hpp"
module modtracker;
import modtracker.backend;
import :engine;

namespace modtracker::detail {

namespace {
std::mutex epochs_mutex;
Epoch* free_epochs = nullptr;  // ended epochs, for the next scopes
}  // namespace

Epoch& open_epoch(Engine& engine) {
  Epoch* e = nullptr;
  {
    std::lock_guard<std::mutex> lock(epochs_mutex);
    if ((e = free_epochs)) free_epochs = e->next_free;
  }
  if (!e) e = new Epoch;  // lives for the rest of the process (see Epoch)
  e->engine.store(&engine, std::memory_order_seq_cst);
  return *e;
}

void close_epoch(Epoch& epoch) {
  epoch.engine.store(nullptr, std::memory_order_seq_cst);
  epoch.generation.fetch_add(1, std::memory_order_seq_cst);
  {
    WriteSection wait;
  }
  std::lock_guard<std::mutex> lock(epochs_mutex);
  epoch.next_free = free_epochs;
  free_epochs = &epoch;
}

void Engine::start() {
  if (epoch_) throw std::logic_error("modtracker: this tracker is tracking already (one scope at a time)");
  auto& epoch = open_epoch(*this);
  epoch_ = &epoch;  // before the observer: other threads' calls read it at once
  epoch_generation_ = epoch.generation.load(std::memory_order_relaxed);
  try {
    observer_ = backend_.dispatcher().add(*this);
  } catch (...) {
    epoch_ = nullptr;
    close_epoch(epoch);
    throw;
  }
}

void Engine::stop() {
  if (!epoch_) throw std::logic_error("modtracker: this tracker is not tracking");
  observer_.remove();  // throws inside one of its own forward hooks: the scope stays
  close_epoch(*std::exchange(epoch_, nullptr));  // waits for gradient callbacks running now
  // Calls still running will never report their end to this scope: forget
  // them, and every count but Global's.
  std::vector<ActivationRef> abandoned;  // freed after the lock
  std::lock_guard<SpinLock> lock(state_);
  passes_.clear();
  counts_.reset();
  while (running_) {
    Activation* a = running_;
    unlink_running(*a);
    abandoned.push_back(ActivationRef::adopt(a));
  }
}

}  // namespace modtracker::detail
