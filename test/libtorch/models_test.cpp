// Models written the way LibTorch tutorials and examples write them, tracked
// with the namespace swap and MODTRACKER_MODULE alone: every module present
// with its fqn, exact call counts in forward and backward, backward nesting,
// and no diagnostic.
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "libtorch/helpers.hpp"

#include <doctest/doctest.h>

#include "support/nesting.hpp"

namespace nn = modtracker::libtorch::nn;  // was: namespace nn = torch::nn;
namespace lt = modtracker::libtorch;

namespace {

// What a tracker saw of a few steps: the transitions, the calls per fqn and
// phase, and every diagnostic.
struct Seen {
  std::vector<modtracker::Transition> transitions;
  std::map<std::string, std::pair<int, int>> calls;  // fqn -> (forward, backward)
  std::vector<modtracker::Diagnostic> diagnostics;
  std::vector<std::string> fqns_of_walk;
};

template <class Step>
Seen track(lt::Tracker& tracker, const torch::nn::Module& model, Step&& step) {
  Seen seen;
  tracker.set_diagnostics([&](const modtracker::Diagnostic& d) { seen.diagnostics.push_back(d); });
  {
    auto scope = tracker.track();
    step();
    for (const auto& t : tracker.drain_transitions()) seen.transitions.push_back(t);
  }
  for (const auto& t : seen.transitions) {
    if (t.kind != modtracker::Kind::enter) continue;
    auto& c = seen.calls[std::string(t.fqn)];
    ++(t.phase == modtracker::Phase::forward ? c.first : c.second);
  }
  for (const auto& [fqn, ref] : tracker.walk(model)) seen.fqns_of_walk.push_back(fqn);
  return seen;
}

std::string diagnostics_text(const Seen& s) {
  std::string out;
  for (const auto& d : s.diagnostics) out += d.message + "\n";
  return out;
}

// --- a residual CNN (the tutorial ResNet), blocks as a class template -------
struct ResidualBlockImpl : nn::Module {
  nn::Conv2d conv1{nullptr}, conv2{nullptr};
  nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  explicit ResidualBlockImpl(int64_t channels) {
    conv1 = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(channels, channels, 3).padding(1).bias(false)));
    bn1 = register_module("bn1", nn::BatchNorm2d(channels));
    conv2 = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(channels, channels, 3).padding(1).bias(false)));
    bn2 = register_module("bn2", nn::BatchNorm2d(channels));
  }
  torch::Tensor forward(torch::Tensor x) {
    auto out = torch::relu(bn1->forward(conv1->forward(x)));
    out = bn2->forward(conv2->forward(out));
    return torch::relu(out + x);
  }
};
MODTRACKER_MODULE(ResidualBlock);

template <class Block>
struct ResNetImpl : nn::Module {
  nn::Conv2d stem{nullptr};
  nn::ModuleList layers{nullptr};
  nn::Linear fc{nullptr};
  explicit ResNetImpl(int64_t blocks) {
    stem = this->register_module("stem", nn::Conv2d(nn::Conv2dOptions(1, 4, 3).padding(1)));
    layers = this->register_module("layers", nn::ModuleList());
    for (int64_t i = 0; i < blocks; ++i) layers->push_back(Block(4));
    fc = this->register_module("fc", nn::Linear(4, 3));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(stem->forward(x));
    for (const auto& layer : *layers) x = layer->template as<Block>()->forward(x);
    x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
    return fc->forward(x);
  }
};
template <class Block>
using ResNet = lt::Holder<ResNetImpl<Block>>;  // the holder of a class template

// --- an LSTM language model (the word_language_model example) ---------------
struct RNNModelImpl : nn::Module {
  nn::Embedding encoder{nullptr};
  nn::LSTM rnn{nullptr};
  nn::Dropout drop{nullptr};
  nn::Linear decoder{nullptr};
  RNNModelImpl(int64_t tokens, int64_t hidden) {
    encoder = register_module("encoder", nn::Embedding(tokens, hidden));
    rnn = register_module("rnn", nn::LSTM(nn::LSTMOptions(hidden, hidden).num_layers(2)));
    drop = register_module("drop", nn::Dropout(0.2));
    decoder = register_module("decoder", nn::Linear(hidden, tokens));
  }
  std::tuple<torch::Tensor, std::tuple<torch::Tensor, torch::Tensor>> forward(
      torch::Tensor input, std::tuple<torch::Tensor, torch::Tensor> hidden) {
    auto emb = drop->forward(encoder->forward(input));
    auto [output, state] = rnn->forward(emb, hidden);  // the default-argument form below, too
    return {decoder->forward(drop->forward(output)), state};
  }
};
MODTRACKER_MODULE(RNNModel);

