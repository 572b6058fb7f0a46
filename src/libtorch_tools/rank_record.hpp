// A rank's record as bytes: LibTorch's pickle of an IValue tuple, numbers
// in int64 tensors (rows, spans, the spans' FLOPs, the memory timeline),
// names in string lists. Included by
// ranks.cpp only (one LibTorch TU).
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <modtracker/libtorch_tools/ranks.hpp>

namespace modtracker::libtorch::records {

inline std::int64_t opt(const std::optional<std::uint64_t>& v) { return v ? static_cast<std::int64_t>(*v) : -1; }
inline std::optional<std::uint64_t> opt(std::int64_t v) {
  return v < 0 ? std::nullopt : std::optional<std::uint64_t>(static_cast<std::uint64_t>(v));
}

constexpr std::int64_t row_fields = 15, span_fields = 9;

inline std::vector<char> encode(const RankRecord& r) {
  c10::List<std::string> fqns, shapes, span_names;
  auto rows = torch::empty({static_cast<std::int64_t>(r.rows.size()), row_fields}, torch::kLong);
  auto* p = rows.data_ptr<std::int64_t>();
  for (const auto& m : r.rows) {
    fqns.push_back(m.fqn);
    shapes.push_back(m.output_shape);
    const std::int64_t v[row_fields] = {static_cast<std::int64_t>(m.fw_calls), static_cast<std::int64_t>(m.bw_calls),
                                        m.fw_inclusive.count(), m.fw_exclusive.count(), m.bw_inclusive.count(),
                                        m.bw_exclusive.count(), static_cast<std::int64_t>(m.params_trainable),
                                        static_cast<std::int64_t>(m.params_frozen), static_cast<std::int64_t>(m.bytes_trainable),
                                        static_cast<std::int64_t>(m.bytes_frozen), opt(m.fw_flops), opt(m.bw_flops),
                                        opt(m.fw_peak_bytes), opt(m.fw_kept_bytes), opt(m.bw_peak_bytes)};
    p = std::copy(std::begin(v), std::end(v), p);
  }
  const auto& log = r.spans.spans();
  auto spans = torch::empty({static_cast<std::int64_t>(log.size()), span_fields}, torch::kLong);
  auto* q = spans.data_ptr<std::int64_t>();
  std::map<std::string_view, std::int64_t> index;
  for (const auto& s : log) {
    auto [it, added] = index.try_emplace(s.fqn, static_cast<std::int64_t>(index.size()));
    if (added) span_names.push_back(std::string(s.fqn));
    const std::int64_t v[span_fields] = {it->second, s.phase == Phase::forward ? 0 : 1, s.thread, s.depth,
                                         static_cast<std::int64_t>(s.call), s.start.count(), s.end.count(),
                                         s.children.count(), s.nested ? 1 : 0};
    q = std::copy(std::begin(v), std::end(v), q);
  }
  auto span_flops = torch::empty({static_cast<std::int64_t>(r.span_flops.size())}, torch::kLong);
  std::transform(r.span_flops.begin(), r.span_flops.end(), span_flops.data_ptr<std::int64_t>(),
                 [](std::uint64_t n) { return static_cast<std::int64_t>(n); });
  auto memory = torch::empty({static_cast<std::int64_t>(r.memory.size()), 2}, torch::kLong);
  auto* m = memory.data_ptr<std::int64_t>();
  for (const auto& [time, bytes] : r.memory) {
    *m++ = time.count();
    *m++ = static_cast<std::int64_t>(bytes);
  }
  return torch::pickle_save(c10::ivalue::Tuple::create(
      {c10::IValue(static_cast<std::int64_t>(r.rank)), c10::IValue(r.host), c10::IValue(r.pid), c10::IValue(fqns),
       c10::IValue(shapes), c10::IValue(rows), c10::IValue(span_names), c10::IValue(spans), c10::IValue(span_flops),
       c10::IValue(memory)}));
}

inline void expect(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("its record is malformed: ") + what);
}

