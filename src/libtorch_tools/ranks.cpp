// Gathers over c10d: every rank sends rank 0 a fixed-size header first,
// rank 0 checks it and answers, and only then do the records move, with
// the sizes the headers announced. Gloo aborts a process whose receive is
// smaller than the send that meets it (on its I/O thread: nothing can catch
// it), so no message here is ever of a size the receiver did not agree to.
// Each exchange is point to point with rank 0, under a deadline: a rank
// that fails is named, and the others still arrive.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <unistd.h>

#include <modtracker/libtorch/ranks.hpp>

namespace modtracker::libtorch {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using Kind = RankProblem::Kind;

constexpr std::int64_t magic = 0x6d6f64747261636b;  // "modtrack"
constexpr std::int64_t version = 1;
constexpr std::int64_t max_record_bytes = std::int64_t{1} << 30;
constexpr int clock_rounds = 4;  // ping-pongs per rank; the fastest gives the offset
enum Tag : int { header_tag = 0x6d7400, reply_tag, ping_tag, pong_tag, data_tag };
enum Header : std::int64_t { h_magic, h_version, h_rank, h_world, h_round, h_bytes, h_rows, h_spans, header_size };

std::string first_line(const std::exception& e) {
  const std::string what = e.what();
  return what.substr(0, what.find('\n'));
}

std::string host_name() {
  char buf[256] = {};
  return gethostname(buf, sizeof buf - 1) == 0 ? std::string(buf) : std::string();
}

// Works that timed out still own a buffer Gloo may write into when the peer
// sends at last: they are kept to the end of the process.
void abandon(c10::intrusive_ptr<c10d::Work> work) {
  static auto* kept = new std::vector<c10::intrusive_ptr<c10d::Work>>;  // never freed, on purpose
  static std::mutex kept_mutex;
  const std::lock_guard<std::mutex> lock(kept_mutex);
  kept->push_back(std::move(work));
}

struct Failure {
  Kind kind;
  std::string what;
};

// A send or receive: its work, or how posting it failed (Gloo throws at
// once on a pair it closed after a timeout or a peer's death).
struct Posted {
  c10::intrusive_ptr<c10d::Work> work;
  std::optional<Failure> failed;
};

Failure failure(const std::exception& e, Clock::time_point deadline) {
  auto what = first_line(e);
  const bool timed_out = what.find("imed out") != std::string::npos || what.find("timeout") != std::string::npos ||
                         Clock::now() >= deadline;
  return {timed_out ? Kind::timed_out : Kind::lost, std::move(what)};
}

// Waits for `p` until `deadline`: nothing, or how it failed.
std::optional<Failure> wait_until(const Posted& p, Clock::time_point deadline) {
  if (p.failed) return p.failed;
  const auto left = std::max(milliseconds(1), std::chrono::duration_cast<milliseconds>(deadline - Clock::now()));
  try {
    p.work->wait(left);
    return std::nullopt;
  } catch (const std::exception& e) {
    auto f = failure(e, deadline);
    if (f.kind == Kind::timed_out) abandon(p.work);
    return f;
  }
}

std::int64_t opt(const std::optional<std::uint64_t>& v) { return v ? static_cast<std::int64_t>(*v) : -1; }
std::optional<std::uint64_t> opt(std::int64_t v) {
  return v < 0 ? std::nullopt : std::optional<std::uint64_t>(static_cast<std::uint64_t>(v));
}

constexpr std::int64_t row_fields = 15, span_fields = 9;

// A record as LibTorch's pickle of an IValue tuple: numbers in two int64
// tensors (rows, spans), names in string lists.
std::vector<char> encode(const RankRecord& r) {
  c10::List<std::string> fqns, shapes, span_names;
  auto rows = torch::empty({static_cast<std::int64_t>(r.rows.size()), row_fields}, torch::kLong);
  auto* p = rows.data_ptr<std::int64_t>();
  for (const auto& m : r.rows) {
    fqns.push_back(m.fqn);
    shapes.push_back(m.output_shape);
    const std::int64_t v[row_fields] = {static_cast<std::int64_t>(m.fw_calls), static_cast<std::int64_t>(m.bw_calls),
                                        m.fw_inclusive.count(), m.fw_exclusive.count(), m.bw_inclusive.count(),
                                        m.bw_exclusive.count(), static_cast<std::int64_t>(m.params_trainable),
                                        static_cast<std::int64_t>(m.params_frozen), static_cast<std::int64_t>(m.bytes_trainable),
                                        static_cast<std::int64_t>(m.bytes_frozen), opt(m.fw_flops), opt(m.bw_flops),
                                        opt(m.fw_peak_bytes), opt(m.fw_kept_bytes), opt(m.bw_peak_bytes)};
    p = std::copy(std::begin(v), std::end(v), p);
  }
  const auto& log = r.spans.spans();
  auto spans = torch::empty({static_cast<std::int64_t>(log.size()), span_fields}, torch::kLong);
  auto* q = spans.data_ptr<std::int64_t>();
  std::map<std::string_view, std::int64_t> index;
  for (const auto& s : log) {
    auto [it, added] = index.try_emplace(s.fqn, static_cast<std::int64_t>(index.size()));
    if (added) span_names.push_back(std::string(s.fqn));
    const std::int64_t v[span_fields] = {it->second, s.phase == Phase::forward ? 0 : 1, s.thread, s.depth,
                                         static_cast<std::int64_t>(s.call), s.start.count(), s.end.count(),
                                         s.children.count(), s.nested ? 1 : 0};
    q = std::copy(std::begin(v), std::end(v), q);
  }
  return torch::pickle_save(c10::ivalue::Tuple::create(
      {c10::IValue(static_cast<std::int64_t>(r.rank)), c10::IValue(r.host), c10::IValue(r.pid), c10::IValue(fqns),
       c10::IValue(shapes), c10::IValue(rows), c10::IValue(span_names), c10::IValue(spans)}));
}

void expect(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("its record is malformed: ") + what);
}