// --- a GAN pair (the DCGAN example) ------------------------------------------
struct GeneratorImpl : nn::Module {
  nn::Sequential main{nullptr};
  explicit GeneratorImpl(int64_t noise) {
    main = register_module("main", nn::Sequential(nn::ConvTranspose2d(nn::ConvTranspose2dOptions(noise, 8, 4).bias(false)),
                                                  nn::BatchNorm2d(8), nn::ReLU(true),
                                                  nn::ConvTranspose2d(nn::ConvTranspose2dOptions(8, 1, 4).stride(2).padding(1).bias(false)),
                                                  nn::Tanh()));
  }
  torch::Tensor forward(torch::Tensor x) { return main->forward(x); }
};
MODTRACKER_MODULE(Generator);

struct DiscriminatorImpl : nn::Module {
  nn::Conv2d conv1{nullptr}, conv2{nullptr};
  nn::LeakyReLU act{nullptr};
  DiscriminatorImpl() {
    conv1 = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(1, 8, 4).stride(2).padding(1).bias(false)));
    act = register_module("act", nn::LeakyReLU(nn::LeakyReLUOptions().negative_slope(0.2)));
    conv2 = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(8, 1, 4).bias(false)));
  }
  torch::Tensor forward(torch::Tensor x) { return torch::sigmoid(conv2->forward(act->forward(conv1->forward(x)))).view(-1); }
};
MODTRACKER_MODULE(Discriminator);

}  // namespace

TEST_CASE("models as tutorials write them: a residual CNN with ->forward calls and a class-template holder") {
  torch::manual_seed(0);
  ResNet<ResidualBlock> model(2);
  lt::Tracker tracker;
  const auto seen = track(tracker, *model, [&] {
    for (int step = 0; step < 2; ++step) model->forward(torch::randn({2, 1, 8, 8})).sum().backward();
  });
  INFO(diagnostics_text(seen));
  CHECK(seen.diagnostics.empty());
  using C = std::pair<int, int>;
  const std::map<std::string, C> expected{
      {"ResNet", {2, 2}},           {"ResNet.stem", {2, 2}},          {"ResNet.layers.0", {2, 2}},
      {"ResNet.layers.0.conv1", {2, 2}}, {"ResNet.layers.0.bn1", {2, 2}}, {"ResNet.layers.0.conv2", {2, 2}},
      {"ResNet.layers.0.bn2", {2, 2}}, {"ResNet.layers.1", {2, 2}},       {"ResNet.layers.1.conv1", {2, 2}},
      {"ResNet.layers.1.bn1", {2, 2}}, {"ResNet.layers.1.conv2", {2, 2}}, {"ResNet.layers.1.bn2", {2, 2}},
      {"ResNet.fc", {2, 2}}};
  CHECK(seen.calls == expected);
  CHECK(seen.fqns_of_walk.front() == "ResNet");  // the class template's root is named like any other
  check_nesting(seen.transitions, modtracker::Phase::forward, "forward");
  // A residual connection feeds a block's input to its end: its backward spans balance.
  check_nesting(seen.transitions, modtracker::Phase::backward, "backward", /*nested=*/false);
}

TEST_CASE("models as tutorials write them: an LSTM language model, hidden state carried and defaulted") {
  torch::manual_seed(0);
  RNNModel model(20, 8);
  lt::Tracker tracker;
  const auto seen = track(tracker, *model, [&] {
    auto hidden = std::make_tuple(torch::zeros({2, 3, 8}), torch::zeros({2, 3, 8}));
    for (int step = 0; step < 3; ++step) {
      auto [output, state] = model(torch::randint(20, {5, 3}), hidden);
      hidden = std::make_tuple(std::get<0>(state).detach(), std::get<1>(state).detach());
      output.sum().backward();
    }
    (void)model->rnn->forward(torch::randn({5, 3, 8}));  // the LSTM alone, with its default hidden state
  });
  INFO(diagnostics_text(seen));
  // Calling the LSTM outside its parent is said once, as information.
  REQUIRE(seen.diagnostics.size() == 1);
  CHECK(seen.diagnostics[0].code == modtracker::Diagnostic::Code::outside_parent);
  CHECK(seen.diagnostics[0].fqn == "RNNModel.rnn");
  using C = std::pair<int, int>;
  CHECK(seen.calls == std::map<std::string, C>{{"RNNModel", {3, 3}},
                                               {"RNNModel.encoder", {3, 3}},  // token ids in, but its weight needs a gradient
                                               {"RNNModel.rnn", {4, 3}},      // the fourth call's output is not backpropagated
                                               {"RNNModel.drop", {6, 6}},
                                               {"RNNModel.decoder", {3, 3}}});
  check_nesting(seen.transitions, modtracker::Phase::forward, "forward");
  check_nesting(seen.transitions, modtracker::Phase::backward, "backward");
}