inline RankRecord decode(const std::vector<char>& bytes, std::int64_t rows_expected, std::int64_t spans_expected) {
  const auto value = torch::pickle_load(bytes);
  expect(value.isTuple(), "not a tuple");
  const auto& e = value.toTupleRef().elements();
  expect(e.size() == 10 && e[0].isInt() && e[1].isString() && e[2].isInt() && e[3].isList() && e[4].isList() &&
             e[5].isTensor() && e[6].isList() && e[7].isTensor() && e[8].isTensor() && e[9].isTensor(),
         "unexpected fields");
  RankRecord r;
  r.rank = static_cast<int>(e[0].toInt());
  r.host = e[1].toStringRef();
  r.pid = e[2].toInt();
  const auto fqns = e[3].toListRef(), shapes = e[4].toListRef(), names = e[6].toListRef();
  const auto rows = e[5].toTensor().contiguous(), spans = e[7].toTensor().contiguous();
  expect(rows.scalar_type() == torch::kLong && rows.dim() == 2 && rows.size(0) == rows_expected &&
             rows.size(1) == row_fields && static_cast<std::int64_t>(fqns.size()) == rows_expected &&
             shapes.size() == fqns.size(),
         "its rows do not match its header");
  expect(spans.scalar_type() == torch::kLong && spans.dim() == 2 && spans.size(0) == spans_expected &&
             spans.size(1) == span_fields,
         "its spans do not match its header");
  const auto* p = rows.data_ptr<std::int64_t>();
  for (std::size_t i = 0; i < fqns.size(); ++i, p += row_fields) {
    expect(fqns[i].isString() && shapes[i].isString(), "a module name is not a string");
    ModuleStats m;
    m.fqn = fqns[i].toStringRef();
    m.output_shape = shapes[i].toStringRef();
    m.fw_calls = static_cast<std::uint64_t>(p[0]);
    m.bw_calls = static_cast<std::uint64_t>(p[1]);
    m.fw_inclusive = std::chrono::nanoseconds(p[2]);
    m.fw_exclusive = std::chrono::nanoseconds(p[3]);
    m.bw_inclusive = std::chrono::nanoseconds(p[4]);
    m.bw_exclusive = std::chrono::nanoseconds(p[5]);
    m.params_trainable = static_cast<std::uint64_t>(p[6]);
    m.params_frozen = static_cast<std::uint64_t>(p[7]);
    m.bytes_trainable = static_cast<std::uint64_t>(p[8]);
    m.bytes_frozen = static_cast<std::uint64_t>(p[9]);
    m.fw_flops = opt(p[10]);
    m.bw_flops = opt(p[11]);
    m.fw_peak_bytes = opt(p[12]);
    m.fw_kept_bytes = opt(p[13]);
    m.bw_peak_bytes = opt(p[14]);
    r.rows.push_back(std::move(m));
  }
  std::vector<std::string> span_names;
  for (const auto& n : names) {
    expect(n.isString(), "a span name is not a string");
    span_names.push_back(n.toStringRef());
  }
  const auto* q = spans.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < spans_expected; ++i, q += span_fields) {
    expect(q[0] >= 0 && q[0] < static_cast<std::int64_t>(span_names.size()), "a span names no module");
    r.spans.add(Span{span_names[static_cast<std::size_t>(q[0])], q[1] == 0 ? Phase::forward : Phase::backward,
                     static_cast<std::uint32_t>(q[2]), static_cast<std::uint32_t>(q[3]), static_cast<std::uint64_t>(q[4]),
                     std::chrono::nanoseconds(q[5]), std::chrono::nanoseconds(q[6]), std::chrono::nanoseconds(q[7]),
                     q[8] != 0, 0});
  }
  const auto flops = e[8].toTensor().contiguous(), memory = e[9].toTensor().contiguous();
  expect(flops.scalar_type() == torch::kLong && flops.dim() == 1 && (flops.size(0) == 0 || flops.size(0) == spans_expected),
         "its spans' FLOPs do not match its spans");
  expect(memory.scalar_type() == torch::kLong && memory.dim() == 2 && memory.size(1) == 2, "its memory timeline is malformed");
  const auto* f = flops.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < flops.size(0); ++i) {
    expect(f[i] >= 0, "a span's FLOPs are negative");
    r.span_flops.push_back(static_cast<std::uint64_t>(f[i]));
  }
  const auto* t = memory.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < memory.size(0); ++i, t += 2) {
    expect(t[1] >= 0, "its live bytes are negative");
    r.memory.emplace_back(std::chrono::nanoseconds(t[0]), static_cast<std::uint64_t>(t[1]));
  }
  return r;
}

}  // namespace modtracker::libtorch::records
