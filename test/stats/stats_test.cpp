// The statistics layer on the reference backend: spans, tables, traces.
#include <algorithm>
#include <chrono>
#include <sstream>

#include <nlohmann/json.hpp>

#include "support/reference.hpp"

import modtracker.stats;

#include <doctest/doctest.h>

using namespace support;
using namespace std::chrono_literals;

namespace {
// Root { a { x }, b } with a body that takes a little time in each module.
struct Program {
  Backend b;
  std::shared_ptr<Module> x = b.module("X"), a = b.module("A", {{"x", x}}), bb = b.module("B"),
                          root = b.module("Root", {{"a", a}, {"b", bb}});
  static Values busy(const Values& v) {
    const auto until = std::chrono::steady_clock::now() + 20us;
    while (std::chrono::steady_clock::now() < until) {
    }
    return v;
  }
  Values run(const Values& in) {
    return b.call(*root, in, [&](const Values& v) {
      auto h = b.call(*a, busy(v), [&](const Values& w) { return b.call(*x, busy(w), busy); });
      return b.call(*bb, h, busy);
    });
  }
};
}  // namespace

TEST_CASE("natural order: digit runs as numbers, a module right before its children") {
  CHECK(natural_less("layer.2", "layer.10"));
  CHECK_FALSE(natural_less("layer.10", "layer.2"));
  CHECK(natural_less("net", "net.0"));
  CHECK(natural_less("net.0.mlp", "net.1"));
  CHECK(natural_less("net.9.z", "net.10"));
  CHECK_FALSE(natural_less("a", "a"));
}

TEST_CASE("units are chosen for reading") {
  CHECK(format_duration(950ns) == "950 ns");
  CHECK(format_duration(1500ns) == "1.50 us");
  CHECK(format_duration(25ms) == "25.0 ms");
  CHECK(format_duration(3s) == "3.00 s");
  CHECK(format_count(999) == "999");
  CHECK(format_count(16600) == "16.6 K");
  CHECK(format_bytes(512) == "512 B");
  CHECK(format_bytes(3 * 1024 * 1024) == "3.00 MiB");
  CHECK(column_from_name("bw_excl") == Column::bw_exclusive);
  CHECK(column_name(Column::fw_inclusive) == "fw_incl");
  CHECK_FALSE(column_from_name("nope"));
}

TEST_CASE("statistics add up: exclusive times of a subtree sum to the root's inclusive time") {
  Program p;
  ReferenceTracker t(p.b);
  Statistics stats;
  auto scope = t.track();
  for (int i = 0; i < 3; ++i) p.run({p.b.value(false)});
  stats.consume_all(t.drain_transitions());
  const auto* root = stats.find("Root");
  REQUIRE(root != nullptr);
  CHECK(root->fw_calls == 3);
  CHECK(stats.find("Root.a.x")->fw_calls == 3);
  std::chrono::nanoseconds excl{};
  for (const auto* r : stats.rows()) excl += r->fw_exclusive;
  CHECK(excl == root->fw_inclusive);
  CHECK(stats.total(Phase::forward) == root->fw_inclusive);
  const auto* a = stats.find("Root.a");
  CHECK(a->fw_inclusive == a->fw_exclusive + stats.find("Root.a.x")->fw_inclusive);
  CHECK(a->fw_exclusive >= 3 * 20us);
  CHECK(stats.activations() == 12);
}

TEST_CASE("backward spans nest like forward ones and add up too") {
  Program p;
  ReferenceTracker t(p.b);
  Statistics stats;
  auto scope = t.track();
  auto x = p.b.value(true);
  auto y = p.b.call(*p.root, {x}, [&](const Values& v) { return p.b.call(*p.a, v); });
  p.b.backward({y[0], x});
  stats.consume_all(t.drain_transitions());
  CHECK(stats.find("Root.a")->bw_calls == 1);
  CHECK(stats.find("Root")->bw_inclusive == stats.find("Root")->bw_exclusive + stats.find("Root.a")->bw_inclusive);
}

