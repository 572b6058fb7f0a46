// Ranks as threads of one process over a c10d HashStore: data-parallel
// training with a tracker per rank, gathered to rank 0, and the faults.
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

#include <modtracker/libtorch/ranks.hpp>
#include <modtracker/torch.hpp>

#include <doctest/doctest.h>

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

TEST_CASE("ranks as threads: every rank's table and trace reach rank 0, parameters equal everywhere") {
  for (const int world : {2, 4}) {
    CAPTURE(world);
    Job job{world};
    job.job_group = world == 2;  // the job's own group at 2 ranks, the layer's at 4
    job.gathers = world == 4 ? 2 : 1;  // the second of two gathers is checked below
    job.run();
    // A gather's store keys are gone once read.
    CHECK_FALSE(job.store->check({"modtracker/g1/h1"}));
    CHECK_FALSE(job.store->check({"modtracker/g1/a1"}));
    for (int r = 1; r < world; ++r) {
      CHECK(job.ranks[static_cast<std::size_t>(r)].params == job.ranks[0].params);  // bit for bit
      REQUIRE(job.ranks[static_cast<std::size_t>(r)].gathered);
      CHECK(job.ranks[static_cast<std::size_t>(r)].gathered->problems.empty());
      CHECK_FALSE(job.ranks[static_cast<std::size_t>(r)].gathered->merged);
    }
    const auto& root = job.root();
    INFO(root.report());
    REQUIRE(root.complete());
    const auto& merged = *root.merged;
    REQUIRE(merged.records().size() == static_cast<std::size_t>(world));
    // Each rank's counts are its own table's.
    for (int r = 0; r < world; ++r) {
      const auto& mine = job.ranks[static_cast<std::size_t>(r)];
      CHECK(merged.records()[static_cast<std::size_t>(r)].rank == r);
      CHECK(merged.records()[static_cast<std::size_t>(r)].pid == getpid());
      for (const auto* row : mine.stats.rows()) {
        const auto* across = merged.find(row->fqn);
        REQUIRE(across != nullptr);
        const auto* there = across->per_rank[static_cast<std::size_t>(r)];
        REQUIRE(there != nullptr);
        CHECK(there->fw_calls == row->fw_calls);
        CHECK(there->bw_calls == row->bw_calls);
        CHECK(there->fw_inclusive == row->fw_inclusive);
        CHECK(there->bw_exclusive == row->bw_exclusive);
      }
    }
    const auto* fc1 = merged.find("Net.fc1");
    REQUIRE(fc1 != nullptr);
    CHECK(fc1->fw.ranks == static_cast<std::size_t>(world));
    CHECK(fc1->fw.calls_min == 3);
    CHECK(fc1->fw.calls_max == 3);
    CHECK(fc1->fw.min <= fc1->fw.median);
    CHECK(fc1->fw.median <= fc1->fw.max);
    CHECK(fc1->bw.slowest >= 0);
    const auto table = merged.table();
    CHECK(table.find("fw median") != std::string::npos);
    CHECK(table.find("slowest rank: ") != std::string::npos);
    // The clocks: rank r's tracker started (tracker_created[r] - [0]) after rank 0's.
    for (int r = 1; r < world; ++r) {
      const auto& rec = merged.records()[static_cast<std::size_t>(r)];
      const auto expected = job.ranks[static_cast<std::size_t>(r)].tracker_created - job.ranks[0].tracker_created;
      CHECK(rec.clock_uncertainty < 50ms);
      CHECK(std::chrono::abs(rec.clock_offset - expected) < rec.clock_uncertainty + 5ms);
    }
    // The trace: a process per rank, each with exactly that rank's slices, shifted onto rank 0's clock.
    std::ostringstream out;
    const auto written = merged.write_trace(out);
    std::map<int, std::string> names;
    const auto by_pid = slices_by_pid(out.str(), &names);
    REQUIRE(by_pid.size() == static_cast<std::size_t>(world));
    std::uint64_t total = 0;
    for (int r = 0; r < world; ++r) {
      const auto& spans = job.ranks[static_cast<std::size_t>(r)].spans.spans();
      const auto& got = by_pid.at(r + 1);
      CHECK(names.at(r + 1).starts_with("rank " + std::to_string(r) + " ("));
      REQUIRE(got.size() == spans.size());
      total += got.size();
      const auto offset = merged.records()[static_cast<std::size_t>(r)].clock_offset;
      for (std::size_t i = 0; i < spans.size(); ++i) {
        CHECK(got[i].name == spans[i].fqn);
        CHECK(got[i].ts == doctest::Approx(static_cast<double>((spans[i].start + offset).count()) / 1e3).epsilon(1e-9));
      }
    }
    CHECK(written == total);
  }
}