TEST_CASE("models as tutorials write them: a DCGAN pair, the discriminator on real and on detached fakes") {
  torch::manual_seed(0);
  Generator generator(4);
  Discriminator discriminator;
  torch::optim::Adam g_opt(generator->parameters(), 2e-4), d_opt(discriminator->parameters(), 2e-4);
  lt::Tracker tracker;
  Seen seen = track(tracker, *generator, [&] {
    for (int step = 0; step < 2; ++step) {
      d_opt.zero_grad();
      auto real = discriminator->forward(torch::randn({2, 1, 10, 10}));
      auto fake = generator->forward(torch::randn({2, 4, 1, 1}));
      auto fake_out = discriminator->forward(fake.detach());
      (torch::binary_cross_entropy(real, torch::ones_like(real)) +
       torch::binary_cross_entropy(fake_out, torch::zeros_like(fake_out)))
          .backward();
      d_opt.step();
      g_opt.zero_grad();
      auto out = discriminator->forward(fake);
      torch::binary_cross_entropy(out, torch::ones_like(out)).backward();
      g_opt.step();
    }
  });
  INFO(diagnostics_text(seen));
  CHECK(seen.diagnostics.empty());
  using C = std::pair<int, int>;
  const std::map<std::string, C> expected{
      {"Generator", {2, 2}},        {"Generator.main", {2, 2}},      {"Generator.main.0", {2, 2}},
      {"Generator.main.1", {2, 2}}, {"Generator.main.2", {2, 2}},    {"Generator.main.3", {2, 2}},
      {"Generator.main.4", {2, 2}}, {"Discriminator", {6, 6}},       {"Discriminator.conv1", {6, 6}},
      {"Discriminator.act", {6, 6}}, {"Discriminator.conv2", {6, 6}}};
  CHECK(seen.calls == expected);
  check_nesting(seen.transitions, modtracker::Phase::backward, "backward");
}

namespace {
// --- a VAE whose forward returns a struct ------------------------------------
struct VAEOutput {
  torch::Tensor reconstruction, mu, log_var;
};
struct VAEImpl : nn::Module {
  nn::Linear enc{nullptr}, mu{nullptr}, log_var{nullptr}, dec{nullptr};
  VAEImpl() {
    enc = register_module("enc", nn::Linear(6, 8));
    mu = register_module("mu", nn::Linear(8, 2));
    log_var = register_module("log_var", nn::Linear(8, 2));
    dec = register_module("dec", nn::Linear(2, 6));
  }
  VAEOutput forward(torch::Tensor x) {
    auto h = torch::relu(enc->forward(x));
    auto m = mu->forward(h), lv = log_var->forward(h);
    auto z = m + torch::randn_like(lv) * torch::exp(0.5 * lv);
    return {torch::sigmoid(dec->forward(z)), m, lv};
  }
};
MODTRACKER_MODULE(VAE);

// The same model returning a struct modtracker is not told about.
struct OpaqueOutput {
  torch::Tensor reconstruction;
};
struct OpaqueVAEImpl : nn::Module {
  nn::Linear enc{register_module("enc", nn::Linear(6, 6))};
  OpaqueOutput forward(torch::Tensor x) { return {enc->forward(x)}; }
};
MODTRACKER_MODULE(OpaqueVAE);
}  // namespace

template <>
struct modtracker::libtorch::Flatten<VAEOutput> {
  static void into(const VAEOutput& v, Tensors& out) {
    out.push(v.reconstruction);
    out.push(v.mu);
    out.push(v.log_var);
  }
};