RankRecord decode(const std::vector<char>& bytes, std::int64_t rows_expected, std::int64_t spans_expected) {
  const auto value = torch::pickle_load(bytes);
  expect(value.isTuple(), "not a tuple");
  const auto& e = value.toTupleRef().elements();
  expect(e.size() == 8 && e[0].isInt() && e[1].isString() && e[2].isInt() && e[3].isList() && e[4].isList() &&
             e[5].isTensor() && e[6].isList() && e[7].isTensor(),
         "unexpected fields");
  RankRecord r;
  r.rank = static_cast<int>(e[0].toInt());
  r.host = e[1].toStringRef();
  r.pid = e[2].toInt();
  const auto fqns = e[3].toListRef(), shapes = e[4].toListRef(), names = e[6].toListRef();
  const auto rows = e[5].toTensor().contiguous(), spans = e[7].toTensor().contiguous();
  expect(rows.scalar_type() == torch::kLong && rows.dim() == 2 && rows.size(0) == rows_expected &&
             rows.size(1) == row_fields && static_cast<std::int64_t>(fqns.size()) == rows_expected &&
             shapes.size() == fqns.size(),
         "its rows do not match its header");
  expect(spans.scalar_type() == torch::kLong && spans.dim() == 2 && spans.size(0) == spans_expected &&
             spans.size(1) == span_fields,
         "its spans do not match its header");
  const auto* p = rows.data_ptr<std::int64_t>();
  for (std::size_t i = 0; i < fqns.size(); ++i, p += row_fields) {
    expect(fqns[i].isString() && shapes[i].isString(), "a module name is not a string");
    ModuleStats m;
    m.fqn = fqns[i].toStringRef();
    m.output_shape = shapes[i].toStringRef();
    m.fw_calls = static_cast<std::uint64_t>(p[0]);
    m.bw_calls = static_cast<std::uint64_t>(p[1]);
    m.fw_inclusive = std::chrono::nanoseconds(p[2]);
    m.fw_exclusive = std::chrono::nanoseconds(p[3]);
    m.bw_inclusive = std::chrono::nanoseconds(p[4]);
    m.bw_exclusive = std::chrono::nanoseconds(p[5]);
    m.params_trainable = static_cast<std::uint64_t>(p[6]);
    m.params_frozen = static_cast<std::uint64_t>(p[7]);
    m.bytes_trainable = static_cast<std::uint64_t>(p[8]);
    m.bytes_frozen = static_cast<std::uint64_t>(p[9]);
    m.fw_flops = opt(p[10]);
    m.bw_flops = opt(p[11]);
    m.fw_peak_bytes = opt(p[12]);
    m.fw_kept_bytes = opt(p[13]);
    m.bw_peak_bytes = opt(p[14]);
    r.rows.push_back(std::move(m));
  }
  std::vector<std::string> span_names;
  for (const auto& n : names) {
    expect(n.isString(), "a span name is not a string");
    span_names.push_back(n.toStringRef());
  }
  const auto* q = spans.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < spans_expected; ++i, q += span_fields) {
    expect(q[0] >= 0 && q[0] < static_cast<std::int64_t>(span_names.size()), "a span names no module");
    r.spans.add(Span{span_names[static_cast<std::size_t>(q[0])], q[1] == 0 ? Phase::forward : Phase::backward,
                     static_cast<std::uint32_t>(q[2]), static_cast<std::uint32_t>(q[3]), static_cast<std::uint64_t>(q[4]),
                     std::chrono::nanoseconds(q[5]), std::chrono::nanoseconds(q[6]), std::chrono::nanoseconds(q[7]),
                     q[8] != 0, 0});
  }
  return r;
}