TEST_CASE("ranks: FLOPs and memory per module across ranks, the highest peak, and both in the merged trace") {
  Job job{3};
  job.tools = true;
  job.batch_by_rank = true;  // rank r: batches of 8 (r + 1) rows, so its FLOPs are (r + 1) times rank 0's
  job.run();
  const auto& root = job.root();
  INFO(root.report());
  REQUIRE(root.complete());
  const auto& merged = *root.merged;
  // Net.fc1 is Linear(4, 16): 2 x rows x 4 x 16 FLOPs a forward, 3 steps;
  // its backward needs only the weight's gradient (its input is data): as many.
  const auto* fc1 = merged.find("Net.fc1");
  REQUIRE(fc1 != nullptr);
  const std::uint64_t per_row = 2 * 4 * 16 * 3;
  CHECK(fc1->fw_flops.ranks == 3);
  CHECK(fc1->fw_flops.min == per_row * 8);
  CHECK(fc1->fw_flops.median == per_row * 16);
  CHECK(fc1->fw_flops.max == per_row * 24);
  CHECK(fc1->fw_flops.most == 2);
  CHECK(fc1->bw_flops.max == per_row * 24);
  CHECK(fc1->bw_flops.most == 2);
  // Memory: rank 1's (the only rank with a memory tracker here; the demo's
  // ranks, processes, all have one).
  const auto* net = merged.find("Net");
  REQUIRE(net != nullptr);
  CHECK(net->kept.ranks == 1);
  CHECK(net->kept.most == 1);
  CHECK(net->kept.max == *job.ranks[1].stats.find("Net")->fw_kept_bytes);
  CHECK(net->kept.max > 0);
  CHECK(net->peak.ranks == 1);
  CHECK(net->peak.median == net->peak.max);
  const auto peak = merged.peak();
  REQUIRE(peak);
  CHECK(peak->rank == 1);
  CHECK(peak->bytes >= net->peak.max);
  CHECK(peak->median == peak->bytes);
  const auto table = merged.table();
  INFO(table);
  CHECK(table.find("\nFLOPs across ranks") != std::string::npos);
  CHECK(table.find("module  fw min  fw median  fw max  most  bw min  bw median  bw max  most\n") != std::string::npos);
  CHECK(table.find("\nmemory across ranks") != std::string::npos);
  CHECK(table.find("module  kept min  kept median  kept max  most  peak min  peak median  peak max  most\n") !=
        std::string::npos);
  CHECK(table.find("highest peak: rank 1, ") != std::string::npos);
  // The trace: each rank's slices carry their FLOPs, and each rank has a memory track.
  std::ostringstream out;
  merged.write_trace(out);
  const auto doc = nlohmann::json::parse(out.str());
  std::map<int, std::uint64_t> fc1_forward_flops;
  std::map<int, std::size_t> memory_samples;
  for (const auto& e : doc.at("traceEvents")) {
    if (e.at("ph") == "X" && e.at("name") == "Net.fc1" && e.at("cat") == "forward")
      fc1_forward_flops[e.at("pid").get<int>()] += e.at("args").at("flops").get<std::uint64_t>();
    if (e.at("ph") == "C" && e.at("name") == "memory") ++memory_samples[e.at("pid").get<int>()];
  }
  for (int r = 0; r < 3; ++r) {
    CHECK(fc1_forward_flops[r + 1] == per_row * 8 * static_cast<std::uint64_t>(r + 1));
    CHECK(memory_samples[r + 1] == merged.records()[static_cast<std::size_t>(r)].memory.size());
    CHECK((memory_samples[r + 1] > 0) == (r == 1));
  }
}

TEST_CASE("ranks: a rank whose model differs is merged by module name and reported") {
  Job job{2};
  job.roles[1] = Role::wider;
  job.data_parallel = false;  // an allreduce of gradients of different sizes would abort the process
  job.run();
  const auto& root = job.root();
  REQUIRE(root.merged);
  CHECK(root.merged->records().size() == 2);
  REQUIRE(root.problems.size() == 1);
  CHECK(root.problems[0].rank == 1);
  CHECK(root.problems[0].kind == Kind::differs);
  CHECK(root.problems[0].message.find("1 module(s) only there (Net.extra)") != std::string::npos);
  CHECK(root.merged->find("Net.extra")->per_rank[0] == nullptr);
  CHECK(root.merged->find("Net.extra")->per_rank[1]->fw_calls == 3);
  const auto table = root.merged->table();
  INFO(table);
  const auto line = table.substr(table.find("\n  extra "));
  CHECK(line.substr(0, line.find('\n', 1)).find(" 1/2 ") != std::string::npos);
}

