// Gathers to rank 0. Two facts of Gloo shape it:
// - A receive smaller than the send that meets it aborts the process (on
//   Gloo's I/O thread: nothing can catch it). So every rank first posts a
//   fixed-size header in the store; rank 0 checks it and answers there, and
//   only then do records move over the process group, of the sizes the
//   headers announced.
// - An operation that times out closes every connection of its group. So
//   nothing waits on Gloo for a rank that may not come: arrival is watched
//   in the store (polled, with the peer's heartbeat read, and its process
//   checked when it runs on this host), and Gloo carries only exchanges
//   both sides have agreed to.
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <unistd.h>

#include <modtracker/libtorch_tools/flops.hpp>
#include <modtracker/libtorch_tools/memory.hpp>
#include <modtracker/libtorch_tools/ranks.hpp>

#include "libtorch_tools/rank_liveness.hpp"
#include "libtorch_tools/rank_record.hpp"
#include "libtorch_tools/rank_transport.hpp"

namespace modtracker::libtorch {

using namespace transport;

struct RankGroup::State {
  c10::intrusive_ptr<c10d::Store> store;         // PrefixStore(options.name, the job's)
  c10::intrusive_ptr<c10d::ProcessGroup> group;  // null if some rank never joined
  int rank = 0, world = 1;
  RankOptions options;
  std::string host = host_name();
  std::vector<RankProblem> absent;  // from joining: said by every gather
  std::set<int> gone;               // on rank 0: ranks no longer waited for
  bool root_gone = false;           // elsewhere: rank 0 failed once
  std::int64_t round = 0;
  std::optional<liveness::Watch> watch;        // the peers' lives, as this rank sees them
  std::unique_ptr<liveness::Heartbeat> heartbeat;  // last: ends first

  std::string key(const char* what, int r) const {
    return "g" + std::to_string(round) + "/" + what + std::to_string(r);
  }
  std::string ms() const { return std::to_string(options.timeout.count()) + " ms"; }

  // Joins under the name: refuses a store that has this rank already.
  void join() {
    // add(), not check(): a FileStore's reads wait (its timeout) for the file to exist.
    if (store->add("joined/" + std::to_string(rank), 1) != 1) {
      std::string where;
      auto* inner = store.get();
      if (auto* prefixed = dynamic_cast<c10d::PrefixStore*>(inner)) inner = prefixed->getUnderlyingStore().get();
      if (const auto* file = dynamic_cast<const c10d::FileStore*>(inner)) where = " (" + file->getPath() + ")";
      throw std::runtime_error("modtracker: the store" + where + " already holds rank " + std::to_string(rank) +
                               " of a group named '" + options.name +
                               "': it is stale (a FileStore path of an earlier job: give each job a fresh path), or "
                               "a second RankGroup uses that name (give it another RankOptions::name)");
    }
    store->set("who/" + std::to_string(rank), bytes_of(host + " " + std::to_string(getpid())));
  }
  void start_heartbeat(const c10::intrusive_ptr<c10d::Store>& job) {
    const auto interval = liveness::interval(options);
    watch.emplace(host, interval, options.check_processes);
    heartbeat = std::make_unique<liveness::Heartbeat>(liveness::heartbeat_store(job, options.name), rank, interval);
  }

  // A gather's keys, once read, are deleted: gathers every N steps would
  // otherwise grow the store. A store that cannot delete keeps them.
  void forget(const std::string& k) {
    try {
      store->deleteKey(k);
    } catch (const std::exception&) {
    }
  }

  // Polls the store until each key is there, the deadline passes, or the
  // rank the key waits on is seen to be gone (that rank goes to
  // `ended_ranks`, with why). Returns, sorted, the ranks whose key came.
  std::vector<int> await(std::vector<std::pair<std::string, int>> keys, Clock::time_point due,
                         std::map<int, std::string>& ended_ranks) {
    std::vector<int> here;
    auto pause = std::chrono::microseconds(50);
    while (!keys.empty()) {
      for (auto it = keys.begin(); it != keys.end();) {
        if (store->check({it->first})) {
          here.push_back(it->second);
          it = keys.erase(it);
        } else if (auto why = watch->gone_reason(*store, it->second); !why.empty()) {
          ended_ranks.emplace(it->second, std::move(why));
          it = keys.erase(it);
        } else {
          ++it;
        }
      }
      if (keys.empty() || Clock::now() >= due) break;
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(500));
    }
    std::sort(here.begin(), here.end());
    return here;
  }