TEST_CASE("table: tree order with indentation, depth limit, sort by a column, totals") {
  Program p;
  ReferenceTracker t(p.b);
  Statistics stats;
  auto scope = t.track();
  p.run({p.b.value(false)});
  stats.consume_all(t.drain_transitions());
  stats.at("Root").params_trainable = 1234;
  const auto tree = stats.table();
  CHECK(tree.find("Root ") != std::string::npos);
  CHECK(tree.find("\n  a ") != std::string::npos);
  CHECK(tree.find("\n    x ") != std::string::npos);
  CHECK(tree.find("total") != std::string::npos);
  CHECK(tree.find("1.23 K") != std::string::npos);
  CHECK(tree.find(" \n") == std::string::npos);  // no trailing blanks
  const auto shallow = stats.table({.max_depth = 2});
  CHECK(shallow.find("    x ") == std::string::npos);
  CHECK(shallow.find("  a ") != std::string::npos);
  stats.at("Root.b").params_frozen = 5000;
  const auto sorted = stats.table({.sort_by = Column::params});
  CHECK(sorted.find("Root.a.x") != std::string::npos);  // flat: full names
  CHECK(sorted.find("Root.b") < sorted.find("Root "));    // descending
  CHECK(sorted.find("Root ") < sorted.find("Root.a"));
}

TEST_CASE("spans: an exit whose enter was not seen is ignored, and call indices count per fqn and phase") {
  SpanMatcher m;
  CHECK_FALSE(m.consume(Transition{Phase::forward, Kind::exit, "A", 0, 0, 10ns, 0}));
  CHECK_FALSE(m.consume(Transition{Phase::forward, Kind::enter, "A", 0, 1, 20ns, 0}));
  CHECK_FALSE(m.consume(Transition{Phase::forward, Kind::enter, "B", 1, 2, 25ns, 0}));
  const auto b = m.consume(Transition{Phase::forward, Kind::exit, "B", 1, 3, 30ns, 0});
  REQUIRE(b);
  CHECK(b->call == 0);
  CHECK_FALSE(m.consume(Transition{Phase::forward, Kind::enter, "B", 1, 4, 32ns, 0}));
  const auto b2 = m.consume(Transition{Phase::forward, Kind::exit, "B", 1, 5, 34ns, 0});
  REQUIRE(b2);
  CHECK(b2->call == 1);
  CHECK(m.consume(Transition{Phase::backward, Kind::enter, "B", 1, 6, 36ns, 0}) == std::nullopt);
  const auto b3 = m.consume(Transition{Phase::backward, Kind::exit, "B", 1, 7, 38ns, 0});
  REQUIRE(b3);
  CHECK(b3->call == 0);
  const auto a = m.consume(Transition{Phase::forward, Kind::exit, "A", 0, 8, 40ns, 0});
  REQUIRE(a);
  CHECK(a->inclusive() == 20ns);
  CHECK(a->exclusive() == 13ns);
  CHECK(m.open() == 0);
}

TEST_CASE("spans that do not nest (backward branches that interleave): every moment counts once, none negative") {
  SpanMatcher m;
  auto at = [&](Kind kind, const char* fqn, std::chrono::nanoseconds time) {
    return m.consume(Transition{Phase::backward, kind, fqn, 0, 0, time, 0});
  };
  CHECK_FALSE(at(Kind::enter, "P", 0ns));
  CHECK_FALSE(at(Kind::enter, "A", 10ns));
  CHECK_FALSE(at(Kind::enter, "B", 20ns));
  const auto a = at(Kind::exit, "A", 40ns);  // below B: the two cross
  REQUIRE(a);
  CHECK(a->inclusive() == 30ns);
  CHECK(a->exclusive() == 10ns);  // 10-20 only: B ran innermost from 20 on
  const auto b = at(Kind::exit, "B", 50ns);
  REQUIRE(b);
  CHECK(b->inclusive() == 30ns);
  CHECK(b->exclusive() == 30ns);
  const auto p = at(Kind::exit, "P", 60ns);
  REQUIRE(p);
  CHECK(p->exclusive() == 20ns);  // 0-10 and 50-60
  CHECK(p->exclusive() + a->exclusive() + b->exclusive() == p->inclusive());
}

