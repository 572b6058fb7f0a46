// The demo's embedded models, also the benchmark's training step: ordinary
// LibTorch code (the tutorials' style), tracked by the namespace swap.
#pragma once

#include <modtracker/torch.hpp>

namespace models {
namespace nn = modtracker::libtorch::nn;

/// A residual MLP block; its input projection may be shared with other blocks.
struct BlockImpl : nn::Module {
  nn::Linear proj{nullptr};
  nn::Sequential mlp{register_module("mlp", nn::Sequential(nn::Linear(32, 64), nn::GELU(), nn::Linear(64, 32)))};
  nn::LayerNorm norm{register_module("norm", nn::LayerNorm(nn::LayerNormOptions({32})))};
  explicit BlockImpl(nn::Linear shared_proj) { proj = register_module("proj", std::move(shared_proj)); }
  torch::Tensor forward(torch::Tensor x) { return norm->forward(x + mlp->forward(proj->forward(x))); }
};
MODTRACKER_MODULE(Block);

/// Nested blocks in a ModuleList (sharing one projection), a ModuleDict of heads.
struct ClassifierImpl : nn::Module {
  nn::Linear embed{register_module("embed", nn::Linear(16, 32))};
  nn::ModuleList blocks{register_module("blocks", nn::ModuleList())};
  nn::ModuleDict heads{register_module("heads", nn::ModuleDict())};
  ClassifierImpl() {
    nn::Linear shared(32, 32);  // one layer, used by every block
    for (int i = 0; i < 3; ++i) blocks->push_back(Block(shared));
    heads->update({{"logits", nn::Linear(32, 4).ptr()}, {"confidence", nn::Linear(32, 1).ptr()}});
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(embed->forward(x));
    for (const auto& block : *blocks) x = block->as<Block>()->forward(x);
    auto logits = heads["logits"]->as<nn::Linear>()->forward(x);
    auto confidence = heads["confidence"]->as<nn::Linear>()->forward(x);
    return logits * torch::sigmoid(confidence);
  }
};
MODTRACKER_MODULE(Classifier);

/// A small convolutional classifier: a Sequential feature stack and a head.
struct ConvNetImpl : nn::Module {
  nn::Sequential features{register_module(
      "features", nn::Sequential(nn::Conv2d(nn::Conv2dOptions(1, 8, 3).padding(1)), nn::BatchNorm2d(8), nn::ReLU(),
                                 nn::MaxPool2d(2), nn::Conv2d(nn::Conv2dOptions(8, 16, 3).padding(1)), nn::ReLU(),
                                 nn::AdaptiveAvgPool2d(1), nn::Flatten()))};
  nn::Linear head{register_module("head", nn::Linear(16, 4))};
  torch::Tensor forward(torch::Tensor x) { return head->forward(features->forward(x)); }
};
MODTRACKER_MODULE(ConvNet);

}  // namespace models
