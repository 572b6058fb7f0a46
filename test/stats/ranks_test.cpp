// Ranks merged, without any transport: records made by hand, whose
// spreads, straggler, table and trace are known.
#include <chrono>
#include <sstream>
#include <stdexcept>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

import modtracker;
import modtracker.stats;

#include <doctest/doctest.h>

using namespace modtracker;
using namespace std::chrono_literals;

namespace {

ModuleStats row(std::string fqn, std::uint64_t calls, std::chrono::nanoseconds fw, std::chrono::nanoseconds bw) {
  ModuleStats r;
  r.fqn = std::move(fqn);
  r.fw_calls = r.bw_calls = calls;
  r.fw_inclusive = r.fw_exclusive = fw;
  r.bw_inclusive = r.bw_exclusive = bw;
  return r;
}

Span span(std::string_view fqn, Phase phase, std::chrono::nanoseconds start, std::chrono::nanoseconds end) {
  return Span{fqn, phase, 0, 1, 0, start, end, {}, true, 0};
}

// Three ranks of Net { fc }; rank 2's fc backward is slow.
std::vector<RankRecord> three_ranks() {
  std::vector<RankRecord> out;
  const std::chrono::nanoseconds fc_bw[] = {10ms, 12ms, 40ms};
  for (int r : {2, 0, 1}) {  // out of order: merged sorts by rank
    RankRecord rec;
    rec.rank = r;
    rec.host = "h";
    rec.pid = 100 + r;
    rec.rows = {row("Net", 5, 20ms + r * 1ms, 30ms), row("Net.fc", 5, 10ms, fc_bw[r])};
    rec.spans.add(span("Net.fc", Phase::forward, 1ms, 2ms));
    rec.spans.add(span("Net", Phase::forward, 0ms, 3ms));
    rec.clock_offset = std::chrono::milliseconds(-100 * r);  // rank r's clock runs 100 ms x r ahead
    out.push_back(std::move(rec));
  }
  return out;
}

}  // namespace

TEST_CASE("ranks merged: per module and phase min, median, max and the slowest rank") {
  const CrossRankStatistics merged(three_ranks());
  REQUIRE(merged.records().size() == 3);
  CHECK(merged.records()[0].rank == 0);
  CHECK(merged.records()[2].rank == 2);
  const auto* fc = merged.find("Net.fc");
  REQUIRE(fc != nullptr);
  CHECK(fc->bw.ranks == 3);
  CHECK(fc->bw.min == 10ms);
  CHECK(fc->bw.median == 12ms);
  CHECK(fc->bw.max == 40ms);
  CHECK(fc->bw.slowest == 2);
  CHECK(fc->fw.calls_min == 5);
  const auto* net = merged.find("Net");
  CHECK(net->fw.slowest == 2);  // 22 ms
  CHECK(net->fw.median == 21ms);
  CHECK(merged.find("Nope") == nullptr);
  const auto s = merged.straggler();
  REQUIRE(s);
  CHECK(s->fqn == "Net.fc");
  CHECK(s->rank == 2);
  CHECK(s->phase == Phase::backward);
  CHECK(s->time == 40ms);
  CHECK(s->median == 12ms);
  CHECK(merged.shape_differences().empty());
  const auto table = merged.table();
  INFO(table);
  CHECK(table.find("module  ranks  fw calls") == 0);
  CHECK(table.find("\n  fc        3         5  10.0 ms    10.0 ms  10.0 ms        ") != std::string::npos);
  CHECK(table.find("slowest rank: 2 (") != std::string::npos);
  CHECK(table.find("straggler: rank 2 in Net.fc (backward, its own time): 40.0 ms against a median of 12.0 ms") !=
        std::string::npos);
  CHECK(merged.table({.max_depth = 1}).find("\n  fc ") == std::string::npos);
}

TEST_CASE("ranks merged: the median of an even count is the mean of the middle two") {
  auto records = three_ranks();
  records.pop_back();  // ranks 2 and 0 remain
  const CrossRankStatistics merged(std::move(records));
  CHECK(merged.find("Net.fc")->bw.median == 25ms);  // (10 + 40) / 2
}

