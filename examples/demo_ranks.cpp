// The demo's ranks: a launcher and each rank's process groups.
#include "demo_ranks.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include <spawn.h>
#include <sys/wait.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <unistd.h>

extern char** environ;

namespace demo {

namespace lt = modtracker::libtorch;

std::optional<Fault> to_fault(const std::string& text) {
  const auto colon = text.find(':');
  if (colon == std::string::npos || colon == 0) return std::nullopt;
  char* end = nullptr;
  const long rank = std::strtol(text.c_str(), &end, 10);
  if (end != text.c_str() + colon || rank < 0) return std::nullopt;
  const auto kind = text.substr(colon + 1);
  Fault f;
  f.rank = static_cast<int>(rank);
  if (kind == "kill") f.kind = Fault::Kind::kill;
  else if (kind == "hang") f.kind = Fault::Kind::hang;
  else if (kind == "absent") f.kind = Fault::Kind::absent;
  else return std::nullopt;
  return f;
}

namespace {

std::string first_line(const std::string& what) { return what.substr(0, what.find('\n')); }

std::string ended(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + std::to_string(WTERMSIG(status)) + " (" +
                                  strsignal(WTERMSIG(status)) + ")";
  return "ended";
}

}  // namespace

int launch(const std::vector<std::string>& args, int world, std::chrono::milliseconds timeout) {
  // The store lives here, in the parent: it outlives any rank that dies.
  c10d::TCPStoreOptions options;
  options.port = 0;  // any free port, passed down: no client retries
  options.isServer = true;
  options.waitWorkers = false;
  options.timeout = timeout;
  c10d::TCPStore store("127.0.0.1", options);
  const auto port = std::to_string(store.getPort());
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> argv_s = args;
    for (const char* extra : {"--rank", "", "--port", ""}) argv_s.emplace_back(extra);
    argv_s[argv_s.size() - 3] = std::to_string(r);
    argv_s.back() = port;
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    if (const int err = posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ); err != 0) {
      std::fprintf(stderr, "modtracker demo: cannot start rank %d: %s\n", r, std::strerror(err));
      for (const auto p : pids) kill(p, SIGKILL);
      for (const auto p : pids) waitpid(p, nullptr, 0);
      return 1;
    }
    pids.push_back(pid);
  }
  std::vector<std::optional<int>> status(static_cast<std::size_t>(world));
  auto reap = [&](bool block) {
    for (int r = 0; r < world; ++r) {
      auto& s = status[static_cast<std::size_t>(r)];
      int st = 0;
      if (!s && waitpid(pids[static_cast<std::size_t>(r)], &st, block ? 0 : WNOHANG) > 0) s = st;
    }
  };
  while (!status[0]) {  // rank 0 decides when the job is over
    reap(false);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const auto stop_at = std::chrono::steady_clock::now() + timeout;
  auto running = [&] { return std::any_of(status.begin(), status.end(), [](const auto& s) { return !s; }); };
  while (running() && std::chrono::steady_clock::now() < stop_at) {
    reap(false);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  int code = WIFEXITED(*status[0]) ? WEXITSTATUS(*status[0]) : 1;
  for (int r = 0; r < world; ++r) {
    auto& s = status[static_cast<std::size_t>(r)];
    if (!s) {
      kill(pids[static_cast<std::size_t>(r)], SIGKILL);
      std::fprintf(stderr, "modtracker demo: rank %d was still running %lld ms after rank 0 ended: stopped\n", r,
                   static_cast<long long>(timeout.count()));
      int st = 0;
      waitpid(pids[static_cast<std::size_t>(r)], &st, 0);
      code = 1;
      continue;
    }
    if (!WIFEXITED(*s) || WEXITSTATUS(*s) != 0) {
      std::fprintf(stderr, "modtracker demo: rank %d %s\n", r, ended(*s).c_str());
      code = code ? code : 1;
    }
  }
  return code;
}

Rank::Rank(int rank, int world, int port, std::chrono::milliseconds timeout, bool pid_check)
    : rank_(rank), world_(world) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(port);
  options.isServer = false;
  options.waitWorkers = false;
  options.timeout = timeout;  // bounds the training group's rendezvous
  store_ = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", options);
  lt::RankOptions group;
  group.timeout = timeout;
  group.check_processes = pid_check;
  ranks_ = std::make_unique<lt::RankGroup>(store_, rank, world, group);
  try {
    training_ = lt::make_gloo_group(c10::make_intrusive<c10d::PrefixStore>("train", store_), rank, world, timeout);
  } catch (const std::exception& e) {
    const std::string what = e.what();
    training_error_ = what.substr(0, what.find('\n'));
  }
}

