// LibTorch annotations of the statistics: parameters and output shapes.
#include <torch/torch.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_set>

#include "modtracker/libtorch/stats.hpp"

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
    const auto& module = Tracker::module(ref);
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