TEST_CASE("ranks merged: modules of one rank only are rows of their own, and the rank is named") {
  auto records = three_ranks();
  records[1].rows.push_back(row("Net.extra", 5, 1ms, 1ms));  // rank 0's: the reference
  records[0].rows.pop_back();                                 // rank 2 lacks Net.fc
  const CrossRankStatistics merged(std::move(records));
  const auto diffs = merged.shape_differences();
  REQUIRE(diffs.size() == 2);
  CHECK(diffs[0].rank == 1);
  CHECK(diffs[0].kind == RankProblem::Kind::differs);
  CHECK(diffs[0].message.find("1 module(s) missing (Net.extra)") != std::string::npos);
  CHECK(diffs[1].rank == 2);
  CHECK(diffs[1].message.find("2 module(s) missing (Net.extra, Net.fc)") != std::string::npos);
  CHECK(merged.find("Net.extra")->fw.ranks == 1);
  CHECK(merged.find("Net.extra")->fw.slowest == 0);
  INFO(merged.table());
  CHECK(merged.table().find("\n  extra    1/3") != std::string::npos);
}

TEST_CASE("ranks merged: one trace, a process per rank, each rank's spans on rank 0's clock") {
  const CrossRankStatistics merged(three_ranks());
  std::ostringstream out;
  CHECK(merged.write_trace(out) == 6);
  const auto doc = nlohmann::json::parse(out.str());
  std::map<int, std::vector<double>> starts;
  std::map<int, std::string> names;
  for (const auto& e : doc.at("traceEvents")) {
    if (e.at("ph") == "X") starts[e.at("pid").get<int>()].push_back(e.at("ts").get<double>());
    if (e.at("ph") == "M" && e.at("name") == "process_name") names[e.at("pid").get<int>()] = e.at("args").at("name");
  }
  CHECK(names == std::map<int, std::string>{{1, "rank 0 (h, pid 100)"}, {2, "rank 1 (h, pid 101)"}, {3, "rank 2 (h, pid 102)"}});
  CHECK(starts[1] == std::vector<double>{1000, 0});
  CHECK(starts[2] == std::vector<double>{-99000, -100000});
  CHECK(starts[3] == std::vector<double>{-199000, -200000});
}

TEST_CASE("ranks merged: a rank that sent no spans while rank 0 did is named (its trace process is empty)") {
  auto records = three_ranks();
  records[2].spans.clear();  // rank 1
  const CrossRankStatistics merged(std::move(records));
  const auto diffs = merged.shape_differences();
  REQUIRE(diffs.size() == 1);
  CHECK(diffs[0].rank == 1);
  CHECK(diffs[0].message.find("rank 1 sent no spans while rank 0 did") != std::string::npos);
}

