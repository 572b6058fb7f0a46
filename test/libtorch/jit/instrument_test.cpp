// TorchScript modules: instrumented models give the eager contract's events.
#include <torch/script.h>

#include "libtorch/helpers.hpp"

#include <modtracker/libtorch/jit.hpp>

#include <doctest/doctest.h>

#include "support/nesting.hpp"

#include "libtorch/jit/jit_models.hpp"

using namespace helpers;
using namespace jit_models;

namespace {
torch::jit::Module two_layer_net() {
  torch::jit::Module net("Net");
  net.register_module("fc1", linear_module("Lin", 4, 5));
  net.register_module("fc2", linear_module("Lin", 5, 3));
  net.define(R"(
def forward(self, x):
    return self.fc2.forward(torch.relu(self.fc1.forward(x)))
)");
  return net;
}
}  // namespace

TEST_CASE("jit: a C++-defined TorchScript model is tracked forward and backward like an eager one") {
  auto net = two_layer_net();
  lt::jit::instrument(net);
  CHECK(lt::jit::is_instrumented(net));
  lt::Tracker t;
  auto scope = t.track();
  auto x = torch::randn({2, 4}, torch::requires_grad());
  auto y = net.forward({x}).toTensor();
  CHECK(transitions(t) == Strings{"fw enter Net", "fw enter Net.fc1", "fw exit Net.fc1", "fw enter Net.fc2",
                                  "fw exit Net.fc2", "fw exit Net"});
  y.sum().backward();
  CHECK(transitions(t) == Strings{"bw enter Net", "bw enter Net.fc2", "bw exit Net.fc2", "bw enter Net.fc1",
                                  "bw exit Net.fc1", "bw exit Net"});
  CHECK(parents(t) == "Global");
}

namespace {
// Blocks with a residual, in a ModuleList iterated by the scripted forward
// (unrolled into `getattr(self, "0")`, ...), each a Lin and a ReLU-free skip.
torch::jit::Module residual_net(int blocks) {
  torch::jit::Module net("__torch__.Residual");
  for (int i = 0; i < blocks; ++i) {
    torch::jit::Module block("Block");
    block.register_module("lin", linear_module("Lin", 4, 4));
    block.define(R"(
def forward(self, x):
    return x + self.lin.forward(x)
)");
    net.register_module("b" + std::to_string(i), block);
  }
  std::string src = "def forward(self, x):\n";
  for (int i = 0; i < blocks; ++i) src += "    x = self.b" + std::to_string(i) + ".forward(x)\n";
  src += "    return x\n";
  net.define(src);
  return net;
}

}  // namespace

TEST_CASE("jit: residual blocks nest in backward, and every run of the optimizing executor gives the same events") {
  auto net = residual_net(2);
  lt::jit::instrument(net);
  lt::Tracker t;
  auto scope = t.track();
  const Strings expected{"fw enter Residual", "fw enter Residual.b0", "fw enter Residual.b0.lin",
                         "fw exit Residual.b0.lin", "fw exit Residual.b0", "fw enter Residual.b1",
                         "fw enter Residual.b1.lin", "fw exit Residual.b1.lin", "fw exit Residual.b1",
                         "fw exit Residual", "bw enter Residual", "bw enter Residual.b1", "bw enter Residual.b1.lin",
                         "bw exit Residual.b1.lin", "bw exit Residual.b1", "bw enter Residual.b0",
                         "bw enter Residual.b0.lin", "bw exit Residual.b0.lin", "bw exit Residual.b0",
                         "bw exit Residual"};
  for (int run = 0; run < 5; ++run) {
    CAPTURE(run);
    CHECK(calls(t, net, torch::randn({3, 4}, torch::requires_grad())) == expected);
  }
}

TEST_CASE("jit: outputs and gradients of an instrumented model are bit-identical to the plain model's") {
  torch::manual_seed(3);
  auto plain = residual_net(3);
  torch::manual_seed(3);
  auto inst = residual_net(3);
  lt::jit::instrument(inst);
  lt::Tracker t;
  auto scope = t.track();
  for (int run = 0; run < 4; ++run) check_identical(plain, inst, torch::randn({5, 4}));
  (void)transitions(t);
}

