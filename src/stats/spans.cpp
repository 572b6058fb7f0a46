// Span matching: enters paired with exits per thread and phase.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <algorithm>
#include <chrono>
#include <iterator>
#include <optional>
#include <set>
#include <string>
#include <string_view>
module modtracker.stats;
import modtracker;

namespace modtracker {

std::optional<Span> SpanMatcher::consume(const Transition& t) {
  // The time since the stack's last transition belongs to its top: every
  // moment counts once, also where spans do not nest (an exit below the top).
  auto& stack = stacks_[{t.thread, t.phase}];
  if (!stack.open.empty() && t.time > stack.last) stack.open.back().innermost += t.time - stack.last;
  stack.last = std::max(stack.last, t.time);
  auto& open = stack.open;
  if (t.kind == Kind::enter) {
    open.push_back(Open{t.fqn, t.depth, t.time, {}});
    return std::nullopt;
  }
  // Normally the top; search down for transitions that do not nest.
  auto it = std::find_if(open.rbegin(), open.rend(), [&](const Open& o) { return o.fqn == t.fqn; });
  if (it == open.rend()) return std::nullopt;  // its enter was not seen (dropped or before reading)
  const Open closed = *it;
  const bool top = it == open.rbegin();
  open.erase(std::next(it).base());
  auto& calls = calls_[{closed.fqn, t.phase}];
  return Span{closed.fqn, t.phase, t.thread, closed.depth, calls++, closed.start, t.time,
              (t.time - closed.start) - closed.innermost, top, t.sequence};
}

std::size_t SpanMatcher::open() const noexcept {
  std::size_t n = 0;
  for (const auto& [key, stack] : stacks_) n += stack.open.size();
  return n;
}

std::string_view SpanLog::intern(std::string_view fqn) {
  if (const auto it = index_.find(fqn); it != index_.end()) return *it;
  return *index_.insert(names_.emplace_back(fqn)).first;
}

void SpanLog::consume(const Transition& t) {
  if (const auto span = matcher_.consume(t)) add(*span);
}

void SpanLog::add(const Span& span) {
  spans_.push_back(span);
  spans_.back().fqn = intern(span.fqn);
}

SpanLog& SpanLog::operator=(const SpanLog& o) {
  if (this == &o) return *this;
  clear();
  for (const auto& s : o.spans_) add(s);
  return *this;
}

void SpanLog::clear() {
  matcher_ = {};
  spans_.clear();
  index_.clear();
  names_.clear();
}

}  // namespace modtracker
