// The journal's reading side: drain_transitions() and the overflow report.
module;
#include "tracker/includes.hpp"
module modtracker;
import modtracker.backend;
import :engine;

namespace modtracker::detail {

Journal::Journal(std::size_t capacity) : capacity_(capacity) {
  if (capacity == 0) throw std::invalid_argument("modtracker: journal_capacity must be at least 1");
  ring_.resize(std::bit_ceil(capacity));
  mask_ = ring_.size() - 1;
}

Generator<Transition> Engine::drain() {
  for (;;) {
    JournalEntry entry;
    std::uint64_t sequence = 0;
    std::string_view fqn, method;  // read under the lock: the names may grow meanwhile
    std::uint64_t newly_dropped = 0;
    {
      std::lock_guard<SpinLock> lock(state_);
      newly_dropped = journal_.take_unreported_drops();
      if (newly_dropped == 0) {
        if (!journal_.pop(entry, sequence)) break;
        fqn = names_.fqn(entry.fqn);
        method = methods_[entry.method];
      }
    }
    if (newly_dropped != 0) {  // said before the survivors are yielded
      diagnose({Diagnostic::Code::journal_overflow, "",
                std::to_string(newly_dropped) + " transitions dropped: the journal holds " +
                    std::to_string(journal_.capacity()) +
                    "; read drain_transitions() more often or raise journal_capacity"});
      continue;
    }
    co_yield Transition{entry.phase, entry.kind, fqn, entry.depth, sequence, since_start(entry.ticks), entry.thread, method};
  }
}

void Engine::notify_listeners(Phase phase, Kind kind, std::uint32_t fqn, std::uint32_t depth, std::uint16_t method,
                              StepClock& clock) {
  const Transition t{phase,          kind, names_.fqn(fqn), depth, journal_.recorded() - 1, since_start(clock.read()),
                     thread_index(), methods_[method]};
  for (auto* l : listeners_) l->on_transition(t);
}

std::uint16_t Engine::method_id(std::string_view method) {
  if (method.empty()) return 0;
  for (std::size_t i = 0; i < methods_.size(); ++i)
    if (methods_[i] == method) return static_cast<std::uint16_t>(i);
  // Past 65,535 names (never in a real model) the rest read as the last.
  if (methods_.size() > std::numeric_limits<std::uint16_t>::max()) return std::numeric_limits<std::uint16_t>::max();
  methods_.emplace_back(method);
  return static_cast<std::uint16_t>(methods_.size() - 1);
}

void Engine::notify_scope(bool started) {
  std::lock_guard<SpinLock> lock(state_);
  for (auto* l : listeners_) l->on_scope(started);
}

Registration Engine::add_listener(TransitionListener& listener) {
  {
    std::lock_guard<SpinLock> lock(state_);
    listeners_.push_back(&listener);
    if (tracking()) listener.on_scope(true);
  }
  return Registration([self = std::weak_ptr<Engine*>(self_), l = &listener] {
    if (const auto engine = self.lock()) {
      std::lock_guard<SpinLock> lock((*engine)->state_);
      std::erase((*engine)->listeners_, l);
    }
  });
}

std::uint64_t Engine::dropped() const {
  std::lock_guard<SpinLock> lock(state_);
  return journal_.dropped();
}

}  // namespace modtracker::detail
