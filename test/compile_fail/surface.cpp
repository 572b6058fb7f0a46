// Compile-fail cases: `import modtracker;` gives the tracker's surface and
// nothing of its engine, nor the backend-authoring layer.
import modtracker;
import modtracker.reference;

void use(modtracker::Tracker<modtracker::reference::Backend>& t) {
#if defined(MODTRACKER_CASE_ok)
  (void)t.parents();
  (void)t.is_bw();
  modtracker::Phase phase = modtracker::Phase::forward;
  modtracker::ModuleRef ref{};
  (void)phase, (void)ref;
#elif defined(MODTRACKER_CASE_engine)
  modtracker::detail::Engine* engine = nullptr;
  (void)engine;
#elif defined(MODTRACKER_CASE_erased_hooks)
  modtracker::detail::ErasedHooks hooks;
  (void)hooks;
#elif defined(MODTRACKER_CASE_core)
  (void)t.core();
#elif defined(MODTRACKER_CASE_hook_backend)
  modtracker::HookBackend* backend = nullptr;
  (void)backend;
#elif defined(MODTRACKER_CASE_spin_lock)
  modtracker::detail::SpinLock lock;
  (void)lock;
#endif
}
