// Ranks (as threads over a HashStore, Gloo over 127.0.0.1): the time of a
// gather of a 1000-module table from 4 ranks, an allreduce with and without
// a tracker tracking on every rank, how a gather grows with ranks and
// modules, and what a heartbeat costs a training step.
#include <torch/torch.h>

#include <algorithm>
#include <barrier>
#include <fstream>
#include <string>
#include <thread>

#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include <modtracker/libtorch_tools/ranks.hpp>
#include <modtracker/torch.hpp>

#include "bench.hpp"

namespace bench {

namespace {
namespace lt = modtracker::libtorch;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// A table as a 1000-module model gives it: Model.blocks.<i>.<layer> rows with times and parameters.
modtracker::Statistics table(int modules, int rank) {
  modtracker::Statistics stats;
  for (int i = 0; i < modules; ++i) {
    auto& row = stats.at("Model.blocks." + std::to_string(i / 4) + ".layer" + std::to_string(i % 4));
    row.fw_calls = row.bw_calls = 20;
    row.fw_inclusive = row.fw_exclusive = std::chrono::microseconds(100 + i + rank);
    row.bw_inclusive = row.bw_exclusive = std::chrono::microseconds(200 + i);
    row.params_trainable = 72;
    row.bytes_trainable = 288;
    row.output_shape = "[64, 8]";
    row.fw_flops = 65536 + i;
    row.bw_flops = 131072 + i;
    row.fw_kept_bytes = 2048 + rank;
    row.fw_peak_bytes = 4096 + rank;
    row.bw_peak_bytes = 8192;
  }
  return stats;
}

// A line of /proc/self/status, in kB ("VmRSS", "VmHWM").
double status_kb(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) return std::stod(line.substr(key.size() + 1));
  return 0;
}
}  // namespace

RankCosts rank_costs(int world, int modules, int rounds) {
  RankCosts costs;
  costs.world = world;
  costs.modules = modules;
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<double> gather_ms, plain_us, tracked_us;
  std::vector<std::thread> threads;
  std::barrier sync(world);
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      lt::Tracker tracker;
      const auto stats = table(modules, r);
      lt::RankGroup ranks(store, r, world, {std::chrono::seconds(30), "bench"});
      auto group = lt::make_gloo_group(c10::make_intrusive<c10d::PrefixStore>("train", store), r, world,
                                       std::chrono::seconds(30));
      (void)ranks.gather(tracker, stats);  // the first: connections and allocations warm up
      for (int i = 0; i < rounds; ++i) {
        const auto g = ranks.gather(tracker, stats);
        if (r == 0) gather_ms.push_back(std::chrono::duration<double, std::milli>(g.elapsed).count());
      }
      // The allreduce of a gradient of 1000 Linear(8, 8) (72 K floats): alternately untracked and tracked.
      std::vector<torch::Tensor> grad{torch::ones({modules * 72})};
      auto allreduce_us = [&] {
        group->barrier()->wait();
        const auto t0 = clock_type::now();
        for (int k = 0; k < 20; ++k) group->allreduce(grad)->wait();
        return std::chrono::duration<double, std::micro>(clock_type::now() - t0).count() / 20;
      };
      for (int i = 0; i < rounds; ++i) {
        const double plain = allreduce_us();
        double tracked = 0;
        {
          auto scope = tracker.track();
          tracked = allreduce_us();
        }
        if (r == 0) {
          plain_us.push_back(plain);
          tracked_us.push_back(tracked);
        }
      }
      sync.arrive_and_wait();  // no rank drops its groups while another still uses them
    });
  for (auto& t : threads) t.join();
  costs.gather_ms_min = *std::min_element(gather_ms.begin(), gather_ms.end());
  costs.gather_ms_median = median(gather_ms);
  costs.gather_ms_max = *std::max_element(gather_ms.begin(), gather_ms.end());
  costs.allreduce_us = median(plain_us);
  costs.allreduce_tracked_us = median(tracked_us);
  std::vector<double> ratios;
  for (std::size_t i = 0; i < plain_us.size(); ++i) ratios.push_back(tracked_us[i] / plain_us[i]);
  costs.ratio_min = *std::min_element(ratios.begin(), ratios.end());
  costs.ratio_max = *std::max_element(ratios.begin(), ratios.end());
  return costs;
}

GatherScale gather_scale(int world, int modules, int rounds) {
  GatherScale out;
  out.world = world;
  out.modules = modules;
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<double> ms;
  std::barrier sync(world);
  double rss_before = 0;
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      lt::Tracker tracker;
      const auto stats = table(modules, r);
      lt::RankGroup ranks(store, r, world, {std::chrono::seconds(60), "scale"});
      (void)ranks.gather(tracker, stats);  // connections and allocations warm up
      sync.arrive_and_wait();
      if (r == 0) {
        std::ofstream("/proc/self/clear_refs") << "5";  // VmHWM restarts from VmRSS
        rss_before = status_kb("VmRSS");
      }
      sync.arrive_and_wait();
      for (int i = 0; i < rounds; ++i) {
        const auto g = ranks.gather(tracker, stats);
        if (r == 0) {
          ms.push_back(std::chrono::duration<double, std::milli>(g.elapsed).count());
          out.received_bytes = g.received_bytes;
        }
      }
      sync.arrive_and_wait();
    });
  for (auto& t : threads) t.join();
  out.peak_growth_mb = std::max(0.0, status_kb("VmHWM") - rss_before) / 1024;
  out.ms_min = *std::min_element(ms.begin(), ms.end());
  out.ms_median = median(ms);
  out.ms_max = *std::max_element(ms.begin(), ms.end());
  return out;
}

HeartbeatCost heartbeat_cost(int rounds) {
  torch::nn::Sequential model;
  for (int i = 0; i < 16; ++i) model->push_back(torch::nn::Linear(64, 64));
  torch::optim::SGD opt(model->parameters(), 0.01);
  const auto x = torch::randn({32, 64});
  auto steps_us = [&] {
    const auto t0 = clock_type::now();
    for (int k = 0; k < 50; ++k) {
      opt.zero_grad();
      model->forward(x).square().mean().backward();
      opt.step();
    }
    return std::chrono::duration<double, std::micro>(clock_type::now() - t0).count() / 50;
  };
  steps_us();  // warm-up
  std::vector<double> plain, beating, ratios;
  auto store = c10::make_intrusive<c10d::HashStore>();
  for (int i = 0; i < rounds; ++i) {
    plain.push_back(steps_us());
    {
      lt::RankOptions options;
      options.name = "heartbeat" + std::to_string(i);
      options.heartbeat = std::chrono::milliseconds(10);
      lt::RankGroup group(store, 0, 1, options);
      beating.push_back(steps_us());
    }
    ratios.push_back(beating.back() / plain.back());
  }
  HeartbeatCost out;
  out.step_us = median(plain);
  out.step_heartbeat_us = median(beating);
  out.ratio_min = *std::min_element(ratios.begin(), ratios.end());
  out.ratio_median = median(ratios);
  out.ratio_max = *std::max_element(ratios.begin(), ratios.end());
  return out;
}

}  // namespace bench
