// What a gather's two sides share: the constants of the protocol, the
// header as text, and waiting on Gloo under a deadline. Included by
// ranks.cpp only (one LibTorch TU).
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/Work.hpp>
#include <unistd.h>

#include <modtracker/libtorch_tools/ranks.hpp>

namespace modtracker::libtorch::transport {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using Kind = RankProblem::Kind;

constexpr std::int64_t magic = 0x6d6f64747261636b;  // "modtrack"
constexpr std::int64_t version = 2;  // 2: the spans' FLOPs and the memory timeline
constexpr std::int64_t max_record_bytes = std::int64_t{1} << 30;
constexpr int clock_rounds = 4;  // ping-pongs per rank; the fastest gives the offset
enum Tag : int { ping_tag = 0x6d7400, pong_tag, data_tag };
enum Header : std::size_t { h_magic, h_version, h_rank, h_world, h_round, h_bytes, h_rows, h_spans, header_size };

inline std::string first_line(const std::exception& e) {
  const std::string what = e.what();
  return what.substr(0, what.find('\n'));
}

inline std::string host_name() {
  char buf[256] = {};
  return gethostname(buf, sizeof buf - 1) == 0 ? std::string(buf) : std::string();
}

inline std::vector<std::uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }
inline std::string text_of(const std::vector<std::uint8_t>& b) { return {b.begin(), b.end()}; }

// Works that timed out still own a buffer Gloo may write into when the peer
// sends at last: they are kept to the end of the process.
inline void abandon(c10::intrusive_ptr<c10d::Work> work) {
  static auto* kept = new std::vector<c10::intrusive_ptr<c10d::Work>>;  // never freed, on purpose
  static std::mutex kept_mutex;
  const std::lock_guard<std::mutex> lock(kept_mutex);
  kept->push_back(std::move(work));
}

struct Failure {
  Kind kind;
  std::string what;
};

inline Failure failure(const std::exception& e, Clock::time_point deadline) {
  auto what = first_line(e);
  const bool timed_out = what.find("imed out") != std::string::npos || what.find("timeout") != std::string::npos ||
                         Clock::now() >= deadline;
  return {timed_out ? Kind::timed_out : Kind::lost, std::move(what)};
}

// A send or receive: its work, or how posting it failed.
struct Posted {
  c10::intrusive_ptr<c10d::Work> work;
  std::optional<Failure> failed;
};

inline std::optional<Failure> wait_until(const Posted& p, Clock::time_point deadline) {
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

inline torch::Tensor longs(std::int64_t n) { return torch::zeros({n}, torch::kLong); }

inline std::string to_text(const std::array<std::int64_t, header_size>& h) {
  std::string out;
  for (const auto v : h) out += std::to_string(v) + " ";
  return out;
}

inline std::optional<std::array<std::int64_t, header_size>> header_of(const std::string& text) {
  std::array<std::int64_t, header_size> h{};
  const char* p = text.c_str();
  for (auto& v : h) {
    char* end = nullptr;
    errno = 0;
    v = std::strtoll(p, &end, 10);
    if (end == p || errno) return std::nullopt;
    p = end;
  }
  return h;
}

// Why rank r's header cannot be taken ("" if it can).
inline std::string refusal(const std::optional<std::array<std::int64_t, header_size>>& header, int r, int world,
                           std::int64_t round) {
  if (!header) return "its header is unreadable";
  const auto& h = *header;
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

}  // namespace modtracker::libtorch::transport
