// Calls unwound by an exception in scripted code, which skips the exit
// operators after a raise: while a scope is active and a model was
// instrumented, a RecordFunction callback on TorchScript function frames
// ends, as a frame unwinds, the calls opened inside it. The LibTorch
// backend's scope observer installs it and ends what a thread left open.
#include <torch/torch.h>
#include <torch/script.h>
#include <ATen/record_function.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <utility>

#include "libtorch/jit/jit.hpp"
#include "modtracker/libtorch/backend.hpp"

import modtracker.libtorch;

namespace modtracker::libtorch::jit {

namespace {
// The unwinding watch: a TorchScript function frame notes how many calls were
// open when it started; when it ends (returning, or destroyed by the
// exception unwinding it) the calls opened inside it and still open exit.
struct Depth final : at::ObserverContext {
  std::size_t open;
  explicit Depth(std::size_t n) : open(n) {}
};
std::unique_ptr<at::ObserverContext> frame_starts(const at::RecordFunction&) {
  return std::make_unique<Depth>(detail::open_calls());
}
void frame_ends(const at::RecordFunction&, at::ObserverContext* ctx) {
  detail::close_calls(static_cast<Depth*>(ctx)->open);
}

struct Watch {
  std::mutex mutex;
  int scopes = 0;
  bool wanted = false;  // a model was instrumented
  at::CallbackHandle handle = 0;
  void update() {  // mutex held
    const bool on = wanted && scopes > 0;
    if (on && handle == 0)
      handle = at::addGlobalCallback(at::RecordFunctionCallback(&frame_starts, &frame_ends)
                                         .needsInputs(false)
                                         .scopes({at::RecordScope::TORCHSCRIPT_FUNCTION}));
    else if (!on && handle != 0)
      at::removeCallback(std::exchange(handle, 0));
  }
};
Watch& watch() {
  static auto* w = new Watch;  // never freed: scopes may end during static destruction
  return *w;
}

// The LibTorch backend's scopes, for the TorchScript calls.
struct Scopes final : ScopeObserver {
  void scope_starting() override {
    auto& w = watch();
    std::lock_guard<std::mutex> lock(w.mutex);
    ++w.scopes;
    w.update();
  }
  void scope_ending() noexcept override {
    {
      auto& w = watch();
      std::lock_guard<std::mutex> lock(w.mutex);
      --w.scopes;
      try {
        w.update();
      } catch (...) {  // the callback stays: it costs time, not correctness
      }
    }
    if (!detail::in_operator()) detail::close_calls(0);
  }
};
}  // namespace

void detail::observe_scopes(bool instrumented) {
  static const bool added = [] {
    static Scopes scopes;
    backend().add_scope_observer(scopes);
    return true;
  }();
  (void)added;
  if (!instrumented) return;
  auto& w = watch();
  std::lock_guard<std::mutex> lock(w.mutex);
  if (w.wanted) return;
  w.wanted = true;
  w.update();
}

}  // namespace modtracker::libtorch::jit
