// A custom hook backend in one file: a toy forward-only framework whose
// layers are plain structs, tracked by modtracker::Tracker<ToyBackend>. A
// forward-only backend overrides two functions; the backward ones keep
// their defaults (no autograd).
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

import modtracker;
import modtracker.backend;

// The framework: a layer has a kind, named children and a forward.
struct Layer {
  std::string kind;
  std::vector<std::pair<std::string, std::shared_ptr<Layer>>> children;
  std::function<std::vector<float>(const std::vector<float>&)> body;
};

// The backend: names its value types, routes calls through its dispatcher.
class ToyBackend final : public modtracker::HookBackend {
 public:
  using module_type = Layer;
  using inputs_type = std::vector<float>;
  using output_type = std::vector<float>;
  using grads_type = std::vector<float>;  // no autograd here: never used

  std::vector<float> call(Layer& layer, const std::vector<float>& in) {
    if (dispatcher().idle()) return layer.body(in);
    modtracker::ForwardDispatcher::Call frame(dispatcher(), {&layer}, {&in});
    auto out = layer.body(in);
    frame.finish({&out});
    return out;
  }

  std::string type_name(modtracker::ModuleRef m) const override { return layer(m).kind; }
  void for_each_child(modtracker::ModuleRef m,
                      const std::function<void(std::string_view, modtracker::ModuleRef)>& fn) const override {
    for (const auto& [name, child] : layer(m).children) fn(name, {child.get()});
  }

 private:
  static const Layer& layer(modtracker::ModuleRef m) {
    if (!m) throw std::invalid_argument("toy: null layer");
    return *static_cast<const Layer*>(m.ptr);
  }
};

int main() {
  ToyBackend backend;
  auto scale = std::make_shared<Layer>();
  scale->kind = "ScaleImpl";
  scale->body = [](const std::vector<float>& v) {
    auto out = v;
    for (auto& x : out) x *= 2;
    return out;
  };
  auto net = std::make_shared<Layer>();
  net->kind = "toy::NetImpl";
  net->children = {{"scale", scale}};
  net->body = [&](const std::vector<float>& v) { return backend.call(*scale, backend.call(*scale, v)); };

  modtracker::Tracker<ToyBackend> tracker(backend);
  tracker.register_user_hooks([&](Layer& l, const std::vector<float>& in) {
    std::printf("pre_fw %-9s inputs=%zu parents=%zu\n", tracker.known_fqn(l)->c_str(), in.size(),
                tracker.parents().size());
  });
  auto scope = tracker.track();
  const auto out = backend.call(*net, {1, 2, 3});
  int transitions = 0;
  for (const auto& t : tracker.drain_transitions()) {
    std::printf("%s %s %.*s\n", t.kind == modtracker::Kind::enter ? "enter" : "exit ",
                t.phase == modtracker::Phase::forward ? "fw" : "bw", static_cast<int>(t.fqn.size()), t.fqn.data());
    ++transitions;
  }
  const bool ok = out == std::vector<float>{4, 8, 12} && transitions == 6 && tracker.known_fqn(*scale) == "Net.scale";
  std::printf("custom backend: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
