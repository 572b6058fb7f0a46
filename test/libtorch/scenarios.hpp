// The reference scenarios (shared by the conformance tests and the
// randomized/lifetime suites): the Python models rebuilt with LibTorch.
#pragma once
// Headers first, then the module (clang-16 merges them best that way).
#include <nlohmann/json.hpp>
#include <modtracker/torch.hpp>

#include <fstream>
#include <functional>
#include <string>

namespace scenarios {

namespace lt = modtracker::libtorch;
using json = nlohmann::json;

/// Records [event, fqn_or_null, sorted(parents), is_bw] like the reference.
struct Recorder {
  lt::Tracker& tracker;
  json events = json::array();

  void push(const std::string& event, const std::optional<std::string>& fqn) {
    json parents = json::array();
    for (auto p : tracker.parents()) parents.push_back(std::string(p));
    events.push_back(json::array({event, fqn ? json(*fqn) : json(nullptr), parents, tracker.is_bw()}));
  }
  void probe(const std::string& tag) { push("probe:" + tag, std::nullopt); }
  std::optional<std::string> fqn_of(const torch::nn::Module* m) const {
    return m ? tracker.known_fqn(*m) : std::nullopt;
  }
  /// All four user hooks, recording as the reference does.
  void hook_all() {
    tracker.register_user_hooks(
        [this](torch::nn::Module& m, const lt::Tensors&) { push("pre_fw", fqn_of(&m)); },
        [this](torch::nn::Module& m, const lt::Tensors&, const lt::Tensors*) { push("post_fw", fqn_of(&m)); },
        [this](torch::nn::Module* m, const lt::Tensors&) { push("pre_bw", fqn_of(m)); },
        [this](torch::nn::Module* m, const lt::Tensors&) { push("post_bw", fqn_of(m)); });
  }
};

inline Recorder* recorder = nullptr;

// module_hierarchy ---------------------------------------------------------
struct FooImpl : torch::nn::Module {
  torch::Tensor forward(torch::Tensor x) {
    x.relu_();
    recorder->probe("fw_op");
    x.register_hook([](const torch::Tensor&) { recorder->probe("bw_grad"); });
    return torch::mm(x, x);
  }
};
MODTRACKER_MODULE(Foo);

struct ModImpl : torch::nn::Module {
  Foo a{register_module("a", Foo())};
  torch::nn::ModuleDict b{register_module("b", torch::nn::ModuleDict())};
  torch::nn::ModuleList c{register_module("c", torch::nn::ModuleList())};
  ModImpl() {
    b->update({{"nest", Foo().ptr()}});
    c->push_back(Foo());
  }
  torch::Tensor forward(torch::Tensor x) {
    x = lt::call(*c[0]->as<FooImpl>(), x);
    x = a(x);
    return lt::call(*b["nest"]->as<FooImpl>(), x);
  }
};
MODTRACKER_MODULE(Mod);

// user_hooks -----------------------------------------------------------------
struct BarImpl : torch::nn::Module {
  lt::nn::Linear foo{register_module("foo", lt::nn::Linear(10, 10))};
  torch::Tensor forward(torch::Tensor x) { return foo(x).relu_(); }
};
MODTRACKER_MODULE(Bar);

// activation_checkpoint ----------------------------------------------------------
/// Non-reentrant style checkpoint: forward without saving the graph, the
/// module's forward re-run (tracked) inside the backward.
struct Checkpoint : torch::autograd::Function<Checkpoint> {
  /// Layers that recomputations need (the checkpoint owns them, as in Python).
  static inline std::vector<std::shared_ptr<torch::nn::LinearImpl>> layers;

  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x,
                               std::shared_ptr<torch::nn::LinearImpl> layer) {
    ctx->saved_data["layer"] = static_cast<std::int64_t>(layers.size());
    layers.push_back(layer);
    ctx->save_for_backward({x});
    return layer->forward(x);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto layer = layers.at(static_cast<std::size_t>(ctx->saved_data["layer"].toInt()));
    auto x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    torch::Tensor y;
    {
      torch::AutoGradMode enable(true);
      y = lt::call(*layer, x);  // the recomputation: a tracked forward inside backward
    }
    auto gx = torch::autograd::grad({y}, {x}, {grads[0]});
    return {gx[0], torch::Tensor()};
  }
};

struct CkImpl : torch::nn::Module {
  torch::nn::ModuleList linears{register_module("linears", torch::nn::ModuleList())};
  CkImpl() {
    linears->push_back(torch::nn::Linear(8, 8));
    linears->push_back(torch::nn::Linear(8, 8));
  }
  torch::Tensor forward(torch::Tensor x) {
    auto l0 = linears[0]->as<torch::nn::LinearImpl>();
    auto l1 = std::dynamic_pointer_cast<torch::nn::LinearImpl>(linears[1]);
    x = torch::relu(lt::call(*l0, x));
    lt::ForwardScope s(*l1, x);  // the checkpointed call, tracked by hand
    auto y = Checkpoint::apply(x, l1);
    s.finish(y);
    return torch::relu(y);
  }
};
MODTRACKER_MODULE(Ck);

// sequential_* / no_grad_forward ---------------------------------------------------
struct Seq3Impl : torch::nn::Module {
  lt::nn::Sequential net{register_module(
      "net", lt::nn::Sequential(torch::nn::Linear(4, 8), torch::nn::ReLU(), torch::nn::Linear(8, 8),
                                torch::nn::ReLU(), torch::nn::Linear(8, 2)))};
  torch::Tensor forward(torch::Tensor x) { return net(x); }
};
MODTRACKER_MODULE(Seq3);

// exception_in_forward ----------------------------------------------------------------
struct BoomImpl : torch::nn::Module {
  torch::Tensor forward(torch::Tensor) { throw std::runtime_error("boom"); }
};
MODTRACKER_MODULE(Boom);
struct OuterImpl : torch::nn::Module {
  Boom boom{register_module("boom", Boom())};
  torch::Tensor forward(torch::Tensor x) { return boom(x); }
};
MODTRACKER_MODULE(Outer);

inline json reference(const std::string& scenario) {
  std::ifstream in(MODTRACKER_REFERENCE_TRACES);
  return json::parse(in).at("scenarios").at(scenario);
}

}  // namespace scenarios