void Rank::broadcast(const std::vector<torch::Tensor>& params) {
  for (const auto& p : params) {
    std::vector<torch::Tensor> one{p.data()};
    training_->broadcast(one)->wait();
  }
}

void Rank::average_gradients(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> grads, flat;
  for (const auto& p : params)
    if (p.grad().defined()) {
      grads.push_back(p.grad());
      flat.push_back(p.grad().reshape({-1}));
    }
  if (grads.empty()) return;
  // One allreduce of all gradients: Gloo has no average, so a sum, then a division.
  std::vector<torch::Tensor> one{torch::cat(flat)};
  training_->allreduce(one)->wait();
  one[0].div_(world_);
  std::int64_t at = 0;
  for (auto& g : grads) {
    g.copy_(one[0].narrow(0, at, g.numel()).view_as(g));
    at += g.numel();
  }
}

double Rank::max_difference(const std::vector<torch::Tensor>& params) {
  double local = 0;
  for (const auto& p : params) {
    auto theirs = p.detach().clone();
    std::vector<torch::Tensor> one{theirs};
    training_->broadcast(one)->wait();
    local = std::max(local, (theirs - p.detach()).abs().max().item<double>());
  }
  std::vector<torch::Tensor> worst{torch::tensor({local}, torch::kDouble)};
  c10d::AllreduceOptions max;
  max.reduceOp = c10d::ReduceOp::MAX;
  training_->allreduce(worst, max)->wait();
  return worst[0].item<double>();
}

// The end of a rank's job: the parameters compared across ranks, the
// gather, and on rank 0 the table across ranks and the merged trace.
int report(Rank& job, const lt::Tracker& tracker, const modtracker::Statistics& stats,
                 const modtracker::SpanLog& spans, lt::RankTools tools, const std::vector<torch::Tensor>& params,
                 const std::string& failure, const Outputs& outputs, bool tty) {
  const auto& table = outputs.table;
  const auto& trace_path = outputs.trace_path;
  std::optional<double> difference;
  if (failure.empty()) {
    try {
      difference = job.max_difference(params);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank %d: cannot compare the parameters: %s\n", job.rank(), first_line(e.what()).c_str());
    }
  }
  const auto gathered = job.ranks().gather(tracker, stats, &spans, tools);
  if (job.rank() != 0) {
    for (const auto& p : gathered.problems)  // about rank 0 (no root), or this rank
      std::fprintf(stderr, "rank %d: %s\n", job.rank(), p.message.c_str());
    return failure.empty() && gathered.problems.empty() ? 0 : 1;
  }
  const auto& merged = *gathered.merged;
  std::printf("%s\nacross %zu of %d ranks (gathered in %.1f ms):\n%s", tty ? "\n" : "", merged.records().size(),
              job.world(), std::chrono::duration<double, std::milli>(gathered.elapsed).count(), merged.table(table).c_str());
  std::printf("clocks onto rank 0's:");
  for (const auto& r : merged.records())
    if (r.rank != 0)
      std::printf(" rank %d %+.3f ms (+- %.0f us)", r.rank,
                  std::chrono::duration<double, std::milli>(r.clock_offset).count(),
                  std::chrono::duration<double, std::micro>(r.clock_uncertainty).count());
  std::printf("%s\n", merged.records().size() == 1 ? " (no other rank)" : "");
  if (difference)
    std::printf(*difference == 0 ? "parameters after training: identical on all %d ranks\n"
                                 : "parameters after training: differ across the %d ranks by up to %g\n",
                job.world(), *difference);
  if (!gathered.problems.empty()) std::printf("problems:\n%s", gathered.report().c_str());
  std::ofstream file(trace_path);
  const auto slices = merged.write_trace(file);
  std::printf("trace: %s (%llu slices, a process per rank)\n", std::filesystem::absolute(trace_path).c_str(),
              static_cast<unsigned long long>(slices));
  std::printf("open it at https://ui.perfetto.dev (\"Open trace file\") or in chrome://tracing (\"Load\").\n");
  if (!outputs.report_path.empty()) {
    std::ofstream page(outputs.report_path);
    modtracker::write_report(page, merged, outputs.page);
    page.close();
    if (!page) {
      std::fprintf(stderr, "rank 0: cannot write %s\n", outputs.report_path.c_str());
      return 1;
    }
    std::printf("report: %s (a view per rank, and the spread across ranks)\n",
                std::filesystem::absolute(outputs.report_path).c_str());
  }
  return gathered.complete() && failure.empty() && difference == 0.0 ? 0 : 1;
}

}  // namespace demo