TEST_CASE("Chrome trace: one slice per activation, nested in time, valid JSON") {
  Program p;
  ReferenceTracker t(p.b);
  std::ostringstream out;
  {
    ChromeTraceWriter trace(out);
    auto scope = t.track();
    p.run({p.b.value(false)});
    p.run({p.b.value(false)});
    trace.consume_all(t.drain_transitions());
    CHECK(trace.slices() == 8);
  }
  const auto doc = nlohmann::json::parse(out.str());
  std::vector<nlohmann::json> slices;
  for (const auto& e : doc.at("traceEvents"))
    if (e.at("ph") == "X") slices.push_back(e);
  REQUIRE(slices.size() == 8);
  auto find = [&](const std::string& name, int call) {
    for (const auto& s : slices)
      if (s.at("name") == name && s.at("args").at("call") == call) return s;
    FAIL("no slice " << name);
    return nlohmann::json{};
  };
  const auto root = find("Root", 1), x = find("Root.a.x", 1);
  CHECK(root.at("args").at("phase") == "forward");
  CHECK(x.at("ts").get<double>() >= root.at("ts").get<double>());
  CHECK(x.at("ts").get<double>() + x.at("dur").get<double>() <=
        root.at("ts").get<double>() + root.at("dur").get<double>());
}

TEST_CASE("Chrome trace: a span that overlaps instead of nesting becomes an async slice, the rest stay nested") {
  std::ostringstream out;
  {
    ChromeTraceWriter trace(out);
    auto at = [&](Kind kind, const char* fqn, std::chrono::nanoseconds time) {
      trace.consume(Transition{Phase::backward, kind, fqn, 0, 0, time, 3});
    };
    at(Kind::enter, "P", 0ns);
    at(Kind::enter, "A", 1000ns);
    at(Kind::enter, "B", 2000ns);
    at(Kind::exit, "A", 4000ns);  // B is still open above it: A and B overlap
    at(Kind::exit, "B", 5000ns);
    at(Kind::exit, "P", 6000ns);
    CHECK(trace.slices() == 3);
  }
  const auto doc = nlohmann::json::parse(out.str());
  std::vector<nlohmann::json> complete, begin, end;
  for (const auto& e : doc.at("traceEvents")) {
    if (e.at("ph") == "X") complete.push_back(e);
    if (e.at("ph") == "b") begin.push_back(e);
    if (e.at("ph") == "e") end.push_back(e);
  }
  REQUIRE(complete.size() == 2);  // P and B nest on the thread's track
  CHECK(complete[0].at("name") == "B");
  CHECK(complete[1].at("name") == "P");
  CHECK(complete[0].at("tid") == 3);
  REQUIRE(begin.size() == 1);
  REQUIRE(end.size() == 1);
  CHECK(begin[0].at("name") == "A");
  CHECK(begin[0].at("id") == end[0].at("id"));
  CHECK(begin[0].at("ts").get<double>() == doctest::Approx(1.0));
  CHECK(end[0].at("ts").get<double>() == doctest::Approx(4.0));
  CHECK(begin[0].at("args").at("phase") == "backward");
}

namespace {
// The data a report page carries: the JSON inside its data script.
nlohmann::json report_data(const std::string& page) {
  const std::string open = "<script type=\"application/json\" id=\"modtracker-data\">";
  const auto from = page.find(open);
  REQUIRE(from != std::string::npos);
  const auto to = page.find("</script>", from);
  REQUIRE(to != std::string::npos);
  return nlohmann::json::parse(page.substr(from + open.size(), to - from - open.size()));
}
}  // namespace

