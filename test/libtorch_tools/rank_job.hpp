// Ranks as threads of one process over a c10d HashStore: a data-parallel
// job with a tracker per rank, whose ranks can play faults, for the ranks'
// tests (ranks_test.cpp: what rank 0 gets; rank_faults_test.cpp: faults).
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <unistd.h>

#include <modtracker/libtorch_tools/ranks.hpp>
#include <modtracker/torch.hpp>

namespace {
namespace lt = modtracker::libtorch;
namespace nn = lt::nn;  // the tutorials' `namespace nn = torch::nn;`, tracked
using namespace std::chrono_literals;
using Kind = modtracker::RankProblem::Kind;

struct NetImpl : nn::Module {
  nn::Linear fc1{register_module("fc1", nn::Linear(4, 16))};
  nn::Linear extra{nullptr};  // a layer some rank's model has (its table differs in shape)
  nn::Linear fc2{register_module("fc2", nn::Linear(16, 2))};
  explicit NetImpl(bool wider = false) {
    if (wider) extra = register_module("extra", nn::Linear(16, 16));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(fc1->forward(x));
    if (extra) x = extra->forward(x);
    return fc2->forward(x);
  }
};
MODTRACKER_MODULE(Net);

// What one rank saw and kept.
struct Rank {
  modtracker::Statistics stats;
  modtracker::SpanLog spans;
  std::vector<float> params;
  std::optional<lt::Gathered> gathered;
  std::chrono::steady_clock::time_point tracker_created;
};

// A rank's own view of the job's store, which can be cut as a network is:
// from then on, each of its operations fails as a dead peer's connection does.
class CuttableStore : public c10d::Store {
 public:
  explicit CuttableStore(c10::intrusive_ptr<c10d::Store> inner) : inner_(std::move(inner)) {}
  void cut() { cut_ = true; }
  void set(const std::string& k, const std::vector<uint8_t>& v) override { live().set(k, v); }
  std::vector<uint8_t> get(const std::string& k) override { return live().get(k); }
  int64_t add(const std::string& k, int64_t v) override { return live().add(k, v); }
  bool deleteKey(const std::string& k) override { return live().deleteKey(k); }
  bool check(const std::vector<std::string>& k) override { return live().check(k); }
  int64_t getNumKeys() override { return live().getNumKeys(); }
  void wait(const std::vector<std::string>& k) override { live().wait(k); }
  void wait(const std::vector<std::string>& k, const std::chrono::milliseconds& t) override { live().wait(k, t); }

 private:
  c10d::Store& live() {
    if (cut_) throw std::runtime_error("Connection reset by peer");
    return *inner_;
  }
  c10::intrusive_ptr<c10d::Store> inner_;
  std::atomic<bool> cut_{false};
};

// hangs: sleeps three timeouts, then gathers. leaves: drops its group
// without gathering. dies: its store is cut (as its host failing would),
// then it drops its group: its heartbeat stops, and nothing says it closed.
enum class Role { normal, wider, hangs, leaves, dies, absent };

struct Job {
  int world;
  std::chrono::milliseconds timeout = 10s;
  std::map<int, Role> roles;
  int steps = 3;
  bool data_parallel = true;  // else each rank trains alone (models of different shapes)
  bool job_group = false;     // gather over the training's group, not a group of the layer's own
  int gathers = 1;            // at the end of training, one after the other (the last is kept)
  bool check_processes = true;  // false: as if every rank ran on a host of its own
  // A FLOP counter on each rank and a memory tracker on rank 1 (one per
  // process: it wraps the CPU allocator), sent with the records.
  bool tools = false;
  bool batch_by_rank = false; // rank r trains on batches of 8 (r + 1) rows, else 8
  std::vector<Rank> ranks = std::vector<Rank>(static_cast<std::size_t>(world));
  c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::HashStore>();
  std::mutex tracking;

  Role role(int r) const { return roles.count(r) ? roles.at(r) : Role::normal; }