TEST_CASE("models as tutorials write them: a VAE returning a struct, followed in backward through Flatten") {
  torch::manual_seed(0);
  VAE model;
  lt::Tracker tracker;
  const auto x = torch::rand({4, 6}, torch::requires_grad());
  const auto seen = track(tracker, *model, [&] {
    auto out = model(x);
    auto kl = -0.5 * torch::sum(1 + out.log_var - out.mu.pow(2) - out.log_var.exp());
    (torch::binary_cross_entropy(out.reconstruction, x.detach()) + kl).backward();
  });
  INFO(diagnostics_text(seen));
  CHECK(seen.diagnostics.empty());
  using C = std::pair<int, int>;
  CHECK(seen.calls == std::map<std::string, C>{{"VAE", {1, 1}}, {"VAE.enc", {1, 1}}, {"VAE.mu", {1, 1}},
                                               {"VAE.log_var", {1, 1}}, {"VAE.dec", {1, 1}}});
  // Without a Flatten for its output type, the model's backward is lost: said once, naming the fix.
  OpaqueVAE opaque;
  lt::Tracker other;
  const auto lost = track(other, *opaque, [&] {
    for (int i = 0; i < 2; ++i) opaque(x).reconstruction.sum().backward();
  });
  REQUIRE(lost.diagnostics.size() == 1);
  CHECK(lost.diagnostics[0].code == modtracker::Diagnostic::Code::opaque_output);
  CHECK(lost.diagnostics[0].fqn == "OpaqueVAE");
  CHECK(lost.diagnostics[0].message.find("Flatten") != std::string::npos);
  // The same on data (no input requires grad): its forward recorded nodes all the same.
  OpaqueVAE on_data;
  lt::Tracker third;
  const auto data_only = track(third, *on_data, [&] { on_data(x.detach()).reconstruction.sum().backward(); });
  REQUIRE(data_only.diagnostics.size() == 1);
  CHECK(data_only.diagnostics[0].code == modtracker::Diagnostic::Code::opaque_output);
  CHECK(data_only.diagnostics[0].fqn == "OpaqueVAE");
  // No grad: nothing recorded, nothing said.
  lt::Tracker fourth;
  const auto no_grad = track(fourth, *on_data, [&] {
    torch::NoGradGuard off;
    (void)on_data(x.detach());
  });
  CHECK(no_grad.diagnostics.empty());
}

namespace {
// --- the MNIST example's style: a module class of its own, on the stack -----
struct Net : nn::Module {
  nn::Conv2d conv1{nullptr};
  nn::Dropout2d drop{nullptr};
  nn::Linear fc1{nullptr}, fc2{nullptr};
  Net() {
    conv1 = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(1, 4, 5)));
    drop = register_module("drop", nn::Dropout2d());
    fc1 = register_module("fc1", nn::Linear(16, 10));
    fc2 = register_module("fc2", nn::Linear(10, 3));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(torch::max_pool2d(drop->forward(conv1->forward(x)), 2));
    x = x.view({-1, 16});
    return torch::log_softmax(fc2->forward(torch::relu(fc1->forward(x))), 1);
  }
};
}  // namespace

TEST_CASE("models as tutorials write them: a module on the stack, called through call(): named, and said to be unowned") {
  torch::manual_seed(0);
  Net model;  // as in the MNIST example: no holder, no shared_ptr
  lt::Tracker tracker;
  int null_modules = 0, pre_bw = 0;
  tracker.register_user_hooks(modtracker::no_hook, modtracker::no_hook, [&](torch::nn::Module* m, const lt::Tensors&) {
    ++pre_bw;
    null_modules += m == nullptr;
  });
  const auto seen = track(tracker, model, [&] {
    auto out = lt::call(model, torch::randn({2, 1, 8, 8}));
    torch::nll_loss(out, torch::tensor({0, 2})).backward();
  });
  using C = std::pair<int, int>;
  CHECK(seen.calls == std::map<std::string, C>{{"Net", {1, 1}}, {"Net.conv1", {1, 1}}, {"Net.drop", {1, 1}},
                                               {"Net.fc1", {1, 1}}, {"Net.fc2", {1, 1}}});
  // Its tracked children know when they die: hooks get them. Net itself is a plain class nothing owns.
  CHECK(pre_bw == 5);
  CHECK(null_modules == 1);
  REQUIRE(seen.diagnostics.size() == 1);
  CHECK(seen.diagnostics[0].code == modtracker::Diagnostic::Code::unowned_module);
  CHECK(seen.diagnostics[0].fqn == "Net");
}
