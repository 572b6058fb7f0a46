// The user's configuration of a tracker: the four user hooks, the module
// filter, and where diagnostics go.
module;
#include "tracker/includes.hpp"
module modtracker;
import modtracker.backend;
import :engine;

namespace modtracker::detail {

namespace {
// Once per code and fqn, to stderr.
// Once per code and module, and at most `shown` of one code: a thousand
// roots of one loop would otherwise bury the first message (a sink of the
// user's own gets every one).
void default_sink(const Diagnostic& d) {
  constexpr std::size_t shown = 8;
  static std::mutex mutex;
  static std::set<std::pair<Diagnostic::Code, std::string>> reported;
  static std::map<Diagnostic::Code, std::size_t> per_code;
  std::lock_guard<std::mutex> lock(mutex);
  if (!reported.emplace(d.code, d.fqn).second) return;
  const auto n = ++per_code[d.code];
  if (n <= shown) std::fprintf(stderr, "modtracker: %s\n", d.message.c_str());
  if (n == shown)
    std::fprintf(stderr, "modtracker: (more of this kind are not printed; a sink given to set_diagnostics gets them all)\n");
}
}  // namespace

void Engine::set_hooks(ErasedHooks hooks, const std::array<bool, 4>& given) {
  std::lock_guard<std::mutex> lock(config_);
  const ErasedHooks none;
  const ErasedHooks& now = hooks_ ? *hooks_ : none;
  const std::array<bool, 4> taken{static_cast<bool>(now.pre_fw), static_cast<bool>(now.post_fw),
                                  static_cast<bool>(now.pre_bw), static_cast<bool>(now.post_bw)};
  static constexpr std::array<const char*, 4> slot{"pre_fw", "post_fw", "pre_bw", "post_bw"};
  std::string clash;
  for (std::size_t i = 0; i < 4; ++i)
    if (given[i] && taken[i]) clash += (clash.empty() ? "" : ", ") + std::string(slot[i]);
  if (!clash.empty())
    throw HooksAlreadySet("modtracker: user hook slot(s) already set: " + clash + " (call clear_user_hooks() first)");
  auto merged = std::make_shared<ErasedHooks>(now);
  if (given[0]) merged->pre_fw = std::move(hooks.pre_fw);
  if (given[1]) merged->post_fw = std::move(hooks.post_fw);
  if (given[2]) merged->pre_bw = std::move(hooks.pre_bw);
  if (given[3]) merged->post_bw = std::move(hooks.post_bw);
  hooks_ = std::move(merged);
  has_hooks_.store(true, std::memory_order_release);
}

void Engine::clear_hooks() {
  std::lock_guard<std::mutex> lock(config_);
  hooks_.reset();
  has_hooks_.store(false, std::memory_order_release);
}

std::shared_ptr<const ErasedHooks> Engine::hooks() const {
  if (!may_have_hooks()) return nullptr;  // the common case: no lock
  std::lock_guard<std::mutex> lock(config_);
  return hooks_;
}

void Engine::set_filter(ErasedFilter filter) {
  // The filter runs once per module: when it is named, or now for known ones
  // (outside the state lock: it may be slow).
  std::unordered_map<const void*, bool> verdicts;
  if (filter) {
    std::vector<std::pair<const void*, std::string>> known;
    {
      std::lock_guard<SpinLock> lock(state_);
      names_.for_each([&](const void* ptr, const ModuleInfo& info) { known.emplace_back(ptr, names_.fqn(info.fqn)); });
    }
    for (const auto& [ptr, fqn] : known) verdicts[ptr] = filter(fqn, ModuleRef{ptr});
  }
  std::lock_guard<SpinLock> lock(state_);
  names_.for_each([&](const void* ptr, ModuleInfo& info) {
    const auto v = verdicts.find(ptr);
    info.reported = v == verdicts.end() ? !filter || filter(names_.fqn(info.fqn), ModuleRef{ptr}) : v->second;
  });
  filter_ = std::move(filter);
}

void Engine::set_sink(DiagnosticSink sink) {
  std::lock_guard<std::mutex> lock(config_);
  sink_ = sink ? std::move(sink) : DiagnosticSink(default_sink);
}

void Engine::diagnose(Diagnostic d) {
  if (remedy_) {
    if (const auto fix = remedy_(d.code); !fix.empty()) d.message.append(". ").append(fix);
  }
  DiagnosticSink sink;
  {
    std::lock_guard<std::mutex> lock(config_);
    sink = sink_;
  }
  sink(d);
}

bool Engine::said(Diagnostic::Code code, const std::string& fqn) const {
  std::lock_guard<std::mutex> lock(config_);
  return said_.contains({code, fqn});
}

void Engine::diagnose_once(Diagnostic d) {
  {
    std::lock_guard<std::mutex> lock(config_);
    if (!said_.emplace(d.code, d.fqn).second) return;
  }
  diagnose(std::move(d));
}

void Engine::say_pending() {
  std::vector<Diagnostic> found;
  {
    std::lock_guard<SpinLock> lock(state_);
    found.swap(pending_);
  }
  for (auto& d : found) diagnose_once(std::move(d));
}

}  // namespace modtracker::detail
