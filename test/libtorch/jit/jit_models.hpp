// TorchScript modules defined in C++ for the TorchScript tests, and what the
// tests do with them.
#pragma once

#include <torch/script.h>

#include <string>

#include "libtorch/helpers.hpp"

#include <doctest/doctest.h>

namespace jit_models {
using namespace helpers;

inline torch::jit::Module linear_module(const std::string& cls, int in, int out) {
  torch::jit::Module m(cls);
  m.register_parameter("weight", torch::randn({out, in}), false);
  m.register_parameter("bias", torch::randn({out}), false);
  m.define(R"(
def forward(self, x):
    return torch.linear(x, self.weight, self.bias)
)");
  return m;
}

/// A module of class `cls` with one Lin(4, 4) child `fc`, and the given methods.
inline torch::jit::Module with_fc(const std::string& cls, const std::string& source) {
  torch::jit::Module m(cls);
  m.register_module("fc", linear_module("Lin", 4, 4));
  m.define(source);
  return m;
}

/// One run of both models on one input: the same outputs and input gradients, bit for bit.
inline void check_identical(torch::jit::Module& plain, torch::jit::Module& inst, const torch::Tensor& x) {
  auto x0 = x.detach().clone().requires_grad_(true);
  auto x1 = x.detach().clone().requires_grad_(true);
  auto y0 = plain.forward({x0}).toTensor();
  auto y1 = inst.forward({x1}).toTensor();
  CHECK(torch::equal(y0, y1));
  (y0 * y0).sum().backward();
  (y1 * y1).sum().backward();
  CHECK(torch::equal(x0.grad(), x1.grad()));
}

inline Strings calls(lt::Tracker& t, torch::jit::Module& m, const torch::Tensor& x) {
  auto y = m.forward({x}).toTensor();
  auto fw = transitions(t);
  y.sum().backward();
  auto bw = transitions(t);
  fw.insert(fw.end(), bw.begin(), bw.end());
  return fw;
}

}  // namespace jit_models
