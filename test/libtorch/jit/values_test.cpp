// The values of a TorchScript call: tensors inside Optional, List, Tuple
// and Dict arguments and outputs, and the method a transition names.
#include <torch/script.h>

#include <algorithm>
#include <string>
#include <vector>

#include "libtorch/helpers.hpp"

#include <modtracker/libtorch/jit.hpp>

#include <doctest/doctest.h>

#include "libtorch/jit/jit_models.hpp"

using namespace helpers;
using namespace jit_models;

TEST_CASE("jit: transitions name the method called: encode from outside, forward otherwise, in backward too") {
  auto enc = with_fc("Encoder", R"(
def helper(self, x):
    return self.fc.forward(x) * 2

def encode(self, x):
    return self.helper(x) + 1
)");
  torch::jit::Module net("Auto");
  net.register_module("encoder", enc);
  net.define(R"(
def forward(self, x):
    return self.encoder.encode(x)
)");
  lt::jit::instrument(net);
  lt::Tracker t;
  auto scope = t.track();
  for (int run = 0; run < 3; ++run) {  // the profiling executor's runs and its optimized plan
    CAPTURE(run);
    net.forward({torch::randn({2, 4}, torch::requires_grad())}).toTensor().sum().backward();
    Strings seen;
    for (const auto& tr : t.drain_transitions())
      seen.push_back(std::string(tr.phase == modtracker::Phase::forward ? "fw " : "bw ") +
                     (tr.kind == modtracker::Kind::enter ? "enter " : "exit ") + std::string(tr.fqn) + " " +
                     std::string(tr.method));
    CHECK(seen == Strings{"fw enter Auto forward", "fw enter Auto.encoder encode", "fw enter Auto.encoder.fc forward",
                          "fw exit Auto.encoder.fc forward", "fw exit Auto.encoder encode", "fw exit Auto forward",
                          "bw enter Auto forward", "bw enter Auto.encoder encode", "bw enter Auto.encoder.fc forward",
                          "bw exit Auto.encoder.fc forward", "bw exit Auto.encoder encode", "bw exit Auto forward"});
  }
}

namespace {
std::ptrdiff_t position(const Strings& events, const std::string& event) {
  const auto it = std::find(events.begin(), events.end(), event);
  REQUIRE_MESSAGE(it != events.end(), event);
  return it - events.begin();
}

// A Lin whose parameters require grad (its output does, on data).
torch::jit::Module trained_linear(int in, int out) {
  auto m = linear_module("Lin", in, out);
  for (const auto& p : m.parameters()) p.requires_grad_(true);
  return m;
}

// A child `name` of class `cls` with one trained Lin(in, out) `lin` and the given forward.
void add_child(torch::jit::Module& parent, const std::string& name, const std::string& cls, int in, int out,
               const std::string& forward) {
  torch::jit::Module child(cls);
  child.register_module("lin", trained_linear(in, out));
  child.define(forward);
  parent.register_module(name, child);
}
}  // namespace

TEST_CASE("jit: tensors inside Optional and List arguments are the call's inputs: its backward span ends with their gradients") {
  // The tensor that requires grad reaches `gate` only as Optional[Tensor],
  // and `pool` only inside a List[Tensor] (x is data).
  torch::jit::Module net("Net");
  net.register_module("pre", trained_linear(4, 4));
  net.register_module("a", trained_linear(4, 4));
  add_child(net, "gate", "Gate", 4, 4, R"(
def forward(self, x, h: Optional[Tensor]):
    y = self.lin.forward(x)
    if h is not None:
        y = y + h
    return y
)");
  add_child(net, "pool", "Pool", 8, 4, R"(
def forward(self, xs: List[Tensor]):
    return self.lin.forward(torch.cat(xs, 1))
)");
  net.define(R"(
def forward(self, x):
    g = self.gate.forward(x, self.pre.forward(x))
    return self.pool.forward([g, self.a.forward(x)])
)");
  lt::jit::instrument(net);
  lt::Tracker t;
  std::vector<std::string> diagnostics;
  t.set_diagnostics([&](const modtracker::Diagnostic& d) { diagnostics.push_back(d.message); });
  auto scope = t.track();
  for (int run = 0; run < 3; ++run) {  // the profiling executor's first runs and its optimized plan
    CAPTURE(run);
    const auto events = calls(t, net, torch::randn({2, 4}));
    // pool's inputs (g and a's output) have their gradients (and pool exits)
    // as the node that made g runs, before gate enters backward; without
    // them as pool's inputs, pool would stay open to the end of the pass.
    CHECK(position(events, "bw exit Net.pool") < position(events, "bw enter Net.gate"));
    // gate's input h gets its gradient before pre, which made h, enters backward
    CHECK(position(events, "bw exit Net.gate") < position(events, "bw enter Net.pre"));
    CHECK(position(events, "bw exit Net.gate.lin") < position(events, "bw exit Net.gate"));
  }
  CHECK(parents(t) == "Global");
  CHECK(diagnostics.empty());
}

TEST_CASE("jit: tensors inside a List output are the call's outputs: it enters backward, its layers nested") {
  torch::jit::Module net("Net");
  torch::jit::Module split("Split");
  split.register_module("l1", linear_module("Lin", 4, 4));
  split.register_module("l2", linear_module("Lin", 4, 4));
  split.define(R"(
def forward(self, x) -> List[Tensor]:
    return [self.l1.forward(x), self.l2.forward(x)]
)");
  net.register_module("split", split);
  net.define(R"(
def forward(self, x):
    parts = self.split.forward(x)
    return parts[0] * parts[1]
)");
  torch::manual_seed(5);
  auto plain = net.clone();
  lt::jit::instrument(net);
  lt::Tracker t;
  std::vector<std::string> diagnostics;
  t.set_diagnostics([&](const modtracker::Diagnostic& d) { diagnostics.push_back(d.message); });
  auto scope = t.track();
  for (int run = 0; run < 3; ++run) {
    CAPTURE(run);
    const auto events = calls(t, net, torch::randn({2, 4}, torch::requires_grad()));
    const auto enter = position(events, "bw enter Net.split"), exit = position(events, "bw exit Net.split");
    for (const auto* layer : {"Net.split.l1", "Net.split.l2"}) {
      CHECK(enter < position(events, std::string("bw enter ") + layer));
      CHECK(position(events, std::string("bw exit ") + layer) < exit);
    }
  }
  CHECK(diagnostics.empty());
  check_identical(plain, net, torch::randn({3, 4}));
}
