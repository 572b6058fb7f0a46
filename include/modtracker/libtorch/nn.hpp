// Tracked drop-ins for torch::nn layers: `modtracker::libtorch::nn::Linear`
// wherever `torch::nn::Linear` was.
#pragma once

#include <torch/torch.h>

#include <modtracker/libtorch/calls.hpp>
#include <modtracker/libtorch/sequential.hpp>

namespace modtracker::libtorch::nn {

using Linear = Holder<torch::nn::LinearImpl>;
using Conv1d = Holder<torch::nn::Conv1dImpl>;
using Conv2d = Holder<torch::nn::Conv2dImpl>;
using BatchNorm1d = Holder<torch::nn::BatchNorm1dImpl>;
using BatchNorm2d = Holder<torch::nn::BatchNorm2dImpl>;
using LayerNorm = Holder<torch::nn::LayerNormImpl>;
using Dropout = Holder<torch::nn::DropoutImpl>;
using Embedding = Holder<torch::nn::EmbeddingImpl>;
using ReLU = Holder<torch::nn::ReLUImpl>;
using GELU = Holder<torch::nn::GELUImpl>;
using Tanh = Holder<torch::nn::TanhImpl>;
using MaxPool2d = Holder<torch::nn::MaxPool2dImpl>;
using AdaptiveAvgPool2d = Holder<torch::nn::AdaptiveAvgPool2dImpl>;
using Flatten = Holder<torch::nn::FlattenImpl>;
using MultiheadAttention = Holder<torch::nn::MultiheadAttentionImpl>;

}  // namespace modtracker::libtorch::nn