  Posted post(torch::Tensor t, int peer, int tag, bool sending) {
    std::vector<torch::Tensor> v{std::move(t)};
    try {
      return {sending ? group->send(v, peer, tag) : group->recv(v, peer, tag), std::nullopt};
    } catch (const std::exception& e) {
      return {c10::intrusive_ptr<c10d::Work>(), failure(e, Clock::time_point::max())};
    }
  }
  Posted send(torch::Tensor t, int peer, int tag) { return post(std::move(t), peer, tag, true); }
  Posted recv(torch::Tensor t, int peer, int tag) { return post(std::move(t), peer, tag, false); }

  // Rank r's clock against this one's: the ping-pong of the shortest round
  // trip gives the offset (its midpoint against r's reading), half that
  // round trip the uncertainty.
  using Offset = std::pair<std::chrono::nanoseconds, std::chrono::nanoseconds>;
  std::optional<Failure> align(const TrackerBase& tracker, int r, Clock::time_point due, Offset& offset) {
    auto best = std::chrono::nanoseconds::max();
    for (int i = 0; i < clock_rounds; ++i) {
      auto pong = longs(1);
      const auto t1 = tracker.now();
      const auto sent = send(longs(1), r, ping_tag);
      const auto got = recv(pong, r, pong_tag);
      if (auto f = wait_until(sent, due)) return f;
      if (auto f = wait_until(got, due)) return f;
      const auto t2 = tracker.now();
      if (t2 - t1 < best) {
        best = t2 - t1;
        offset = {(t1 + t2) / 2 - std::chrono::nanoseconds(pong[0].item<std::int64_t>()), best / 2};
      }
    }
    return std::nullopt;
  }

  RankRecord own(const Statistics& stats, const SpanLog* spans, RankTools tools) const {
    RankRecord r;
    r.rank = rank;
    r.host = host;
    r.pid = static_cast<std::int64_t>(getpid());
    for (const auto* row : stats.rows()) r.rows.push_back(*row);
    if (spans) r.spans = *spans;
    if (tools.flops)
      for (const auto& span : r.spans.spans()) r.span_flops.push_back(tools.flops->activation_flops(span.exit_sequence));
    if (tools.memory) r.memory = tools.memory->timeline();
    return r;
  }
  void gather_root(const TrackerBase& tracker, RankRecord mine, Gathered& out);
  void gather_other(const TrackerBase& tracker, const RankRecord& mine, Gathered& out);
};

c10::intrusive_ptr<c10d::ProcessGroup> make_gloo_group(c10::intrusive_ptr<c10d::Store> store, int rank, int world,
                                                       std::chrono::milliseconds timeout, const std::string& host) {
  if (world < 1 || rank < 0 || rank >= world)
    throw std::invalid_argument("modtracker: rank " + std::to_string(rank) + " of a world of " + std::to_string(world));
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
  return c10::make_intrusive<c10d::ProcessGroupGloo>(std::move(store), rank, world, options);
}

RankGroup::RankGroup(c10::intrusive_ptr<c10d::ProcessGroup> group, c10::intrusive_ptr<c10d::Store> store,
                     RankOptions options)
    : state_(std::make_unique<State>()) {
  if (!group) throw std::invalid_argument("modtracker: RankGroup over a null process group");
  if (!store) throw std::invalid_argument("modtracker: RankGroup over a null store");
  auto& s = *state_;
  s.rank = group->getRank();
  s.world = group->getSize();
  s.options = std::move(options);
  s.store = c10::make_intrusive<c10d::PrefixStore>(s.options.name, store);
  s.join();
  s.start_heartbeat(store);
  s.group = std::move(group);
}