TEST_CASE("jit: without grad only forward events, with no tracker active nothing is recorded") {
  auto net = two_layer_net();
  lt::jit::instrument(net);
  lt::Tracker t;
  (void)net.forward({torch::randn({2, 4})});  // no scope: nothing
  auto scope = t.track();
  torch::NoGradGuard no_grad;
  (void)net.forward({torch::randn({2, 4})});
  CHECK(transitions(t) == Strings{"fw enter Net", "fw enter Net.fc1", "fw exit Net.fc1", "fw enter Net.fc2",
                                  "fw exit Net.fc2", "fw exit Net"});
}

TEST_CASE("jit: tuple outputs keep their backward, and instrumenting twice changes nothing") {
  auto net = with_fc("Pair", R"(
def forward(self, x):
    y = self.fc.forward(x)
    return (y, 2 * y)
)");
  lt::jit::instrument(net);
  lt::jit::instrument(net);
  lt::Tracker t;
  auto scope = t.track();
  auto out = net.forward({torch::randn({2, 4}, torch::requires_grad())}).toTuple();
  (out->elements()[0].toTensor() + out->elements()[1].toTensor()).sum().backward();
  CHECK(transitions(t) == Strings{"fw enter Pair", "fw enter Pair.fc", "fw exit Pair.fc", "fw exit Pair",
                                  "bw enter Pair", "bw enter Pair.fc", "bw exit Pair.fc", "bw exit Pair"});
}

TEST_CASE("jit: hooks get the ScriptedModule stand-in, which gives the TorchScript module back") {
  auto net = two_layer_net();
  lt::jit::instrument(net);
  lt::Tracker t;
  std::vector<std::string> classes;
  t.register_user_hooks([&](torch::nn::Module& m, const lt::Tensors& in) {
    const auto* s = lt::jit::as_scripted(m);
    REQUIRE(s != nullptr);
    REQUIRE(s->script().has_value());
    classes.push_back(s->qualified_class() + "/" + std::to_string(in.size()));
  });
  auto scope = t.track();
  (void)net.forward({torch::randn({2, 4})});
  CHECK(classes == Strings{"__torch__.Net/1", "__torch__.Lin/1", "__torch__.Lin/1"});
  CHECK(t.known_fqn(*lt::jit::module_of(net.attr("fc2").toModule())) == "Net.fc2");
}

TEST_CASE("jit: an exception raised in scripted code exits every call it unwound") {
  torch::jit::Module net("Raises");
  net.register_module("fc", linear_module("Lin", 4, 4));
  net.register_module("inner", [] {
    torch::jit::Module m("Checker");
    m.define(R"(
def forward(self, x):
    assert bool(x.abs().sum() < 1e6), "too large"
    return x
)");
    return m;
  }());
  net.define(R"(
def forward(self, x):
    return self.inner.forward(self.fc.forward(x))
)");
  lt::jit::instrument(net);
  lt::Tracker t;
  auto scope = t.track();
  CHECK_THROWS(net.forward({torch::full({2, 4}, 1e7)}));
  (void)net.forward({torch::zeros({2, 4})});
  const auto tr = transitions(t);
  CHECK(tr == Strings{"fw enter Raises", "fw enter Raises.fc", "fw exit Raises.fc", "fw enter Raises.inner",
                      "fw exit Raises.inner", "fw exit Raises", "fw enter Raises", "fw enter Raises.fc",
                      "fw exit Raises.fc", "fw enter Raises.inner", "fw exit Raises.inner", "fw exit Raises"});
  CHECK(parents(t) == "Global");
  SUBCASE("they exit as the exception unwinds them, before it is caught") {
    std::string at_catch;
    try {
      (void)net.forward({torch::full({2, 4}, 1e7)});
    } catch (const std::exception&) {
      at_catch = parents(t);
    }
    CHECK(at_catch == "Global");
    CHECK(transitions(t) == Strings{"fw enter Raises", "fw enter Raises.fc", "fw exit Raises.fc",
                                    "fw enter Raises.inner", "fw exit Raises.inner", "fw exit Raises"});
  }
}

