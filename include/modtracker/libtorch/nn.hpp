// modtracker::libtorch::nn: torch::nn with every module holder tracked.
//   namespace nn = modtracker::libtorch::nn;   // in place of: namespace nn = torch::nn;
// Each holder of LibTorch 1.13's torch::nn (torch/nn/modules/) is here as a
// tracked one (Holder<XImpl>), so `m(x)` and `m->forward(x)` are tracked
// calls; Sequential tracks itself and its children. Every other torch::nn name
// (Module, the options, functional, init, AnyModule, ModuleList, ModuleDict,
// the Impl classes, ...) is torch::nn's own, reached through this namespace.
// Name what you use through the namespace alias or using-declarations: a
// `using namespace` of both torch::nn and this one makes the holders ambiguous.
#pragma once

#include <torch/torch.h>

#include <modtracker/libtorch/calls.hpp>
#include <modtracker/libtorch/sequential.hpp>

namespace modtracker::libtorch::nn {

using namespace torch::nn;  // NOLINT(google-build-using-namespace): the rest of torch::nn, unchanged
using SequentialImpl = libtorch::SequentialImpl;

/// The module holders of LibTorch 1.13's torch::nn (its TORCH_MODULE
/// declarations) but the containers without a forward (ModuleList,
/// ModuleDict, ParameterList, ParameterDict, which stay torch::nn's),
/// Sequential, Embedding and EmbeddingBag (declared below); a test checks the
/// list against the installed headers.
#define MODTRACKER_TORCH_NN_HOLDERS(X) \
  X(AdaptiveAvgPool1d) X(AdaptiveAvgPool2d) X(AdaptiveAvgPool3d) X(AdaptiveLogSoftmaxWithLoss) \
  X(AdaptiveMaxPool1d) X(AdaptiveMaxPool2d) X(AdaptiveMaxPool3d) X(AlphaDropout) X(AvgPool1d) X(AvgPool2d) \
  X(AvgPool3d) X(BCELoss) X(BCEWithLogitsLoss) X(BatchNorm1d) X(BatchNorm2d) X(BatchNorm3d) X(Bilinear) \
  X(CELU) X(CTCLoss) X(ConstantPad1d) X(ConstantPad2d) X(ConstantPad3d) X(Conv1d) X(Conv2d) X(Conv3d) \
  X(ConvTranspose1d) X(ConvTranspose2d) X(ConvTranspose3d) X(CosineEmbeddingLoss) X(CosineSimilarity) \
  X(CrossEntropyLoss) X(CrossMapLRN2d) X(Dropout) X(Dropout2d) X(Dropout3d) X(ELU) X(FeatureAlphaDropout) \
  X(Flatten) X(Fold) X(FractionalMaxPool2d) X(FractionalMaxPool3d) X(Functional) X(GELU) X(GLU) X(GRU) \
  X(GRUCell) X(GroupNorm) X(Hardshrink) X(Hardtanh) X(HingeEmbeddingLoss) X(HuberLoss) X(Identity) \
  X(InstanceNorm1d) X(InstanceNorm2d) X(InstanceNorm3d) X(KLDivLoss) X(L1Loss) X(LPPool1d) X(LPPool2d) \
  X(LSTM) X(LSTMCell) X(LayerNorm) X(LeakyReLU) X(Linear) X(LocalResponseNorm) X(LogSigmoid) X(LogSoftmax) \
  X(MSELoss) X(MarginRankingLoss) X(MaxPool1d) X(MaxPool2d) X(MaxPool3d) X(MaxUnpool1d) X(MaxUnpool2d) \
  X(MaxUnpool3d) X(Mish) X(MultiLabelMarginLoss) X(MultiLabelSoftMarginLoss) X(MultiMarginLoss) \
  X(MultiheadAttention) X(NLLLoss) X(PReLU) X(PairwiseDistance) X(PixelShuffle) X(PixelUnshuffle) \
  X(PoissonNLLLoss) X(RNN) X(RNNCell) X(RReLU) X(ReLU) X(ReLU6) X(ReflectionPad1d) X(ReflectionPad2d) \
  X(ReflectionPad3d) X(ReplicationPad1d) X(ReplicationPad2d) X(ReplicationPad3d) X(SELU) X(SiLU) X(Sigmoid) \
  X(SmoothL1Loss) X(SoftMarginLoss) X(Softmax) X(Softmax2d) X(Softmin) X(Softplus) X(Softshrink) X(Softsign) \
  X(Tanh) X(Tanhshrink) X(Threshold) X(Transformer) X(TransformerDecoder) X(TransformerDecoderLayer) \
  X(TransformerEncoder) X(TransformerEncoderLayer) X(TripletMarginLoss) X(TripletMarginWithDistanceLoss) \
  X(Unflatten) X(Unfold) X(Upsample) X(ZeroPad2d)

#define MODTRACKER_TRACKED_HOLDER(Name) using Name = Holder<torch::nn::Name##Impl>;
MODTRACKER_TORCH_NN_HOLDERS(MODTRACKER_TRACKED_HOLDER)
#undef MODTRACKER_TRACKED_HOLDER

/// Embedding and EmbeddingBag, with from_pretrained building a tracked module.
class Embedding : public Holder<torch::nn::EmbeddingImpl> {
 public:
  using Holder<torch::nn::EmbeddingImpl>::Holder;
  static Embedding from_pretrained(const torch::Tensor& embeddings,
                                   const torch::nn::EmbeddingFromPretrainedOptions& options = {}) {
    return Embedding(std::make_shared<Tracked<torch::nn::EmbeddingImpl>>(
        *torch::nn::Embedding::from_pretrained(embeddings, options)));
  }
};
class EmbeddingBag : public Holder<torch::nn::EmbeddingBagImpl> {
 public:
  using Holder<torch::nn::EmbeddingBagImpl>::Holder;
  static EmbeddingBag from_pretrained(const torch::Tensor& embeddings,
                                      const torch::nn::EmbeddingBagFromPretrainedOptions& options = {}) {
    return EmbeddingBag(std::make_shared<Tracked<torch::nn::EmbeddingBagImpl>>(
        *torch::nn::EmbeddingBag::from_pretrained(embeddings, options)));
  }
};

}  // namespace modtracker::libtorch::nn
