// Whether a rank lives: its heartbeat (a thread of each rank's group that
// counts in the store), and what another rank reads of it: the count
// stopped, the group closed, or, on the same host, the process ended.
// Included by ranks.cpp only (one LibTorch TU).
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <unistd.h>

#include <modtracker/libtorch_tools/ranks.hpp>

#include "libtorch_tools/rank_transport.hpp"

namespace modtracker::libtorch::liveness {

using transport::Clock;
using transport::bytes_of;
using transport::text_of;
using std::chrono::milliseconds;

// A rank's heartbeat: a thread that adds 1 to `beat/R` every interval until
// the group ends, then sets `closed/R`. Its store is a connection of its own
// where the job's is a TCPStore: a user's blocking wait on the job's store
// client (which holds the client's lock) must not stall it.
class Heartbeat {
 public:
  Heartbeat(c10::intrusive_ptr<c10d::Store> store, int rank, milliseconds interval)
      : store_(std::move(store)), rank_(std::to_string(rank)), interval_(interval), thread_([this] { run(); }) {}
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;
  ~Heartbeat() {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
    try {
      store_->set("closed/" + rank_, bytes_of("1"));
    } catch (const std::exception&) {  // the store is gone: rank 0 sees the heartbeat stop instead
    }
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      lock.unlock();
      try {
        store_->add("beat/" + rank_, 1);
      } catch (const std::exception&) {
        return;  // the store is unreachable: the beat stops, as a dead rank's would
      }
      lock.lock();
      wake_.wait_for(lock, interval_, [this] { return stop_; });
    }
  }

  c10::intrusive_ptr<c10d::Store> store_;
  std::string rank_;
  milliseconds interval_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;  // last: started once the rest is made
};

// The store the heartbeat writes to: a second client of a TCPStore, else
// the job's store itself (in-process and file stores do not block others).
inline c10::intrusive_ptr<c10d::Store> heartbeat_store(const c10::intrusive_ptr<c10d::Store>& job, const std::string& name) {
  if (const auto* tcp = dynamic_cast<const c10d::TCPStore*>(job.get())) {
    c10d::TCPStoreOptions o;
    o.port = tcp->getPort();
    o.isServer = false;
    o.waitWorkers = false;
    o.timeout = tcp->getTimeout();
    try {
      return c10::make_intrusive<c10d::PrefixStore>(name, c10::make_intrusive<c10d::TCPStore>(tcp->getHost(), o));
    } catch (const std::exception&) {  // a second connection refused: share the job's
    }
  }
  return c10::make_intrusive<c10d::PrefixStore>(name, job);
}

inline milliseconds interval(const RankOptions& o) {
  if (o.heartbeat.count() > 0) return o.heartbeat;
  return std::clamp(o.timeout / 8, milliseconds(10), milliseconds(1000));
}

// The peers' lives as one rank sees them: each peer's heartbeat count as
// last read and when it last moved, and the host and process of each.
class Watch {
 public:
  Watch(std::string host, milliseconds interval, bool check_processes)
      : host_(std::move(host)), interval_(interval), check_processes_(check_processes) {}

  // Why rank r is taken for gone ("" while it lives): its group closed, its
  // heartbeat has not moved for four intervals (at least 200 ms), or (on
  // this host, if checked) its process ended. Reads the store at most once
  // an interval per rank.
  std::string gone_reason(c10d::Store& store, int r) {
    if (check_processes_ && ended(store, r)) return ended_text(r);
    auto& p = pulses_[r];
    const auto now = Clock::now();
    if (p.beats >= 0 && now - p.read < interval_) return {};
    p.read = now;
    if (store.check({"closed/" + std::to_string(r)}))
      return "it closed its group (its RankGroup ended) without reaching this gather";
    const auto beats = store.add("beat/" + std::to_string(r), 0);
    if (beats != p.beats) {
      p.beats = beats;
      p.moved = now;
      return {};
    }
    if (now - p.moved < std::max(4 * interval_, milliseconds(200))) return {};
    const auto silent = std::chrono::duration_cast<milliseconds>(now - p.moved) + interval_;
    return "its heartbeat stopped " + std::to_string(silent.count()) +
           " ms ago or more (its process died, or its host or network failed)";
  }

 private:
  // True if rank r runs on this host and its process is gone (a killed rank).
  bool ended(c10d::Store& store, int r) {
    auto it = who_.find(r);
    if (it == who_.end()) {
      const auto key = "who/" + std::to_string(r);
      if (!store.check({key})) return false;
      const auto text = text_of(store.get(key));
      const auto space = text.rfind(' ');
      it = who_.emplace(r, std::pair{text.substr(0, space), std::atol(text.c_str() + space + 1)}).first;
    }
    const auto& [their_host, pid] = it->second;
    return their_host == host_ && pid > 0 && pid != getpid() && kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
  }
  std::string ended_text(int r) const {
    const auto it = who_.find(r);
    return "its process" + (it == who_.end() ? std::string() : " " + std::to_string(it->second.second)) +
           " on this host has ended (killed, or exited)";
  }

  struct Pulse {
    std::int64_t beats = -1;
    Clock::time_point moved, read;
  };
  std::string host_;
  milliseconds interval_;
  bool check_processes_;
  std::map<int, Pulse> pulses_;
  std::map<int, std::pair<std::string, long>> who_;  // host and pid of each rank, as read
};

}  // namespace modtracker::libtorch::liveness
