// The silent misses of tutorial-style code, each said once: a plain layer left
// in by a partial swap, a child run outside its parent's call (a method other
// than forward), a parent without a holder whose layers run as roots.
#include <string>
#include <vector>

#include "libtorch/helpers.hpp"

#include <doctest/doctest.h>

namespace nn = modtracker::libtorch::nn;
namespace lt = modtracker::libtorch;
using Code = modtracker::Diagnostic::Code;

namespace {
struct Said {
  std::vector<modtracker::Diagnostic> all;
  explicit Said(lt::Tracker& t) {
    t.set_diagnostics([this](const modtracker::Diagnostic& d) { all.push_back(d); });
  }
  [[nodiscard]] std::vector<std::string> fqns(Code c) const {
    std::vector<std::string> out;
    for (const auto& d : all)
      if (d.code == c) out.push_back(d.fqn);
    return out;
  }
  [[nodiscard]] std::string text() const {
    std::string out;
    for (const auto& d : all) out += d.message + "\n";
    return out;
  }
};

// A partial swap: the layers with parameters swapped, ReLU and Dropout2d left in.
struct PartialImpl : nn::Module {
  nn::Conv2d conv{register_module("conv", nn::Conv2d(nn::Conv2dOptions(1, 4, 3)))};
  torch::nn::ReLU relu{register_module("relu", torch::nn::ReLU())};
  torch::nn::Dropout2d drop{register_module("drop", torch::nn::Dropout2d())};
  nn::MultiheadAttention attention{register_module("attention", nn::MultiheadAttention(4, 2))};
  torch::Tensor forward(torch::Tensor x) {
    x = drop->forward(relu->forward(conv->forward(x)));
    auto seq = x.flatten(2).permute({2, 0, 1});  // (positions, batch, 4)
    return std::get<0>(attention->forward(seq, seq, seq));
  }
};
MODTRACKER_MODULE(Partial);
}  // namespace

TEST_CASE("reach: a plain parameter-free layer left in a tracked module is said once, when the module is first named") {
  torch::manual_seed(0);
  Partial model;
  lt::Tracker tracker;
  Said said(tracker);
  {
    auto scope = tracker.track();
    for (int i = 0; i < 2; ++i) model(torch::randn({2, 1, 6, 6})).sum().backward();
  }
  INFO(said.text());
  // MultiheadAttention's own plain out_proj is its business: not said.
  CHECK(said.fqns(Code::untracked_child) == std::vector<std::string>{"Partial.relu", "Partial.drop"});
  CHECK(said.all.size() == 2);
  CHECK(said.all[0].message.find("modtracker::libtorch::nn") != std::string::npos);
}

namespace {
// The VAE tutorial: decode() is a method other than forward, called alone to sample.
struct VAEImpl : nn::Module {
  nn::Linear fc1{register_module("fc1", nn::Linear(6, 4))};
  nn::Linear fc2{register_module("fc2", nn::Linear(4, 2))};
  nn::Linear fc3{register_module("fc3", nn::Linear(2, 4))};
  nn::Linear fc4{register_module("fc4", nn::Linear(4, 6))};
  torch::Tensor decode(torch::Tensor z) { return torch::sigmoid(fc4->forward(torch::relu(fc3->forward(z)))); }
  torch::Tensor forward(torch::Tensor x) { return decode(fc2->forward(torch::relu(fc1->forward(x)))); }
  // The fix the diagnostic names: the method as a tracked call of this module.
  torch::Tensor tracked_decode(torch::Tensor z) {
    lt::ForwardScope call(*this, lt::Method{"decode"}, z);
    auto y = decode(z);
    call.finish(y);
    return y;
  }
};
MODTRACKER_MODULE(VAE);
}  // namespace

TEST_CASE("reach: a child run outside its parent's call (a method other than forward) is said once, as information") {
  torch::manual_seed(0);
  VAE model;
  lt::Tracker tracker;
  Said said(tracker);
  std::vector<std::string> sample;
  {
    auto scope = tracker.track();
    model(torch::randn({3, 6})).sum().backward();
    for (int i = 0; i < 3; ++i) (void)model->decode(torch::randn({3, 2}));
    for (const auto& t : tracker.drain_transitions()) (void)t;
    (void)model->tracked_decode(torch::randn({3, 2}));  // nested: nothing more to say
    for (const auto& t : tracker.drain_transitions())
      sample.push_back(std::string(t.fqn) + "@" + std::to_string(t.depth) + " " + std::string(t.method));
  }
  INFO(said.text());
  CHECK(said.fqns(Code::outside_parent) == std::vector<std::string>{"VAE.fc3", "VAE.fc4"});
  CHECK(said.all.size() == 2);
  CHECK(said.all[0].message.find("outside a call of its parent 'VAE'") != std::string::npos);
  CHECK(said.all[0].message.find("ForwardScope") != std::string::npos);
  CHECK(sample == std::vector<std::string>{"VAE@0 decode", "VAE.fc3@1 forward", "VAE.fc3@1 forward", "VAE.fc4@1 forward",
                                           "VAE.fc4@1 forward", "VAE@0 decode"});
}

namespace {
// pytorch/examples' MNIST: a plain class on the stack, called as model.forward(x).
struct Net : nn::Module {
  nn::Conv2d conv1{register_module("conv1", nn::Conv2d(nn::Conv2dOptions(1, 4, 5)))};
  nn::Linear fc1{register_module("fc1", nn::Linear(16, 10))};
  nn::Linear fc2{register_module("fc2", nn::Linear(10, 3))};
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(torch::max_pool2d(conv1->forward(x), 2)).view({-1, 16});
    return torch::log_softmax(fc2->forward(torch::relu(fc1->forward(x))), 1);
  }
};
}  // namespace

TEST_CASE("reach: a parent without a holder, whose layers run as roots, is said once, naming them and the fix") {
  torch::manual_seed(0);
  Net model;
  const auto step = [&](bool through_call) {
    const auto x = torch::randn({2, 1, 8, 8});
    auto out = through_call ? lt::call(model, x) : model.forward(x);
    torch::nll_loss(out, torch::tensor({0, 2})).backward();
  };
  lt::Tracker tracker;
  Said said(tracker);
  {
    auto scope = tracker.track();
    for (int i = 0; i < 2; ++i) step(false);
  }
  INFO(said.text());
  REQUIRE(said.fqns(Code::untracked_parent) == std::vector<std::string>{""});
  const auto& message = said.all.back().message;
  CHECK(message.find("the layers Conv2d, Linear, Linear#2 ran as roots") != std::string::npos);
  CHECK(message.find("modtracker::libtorch::call(model, x)") != std::string::npos);
  // Through call(): one root, Net, and only its being unowned is said.
  lt::Tracker fixed;
  Said fixed_said(fixed);
  {
    auto scope = fixed.track();
    step(true);
  }
  CHECK(fixed_said.fqns(Code::untracked_parent).empty());
  CHECK(fixed.known_fqn(*model.fc2) == "Net.fc2");
}

#include "../examples/models.hpp"

TEST_CASE("reach: the demo's models (a ModuleList of blocks sharing a layer, a ModuleDict, Sequentials) say nothing") {
  torch::manual_seed(0);
  models::Classifier classifier;
  models::ConvNet convnet;
  lt::Tracker tracker;
  Said said(tracker);
  {
    auto scope = tracker.track();
    for (int i = 0; i < 2; ++i) {
      classifier(torch::randn({4, 16})).sum().backward();
      convnet(torch::randn({2, 1, 12, 12})).sum().backward();
    }
  }
  INFO(said.text());
  CHECK(said.all.empty());
}