RankGroup::RankGroup(c10::intrusive_ptr<c10d::Store> store, int rank, int world, RankOptions options)
    : state_(std::make_unique<State>()) {
  if (!store) throw std::invalid_argument("modtracker: RankGroup over a null store");
  if (world < 1 || rank < 0 || rank >= world)
    throw std::invalid_argument("modtracker: rank " + std::to_string(rank) + " of a world of " + std::to_string(world));
  auto& s = *state_;
  s.rank = rank;
  s.world = world;
  s.options = std::move(options);
  s.store = c10::make_intrusive<c10d::PrefixStore>(s.options.name, store);
  s.join();
  s.start_heartbeat(store);
  std::vector<std::string> keys;
  for (int r = 0; r < world; ++r) keys.push_back("joined/" + std::to_string(r));
  try {
    s.store->wait(keys, s.options.timeout);
  } catch (const std::exception&) {
    for (int r = 0; r < world; ++r)
      if (!s.store->check({keys[static_cast<std::size_t>(r)]}))
        s.absent.push_back({r, Kind::absent,
                            "rank " + std::to_string(r) + " never joined the group '" + s.options.name + "' within " +
                                s.ms() + " (not started, failed before, or given another store?)"});
    if (!s.absent.empty()) return;
  }
  if (world == 1) return;  // no peer: gathers need no group
  try {
    s.group = make_gloo_group(c10::make_intrusive<c10d::PrefixStore>("gloo", s.store), rank, world, s.options.timeout);
  } catch (const std::exception& e) {
    for (int r = 0; r < world; ++r)
      if (r != rank)
        s.absent.push_back({r, Kind::absent, "the group '" + s.options.name + "' could not connect: " + first_line(e)});
  }
}

RankGroup::~RankGroup() = default;
int RankGroup::rank() const noexcept { return state_->rank; }
int RankGroup::world() const noexcept { return state_->world; }

bool Gathered::complete() const noexcept {
  return merged && problems.empty() && static_cast<int>(merged->records().size()) == world;
}

std::string Gathered::report() const {
  std::string out;
  for (const auto& p : problems)
    out += "rank " + std::to_string(p.rank) + " " + std::string(kind_name(p.kind)) + ": " + p.message + "\n";
  return out;
}

Gathered RankGroup::gather(const TrackerBase& tracker, const Statistics& stats, const SpanLog* spans, RankTools tools) {
  const auto start = Clock::now();
  auto& s = *state_;
  Gathered out;
  out.rank = s.rank;
  out.world = s.world;
  ++s.round;
  auto mine = s.own(stats, spans, tools);
  if (s.rank == 0)
    s.gather_root(tracker, std::move(mine), out);
  else
    s.gather_other(tracker, mine, out);
  out.elapsed = Clock::now() - start;
  return out;
}

void RankGroup::State::gather_root(const TrackerBase& tracker, RankRecord mine, Gathered& out) {
  std::vector<RankRecord> records;
  records.push_back(std::move(mine));
  out.problems = absent;
  auto fail = [&](int r, const Failure& f, const std::string& doing) {
    gone.insert(r);
    out.problems.push_back(
        {r, f.kind,
         f.kind == Kind::timed_out
             ? "rank " + std::to_string(r) + " did not " + doing + " within " + ms() + " (hung, or not calling gather())"
             : "rank " + std::to_string(r) + "'s connection failed as it was to " + doing + ": " + f.what +
                   " (the process died, or closed its group)"});
  };
  if (group) {
    std::vector<int> peers;
    std::map<int, std::string> ended_ranks;
    std::vector<std::pair<std::string, int>> awaited;
    for (int r = 1; r < world; ++r)
      if (!gone.count(r)) {
        peers.push_back(r);
        awaited.emplace_back(key("h", r), r);
      }
    const auto arrived = await(std::move(awaited), Clock::now() + options.timeout, ended_ranks);
    for (const int r : peers)
      if (!std::binary_search(arrived.begin(), arrived.end(), r)) {
        const auto gather = "arrive at gather " + std::to_string(round);
        if (const auto it = ended_ranks.find(r); it == ended_ranks.end()) {
          gone.insert(r);
          out.problems.push_back({r, Kind::timed_out,
                                  "rank " + std::to_string(r) + " did not " + gather + " within " + ms() +
                                      " (its heartbeat goes on: hung, or not calling gather())"});
        } else {
          gone.insert(r);
          out.problems.push_back({r, Kind::lost, "rank " + std::to_string(r) + " did not " + gather + ": " + it->second});
        }
      }
    std::vector<std::array<std::int64_t, header_size>> headers(world);
    std::vector<torch::Tensor> data(world);
    std::vector<Posted> works(world);
    std::vector<Clock::time_point> data_due(world);
    std::vector<Offset> clocks(world);
    std::vector<int> sending;
    // Every header answered first, so that the ranks stop waiting at once;
    // then each in turn timed, and its record's receive posted.
    std::vector<int> accepted;
    for (const int r : arrived) {
      const auto header = header_of(text_of(store->get(key("h", r))));
      forget(key("h", r));
      const auto why = refusal(header, r, world, round);
      store->set(key("a", r), bytes_of(why.empty() ? "1" : "0 " + why));
      if (!why.empty()) {
        gone.insert(r);
        out.problems.push_back({r, Kind::rejected, "rank " + std::to_string(r) + "'s record was refused: " + why});
        continue;
      }
      headers[r] = *header;
      accepted.push_back(r);
    }
    for (const int r : accepted) {
      if (const auto f = align(tracker, r, Clock::now() + options.timeout, clocks[r])) {
        fail(r, *f, "answer the clock exchange");
        continue;
      }
      data[r] = torch::empty({headers[r][h_bytes]}, torch::kUInt8);
      works[r] = recv(data[r], r, data_tag);
      data_due[r] = Clock::now() + options.timeout;
      sending.push_back(r);
    }
    for (const int r : sending) {
      if (const auto f = wait_until(works[r], data_due[r])) {
        fail(r, *f, "send its record");
        continue;
      }
      out.received_bytes += static_cast<std::uint64_t>(data[r].numel());
      const auto* bytes = reinterpret_cast<const char*>(data[r].data_ptr<std::uint8_t>());
      try {
        auto record = records::decode(std::vector<char>(bytes, bytes + data[r].numel()), headers[r][h_rows],
                                      headers[r][h_spans]);
        if (record.rank != r) throw std::runtime_error("its record is of rank " + std::to_string(record.rank));
        record.clock_offset = clocks[r].first;
        record.clock_uncertainty = clocks[r].second;
        records.push_back(std::move(record));
      } catch (const std::exception& e) {
        out.problems.push_back({r, Kind::rejected, "rank " + std::to_string(r) + "'s record was refused: " + first_line(e)});
      }
    }
  }
  out.merged = std::make_unique<CrossRankStatistics>(std::move(records));
  for (auto& p : out.merged->shape_differences()) out.problems.push_back(std::move(p));
  std::stable_sort(out.problems.begin(), out.problems.end(), [](const auto& a, const auto& b) { return a.rank < b.rank; });
}

