// TrackerBase: the user surface, handed to the engine.
module;
#include "tracker/includes.hpp"
module modtracker;
import modtracker.backend;
import :engine;

namespace modtracker {

TrackerBase::TrackerBase(HookBackend& backend, TrackerOptions options, DiagnosticRemedy remedy)
    : engine_(std::make_unique<detail::Engine>(backend, options, remedy)) {}
TrackerBase::~TrackerBase() = default;
void TrackerBase::name_root(ModuleRef module, std::string name) { engine_->name_root(module, std::move(name)); }

TrackerBase::Scope::Scope(TrackerBase& tracker) : tracker_(&tracker) { tracker.engine_->start(); }
TrackerBase::Scope::~Scope() {
  if (tracker_) tracker_->engine_->stop();
}
void TrackerBase::Scope::end() {
  if (!tracker_) throw std::logic_error("modtracker: tracking scope ended twice");
  tracker_->engine_->stop();
  tracker_ = nullptr;
}

bool TrackerBase::tracking() const noexcept { return engine_->tracking(); }
Parents TrackerBase::parents() const { return engine_->parents(); }
bool TrackerBase::is_bw() const { return engine_->is_bw(); }
std::optional<std::string> TrackerBase::known_fqn(ModuleRef module) const { return engine_->known_fqn(module); }
Generator<std::pair<std::string, ModuleRef>> TrackerBase::walk(ModuleRef root) const { return engine_->walk(root); }
void TrackerBase::set_hooks(detail::ErasedHooks hooks, const std::array<bool, 4>& given) {
  engine_->set_hooks(std::move(hooks), given);
}
void TrackerBase::clear_user_hooks() { engine_->clear_hooks(); }
void TrackerBase::set_filter(detail::ErasedFilter filter) { engine_->set_filter(std::move(filter)); }
void TrackerBase::clear_filter() { engine_->set_filter({}); }
void TrackerBase::set_diagnostics(DiagnosticSink sink) { engine_->set_sink(std::move(sink)); }
Generator<Transition> TrackerBase::drain_transitions() { return engine_->drain(); }
Registration TrackerBase::add_listener(TransitionListener& listener) { return engine_->add_listener(listener); }
std::uint64_t TrackerBase::dropped_transitions() const { return engine_->dropped(); }
std::chrono::nanoseconds TrackerBase::now() const { return engine_->since_start(detail::ticks()); }

namespace detail {

Engine::Engine(HookBackend& backend, TrackerOptions options, DiagnosticRemedy remedy)
    : backend_(backend), names_(backend, pending_), journal_(options.journal_capacity), tick0_(ticks()),
      remedy_(remedy) {
  set_sink({});
  (void)ns_per_tick();  // calibrate now, not on the first read
}

Engine::~Engine() {
  self_.reset();  // listeners' handles remove nothing from here on
  if (!epoch_) return;
  try {
    stop();
  } catch (...) {  // a destructor must not throw
  }
}

}  // namespace detail
}  // namespace modtracker
