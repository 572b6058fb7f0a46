// Epochs: the lifetime link between gradient callbacks and a tracking scope.
module;
#include "tracker/includes.hpp"
module modtracker:epoch;

namespace modtracker::detail {

class Engine;

/// A gradient callback may outlive its scope and its tracker (a graph kept
/// after the scope), so epochs are never freed: a scope's end bumps
/// `generation` and clears `engine`, and a later scope reuses the epoch. A
/// callback acts only if the generation it was made in is still current. No
/// reference count per activation.
struct Epoch {
  std::atomic<std::uint64_t> generation{1};
  std::atomic<Engine*> engine{nullptr};
  Epoch* next_free = nullptr;  // guarded by the free list's mutex
};

/// An epoch for a scope of `engine` starting now.
Epoch& open_epoch(Engine& engine);
/// Ends the epoch's scope: no callback starts using its engine after this
/// returns, and those running on other threads have finished (one on this
/// thread, a scope ending inside its own callback, does not wait for
/// itself). Then the epoch is free for another scope.
void close_epoch(Epoch& epoch);

/// Runs `f(engine)` if the epoch's scope (`generation`) is still open,
/// inside a ReadSection: the scope's end waits for it.
template <class F>
void with_epoch(Epoch& epoch, std::uint64_t generation, F&& f) {
  ReadSection section;
  if (epoch.generation.load(std::memory_order_seq_cst) != generation) return;
  if (auto* engine = epoch.engine.load(std::memory_order_seq_cst)) f(*engine);
}

}  // namespace modtracker::detail
