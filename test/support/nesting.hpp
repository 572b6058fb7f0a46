// Shared by the randomized suites: the backward/forward nesting invariants,
// and their settings from the environment.
// Include after <doctest/doctest.h> and after importing modtracker.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

/// A number from the environment (seeds, program counts), or `fallback`.
inline std::uint64_t env_or(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

/// Transitions of one phase must nest: every exit closes the innermost open
/// activation of that phase. With `nested` false they need only balance:
/// every exit closes an open activation of its fqn, not necessarily the
/// innermost (backward through a graph whose branches share inputs may
/// overlap them). Either way none stays open.
inline void check_nesting(const std::vector<modtracker::Transition>& ts, modtracker::Phase phase, const std::string& what,
                          bool nested = true) {
  std::ostringstream dump;  // the transitions, printed on failure
  for (const auto& t : ts)
    dump << (t.phase == modtracker::Phase::forward ? "fw " : "bw ") << (t.kind == modtracker::Kind::enter ? "enter " : "exit  ") << t.fqn
         << " d" << t.depth << "\n";
  INFO("transitions:\n" << dump.str());
  std::vector<std::string_view> stack;
  for (const auto& t : ts) {
    if (t.phase != phase) continue;
    if (t.kind == modtracker::Kind::enter) {
      stack.push_back(t.fqn);
      continue;
    }
    INFO(what);
    const auto it = std::find(stack.rbegin(), stack.rend(), t.fqn);
    REQUIRE_MESSAGE(it != stack.rend(), "exit of " << t.fqn << " without an open enter");
    REQUIRE_MESSAGE((!nested || it == stack.rbegin()), "exit of " << t.fqn << " while " << stack.back() << " is innermost");
    stack.erase(std::next(it).base());
  }
  INFO(what);
  REQUIRE_MESSAGE(stack.empty(), stack.size() << " activations never exited");
}
