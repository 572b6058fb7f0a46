// LibTorch annotations of the statistics and traces: parameters, output
// shapes, and the FLOP counter's and memory tracker's numbers.
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_set>

#include "modtracker/libtorch_tools/stats.hpp"

import modtracker;
import modtracker.backend;
import modtracker.stats;

namespace modtracker::libtorch {

ShapeRecorder::ShapeRecorder() : registration_(backend().dispatcher().add(*this)) {}

ShapeRecorder::~ShapeRecorder() = default;

void ShapeRecorder::post_forward(const ForwardCall& call, ValuesRef output, std::uintptr_t) {
  if (!output) return;  // the forward threw: keep the last good shape
  const auto& tensors = *static_cast<const Tensors*>(output.ptr);
  std::lock_guard<std::mutex> lock(mutex_);
  auto& shapes = shapes_[call.module.ptr];
  shapes.resize(tensors.size());  // reuses capacity: no allocation when shapes repeat
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto sizes = tensors[i].defined() ? tensors[i].sizes() : c10::IntArrayRef{};
    shapes[i].assign(sizes.begin(), sizes.end());
  }
}

std::string ShapeRecorder::shape_of(const torch::nn::Module& module) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = shapes_.find(module_ref(module).ptr);
  if (it == shapes_.end()) return {};
  std::string out;
  for (const auto& shape : it->second) {
    if (!out.empty()) out += ", ";
    out += '[';
    for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
    out += ']';
  }
  return out;
}

void annotate(Statistics& stats, const Tracker& tracker, const torch::nn::Module& model, const ShapeRecorder* shapes) {
  for (const auto& [fqn, ref] : tracker.walk(model)) {
    const auto& module = module_of(ref);
    auto& row = stats.at(fqn);
    row.params_trainable = row.params_frozen = row.bytes_trainable = row.bytes_frozen = 0;
    std::unordered_set<const void*> counted;  // a shared layer's parameters count once
    for (const auto& p : module.parameters(/*recurse=*/true)) {
      if (!counted.insert(p.unsafeGetTensorImpl()).second) continue;
      const auto n = static_cast<std::uint64_t>(p.numel());
      const auto bytes = n * static_cast<std::uint64_t>(p.element_size());
      (p.requires_grad() ? row.params_trainable : row.params_frozen) += n;
      (p.requires_grad() ? row.bytes_trainable : row.bytes_frozen) += bytes;
    }
    if (shapes) row.output_shape = shapes->shape_of(module);
  }
}

}  // namespace modtracker::libtorch

namespace modtracker::libtorch {

void annotate(Statistics& stats, const FlopCounter& flops) {
  std::array<std::map<std::string, std::map<std::string, std::uint64_t>>, 2> counts{flops.counts(Phase::forward),
                                                                                      flops.counts(Phase::backward)};
  for (const auto& per : counts)
    for (const auto& [fqn, ops] : per)
      if (fqn != "Global") stats.at(fqn);
  const auto sum = [](const auto& per, const std::string& fqn) {
    std::uint64_t n = 0;
    if (const auto it = per.find(fqn); it != per.end())
      for (const auto& [op, f] : it->second) n += f;
    return n;
  };
  for (const auto* row : stats.rows()) {
    auto& r = stats.at(row->fqn);
    r.fw_flops = sum(counts[0], r.fqn);
    r.bw_flops = sum(counts[1], r.fqn);
  }
}

void annotate(Statistics& stats, const BackwardTimer& timer) {
  const auto times = timer.times();
  for (const auto& [fqn, t] : times)
    if (fqn != "Global") stats.at(fqn);
  for (const auto* row : stats.rows()) {
    auto& r = stats.at(row->fqn);
    const auto it = times.find(r.fqn);
    r.bw_inclusive = it == times.end() ? std::chrono::nanoseconds{} : it->second.inclusive;
    r.bw_exclusive = it == times.end() ? std::chrono::nanoseconds{} : it->second.exclusive;
  }
}

void annotate(Statistics& stats, const MemoryTracker& memory) {
  const auto all = memory.modules();
  for (const auto& [fqn, phases] : all) stats.at(fqn);
  for (const auto* row : stats.rows()) {
    auto& r = stats.at(row->fqn);
    const auto it = all.find(r.fqn);
    const auto& fw = it == all.end() ? ModuleMemory{} : it->second[0];
    const auto& bw = it == all.end() ? ModuleMemory{} : it->second[1];
    r.fw_peak_bytes = fw.peak;
    r.fw_kept_bytes = fw.kept;
    r.bw_peak_bytes = bw.peak;
  }
}

void annotate(ChromeTraceWriter& trace, const FlopCounter& flops) {
  trace.add_slice_arg("flops", [&flops](const Span& s) -> std::optional<std::uint64_t> {
    const auto n = flops.activation_flops(s.exit_sequence);
    return n ? std::optional<std::uint64_t>(n) : std::nullopt;
  });
}

void annotate(ChromeTraceWriter& trace, const MemoryTracker& memory) {
  for (const auto& [time, bytes] : memory.timeline()) trace.counter("memory", "live bytes", time, static_cast<double>(bytes));
}

void annotate(ChromeTraceWriter& trace, const BackwardTimer& timer) {
  const auto log = timer.spans();
  for (const auto& span : log.spans()) trace.span(span);
}

}  // namespace modtracker::libtorch
