// Statistics for LibTorch models: what the framework-neutral Statistics
// cannot know by itself (parameter counts and bytes, output shapes, FLOPs
// and memory), and the tools' data in a trace.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <modtracker/libtorch/backend.hpp>
#include <modtracker/libtorch_tools/backward_time.hpp>
#include <modtracker/libtorch_tools/flops.hpp>
#include <modtracker/libtorch_tools/memory.hpp>

import modtracker.libtorch_tools;  // modtracker, modtracker.backend and modtracker.stats

namespace modtracker::libtorch {

/// Records the output shapes of each module's last forward call. It is a
/// forward observer of its own: it takes no user-hook slot of any tracker.
class ShapeRecorder final : public ForwardObserver {
 public:
  ShapeRecorder();
  ShapeRecorder(const ShapeRecorder&) = delete;
  ShapeRecorder& operator=(const ShapeRecorder&) = delete;
  ~ShapeRecorder();
  /// "[64, 32]" (several outputs: "[64, 32], [64]"), or "" if never called.
  [[nodiscard]] std::string shape_of(const torch::nn::Module& module) const;

  EnterResult pre_forward(const ForwardCall&) override { return {}; }
  void post_forward(const ForwardCall& call, ValuesRef output, std::uintptr_t) override;

 private:
  mutable std::mutex mutex_;
  std::unordered_map<const void*, std::vector<std::vector<std::int64_t>>> shapes_;
  Registration registration_;
};

/// Adds to `stats`, for `model` and every module below it (named as
/// `tracker` names them): parameters and bytes, trainable and frozen, of the
/// module with its children; and the last output shape if `shapes` saw it.
void annotate(Statistics& stats, const Tracker& tracker, const torch::nn::Module& model,
              const ShapeRecorder* shapes = nullptr);
/// Adds the FLOPs of each phase to every row, and a row for each module the
/// counter saw: the table gains its "fw FLOPs" and "bw FLOPs" columns.
void annotate(Statistics& stats, const FlopCounter& flops);
/// Sets each module's backward inclusive and exclusive time to the time of
/// its autograd nodes (and its descendants'), instead of its backward spans'.
void annotate(Statistics& stats, const BackwardTimer& timer);
/// Adds each module's forward and backward peaks and kept bytes: the table
/// gains its "fw peak", "kept" and "bw peak" columns.
void annotate(Statistics& stats, const MemoryTracker& memory);
/// Gives each slice the trace consumes from now on a "flops" argument (its
/// activation's FLOPs, both phases' own): `flops` must outlive the writing.
void annotate(ChromeTraceWriter& trace, const FlopCounter& flops);
/// Writes the memory tracker's timeline of live bytes as the trace's
/// "memory" counter track.
void annotate(ChromeTraceWriter& trace, const MemoryTracker& memory);
/// Writes the timer's backward spans (BackwardTimer::spans(): per pass, from
/// the first to the last of each module's nodes, nested by module) as the
/// trace's backward slices. Give the trace only the forward transitions
/// then, or it shows both rules' backward slices.
void annotate(ChromeTraceWriter& trace, const BackwardTimer& timer);

}  // namespace modtracker::libtorch