TEST_CASE("jit: freezing an instrumented model keeps its calls, and a frozen model is refused") {
  auto net = two_layer_net();
  net.eval();
  lt::jit::instrument(net);
  auto frozen = torch::jit::freeze(net);
  lt::Tracker t;
  auto scope = t.track();
  (void)frozen.forward({torch::randn({2, 4})});
  CHECK(transitions(t).size() == 6);
  CHECK_THROWS_WITH_AS(lt::jit::instrument(frozen), doctest::Contains("frozen"), std::invalid_argument);
  SUBCASE("optimize_for_inference keeps them too, on a model scripted from Python") {
    auto conv = torch::jit::load(std::string(MODTRACKER_FIXTURES) + "/backbone_traced.pt");
    conv.eval();
    lt::jit::instrument(conv);
    auto fast = torch::jit::optimize_for_inference(conv);
    (void)fast.forward({torch::randn({1, 3, 8, 8})});
    CHECK(transitions(t) == Strings{"fw enter Backbone", "fw enter Backbone.conv", "fw exit Backbone.conv",
                                    "fw enter Backbone.bn", "fw exit Backbone.bn", "fw enter Backbone.pool",
                                    "fw exit Backbone.pool", "fw enter Backbone.flatten", "fw exit Backbone.flatten",
                                    "fw exit Backbone"});
  }
}

TEST_CASE("jit: a saved instrumented model loads instrumented") {
  auto net = two_layer_net();
  lt::jit::instrument(net);
  std::stringstream file;
  net.save(file);
  auto loaded = torch::jit::load(file);
  CHECK(lt::jit::is_instrumented(loaded));
  lt::Tracker t;
  auto scope = t.track();
  (void)loaded.forward({torch::randn({2, 4})});
  CHECK(transitions(t) == Strings{"fw enter Net", "fw enter Net.fc1", "fw exit Net.fc1", "fw enter Net.fc2",
                                  "fw exit Net.fc2", "fw exit Net"});
}

namespace {
struct HeadImpl : torch::nn::Module {
  torch::jit::Module backbone;
  lt::nn::Linear head{nullptr};
  explicit HeadImpl(torch::jit::Module b) : backbone(std::move(b)) {
    lt::jit::instrument(backbone);
    register_module("backbone", lt::jit::module_of(backbone));
    head = register_module("head", lt::nn::Linear(3, 2));
  }
  torch::Tensor forward(torch::Tensor x) { return head(backbone.forward({x}).toTensor()); }
};
MODTRACKER_MODULE(Head);
}  // namespace

TEST_CASE("jit: a TorchScript backbone inside an eager model is one tree") {
  Head model(two_layer_net());
  CHECK(model->parameters().size() == 6);  // the backbone's are the model's too
  lt::Tracker t;
  auto scope = t.track();
  model(torch::randn({2, 4}, torch::requires_grad())).sum().backward();
  CHECK(transitions(t) ==
        Strings{"fw enter Head", "fw enter Head.backbone", "fw enter Head.backbone.fc1", "fw exit Head.backbone.fc1",
                "fw enter Head.backbone.fc2", "fw exit Head.backbone.fc2", "fw exit Head.backbone",
                "fw enter Head.head", "fw exit Head.head", "fw exit Head", "bw enter Head", "bw enter Head.head",
                "bw exit Head.head", "bw enter Head.backbone", "bw enter Head.backbone.fc2",
                "bw exit Head.backbone.fc2", "bw enter Head.backbone.fc1", "bw exit Head.backbone.fc1",
                "bw exit Head.backbone", "bw exit Head"});
}

