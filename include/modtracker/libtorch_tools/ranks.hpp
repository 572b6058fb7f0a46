// Ranks of a multi-process LibTorch job on c10d (Gloo): every rank's
// statistics, and where asked its spans, gathered to rank 0 at a point the
// user chooses, merged there into one table across ranks and one trace
// with a process per rank. Faults (a rank absent, killed, hung, or sending
// a table of another shape) are reported by rank, within the timeout.
//
// Not included by <modtracker/torch.hpp>: it brings c10d's headers.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <modtracker/libtorch/backend.hpp>

import modtracker.libtorch_tools;  // modtracker, modtracker.backend and modtracker.stats

namespace modtracker::libtorch {

class FlopCounter;
class MemoryTracker;

/// The tools whose results travel with a rank's record, where attached:
/// the FLOP counter's FLOPs per span (the merged trace's slice argument
/// "flops") and the memory tracker's live bytes (a counter track per rank).
/// Their per-module numbers travel in the Statistics rows already
/// (lt::annotate(stats, flops), lt::annotate(stats, memory)).
struct RankTools {
  const FlopCounter* flops = nullptr;
  const MemoryTracker* memory = nullptr;
};

struct RankOptions {
  /// How long rank 0 waits for a rank at a gather (and a rank for rank 0),
  /// and how long joining may take: every rank must reach each gather
  /// within this time of the others.
  std::chrono::milliseconds timeout{30'000};
  /// The prefix of the group the layer makes on the job's store: one name
  /// per store (a second group needs another).
  std::string name = "modtracker";
  /// How often each rank's heartbeat thread marks the store; zero derives it
  /// from the timeout (an eighth of it, within 10 ms and 1 s). Rank 0
  /// reports a rank `lost` once its heartbeat has not moved for four
  /// intervals (at least 200 ms), and `timed_out` only if the heartbeat goes
  /// on but no record comes within the timeout.
  std::chrono::milliseconds heartbeat{0};
  /// Also see a rank on rank 0's host end by its process id, at once. Off,
  /// every rank is judged by its heartbeat alone, as if on another host.
  bool check_processes = true;
};

/// A Gloo process group for `rank` of `world` over `store`, on the network
/// device of `host` (pinned: Gloo's default follows the machine's host
/// name), its collectives bounded by `timeout`. The store's own timeout
/// bounds the rendezvous.
[[nodiscard]] c10::intrusive_ptr<c10d::ProcessGroup> make_gloo_group(c10::intrusive_ptr<c10d::Store> store, int rank,
                                                                     int world, std::chrono::milliseconds timeout,
                                                                     const std::string& host = "127.0.0.1");

/// What one gather gave this rank.
struct Gathered {
  int rank = 0, world = 1;
  /// On rank 0: every rank that answered, rank 0 included; elsewhere empty.
  std::unique_ptr<CrossRankStatistics> merged;
  /// On rank 0: each rank missing or suspect, and why. Elsewhere: this
  /// rank's own trouble reaching rank 0 (Kind::no_root, Kind::rejected).
  std::vector<RankProblem> problems;
  std::chrono::nanoseconds elapsed{};  ///< the gather's wall time on this rank
  /// On rank 0: the bytes of the records it received (its own not counted).
  std::uint64_t received_bytes = 0;
  /// Rank 0 with every rank's record and no problem.
  [[nodiscard]] bool complete() const noexcept;
  /// The problems, a line each ("" if none).
  [[nodiscard]] std::string report() const;
};

/// The ranks of one job, as seen by one rank.
class RankGroup {
 public:
  /// Over the job's own process group (Gloo; rank and world are its), with
  /// the job's store, where arrivals are watched (under options.name).
  RankGroup(c10::intrusive_ptr<c10d::ProcessGroup> group, c10::intrusive_ptr<c10d::Store> store,
            RankOptions options = {});
  /// Over a Gloo group of its own on PrefixStore(options.name, store), so
  /// that gathers never interleave with the job's collectives. Waits up to
  /// the timeout for every rank to join; a rank that does not is reported
  /// (Kind::absent) by every gather, which then has this rank's record only.
  /// Throws std::runtime_error if the store already holds this rank under
  /// this name: a stale store (a FileStore path of an earlier job) or a
  /// second group of the same name. Both constructors start the rank's
  /// heartbeat thread (on a connection of its own where the store is a
  /// TCPStore); the destructor ends it and marks the rank closed.
  RankGroup(c10::intrusive_ptr<c10d::Store> store, int rank, int world, RankOptions options = {});
  RankGroup(const RankGroup&) = delete;
  RankGroup& operator=(const RankGroup&) = delete;
  ~RankGroup();

  [[nodiscard]] int rank() const noexcept;
  [[nodiscard]] int world() const noexcept;

  /// Sends this rank's statistics (and `spans`, if given: the merged trace)
  /// to rank 0, which merges them with its own: every rank calls it at the
  /// same points (the n-th call of each rank is one gather). `tracker` is
  /// the one that timed `stats`: rank 0 maps each rank's clock onto its own
  /// with it (docs/ranks.md). `tools` adds their extras to the merged
  /// trace. Never throws for a fault of another rank: a rank that fails is
  /// reported, and not waited for again by this group. One thread at a time
  /// per group.
  Gathered gather(const TrackerBase& tracker, const Statistics& stats, const SpanLog* spans = nullptr,
                  RankTools tools = {});

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace modtracker::libtorch
