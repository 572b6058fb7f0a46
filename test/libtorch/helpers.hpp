// Shared by the LibTorch suites beyond the reference scenarios: transitions
// and parents as text, and small models written the LibTorch way.
#pragma once
#include <string>
#include <tuple>
#include <vector>

#include "libtorch/scenarios.hpp"

namespace helpers {
namespace lt = modtracker::libtorch;
using Strings = std::vector<std::string>;

inline Strings transitions(lt::Tracker& t) {
  Strings out;
  for (const auto& tr : t.drain_transitions())
    out.push_back(std::string(tr.phase == modtracker::Phase::forward ? "fw " : "bw ") +
                  (tr.kind == modtracker::Kind::enter ? "enter " : "exit ") + std::string(tr.fqn));
  return out;
}
inline std::string parents(lt::Tracker& t) {
  std::string s;
  for (auto p : t.parents()) s += (s.empty() ? "" : ",") + std::string(p);
  return s;
}

struct SharedImpl : torch::nn::Module {
  lt::nn::Linear a{register_module("a", lt::nn::Linear(3, 3))};
  lt::nn::Linear b{nullptr};
  SharedImpl() { b = register_module("b", a.ptr()); }  // one layer, two names
  torch::Tensor forward(torch::Tensor x) { return b(a(x)); }
};
MODTRACKER_MODULE(Shared);

struct RecursiveImpl : torch::nn::Module {
  lt::nn::Linear lin{register_module("lin", lt::nn::Linear(3, 3))};
  torch::Tensor forward(torch::Tensor x, int depth) {
    x = lin(x);
    return depth == 0 ? x : lt::call(*this, x, depth - 1);
  }
};

struct SplitImpl : torch::nn::Module {
  lt::nn::Linear lin{register_module("lin", lt::nn::Linear(3, 3))};
  std::tuple<torch::Tensor, torch::Tensor> forward(torch::Tensor x) {
    auto y = lin(x);
    return {y, y.detach()};  // only the first output requires grad
  }
};
MODTRACKER_MODULE(Split);

}  // namespace helpers
