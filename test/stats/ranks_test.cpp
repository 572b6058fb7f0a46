// Ranks merged, without any transport: records made by hand, whose
// spreads, straggler, table and trace are known.
#include <chrono>
#include <sstream>
#include <stdexcept>

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
