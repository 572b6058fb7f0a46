// `parents` as counts: per interned fqn, its forward and backward
// activations running now; the fqns with any form the set.
module;
#include "tracker/includes.hpp"
module modtracker:parents;
import modtracker.backend;

namespace modtracker::detail {

/// The interned id of "Global", always in parents.
inline constexpr std::uint32_t global_id = 0;

/// Not thread-safe: the engine's state lock guards it.
class ParentCounts {
 public:
  ParentCounts() { add(global_id, Phase::forward); }

  void add(std::uint32_t fqn, Phase phase) {
    if (fqn >= counts_.size()) [[unlikely]] counts_.resize(fqn + 1);
    auto& c = counts_[fqn];
    if (c.forward + c.backward == 0) {
      c.active_pos = gsl::narrow_cast<std::uint32_t>(active_.size());  // at most one per interned id
      active_.push_back(fqn);
    }
    if (phase == Phase::forward) {
      ++c.forward;
    } else {
      ++c.backward;
      ++c.backward_entries;
    }
  }
  void sub(std::uint32_t fqn, Phase phase) noexcept {
    auto& c = counts_[fqn];
    auto& n = phase == Phase::forward ? c.forward : c.backward;
    Expects(n > 0);
    --n;
    if (c.forward + c.backward != 0) return;
    const auto moved = active_.back();
    active_[c.active_pos] = moved;
    counts_[moved].active_pos = c.active_pos;
    active_.pop_back();
  }
  [[nodiscard]] std::uint32_t count(std::uint32_t fqn, Phase phase) const noexcept {
    if (fqn >= counts_.size()) return 0;
    return phase == Phase::forward ? counts_[fqn].forward : counts_[fqn].backward;
  }
  /// Backward entries of `fqn` since the last reset_entries().
  [[nodiscard]] std::uint32_t backward_entries(std::uint32_t fqn) const noexcept {
    return fqn < counts_.size() ? counts_[fqn].backward_entries : 0;
  }
  void reset_entries() noexcept {
    for (auto& c : counts_) c.backward_entries = 0;
  }
  /// Any activation of `fqn` running, forward or backward?
  [[nodiscard]] bool active(std::uint32_t fqn) const noexcept {
    return count(fqn, Phase::forward) + count(fqn, Phase::backward) > 0;
  }
  /// Where the count of `fqn` lives (null if it has none yet), to prefetch it.
  [[nodiscard]] const void* slot(std::uint32_t fqn) const noexcept {
    return fqn < counts_.size() ? &counts_[fqn] : nullptr;
  }
  /// The fqn ids in parents, "Global" first.
  [[nodiscard]] const std::vector<std::uint32_t>& ids() const noexcept { return active_; }
  /// Back to {"Global"}: a scope ended, its running calls will never exit.
  void reset() {
    counts_.assign(counts_.size(), Count{});
    active_.clear();
    add(global_id, Phase::forward);
  }

 private:
  struct Count {
    std::uint32_t forward = 0;
    std::uint32_t backward = 0;
    std::uint32_t active_pos = 0;  // index in active_ while forward + backward > 0
    std::uint32_t backward_entries = 0;
  };
  std::vector<Count> counts_;
  std::vector<std::uint32_t> active_;
};

}  // namespace modtracker::detail