torch::Tensor longs(std::int64_t n) { return torch::zeros({n}, torch::kLong); }

}  // namespace

struct RankGroup::State {
  c10::intrusive_ptr<c10d::ProcessGroup> group;  // null if some rank never joined
  int rank = 0, world = 1;
  RankOptions options;
  std::vector<RankProblem> absent;  // from joining: said by every gather
  std::set<int> gone;               // on rank 0: ranks no longer waited for
  bool root_gone = false;           // elsewhere: rank 0 failed once
  std::int64_t round = 0;

  Posted send(torch::Tensor t, int peer, int tag) { return post(std::move(t), peer, tag, true); }
  Posted recv(torch::Tensor t, int peer, int tag) { return post(std::move(t), peer, tag, false); }
  Posted post(torch::Tensor t, int peer, int tag, bool sending) {
    std::vector<torch::Tensor> v{std::move(t)};
    try {
      return {sending ? group->send(v, peer, tag) : group->recv(v, peer, tag), std::nullopt};
    } catch (const std::exception& e) {
      return {c10::intrusive_ptr<c10d::Work>(), failure(e, Clock::time_point::max())};
    }
  }
  RankRecord own(const Statistics& stats, const SpanLog* spans) const {
    RankRecord r;
    r.rank = rank;
    r.host = host_name();
    r.pid = static_cast<std::int64_t>(getpid());
    for (const auto* row : stats.rows()) r.rows.push_back(*row);
    if (spans) r.spans = *spans;
    return r;
  }
  // Why rank r's header cannot be taken ("" if it can).
  std::string refusal(const std::int64_t* h, int r) const {
    if (h[h_magic] != magic || h[h_version] != version)
      return "it speaks another protocol (version " + std::to_string(h[h_version]) + ", this rank " +
             std::to_string(version) + "): build every rank from one modtracker";
    if (h[h_rank] != r || h[h_world] != world)
      return "it calls itself rank " + std::to_string(h[h_rank]) + " of " + std::to_string(h[h_world]);
    if (h[h_round] != round)
      return "it is at gather " + std::to_string(h[h_round]) + ", rank 0 at gather " + std::to_string(round) +
             ": every rank must call gather() at the same points";
    if (h[h_bytes] < 1 || h[h_bytes] > max_record_bytes || h[h_rows] < 0 || h[h_spans] < 0)
      return "its record announces " + std::to_string(h[h_bytes]) + " bytes";
    return {};
  }
  // Rank r's clock against this one's: the ping-pong of the shortest round
  // trip gives the offset (its midpoint against r's reading), half that
  // round trip the uncertainty.
  using Offset = std::pair<std::chrono::nanoseconds, std::chrono::nanoseconds>;  // offset, uncertainty
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

RankGroup::RankGroup(c10::intrusive_ptr<c10d::ProcessGroup> group, RankOptions options)
    : state_(std::make_unique<State>()) {
  if (!group) throw std::invalid_argument("modtracker: RankGroup over a null process group");
  state_->rank = group->getRank();
  state_->world = group->getSize();
  state_->group = std::move(group);
  state_->options = std::move(options);
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
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>(s.options.name, store);
  const auto key = [](int r) { return "joined/" + std::to_string(r); };
  // add(), not check(): a FileStore's reads wait (its timeout) for the file to exist.
  if (prefixed->add(key(rank), 1) != 1) {
    std::string where;
    if (const auto* file = dynamic_cast<const c10d::FileStore*>(store.get())) where = " (" + file->getPath() + ")";
    throw std::runtime_error("modtracker: the store" + where + " already holds rank " + std::to_string(rank) +
                             " of a group named '" + s.options.name +
                             "': it is stale (a FileStore path of an earlier job: give each job a fresh path), or a "
                             "second RankGroup uses that name (give it another RankOptions::name)");
  }
  std::vector<std::string> keys;
  for (int r = 0; r < world; ++r) keys.push_back(key(r));
  try {
    prefixed->wait(keys, s.options.timeout);
  } catch (const std::exception&) {
    for (int r = 0; r < world; ++r)
      if (!prefixed->check({key(r)}))
        s.absent.push_back({r, Kind::absent,
                            "rank " + std::to_string(r) + " never joined the group '" + s.options.name + "' within " +
                                std::to_string(s.options.timeout.count()) +
                                " ms (not started, failed before, or given another store?)"});
    if (!s.absent.empty()) return;
  }
  if (world == 1) return;  // no peer: gathers need no group
  try {
    s.group = make_gloo_group(c10::make_intrusive<c10d::PrefixStore>("gloo", prefixed), rank, world, s.options.timeout);
  } catch (const std::exception& e) {
    for (int r = 0; r < world; ++r)
      if (r != rank) s.absent.push_back({r, Kind::absent, "the group '" + s.options.name + "' could not connect: " + first_line(e)});
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
  for (const auto& p : problems) out += "rank " + std::to_string(p.rank) + " " + std::string(kind_name(p.kind)) + ": " + p.message + "\n";
  return out;
}

Gathered RankGroup::gather(const TrackerBase& tracker, const Statistics& stats, const SpanLog* spans) {
  const auto start = Clock::now();
  auto& s = *state_;
  Gathered out;
  out.rank = s.rank;
  out.world = s.world;
  ++s.round;
  auto mine = s.own(stats, spans);
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
  const auto ms = std::to_string(options.timeout.count()) + " ms";
  auto fail = [&](int r, const Failure& f, const char* doing) {
    gone.insert(r);
    out.problems.push_back(
        {r, f.kind,
         f.kind == Kind::timed_out
             ? "rank " + std::to_string(r) + " did not " + doing + " within " + ms + " (hung, or not calling gather())"
             : "rank " + std::to_string(r) + "'s connection failed as it was to " + doing + ": " + f.what +
                   " (the process died, or closed its group)"});
  };
  if (group) {
    // Every header is awaited from the start; each rank in turn is then
    // answered, timed and has its record's receive posted, so that a slow
    // rank delays only the ranks after it, by at most the timeout.
    const auto headers_due = Clock::now() + options.timeout;
    std::vector<torch::Tensor> headers(world), data(world);
    std::vector<Posted> works(world);
    std::vector<Clock::time_point> data_due(world);
    std::vector<int> peers, sending;
    for (int r = 1; r < world; ++r)
      if (!gone.count(r)) {
        peers.push_back(r);
        headers[r] = longs(header_size);
        works[r] = recv(headers[r], r, header_tag);
      }
    std::vector<Offset> clocks(world);
    for (const int r : peers) {
      if (const auto f = wait_until(works[r], headers_due)) {
        fail(r, *f, "send its record");
        continue;
      }
      const auto* h = headers[r].data_ptr<std::int64_t>();
      const auto why = refusal(h, r);
      auto reply = longs(2);
      reply[0] = why.empty() ? 1 : 0;
      reply[1] = round;
      if (const auto f = wait_until(send(reply, r, reply_tag), Clock::now() + options.timeout)) {
        fail(r, *f, "take rank 0's answer");
        continue;
      }
      if (!why.empty()) {
        gone.insert(r);
        out.problems.push_back({r, Kind::rejected, "rank " + std::to_string(r) + "'s record was refused: " + why});
        continue;
      }
      if (const auto f = align(tracker, r, Clock::now() + options.timeout, clocks[r])) {
        fail(r, *f, "answer the clock exchange");
        continue;
      }
      data[r] = torch::empty({h[h_bytes]}, torch::kUInt8);
      works[r] = recv(data[r], r, data_tag);
      data_due[r] = Clock::now() + options.timeout;
      sending.push_back(r);
    }
    for (const int r : sending) {
      if (const auto f = wait_until(works[r], data_due[r])) {
        fail(r, *f, "send its record");
        continue;
      }
      const auto* bytes = reinterpret_cast<const char*>(data[r].data_ptr<std::uint8_t>());
      const auto* h = headers[r].data_ptr<std::int64_t>();
      try {
        auto record = decode(std::vector<char>(bytes, bytes + data[r].numel()), h[h_rows], h[h_spans]);
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
    out.problems.push_back({0, Kind::no_root, group ? "rank 0 failed at an earlier gather: this rank's record stays here"
                                                    : "the group never formed: this rank's record stays here"});
    return;
  }
  auto lost = [&](const Failure& f, const char* doing) {
    root_gone = true;
    out.problems.push_back({0, Kind::no_root,
                            "rank 0 did not " + std::string(doing) + " in time (" + f.what +
                                "): it died, hung, or gave up on this rank"});
  };
  const auto bytes = encode(mine);
  auto header = longs(header_size);
  auto* h = header.data_ptr<std::int64_t>();
  h[h_magic] = magic;
  h[h_version] = version;
  h[h_rank] = rank;
  h[h_world] = world;
  h[h_round] = round;
  h[h_bytes] = static_cast<std::int64_t>(bytes.size());
  h[h_rows] = static_cast<std::int64_t>(mine.rows.size());
  h[h_spans] = static_cast<std::int64_t>(mine.spans.size());
  // Rank 0 may first wait up to the timeout for the ranks before this one.
  auto deadline = Clock::now() + 2 * options.timeout;
  if (const auto f = wait_until(send(header, 0, header_tag), deadline)) return lost(*f, "take this rank's header");
  auto reply = longs(2);
  if (const auto f = wait_until(recv(reply, 0, reply_tag), deadline)) return lost(*f, "answer this rank's header");
  if (reply[0].item<std::int64_t>() != 1) {
    root_gone = true;
    out.problems.push_back({rank, Kind::rejected, "rank 0 refused this rank's record (its report says why)"});
    return;
  }
  deadline = Clock::now() + options.timeout;
  for (int i = 0; i < clock_rounds; ++i) {
    if (const auto f = wait_until(recv(longs(1), 0, ping_tag), deadline)) return lost(*f, "run the clock exchange");
    auto pong = longs(1);
    pong[0] = tracker.now().count();
    if (const auto f = wait_until(send(pong, 0, pong_tag), deadline)) return lost(*f, "run the clock exchange");
  }
  auto data = torch::empty({static_cast<std::int64_t>(bytes.size())}, torch::kUInt8);
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(data.data_ptr<std::uint8_t>()));
  if (const auto f = wait_until(send(data, 0, data_tag), deadline)) return lost(*f, "take this rank's record");
}

}  // namespace modtracker::libtorch