  // Gradients averaged over the ranks by allreduce, after rank 0's
  // parameters were broadcast (as DistributedDataParallel does).
  template <class Model>
  void train(int rank, Model net, c10d::ProcessGroup* group) {
    std::vector<torch::Tensor> params = net->parameters();
    for (auto& p : params) {
      std::vector<torch::Tensor> one{p.data()};
      if (group) group->broadcast(one)->wait();
    }
    auto gen = at::detail::createCPUGenerator(static_cast<std::uint64_t>(100 + rank));
    torch::optim::SGD opt(params, 0.1);
    auto& me = ranks[static_cast<std::size_t>(rank)];
    lt::Tracker tracker;
    me.tracker_created = std::chrono::steady_clock::now() - tracker.now();  // its clock's zero
    std::optional<lt::FlopCounter> flops;
    std::optional<lt::MemoryTracker> memory;
    if (tools) flops.emplace(tracker);
    if (tools && rank == 1) {
      memory.emplace(tracker);
      memory->track(*net);
    }
    const std::int64_t batch = batch_by_rank ? 8 * (rank + 1) : 8;
    lt::RankOptions options;
    options.timeout = timeout;
    options.check_processes = check_processes;
    const auto mine = c10::make_intrusive<CuttableStore>(store);
    const auto gather_group =
        job_group ? std::make_unique<lt::RankGroup>(c10::intrusive_ptr<c10d::ProcessGroup>::reclaim_copy(group), mine,
                                                    options)
                  : std::make_unique<lt::RankGroup>(mine, rank, world, options);
    for (int step = 0; step < steps; ++step) {
      {
        // A tracker sees the modules of every thread (as in Python): the
        // ranks take turns to be tracked, one at a time.
        const std::lock_guard<std::mutex> turn(tracking);
        auto scope = tracker.track();
        opt.zero_grad();
        const auto x = torch::randn({batch, 4}, gen);
        net(x).square().mean().backward();
        scope.end();
        for (const auto& t : tracker.drain_transitions()) {
          me.stats.consume(t);
          me.spans.consume(t);
        }
      }
      for (auto& p : params) {
          std::vector<torch::Tensor> g{p.grad()};
          if (!group) continue;
          group->allreduce(g)->wait();
          p.grad().div_(world);
        }
      opt.step();
    }
    for (const auto& p : params) {
      const auto flat = p.detach().flatten().contiguous();
      me.params.insert(me.params.end(), flat.data_ptr<float>(), flat.data_ptr<float>() + flat.numel());
    }
    if (role(rank) == Role::hangs) std::this_thread::sleep_for(timeout * 3);
    if (role(rank) == Role::leaves) return;  // its group closes: its connections with it
    if (role(rank) == Role::dies) return mine->cut();
    if (flops) lt::annotate(me.stats, *flops);
    if (memory) lt::annotate(me.stats, *memory);
    for (int g = 0; g < gathers; ++g)
      me.gathered = gather_group->gather(tracker, me.stats, &me.spans,
                                         {flops ? &*flops : nullptr, memory ? &*memory : nullptr});
  }

  void run() {
    {
      // LibTorch's lazy globals (the default generator, the allocators) made
      // here first: the rank threads then start after them (LibTorch is not
      // instrumented, so ThreadSanitizer cannot see its own once-only guards).
      Net warm;
      warm(torch::randn({1, 4}, torch::requires_grad())).sum().backward();
    }
    std::vector<std::thread> threads;
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(world));
    for (int r = 0; r < world; ++r) {
      if (role(r) == Role::absent) continue;
      threads.emplace_back([this, r, &errors] {
        try {
          c10::intrusive_ptr<c10d::ProcessGroup> group;
          if (data_parallel)
            group = lt::make_gloo_group(c10::make_intrusive<c10d::PrefixStore>("train", store), r, world, 20s);
          train(r, Net(role(r) == Role::wider), group.get());
        } catch (...) {
          errors[static_cast<std::size_t>(r)] = std::current_exception();
        }
      });
    }
    for (auto& t : threads) t.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
  }
  const lt::Gathered& root() const { return *ranks[0].gathered; }
};

struct Slice {
  std::string name;
  double ts;
  int tid;
};

// The merged trace's slices by process id.
std::map<int, std::vector<Slice>> slices_by_pid(const std::string& json, std::map<int, std::string>* names = nullptr) {
  std::map<int, std::vector<Slice>> out;
  const auto doc = nlohmann::json::parse(json);
  for (const auto& e : doc.at("traceEvents")) {
    const auto ph = e.at("ph").get<std::string>();
    if (ph == "X" || ph == "b") out[e.at("pid").get<int>()].push_back({e.at("name"), e.at("ts"), e.at("tid")});
    if (ph == "M" && e.at("name") == "process_name" && names) (*names)[e.at("pid")] = e.at("args").at("name");
  }
  return out;
}

}  // namespace