void RankGroup::State::gather_other(const TrackerBase& tracker, const RankRecord& mine, Gathered& out) {
  if (!group || root_gone) {
    out.problems = absent;
    out.problems.push_back({0, Kind::no_root, group ? "rank 0 stopped taking this rank's records at an earlier gather: this one stays here"
                                                    : "the group never formed: this rank's record stays here"});
    return;
  }
  auto lost = [&](const std::string& what, const char* doing) {
    root_gone = true;
    out.problems.push_back({0, Kind::no_root, "rank 0 did not " + std::string(doing) + " in time (" + what +
                                                  "): it died, hung, or gave up on this rank"});
  };
  const auto bytes = records::encode(mine);
  std::array<std::int64_t, header_size> h{};
  h[h_magic] = magic;
  h[h_version] = version;
  h[h_rank] = rank;
  h[h_world] = world;
  h[h_round] = round;
  h[h_bytes] = static_cast<std::int64_t>(bytes.size());
  h[h_rows] = static_cast<std::int64_t>(mine.rows.size());
  h[h_spans] = static_cast<std::int64_t>(mine.spans.size());
  store->set(key("h", rank), bytes_of(to_text(h)));
  // Rank 0 first waits up to the timeout for every rank, then answers each in turn.
  const auto answer_key = key("a", rank);
  std::map<int, std::string> root_ended;
  if (await({{answer_key, 0}}, Clock::now() + 2 * options.timeout, root_ended).empty())
    return lost(root_ended.empty() ? "no answer within twice " + ms() : root_ended.begin()->second, "answer this rank");
  const auto answer = text_of(store->get(answer_key));
  forget(answer_key);
  if (answer != "1") {
    root_gone = true;
    out.problems.push_back({rank, Kind::rejected, "rank 0 refused this rank's record: " + answer.substr(answer.find(' ') + 1)});
    return;
  }
  const auto due = Clock::now() + options.timeout;
  for (int i = 0; i < clock_rounds; ++i) {
    if (const auto f = wait_until(recv(longs(1), 0, ping_tag), due)) return lost(f->what, "run the clock exchange");
    auto pong = longs(1);
    pong[0] = tracker.now().count();
    if (const auto f = wait_until(send(pong, 0, pong_tag), due)) return lost(f->what, "run the clock exchange");
  }
  auto data = torch::empty({static_cast<std::int64_t>(bytes.size())}, torch::kUInt8);
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(data.data_ptr<std::uint8_t>()));
  if (const auto f = wait_until(send(data, 0, data_tag), due)) return lost(f->what, "take this rank's record");
}

}  // namespace modtracker::libtorch
