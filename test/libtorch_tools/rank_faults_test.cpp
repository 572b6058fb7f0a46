// Ranks as threads of one process: faults (absent, hung, closed, dead
// ranks, told apart by heartbeat with no process id to check), stale
// stores, bad arguments and another protocol.
#include "rank_job.hpp"

#include <doctest/doctest.h>

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
// Rank 0 merged every rank but `missing`, reported alone, of `kind`, with
// `said` in its message; the last rank gathered cleanly.
void check_one_missing(const Job& job, int missing, Kind kind, const std::string& said) {
  const auto& root = job.root();
  INFO(root.report());
  REQUIRE(root.merged);
  REQUIRE(root.merged->records().size() == static_cast<std::size_t>(job.world - 1));
  for (const auto& record : root.merged->records()) CHECK(record.rank != missing);
  REQUIRE(root.problems.size() == 1);
  CHECK(root.problems[0].rank == missing);
  CHECK(root.problems[0].kind == kind);
  CHECK(root.problems[0].message.find(said) != std::string::npos);
  CHECK(job.ranks.back().gathered->problems.empty());
}
void check_one_timed_out(const Job& job, int missing) {
  check_one_missing(job, missing, Kind::timed_out, "rank " + std::to_string(missing) + " did not arrive at gather 1 within");
}
// Lost (`why`) well within the timeout.
void check_one_lost(const Job& job, int missing, const std::string& why) {
  check_one_missing(job, missing, Kind::lost, "rank " + std::to_string(missing) + " did not arrive at gather 1: " + why);
  CHECK(job.root().elapsed < job.timeout);
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