TEST_CASE("ranks: a rank that never joins is named by every gather, which keeps what it has") {
  Job job{3};
  job.roles[2] = Role::absent;
  job.data_parallel = false;
  job.timeout = 500ms;
  job.run();
  const auto& root = job.root();
  INFO(root.report());
  REQUIRE(root.merged);
  CHECK(root.merged->records().size() == 1);  // rank 0's own
  REQUIRE(root.problems.size() == 1);
  CHECK(root.problems[0].rank == 2);
  CHECK(root.problems[0].kind == Kind::absent);
  CHECK(root.problems[0].message.find("rank 2 never joined the group 'modtracker' within 500 ms") != std::string::npos);
  const auto& other = *job.ranks[1].gathered;
  CHECK_FALSE(other.merged);
  REQUIRE(other.problems.size() == 2);
  CHECK(other.problems[0].kind == Kind::absent);
  CHECK(other.problems[1].kind == Kind::no_root);
}

namespace {
// Rank 0 merged every rank but `missing`, reported alone as timed out; the last rank gathered cleanly.
void check_one_timed_out(const Job& job, int missing) {
  const auto& root = job.root();
  INFO(root.report());
  REQUIRE(root.merged);
  REQUIRE(root.merged->records().size() == static_cast<std::size_t>(job.world - 1));
  for (const auto& record : root.merged->records()) CHECK(record.rank != missing);
  REQUIRE(root.problems.size() == 1);
  CHECK(root.problems[0].rank == missing);
  CHECK(root.problems[0].kind == Kind::timed_out);
  CHECK(job.ranks.back().gathered->problems.empty());
}
}  // namespace

TEST_CASE("ranks: a rank that hangs is reported by rank 0 within the timeout, and the others arrive") {
  Job job{3};
  job.roles[1] = Role::hangs;  // sleeps three timeouts, then gathers: a rank before another that is on time
  job.timeout = 500ms;
  job.run();
  check_one_timed_out(job, 1);
  const auto& root = job.root();
  CHECK(root.problems[0].message.find("rank 1 did not arrive at gather 1 within 500 ms") != std::string::npos);
  CHECK(root.elapsed < 500ms + 1500ms);  // the deadline, and a noisy machine's slack
  // The late rank learns that rank 0 did not take its record, within twice its timeout.
  const auto& late = *job.ranks[1].gathered;
  REQUIRE(late.problems.size() == 1);
  CHECK(late.problems[0].kind == Kind::no_root);
  // Rank 0 had gathered and closed its group by then: that is what the late rank hears.
  CHECK(late.problems[0].message.find("it closed its group") != std::string::npos);
  CHECK(late.elapsed < 1000ms + 1500ms);
}

namespace {
// Rank 0 merged every rank but `missing`, reported alone as lost (`why`)
// well within the timeout; the last rank gathered cleanly.
void check_one_lost(const Job& job, int missing, const std::string& why) {
  const auto& root = job.root();
  INFO(root.report());
  REQUIRE(root.merged);
  REQUIRE(root.merged->records().size() == static_cast<std::size_t>(job.world - 1));
  for (const auto& record : root.merged->records()) CHECK(record.rank != missing);
  REQUIRE(root.problems.size() == 1);
  CHECK(root.problems[0].rank == missing);
  CHECK(root.problems[0].kind == Kind::lost);
  CHECK(root.problems[0].message.find("rank " + std::to_string(missing) + " did not arrive at gather 1: " + why) !=
        std::string::npos);
  CHECK(root.elapsed < job.timeout);
  CHECK(job.ranks.back().gathered->problems.empty());
}
}  // namespace

TEST_CASE("ranks: a rank that closes its group without gathering is lost at once, the ranks after it still arrive") {
  Job job{4};
  job.roles[2] = Role::leaves;  // trains, then drops its group without gathering
  job.timeout = 10s;
  job.check_processes = false;
  job.run();
  check_one_lost(job, 2, "it closed its group (its RankGroup ended) without reaching this gather");
}

TEST_CASE("ranks: a rank whose heartbeat stops (its host or network failed) is lost, with no process id to check") {
  Job job{3};
  job.roles[1] = Role::dies;  // rank 1, before another rank that arrives
  job.timeout = 4s;           // its heartbeat every 500 ms: lost after 2 s without a beat
  job.check_processes = false;
  job.run();
  check_one_lost(job, 1, "its heartbeat stopped ");
  CHECK(job.root().elapsed >= 2s);  // not before four intervals without a beat
}

