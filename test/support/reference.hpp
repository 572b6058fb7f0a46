// Shared by the suites on the reference backend: a tracker on it, and a log
// that records hook calls as "event fqn [parents] bw" lines.
#pragma once
// Standard headers before the imports: clang-16 merges them best that way.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

import modtracker;
import modtracker.backend;
import modtracker.reference;

namespace support {
using namespace modtracker;
using reference::Backend;
using reference::Module;
using reference::Value;
using reference::Values;
using ReferenceTracker = Tracker<Backend>;

inline std::string join(const Parents& p) {
  std::string s;
  for (auto n : p) s += (s.empty() ? "" : ",") + std::string(n);
  return s;
}

struct Log {
  ReferenceTracker& t;
  std::vector<std::string> lines;
  void add(const std::string& ev, const Module* m) {
    const auto fqn = m ? t.known_fqn(*m).value_or("?") : std::string("null");
    lines.push_back(ev + " " + fqn + " [" + join(t.parents()) + "]" + (t.is_bw() ? " bw" : ""));
  }
  void hook_all() {
    t.register_user_hooks([this](Module& m, const Values&) { add("pre_fw", &m); },
                          [this](Module& m, const Values&, const Values*) { add("post_fw", &m); },
                          [this](Module* m, const Values&) { add("pre_bw", m); },
                          [this](Module* m, const Values&) { add("post_bw", m); });
  }
};

inline std::vector<std::string> transitions(ReferenceTracker& t) {
  std::vector<std::string> out;
  for (const auto& tr : t.drain_transitions())
    out.push_back(std::string(tr.phase == Phase::forward ? "fw " : "bw ") +
                  (tr.kind == Kind::enter ? "enter " : "exit ") + std::string(tr.fqn));
  return out;
}
// Seq3 { net: Sequential(5 layers) }, as in the reference scenarios.
struct Seq3 {
  Backend& b;
  std::shared_ptr<Module> root;
  explicit Seq3(Backend& backend) : b(backend) {
    auto net = b.module("torch::nn::SequentialImpl");
    for (int i = 0; i < 5; ++i) net->add(std::to_string(i), b.module(i % 2 ? "torch::nn::ReLUImpl" : "torch::nn::LinearImpl"));
    root = b.module("Seq3Impl", {{"net", net}});
  }
  std::vector<Value> outs;  // each layer's output, in forward order
  // Linear layers own a weight that requires grad; ReLU layers do not.
  Values run(const Values& x) {
    outs.clear();
    return b.call(*root, x, [&](const Values& in) {
      auto net = root->child("net");
      return b.call(*net, in, [&](const Values& v) {
        Values cur = v;
        for (const auto& [name, layer] : net->children()) {
          const bool linear = layer->type_name().ends_with("LinearImpl");
          cur = b.call(*layer, cur, [&](const Values& i) { return Values{linear ? b.op({i[0], b.value(true)}) : b.op(i)}; });
          outs.push_back(cur[0]);
        }
        return cur;
      });
    });
  }
  /// Gradients from the output back to the input, value by value.
  Values backward_order(const Value& x) const {
    Values order(outs.rbegin(), outs.rend());
    order.push_back(x);
    return order;
  }
};
}  // namespace support
