// The Chrome trace-event writer: complete slices for nested spans, async
// slices for spans that overlap.
module;
// <cstdint> first in every module unit: clang 16 otherwise finds two
// definitions of std entities that name its typedefs (std::align).
#include <cstdint>
#include <chrono>
#include <cstdio>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
module modtracker.stats;
import modtracker;

namespace modtracker {

ChromeTraceWriter::ChromeTraceWriter(std::ostream& out, std::string process_name) : out_(out) {
  out_ << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n"
       << "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":1,\"tid\":0,\"args\":{\"name\":\"" << json_escape(process_name)
       << "\"}}";
}

void ChromeTraceWriter::name_process(std::uint32_t process, std::string_view name) {
  if (finished_) return;
  out_ << ",\n{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":" << process << ",\"tid\":0,\"args\":{\"name\":\""
       << json_escape(name) << "\"}}"
       << ",\n{\"ph\":\"M\",\"name\":\"process_sort_index\",\"pid\":" << process
       << ",\"tid\":0,\"args\":{\"sort_index\":" << process << "}}";
}

ChromeTraceWriter::~ChromeTraceWriter() { finish(); }

void ChromeTraceWriter::consume(const Transition& t) {
  if (finished_) return;
  if (const auto s = matcher_.consume(t)) span(*s);
}

void ChromeTraceWriter::span(const Span& s, std::uint32_t process, std::chrono::nanoseconds shift) {
  span(s, process, shift, {});
}

void ChromeTraceWriter::span(const Span& s, std::uint32_t process, std::chrono::nanoseconds shift,
                             const std::vector<std::pair<std::string_view, std::uint64_t>>& extra) {
  if (finished_) return;
  const char* phase = s.phase == Phase::forward ? "forward" : "backward";
  const auto fqn = json_escape(s.fqn);
  char num[48];
  auto us = [&](std::chrono::nanoseconds t) {
    std::snprintf(num, sizeof num, "%.3f", static_cast<double>(t.count()) / 1e3);
    return num;
  };
  auto head = [&](const char* ph) -> std::ostream& {
    return out_ << ",\n{\"ph\":\"" << ph << "\",\"pid\":" << process << ",\"tid\":" << s.thread << ",\"name\":\"" << fqn
                << "\",\"cat\":\"" << phase << "\",";
  };
  auto args = [&]() -> std::ostream& {
    out_ << "\"args\":{\"fqn\":\"" << fqn << "\",\"phase\":\"" << phase << "\",\"call\":" << s.call;
    for (const auto& [name, value] : slice_args_)
      if (const auto v = value(s)) out_ << ",\"" << json_escape(name) << "\":" << *v;
    for (const auto& [name, v] : extra) out_ << ",\"" << json_escape(name) << "\":" << v;
    return out_ << "}}";
  };
  if (s.nested) {
    head("X") << "\"ts\":" << us(s.start + shift) << ",";
    out_ << "\"dur\":" << us(s.end - s.start) << ",";
    args();
  } else {  // an async slice: its own row, so the thread's slices still nest
    const auto id = ++async_ids_;
    head("b") << "\"id\":" << id << ",\"ts\":" << us(s.start + shift) << ",";
    args();
    head("e") << "\"id\":" << id << ",\"ts\":" << us(s.end + shift) << "}";
  }
  ++slices_;
}

void ChromeTraceWriter::slice(std::string_view name, std::string_view category, std::uint32_t thread,
                              std::chrono::nanoseconds start, std::chrono::nanoseconds end,
                              const std::vector<std::pair<std::string_view, std::string>>& text,
                              const std::vector<std::pair<std::string_view, std::uint64_t>>& numbers,
                              std::uint32_t process, std::chrono::nanoseconds shift) {
  if (finished_) return;
  char num[48];
  auto us = [&](std::chrono::nanoseconds t) {
    std::snprintf(num, sizeof num, "%.3f", static_cast<double>(t.count()) / 1e3);
    return num;
  };
  out_ << ",\n{\"ph\":\"X\",\"pid\":" << process << ",\"tid\":" << thread << ",\"name\":\"" << json_escape(name)
       << "\",\"cat\":\"" << json_escape(category) << "\",\"ts\":" << us(start + shift) << ",";
  out_ << "\"dur\":" << us(end - start) << ",\"args\":{";
  const char* comma = "";
  for (const auto& [key, value] : text) out_ << std::exchange(comma, ",") << '"' << json_escape(key) << "\":\"" << json_escape(value) << '"';
  for (const auto& [key, value] : numbers) out_ << std::exchange(comma, ",") << '"' << json_escape(key) << "\":" << value;
  out_ << "}}";
  ++slices_;
}

void ChromeTraceWriter::add_slice_arg(std::string name,
                                      std::function<std::optional<std::uint64_t>(const Span&)> value) {
  slice_args_.emplace_back(std::move(name), std::move(value));
}

void ChromeTraceWriter::counter(std::string_view track, std::string_view series, std::chrono::nanoseconds time,
                                double value, std::uint32_t process, std::chrono::nanoseconds shift) {
  if (finished_) return;
  char ts[48], num[48];
  std::snprintf(ts, sizeof ts, "%.3f", static_cast<double>((time + shift).count()) / 1e3);
  std::snprintf(num, sizeof num, "%.17g", value);
  out_ << ",\n{\"ph\":\"C\",\"pid\":" << process << ",\"tid\":0,\"name\":\"" << json_escape(track) << "\",\"ts\":" << ts
       << ",\"args\":{\"" << json_escape(series) << "\":" << num << "}}";
}

void ChromeTraceWriter::finish() {
  if (finished_) return;
  finished_ = true;
  out_ << "\n]}\n";
  out_.flush();
}

}  // namespace modtracker
