// Shared helpers of the core suites: a tracker on the scripted backend that
// records hook calls as "event fqn [parents] bw" lines.
#pragma once
// Standard headers before the imports: clang-16 merges them best that way.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

import modtracker;
import modtracker.scripted;

namespace support {
using namespace modtracker;
using scripted::Backend;
using scripted::Module;
using scripted::Value;
using scripted::Values;
using ScriptedTracker = Tracker<Backend>;

inline std::string join(const Parents& p) {
  std::string s;
  for (auto n : p) s += (s.empty() ? "" : ",") + std::string(n);
  return s;
}

struct Log {
  ScriptedTracker& t;
  std::vector<std::string> lines;
  void add(const std::string& ev, const Module* m) {
    const auto fqn = m ? t.known_fqn(*m).value_or("?") : std::string("null");
    lines.push_back(ev + " " + fqn + " [" + join(t.parents()) + "]" + (t.is_bw() ? " bw" : ""));
  }
  void hook_all() {
    t.register_user_hooks([this](Module& m, const Values&) { add("pre_fw", &m); },
                          [this](Module& m, const Values&, const Values*) { add("post_fw", &m); },
                          [this](Module* m, const Values&) { add("pre_bw", m); },
                          [this](Module* m, const Values&) { add("post_bw", m); });
  }
};

inline std::vector<std::string> transitions(ScriptedTracker& t) {
  std::vector<std::string> out;
  for (const auto& tr : t.transitions())
    out.push_back(std::string(tr.phase == Phase::forward ? "fw " : "bw ") +
                  (tr.kind == Kind::enter ? "enter " : "exit ") + std::string(tr.fqn));
  return out;
}
}  // namespace support
