// Ranks as threads of one process: what rank 0 gets from a gather (every
// rank's table, FLOPs and memory across ranks, the merged trace).
#include "rank_job.hpp"

#include <doctest/doctest.h>

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
    CHECK(root.received_bytes > 0);  // the other ranks' records
    CHECK(job.ranks[1].gathered->received_bytes == 0);
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