TEST_CASE("report: one page whose data holds every row as the table has it, tools' columns null without them") {
  Program p;
  ReferenceTracker t(p.b);
  Statistics stats;
  {
    auto scope = t.track();
    p.run({p.b.value(false)});
    p.run({p.b.value(false)});
  }
  stats.consume_all(t.drain_transitions());
  stats.at("Root.a").fw_flops = 1234;
  std::ostringstream out;
  write_report(out, stats, {.title = "Root's cost", .subtitle = "2 steps", .notes = {"a note"}});
  const auto page = out.str();
  CHECK(page.starts_with("<!DOCTYPE html>"));
  CHECK(page.find("MODTRACKER_DATA") == std::string::npos);  // the marker is replaced
  const auto doc = report_data(page);
  CHECK(doc.at("title") == "Root's cost");
  CHECK(doc.at("notes") == nlohmann::json::array({"a note"}));
  CHECK(doc.at("spread").is_null());
  const auto rows = doc.at("views").at(0).at("rows");
  const auto expected = stats.rows();
  REQUIRE(rows.size() == expected.size());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    CAPTURE(expected[i]->fqn);
    CHECK(rows[i].at(0) == expected[i]->fqn);
    CHECK(rows[i].at(1) == expected[i]->fw_calls);
    CHECK(rows[i].at(2) == expected[i]->fw_inclusive.count());
    CHECK(rows[i].at(6) == expected[i]->bw_exclusive.count());
  }
  const auto a = std::find_if(rows.begin(), rows.end(), [](const auto& r) { return r.at(0) == "Root.a"; });
  REQUIRE(a != rows.end());
  CHECK(a->at(11) == 1234);
  CHECK(rows.at(0).at(11).is_null());  // no FLOP counter gave Root a value
  CHECK(a->at(15).is_null());
}

TEST_CASE("report: a name that holds markup stays data: it cannot close the data script") {
  Statistics stats;
  stats.at("</script><script>alert(1)</script>").fw_calls = 1;
  std::ostringstream out;
  write_report(out, stats, {.title = "<b>title</b>"});
  const auto page = out.str();
  CHECK(page.find("</script><script>alert") == std::string::npos);
  const auto doc = report_data(page);
  CHECK(doc.at("views").at(0).at("rows").at(0).at(0) == "</script><script>alert(1)</script>");
  CHECK(doc.at("title") == "<b>title</b>");
}

TEST_CASE("report: ranks give one view per rank, the spread per module and the straggler") {
  auto record = [](int rank, std::chrono::nanoseconds t) {
    RankRecord r{.rank = rank, .host = "h", .pid = 100 + rank};
    ModuleStats m{.fqn = "Net", .fw_calls = 1, .bw_calls = 1, .fw_inclusive = t, .fw_exclusive = t};
    r.rows = {m};
    return r;
  };
  std::vector<RankRecord> records;
  records.push_back(record(0, 1ms));
  records.push_back(record(1, 5ms));
  records.push_back(record(2, 2ms));
  const CrossRankStatistics merged(std::move(records));
  std::ostringstream out;
  write_report(out, merged);
  const auto doc = report_data(out.str());
  REQUIRE(doc.at("views").size() == 3);
  CHECK(doc.at("views").at(1).at("name") == merged.records()[1].label());
  CHECK(doc.at("ranks") == nlohmann::json::array({0, 1, 2}));
  const auto spread = doc.at("spread").at(0);
  CHECK(spread.at(0) == "Net");
  CHECK(spread.at(1) == 3);
  CHECK(spread.at(2) == nlohmann::json::array({1000000, 2000000, 5000000, 1, 1, 1}));  // min, median, max, slowest, calls
  CHECK(spread.at(4).is_null());  // no rank counted FLOPs
  CHECK(doc.at("straggler").at("fqn") == "Net");
  CHECK(doc.at("straggler").at("rank") == 1);
}