TEST_CASE("ranks: a hung rank whose heartbeat goes on is timed out, not lost, with no process id to check") {
  Job job{3};
  job.roles[1] = Role::hangs;
  job.timeout = 500ms;
  job.check_processes = false;
  job.run();
  check_one_timed_out(job, 1);
  CHECK(job.root().problems[0].message.find("(its heartbeat goes on: hung, or not calling gather())") !=
        std::string::npos);
}

TEST_CASE("ranks: the heartbeat runs while the group lives, and its end is marked") {
  auto store = c10::make_intrusive<c10d::HashStore>();
  {
    lt::RankOptions options;
    options.heartbeat = 10ms;
    lt::RankGroup group(store, 0, 1, options);
    const auto first = store->add("modtracker/beat/0", 0);
    std::this_thread::sleep_for(200ms);
    CHECK(store->add("modtracker/beat/0", 0) > first);
    CHECK_FALSE(store->check({"modtracker/closed/0"}));
  }
  const auto last = store->add("modtracker/beat/0", 0);
  CHECK(store->check({"modtracker/closed/0"}));
  std::this_thread::sleep_for(50ms);
  CHECK(store->add("modtracker/beat/0", 0) == last);  // the thread ended with the group
}

TEST_CASE("ranks: a store that already holds the group (a stale FileStore path) is refused with the fix") {
  const auto path = (std::filesystem::temp_directory_path() / ("modtracker-stale-" + std::to_string(getpid()))).string();
  std::filesystem::remove(path);
  {
    // An earlier job on the path that died without cleaning up: its store is never closed.
    // (Held by statics: kept, as a dead process keeps its file, and not a leak to LeakSanitizer.)
    static auto* earlier = c10::make_intrusive<c10d::FileStore>(path, 2).release();
    static auto* group = new lt::RankGroup(c10::intrusive_ptr<c10d::Store>::reclaim_copy(earlier), 0, 1,
                                           {500ms, "modtracker"});
    CHECK(group->world() == 1);
  }
  auto store = c10::make_intrusive<c10d::FileStore>(path, 1);
  try {
    lt::RankGroup group(store, 0, 1, {500ms, "modtracker"});
    FAIL("a stale store was taken");
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    CHECK(what.find(path) != std::string::npos);
    CHECK(what.find("stale") != std::string::npos);
    CHECK(what.find("fresh path") != std::string::npos);
  }
  // Another name on the same store is a group of its own.
  lt::RankGroup other(store, 0, 1, {500ms, "second"});
  CHECK(other.world() == 1);
  std::filesystem::remove(path);
}

TEST_CASE("ranks: bad arguments are refused with what is wrong") {
  auto store = c10::make_intrusive<c10d::HashStore>();
  CHECK_THROWS_WITH_AS(lt::RankGroup(store, 2, 2), doctest::Contains("rank 2 of a world of 2"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(lt::RankGroup(c10::intrusive_ptr<c10d::Store>(), 0, 1), doctest::Contains("null store"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)lt::make_gloo_group(store, -1, 2, 1s), doctest::Contains("rank -1 of a world of 2"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(lt::RankGroup(c10::intrusive_ptr<c10d::ProcessGroup>(), store),
                       doctest::Contains("null process group"), std::invalid_argument);
}

TEST_CASE("ranks: a rank that speaks another protocol is refused before any record moves, and told why") {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::optional<lt::Gathered> root;
  std::string answer;
  std::thread other([&] {
    lt::RankGroup group(store, 1, 2, {2s, "modtracker"});
    // What another build would post: a header of protocol version 99, announcing 64 bytes.
    const std::string header = std::to_string(0x6d6f64747261636b) + " 99 1 2 1 64 1 0 ";
    store->set("modtracker/g1/h1", std::vector<std::uint8_t>(header.begin(), header.end()));
    store->wait({"modtracker/g1/a1"}, 5s);
    const auto bytes = store->get("modtracker/g1/a1");
    answer.assign(bytes.begin(), bytes.end());
  });
  {
    lt::RankGroup group(store, 0, 2, {2s, "modtracker"});
    lt::Tracker tracker;
    modtracker::Statistics stats;
    root = group.gather(tracker, stats);
  }
  other.join();
  INFO(root->report());
  REQUIRE(root->problems.size() == 1);
  CHECK(root->problems[0].rank == 1);
  CHECK(root->problems[0].kind == Kind::rejected);
  CHECK(root->problems[0].message.find("another protocol (version 99, this rank 2)") != std::string::npos);
  CHECK(root->merged->records().size() == 1);
  CHECK(answer.starts_with("0 it speaks another protocol"));
  CHECK(root->elapsed < 1500ms);  // refused at once, not timed out
}
