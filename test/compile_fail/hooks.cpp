// Compile-fail cases: a hook or filter of the wrong signature is refused,
// and the diagnostic names the hook's concept (run.cmake checks which).
#include <string_view>

import modtracker;
import modtracker.reference;

namespace s = modtracker::reference;

void register_hooks(modtracker::Tracker<s::Backend>& t) {
#if defined(MODTRACKER_CASE_ok)
  t.register_user_hooks([](s::Module&, const s::Values&) {}, [](s::Module&, const s::Values&, const s::Values*) {},
                        [](s::Module*, const s::Values&) {}, [](s::Module*, const s::Values&) {});
  t.set_filter([](std::string_view, s::Module&) { return true; });
#elif defined(MODTRACKER_CASE_wrong_pre_fw)
  t.register_user_hooks([](s::Module&) {});  // no inputs
#elif defined(MODTRACKER_CASE_wrong_post_fw)
  t.register_user_hooks(modtracker::no_hook, [](s::Module&, const s::Values&) {});  // no output
#elif defined(MODTRACKER_CASE_wrong_pre_bw)
  t.register_user_hooks(modtracker::no_hook, modtracker::no_hook, [](s::Module&, const s::Values&) {});  // not a pointer
#elif defined(MODTRACKER_CASE_wrong_post_bw)
  t.register_user_hooks(modtracker::no_hook, modtracker::no_hook, modtracker::no_hook, [](int) {});
#elif defined(MODTRACKER_CASE_filter_not_predicate)
  t.set_filter([](std::string_view, s::Module&) {});  // decides nothing
#endif
}
