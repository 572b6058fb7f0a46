// modtracker-demo: trains a small classifier a few steps under a tracker and
// prints, per module, forward and backward calls and time (inclusive), from
// the transitions the tracker yields.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

import modtracker;
#include "modtracker/torch.hpp"

namespace lt = modtracker::libtorch;

// A block with a shared projection, used twice: nested modules, a
// Sequential, a ModuleList and a ModuleDict, as ordinary LibTorch code with
// the tracked drop-ins (lt::nn::*, MODTRACKER_MODULE, lt::call).
struct BlockImpl : torch::nn::Module {
  lt::nn::Linear proj{register_module("proj", lt::nn::Linear(32, 32))};
  lt::nn::Sequential mlp{register_module(
      "mlp", lt::nn::Sequential(torch::nn::Linear(32, 64), torch::nn::GELU(), torch::nn::Linear(64, 32)))};
  lt::nn::LayerNorm norm{register_module("norm", lt::nn::LayerNorm(torch::nn::LayerNormOptions({32})))};
  torch::Tensor forward(torch::Tensor x) { return norm(x + mlp(proj(x))); }
};
MODTRACKER_MODULE(Block);

struct ClassifierImpl : torch::nn::Module {
  lt::nn::Linear embed{register_module("embed", lt::nn::Linear(16, 32))};
  torch::nn::ModuleList blocks{register_module("blocks", torch::nn::ModuleList(Block(), Block()))};
  torch::nn::ModuleDict heads{register_module(
      "heads", torch::nn::ModuleDict(std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>{
                   {"logits", std::make_shared<torch::nn::LinearImpl>(32, 4)}}))};
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(embed(x));
    for (const auto& b : *blocks) x = lt::call(*b->as<BlockImpl>(), x);
    return lt::call(*heads["logits"]->as<torch::nn::LinearImpl>(), x);
  }
};
MODTRACKER_MODULE(Classifier);

int main(int argc, char** argv) {
  int steps = 5;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc && std::atoi(argv[i + 1]) > 0) {
      steps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: modtracker-demo [--steps N]\n");
      return 2;
    }
  }
  torch::manual_seed(0);
  Classifier model;
  torch::optim::SGD opt(model->parameters(), 0.05);
  lt::Tracker tracker;
  auto scope = tracker.track();

  struct Row {
    int fw = 0, bw = 0;
    double fw_ms = 0, bw_ms = 0;
  };
  std::map<std::string, Row> rows;
  std::map<std::pair<std::string, int>, std::vector<std::chrono::nanoseconds>> open;  // (fqn, phase) -> enter times
  for (int step = 1; step <= steps; ++step) {
    auto x = torch::randn({64, 16});
    auto y = torch::randint(0, 4, {64});
    opt.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(model(x), y);
    loss.backward();
    opt.step();
    for (const auto& t : tracker.transitions()) {
      const auto key = std::make_pair(std::string(t.fqn), static_cast<int>(t.phase));
      if (t.kind == modtracker::Kind::enter) {
        open[key].push_back(t.time);
        continue;
      }
      auto& stack = open[key];
      if (stack.empty()) continue;
      const double ms = std::chrono::duration<double, std::milli>(t.time - stack.back()).count();
      stack.pop_back();
      auto& r = rows[key.first];
      if (t.phase == modtracker::Phase::forward) ++r.fw, r.fw_ms += ms;
      else ++r.bw, r.bw_ms += ms;
    }
    std::printf("\rstep %d/%d  loss %.4f", step, steps, loss.item<double>());
    std::fflush(stdout);
  }
  std::printf("\n\n%-28s %6s %10s %6s %10s\n", "module", "fw", "fw ms", "bw", "bw ms");
  for (const auto& [fqn, r] : rows)
    std::printf("%-28s %6d %10.3f %6d %10.3f\n", fqn.c_str(), r.fw, r.fw_ms, r.bw, r.bw_ms);
  return 0;
}
