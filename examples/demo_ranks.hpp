// modtracker demo --ranks N: the launcher (a parent hosting the store and
// starting N local processes of the demo) and what each rank adds to the
// training: its process groups, averaged gradients, the check that every
// rank ends with the same parameters.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <modtracker/libtorch_tools/ranks.hpp>

namespace demo {

/// A fault one rank plays, to see how the others report it.
struct Fault {
  enum class Kind { none, kill, hang, absent } kind = Kind::none;
  int rank = -1;
  [[nodiscard]] bool hits(int r) const noexcept { return kind != Kind::none && rank == r; }
};
/// "1:kill", "2:hang", "1:absent"; nothing if malformed.
std::optional<Fault> to_fault(const std::string& text);

/// Hosts a TCP store on 127.0.0.1 and starts `world` processes of this
/// program with `args` and --rank R --port P; waits for them (a rank left
/// running `timeout` after rank 0 ended is stopped) and says how each
/// ended. Returns rank 0's exit status, or 1 if another rank failed.
int launch(const std::vector<std::string>& args, int world, std::chrono::milliseconds timeout);

/// One rank's part of the job.
class Rank {
 public:
  /// Joins the store the launcher hosts: a RankGroup (named "modtracker")
  /// for the statistics and a Gloo group (prefix "train") for the training.
  /// Without `pid_check`, rank 0 tells a dead rank by its heartbeat alone.
  Rank(int rank, int world, int port, std::chrono::milliseconds timeout, bool pid_check = true);
  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int world() const noexcept { return world_; }
  /// Why there is no training group ("" if there is one).
  [[nodiscard]] const std::string& training_error() const noexcept { return training_error_; }
  /// Rank 0's parameters to every rank (as DistributedDataParallel starts).
  void broadcast(const std::vector<torch::Tensor>& params);
  /// Every gradient replaced by its mean over the ranks (allreduce).
  void average_gradients(const std::vector<torch::Tensor>& params);
  /// The largest difference of any parameter from rank 0's, on every rank.
  [[nodiscard]] double max_difference(const std::vector<torch::Tensor>& params);
  modtracker::libtorch::RankGroup& ranks() { return *ranks_; }

 private:
  int rank_, world_;
  c10::intrusive_ptr<c10d::Store> store_;
  std::unique_ptr<modtracker::libtorch::RankGroup> ranks_;
  c10::intrusive_ptr<c10d::ProcessGroup> training_;
  std::string training_error_;
};

/// What rank 0 writes: the tables, the merged trace, and the report page
/// if a path is given.
struct Outputs {
  modtracker::TableOptions table;
  std::string trace_path, report_path;
  modtracker::ReportOptions page;
};

/// The end of a rank's job: the parameters compared across ranks, the
/// gather (with the tools' extras), and on rank 0 the tables across ranks,
/// the merged trace and the report. Returns the process's exit status.
int report(Rank& job, const modtracker::libtorch::Tracker& tracker, const modtracker::Statistics& stats,
           const modtracker::SpanLog& spans, modtracker::libtorch::RankTools tools,
           const std::vector<torch::Tensor>& params, const std::string& failure, const Outputs& outputs, bool tty);

}  // namespace demo
