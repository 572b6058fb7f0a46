// Reach: every torch::nn holder tracked, the rest of torch::nn reachable
// through the namespace swap, and no silent miss: each diagnostic triggered
// by the case it names, once, and none on a correctly tracked model.
#include <algorithm>
#include <filesystem>
#include <iterator>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "libtorch/helpers.hpp"

#include <doctest/doctest.h>

namespace nn = modtracker::libtorch::nn;
namespace lt = modtracker::libtorch;
using Code = modtracker::Diagnostic::Code;
using namespace helpers;

// --- every holder: a tracked Holder of its Impl, instantiated whole ---------
#define MODTRACKER_CHECK_HOLDER(Name)                                                               \
  static_assert(std::is_base_of_v<torch::nn::ModuleHolder<torch::nn::Name##Impl>, nn::Name>);     \
  static_assert(std::is_same_v<nn::Name::ContainedType, lt::Tracked<torch::nn::Name##Impl>>);     \
  template class modtracker::libtorch::Tracked<torch::nn::Name##Impl>;
MODTRACKER_TORCH_NN_HOLDERS(MODTRACKER_CHECK_HOLDER)
MODTRACKER_CHECK_HOLDER(Embedding)
MODTRACKER_CHECK_HOLDER(EmbeddingBag)
#undef MODTRACKER_CHECK_HOLDER

// --- the rest of torch::nn, reached through the swap -------------------------
static_assert(std::is_same_v<nn::Module, torch::nn::Module>);
static_assert(std::is_same_v<nn::LinearOptions, torch::nn::LinearOptions>);
static_assert(std::is_same_v<nn::AnyModule, torch::nn::AnyModule>);
static_assert(std::is_same_v<nn::ModuleList, torch::nn::ModuleList>);
static_assert(std::is_same_v<nn::ModuleDict, torch::nn::ModuleDict>);
static_assert(std::is_same_v<nn::LinearImpl, torch::nn::LinearImpl>);
static_assert(std::is_same_v<nn::Sequential::ContainedType, lt::SequentialImpl>);

namespace {

struct Diagnostics {
  std::vector<modtracker::Diagnostic> all;
  explicit Diagnostics(lt::Tracker& t) {
    t.set_diagnostics([this](const modtracker::Diagnostic& d) { all.push_back(d); });
  }
  [[nodiscard]] std::size_t count(Code c) const {
    return static_cast<std::size_t>(std::count_if(all.begin(), all.end(), [&](const auto& d) { return d.code == c; }));
  }
  [[nodiscard]] std::string text() const {
    std::string out;
    for (const auto& d : all) out += d.message + "\n";
    return out;
  }
};

// An untouched model: torch::nn holders and TORCH_MODULE.
struct PlainImpl : torch::nn::Module {
  torch::nn::Linear fc1{register_module("fc1", torch::nn::Linear(4, 8))};
  torch::nn::Linear fc2{register_module("fc2", torch::nn::Linear(8, 2))};
  torch::Tensor forward(torch::Tensor x) { return fc2->forward(torch::relu(fc1->forward(x))); }
};
TORCH_MODULE(Plain);

// A module of the user's own plain type (TORCH_MODULE), with a parameter.
struct ScaleImpl : torch::nn::Module {
  torch::Tensor w = register_parameter("w", torch::ones({4}));
  torch::Tensor forward(const torch::Tensor& x) { return x * w; }
};
TORCH_MODULE(Scale);

// Tracked, holding it.
struct WrappedImpl : nn::Module {
  Scale inner{register_module("inner", Scale())};
  torch::Tensor forward(torch::Tensor x) { return inner->forward(x); }
};
MODTRACKER_MODULE(Wrapped);

// Tracked, but with one child held by a plain torch::nn holder.
struct HalfImpl : nn::Module {
  nn::Linear body{register_module("body", nn::Linear(4, 4))};
  torch::nn::Linear head{register_module("head", torch::nn::Linear(4, 2))};  // not swapped
  torch::Tensor forward(torch::Tensor x) { return head(body(x)); }
};
MODTRACKER_MODULE(Half);

struct NetImpl : nn::Module {
  nn::Linear fc{register_module("fc", nn::Linear(4, 2))};
  torch::Tensor forward(torch::Tensor x) { return fc(x); }
};
MODTRACKER_MODULE(Net);

std::set<std::string> torch_module_declarations(const std::filesystem::path& dir) {
  std::set<std::string> names;
  const std::regex decl(R"(TORCH_MODULE\((\w+)\))");
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    if (entry.path().extension() != ".h") continue;
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    const auto s = text.str();
    for (std::sregex_iterator it(s.begin(), s.end(), decl), end; it != end; ++it) names.insert((*it)[1].str());
  }
  return names;
}

}  // namespace

TEST_CASE("reach: every module holder of the installed torch::nn has a tracked holder in modtracker::libtorch::nn") {
  auto theirs = torch_module_declarations(MODTRACKER_TORCH_NN_MODULES);
  REQUIRE(theirs.size() > 100);
  for (const auto* without_forward : {"ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "M"})
    theirs.erase(without_forward);  // containers without a forward stay torch::nn's ("M" is a doc example)
  std::set<std::string> ours{"Embedding", "EmbeddingBag", "Sequential"};
#define MODTRACKER_NAME(Name) ours.insert(#Name);
  MODTRACKER_TORCH_NN_HOLDERS(MODTRACKER_NAME)
#undef MODTRACKER_NAME
  std::vector<std::string> missing;
  std::set_difference(theirs.begin(), theirs.end(), ours.begin(), ours.end(), std::back_inserter(missing));
  CHECK_MESSAGE(missing.empty(), "torch::nn holders without a tracked one: " << missing.size());
}

TEST_CASE("reach: through the swap, holders are tracked in both call styles, and the rest is torch::nn's") {
  lt::Tracker t;
  Diagnostics diags(t);
  nn::Sequential seq(nn::Linear(nn::LinearOptions(4, 4).bias(false)), nn::Functional(torch::relu), nn::Dropout(0.0));
  nn::init::ones_(seq[0]->as<nn::Linear>()->weight);
  nn::Embedding embedding = nn::Embedding::from_pretrained(torch::eye(4));
  {
    auto scope = t.track();
    auto y = seq->forward(torch::randn({2, 4}));
    (void)nn::functional::relu(y);
    (void)embedding->forward(torch::tensor({1, 2}));
    (void)embedding(torch::tensor({0}));
  }
  CHECK(transitions(t) == Strings{"fw enter Sequential", "fw enter Sequential.0", "fw exit Sequential.0",
                                  "fw enter Sequential.1", "fw exit Sequential.1", "fw enter Sequential.2",
                                  "fw exit Sequential.2", "fw exit Sequential", "fw enter Embedding",
                                  "fw exit Embedding", "fw enter Embedding", "fw exit Embedding"});
  CHECK(embedding->weight.requires_grad() == false);  // from_pretrained's freeze, kept
  INFO(diags.text());
  CHECK(diags.all.empty());
}

TEST_CASE("reach: a tracked module prints, clones and converts like its torch::nn original") {
  nn::BatchNorm2d tracked(3);
  torch::nn::BatchNorm2d plain(3);
  std::ostringstream a, b;
  a << tracked;
  b << plain;
  CHECK(a.str() == b.str());
  const auto copy = tracked->clone();
  CHECK(dynamic_cast<lt::TrackedModule*>(copy.get()) != nullptr);
  CHECK(dynamic_cast<torch::nn::BatchNorm2dImpl*>(copy.get()) != nullptr);
  // A torch::nn::Sequential becomes a tracked one over the same children.
  torch::nn::Sequential untouched(torch::nn::Linear(2, 2), torch::nn::ReLU());
  nn::Sequential seq(untouched);
  CHECK(seq->ptr(0).get() == untouched->ptr(0).get());
  lt::Tracker t;
  {
    auto scope = t.track();
    seq->forward(torch::randn({1, 2}));
    untouched->forward(torch::randn({1, 2}));  // the original stays untracked
  }
  CHECK(transitions(t) == Strings{"fw enter Sequential", "fw enter Sequential.0", "fw exit Sequential.0",
                                  "fw enter Sequential.1", "fw exit Sequential.1", "fw exit Sequential"});
}

TEST_CASE("bad input: a tracked holder refuses a module built untracked, naming the fix, and nothing else changes") {
  lt::Tracker t;
  auto scope = t.track();
  torch::nn::Linear plain(3, 3);
  CHECK_THROWS_WITH_AS(nn::Linear(plain.ptr()), doctest::Contains("cannot hold a module built untracked"),
                       std::invalid_argument);
  CHECK_THROWS_AS(nn::Linear{plain}, std::invalid_argument);
  nn::Linear empty(nullptr);
  CHECK(empty.is_empty());
  nn::Linear tracked(3, 3);
  nn::Linear again(torch::nn::ModuleHolder<torch::nn::LinearImpl>(tracked.ptr()));  // what register_module gives back
  again(torch::randn({1, 3}));
  CHECK(transitions(t) == Strings{"fw enter Linear", "fw exit Linear"});
  CHECK(parents(t) == "Global");
}

TEST_CASE("diagnostics: an untouched model in a scope is said once, naming the fix, and tensor work alone says nothing") {
  lt::Tracker t;
  Diagnostics diags(t);
  {
    auto scope = t.track();
    (void)(torch::randn({4, 4}) * 2);  // no module ran
  }
  CHECK(diags.all.empty());
  Plain model;
  for (int round = 0; round < 2; ++round) {
    auto scope = t.track();
    model(torch::randn({3, 4})).sum().backward();
  }
  REQUIRE(diags.count(Code::untracked_scope) == 1);  // once, though two scopes saw it
  const auto& said = diags.all.front().message;
  CHECK(said.find("aten::addmm") != std::string::npos);  // what a Linear runs in C++
  CHECK(said.find("backward ran") != std::string::npos);
  CHECK(said.find("MODTRACKER_MODULE") != std::string::npos);
  CHECK(said.find("modtracker::libtorch::nn") != std::string::npos);
  CHECK(transitions(t).empty());
  // Forward only, under no_grad: the operators still tell.
  lt::Tracker inference;
  Diagnostics inference_diags(inference);
  {
    torch::NoGradGuard no_grad;
    auto scope = inference.track();
    model(torch::randn({3, 4}));
  }
  CHECK(inference_diags.count(Code::untracked_scope) == 1);
}

TEST_CASE("diagnostics: a module first seen as a root and later inside a tracked module is said once") {
  Net net;
  lt::Tracker t;
  Diagnostics diags(t);
  auto scope = t.track();
  net->fc(torch::randn({1, 4}));  // the child on its own first
  net(torch::randn({1, 4}));
  net(torch::randn({1, 4}));
  REQUIRE(diags.count(Code::root_inside_module) == 1);
  CHECK(diags.all[0].fqn == "Linear");
  CHECK(diags.all[0].message.find("'Net.fc'") != std::string::npos);
  CHECK(t.known_fqn(*net->fc) == std::optional<std::string>("Linear"));  // the first name stays
}

TEST_CASE("diagnostics: parameters that got gradients in a scope where their module never entered backward") {
  Half model;
  lt::Tracker t;
  Diagnostics diags(t);
  {
    auto scope = t.track();
    model(torch::randn({2, 4})).sum().backward();
  }
  INFO(diags.text());
  // A plain holder in a tracked module is said when the module is first
  // named, and not again when its parameters get gradients.
  REQUIRE(diags.all.size() == 1);
  CHECK(diags.all[0].code == Code::untracked_child);
  CHECK(diags.all[0].fqn == "Half.head");
  // A child of the user's own plain type (TORCH_MODULE), called with ->forward:
  // nothing tells at naming; its parameters' gradients do, at the scope's end.
  Wrapped wrapped;
  lt::Tracker other;
  Diagnostics other_diags(other);
  {
    auto scope = other.track();
    wrapped(torch::randn({2, 4})).sum().backward();
  }
  INFO(other_diags.text());
  REQUIRE(other_diags.all.size() == 1);
  CHECK(other_diags.all[0].code == Code::untracked_gradients);
  CHECK(other_diags.all[0].fqn == "Wrapped.inner");
  // Silent when every module is tracked, and when gradients are only zeroed.
  Net net;
  lt::Tracker clean;
  Diagnostics clean_diags(clean);
  torch::optim::SGD opt(net->parameters(), 0.1);
  {
    auto scope = clean.track();
    net(torch::randn({2, 4})).sum().backward();
    opt.step();
  }
  {
    auto scope = clean.track();
    opt.zero_grad();  // the gradients change, but no backward ran
  }
  CHECK(clean_diags.all.empty());
}

TEST_CASE("diagnostics: distinct modules whose parent is not tracked get distinct fqns, and it is said") {
  struct Stack : nn::Module {  // a plain class of its own, called as model.forward(x)
    nn::Linear a{register_module("a", nn::Linear(2, 2))};
    nn::Linear b{register_module("b", nn::Linear(2, 2))};
    torch::Tensor forward(torch::Tensor x) { return b(a(x)); }
  } model;
  lt::Tracker t;
  Diagnostics diags(t);
  auto scope = t.track();
  model.forward(torch::randn({1, 2}));
  CHECK(transitions(t) == Strings{"fw enter Linear", "fw exit Linear", "fw enter Linear#2", "fw exit Linear#2"});
  CHECK(diags.count(Code::fqn_collision) == 1);
  CHECK(diags.all.back().fqn == "Linear#2");
}

TEST_CASE("names: a GAN's generator and discriminator, two Sequentials, named with name_root") {
  torch::manual_seed(0);
  // The GAN tutorials' style: two nn::Sequential models, no common parent.
  nn::Sequential G(nn::Linear(4, 8), nn::ReLU(), nn::Linear(8, 6));
  nn::Sequential D(nn::Linear(6, 8), nn::LeakyReLU(), nn::Linear(8, 1));
  const auto names_after = [&](bool named, bool discriminator_first) {
    lt::Tracker tracker;
    Diagnostics diags(tracker);
    if (named) {
      tracker.name_root(*G, "G");
      tracker.name_root(*D, "D");
    }
    {
      auto scope = tracker.track();
      const auto z = torch::randn({2, 4});
      if (discriminator_first) D->forward(torch::randn({2, 6})).sum().backward();
      D->forward(G->forward(z)).sum().backward();
    }
    return std::pair{Strings{*tracker.known_fqn(*G), *tracker.known_fqn(*D[2])}, diags.count(Code::fqn_collision)};
  };
  CHECK(names_after(true, false) == std::pair{Strings{"G", "D.2"}, std::size_t{0}});
  CHECK(names_after(true, true) == std::pair{Strings{"G", "D.2"}, std::size_t{0}});
  // Unnamed, the names depend on which runs first, and the collision is said.
  CHECK(names_after(false, false) == std::pair{Strings{"Sequential", "Sequential#2.2"}, std::size_t{1}});
  CHECK(names_after(false, true) == std::pair{Strings{"Sequential#2", "Sequential.2"}, std::size_t{1}});
}
