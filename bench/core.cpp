// Core: the engine alone, on the reference backend.
#include <algorithm>
#include <cstdint>

#include "bench.hpp"

import modtracker;
import modtracker.backend;
import modtracker.reference;

namespace bench {

double core_ns(bool noop_hooks) {
  namespace s = modtracker::reference;
  s::Backend b;
  b.set_grad_mode(false);
  auto m = b.module("Linear");
  constexpr int n = 100000;
  modtracker::Tracker<s::Backend> t(b, modtracker::TrackerOptions{.journal_capacity = 2 * n});
  if (noop_hooks)
    t.register_user_hooks([](s::Module&, const s::Values&) {}, [](s::Module&, const s::Values&, const s::Values*) {},
                          [](s::Module*, const s::Values&) {}, [](s::Module*, const s::Values&) {});
  auto scope = t.track();
  const s::Values in{b.value(false)};
  const s::Values out{b.value(false)};
  double best = 1e300;
  for (int r = 0; r < 7; ++r) {
    const auto us = best_us(1, [&] {
      for (int i = 0; i < n; ++i) {
        modtracker::ForwardDispatcher::Call call(b.dispatcher(), modtracker::ModuleRef{m.get()},
                                                 modtracker::ValuesRef{&in});
        call.finish(modtracker::ValuesRef{&out});
      }
    });
    best = std::min(best, us);
    for ([[maybe_unused]] const auto& tr : t.drain_transitions()) {
    }
  }
  return best * 1000.0 / n;
}

}  // namespace bench