TEST_CASE("jit: a model that ran before instrument() gives no events, and the scope says why, while a new load works") {
  auto net = two_layer_net();
  for (int i = 0; i < 3; ++i) (void)net.forward({torch::randn({2, 4})});
  lt::jit::instrument(net);
  lt::Tracker t;
  std::vector<modtracker::Diagnostic> diags;
  t.set_diagnostics([&](const modtracker::Diagnostic& d) { diags.push_back(d); });
  {
    auto scope = t.track();
    (void)net.forward({torch::randn({2, 4})});
  }
  CHECK(transitions(t).empty());
  REQUIRE(diags.size() == 1);
  CHECK(diags[0].code == modtracker::Diagnostic::Code::untracked_scope);
  CHECK(diags[0].message.find("jit::instrument before its first run") != std::string::npos);
  std::stringstream file;
  net.save(file);
  auto copy = torch::jit::load(file);
  lt::jit::instrument(copy);
  auto scope = t.track();
  (void)copy.forward({torch::randn({2, 4})});
  CHECK(transitions(t).size() == 6);
}

TEST_CASE("jit: a module with no submodules, and one with no tensor output") {
  auto lin = linear_module("Solo", 4, 4);
  torch::jit::Module shape("Shape");
  shape.define(R"(
def forward(self, x):
    return x.size(0)
)");
  lt::jit::instrument(lin);
  lt::jit::instrument(shape);
  lt::Tracker t;
  std::vector<modtracker::Diagnostic> diags;
  t.set_diagnostics([&](const modtracker::Diagnostic& d) { diags.push_back(d); });
  auto scope = t.track();
  auto x = torch::randn({2, 4}, torch::requires_grad());
  CHECK(shape.forward({x}).toInt() == 2);
  lin.forward({x}).toTensor().sum().backward();
  CHECK(transitions(t) ==
        Strings{"fw enter Shape", "fw exit Shape", "fw enter Solo", "fw exit Solo", "bw enter Solo", "bw exit Solo"});
  REQUIRE(diags.size() == 1);  // the output of Shape holds no tensor while its input requires grad
  CHECK(diags[0].fqn == "Shape");
}

TEST_CASE("jit: in-place operators on a call's output and input keep working, with the same gradients") {
  auto net = with_fc("InPlace", R"(
def forward(self, x):
    y = self.fc.forward(x)
    y.relu_()
    z = self.fc.forward(y)
    return z.mul_(2)
)");
  std::stringstream file;
  net.save(file);
  auto plain = torch::jit::load(file);
  lt::jit::instrument(net);
  lt::Tracker t;
  auto scope = t.track();
  for (int run = 0; run < 3; ++run) {
    check_identical(plain, net, torch::randn({3, 4}));
    CHECK(transitions(t) == Strings{"fw enter InPlace", "fw enter InPlace.fc", "fw exit InPlace.fc",
                                    "fw enter InPlace.fc", "fw exit InPlace.fc", "fw exit InPlace",
                                    "bw enter InPlace", "bw enter InPlace.fc", "bw exit InPlace.fc",
                                    "bw enter InPlace.fc", "bw exit InPlace.fc", "bw exit InPlace"});
  }
}

TEST_CASE("jit: a submodule's other method is a call of that submodule, a module's own helper is part of its call") {
  auto enc = with_fc("Encoder", R"(
def helper(self, x):
    return self.fc.forward(x) * 2

def encode(self, x):
    return self.helper(x) + 1

def forward(self, x):
    return self.encode(x)
)");
  torch::jit::Module net("Auto");
  net.register_module("encoder", enc);
  net.define(R"(
def forward(self, x):
    return self.encoder.encode(x) + self.encoder.forward(x)
)");
  lt::jit::instrument(net);
  lt::Tracker t;
  auto scope = t.track();
  net.forward({torch::randn({2, 4}, torch::requires_grad())}).toTensor().sum().backward();
  const auto tr = transitions(t);
  CHECK(Strings(tr.begin(), tr.begin() + 10) ==
        Strings{"fw enter Auto", "fw enter Auto.encoder", "fw enter Auto.encoder.fc", "fw exit Auto.encoder.fc",
                "fw exit Auto.encoder", "fw enter Auto.encoder", "fw enter Auto.encoder.fc", "fw exit Auto.encoder.fc",
                "fw exit Auto.encoder", "fw exit Auto"});
  CHECK(tr.size() == 20);
  CHECK(parents(t) == "Global");
}