TEST_CASE("ranks merged: FLOPs and memory per module, min / median / max and the rank with the most") {
  auto records = three_ranks();  // in the order ranks 2, 0, 1
  const std::uint64_t fc_fw[] = {300, 100, 200}, kept[] = {64, 64, 64};
  for (std::size_t i = 0; i < 3; ++i) {
    auto& fc = records[i].rows[1];
    fc.fw_flops = fc_fw[i];
    fc.bw_flops = 2 * fc_fw[i];
    fc.fw_kept_bytes = kept[i];
    fc.fw_peak_bytes = 1000 * (i + 1);  // rank 2: 1000, rank 0: 2000, rank 1: 3000
    fc.bw_peak_bytes = 1500;
  }
  records[0].rows[0].bw_peak_bytes = 2500;  // rank 2's Net, backward
  const CrossRankStatistics merged(std::move(records));
  const auto* fc = merged.find("Net.fc");
  CHECK(fc->fw_flops.ranks == 3);
  CHECK(fc->fw_flops.min == 100);
  CHECK(fc->fw_flops.median == 200);
  CHECK(fc->fw_flops.max == 300);
  CHECK(fc->fw_flops.most == 2);
  CHECK(fc->bw_flops.max == 600);
  CHECK(fc->kept.min == 64);
  CHECK(fc->kept.max == 64);
  CHECK(fc->kept.most == 0);  // a tie: the lowest rank
  CHECK(fc->peak.min == 1500);  // rank 2: the higher of 1000 forward and 1500 backward
  CHECK(fc->peak.median == 2000);
  CHECK(fc->peak.max == 3000);
  CHECK(fc->peak.most == 1);
  const auto* net = merged.find("Net");
  CHECK(net->fw_flops.ranks == 0);  // no rank counted it
  CHECK(net->fw_flops.most == -1);
  CHECK(net->peak.ranks == 1);
  const auto peak = merged.peak();
  REQUIRE(peak);
  CHECK(peak->rank == 1);
  CHECK(peak->fqn == "Net.fc");
  CHECK(peak->phase == Phase::forward);
  CHECK(peak->bytes == 3000);
  CHECK(peak->median == 2500);  // of 2000 (rank 0), 3000 (rank 1), 2500 (rank 2)
  const auto table = merged.table();
  INFO(table);
  CHECK(table.find("\nFLOPs across ranks") != std::string::npos);
  // A module no rank counted shows dashes; where the ranks agree, no rank has the most.
  CHECK(table.find("\nNet          -          -       -     -       -          -       -     -\n") != std::string::npos);
  CHECK(table.find("\n  fc       100        200     300     2     200        400     600     2\n") != std::string::npos);
  CHECK(table.find("\n  fc        64 B         64 B      64 B     -  1.46 KiB     1.95 KiB  2.93 KiB     1\n") !=
        std::string::npos);
  CHECK(table.find("highest peak: rank 1, 2.93 KiB in Net.fc (forward); median of the ranks' highest peaks 2.44 KiB\n") !=
        std::string::npos);
  // Without the tools' numbers, no such tables or line.
  const CrossRankStatistics plain(three_ranks());
  CHECK_FALSE(plain.peak());
  CHECK(plain.table().find("across ranks") == std::string::npos);
  CHECK(plain.table().find("highest peak") == std::string::npos);
}

TEST_CASE("ranks merged: the trace carries each rank's span FLOPs and its memory track, on rank 0's clock") {
  auto records = three_ranks();
  records[1].span_flops = {7, 0};                                    // rank 0: Net.fc 7 FLOPs, Net none
  records[2].memory = {{std::chrono::nanoseconds(5ms), 4096}};       // rank 1
  records[0].span_flops = {1};                                       // rank 2: not one per span: ignored
  const CrossRankStatistics merged(std::move(records));
  std::ostringstream out;
  merged.write_trace(out);
  const auto doc = nlohmann::json::parse(out.str());
  std::vector<std::tuple<int, std::string, std::uint64_t>> flops;
  std::vector<std::tuple<int, double, double>> counters;
  for (const auto& e : doc.at("traceEvents")) {
    if (e.at("ph") == "X" && e.at("args").contains("flops"))
      flops.emplace_back(e.at("pid").get<int>(), e.at("name").get<std::string>(), e.at("args").at("flops").get<std::uint64_t>());
    if (e.at("ph") == "C")
      counters.emplace_back(e.at("pid").get<int>(), e.at("ts").get<double>(), e.at("args").at("live bytes").get<double>());
  }
  CHECK(flops == std::vector<std::tuple<int, std::string, std::uint64_t>>{{1, "Net.fc", 7}});
  CHECK(counters == std::vector<std::tuple<int, double, double>>{{2, -95000.0, 4096.0}});  // 5 ms - 100 ms
}

TEST_CASE("ranks merged: two records of one rank are refused") {
  auto records = three_ranks();
  records[1].rank = 2;
  CHECK_THROWS_WITH_AS(CrossRankStatistics(std::move(records)), "modtracker: two records of rank 2",
                       std::invalid_argument);
}

TEST_CASE("a span log keeps its own names: copies and sources may go") {
  SpanLog log;
  {
    std::string name = "Net.fc";
    log.add(span(name, Phase::forward, 0ms, 1ms));
    log.add(span(name, Phase::backward, 2ms, 3ms));
    name = "overwritten";
  }
  SpanLog copy = log;
  log.clear();
  REQUIRE(copy.size() == 2);
  CHECK(copy.spans()[0].fqn == "Net.fc");
  CHECK(copy.spans()[1].fqn.data() == copy.spans()[0].fqn.data());  // one name, kept once
  CHECK(copy.spans()[1].phase == Phase::backward);
}
