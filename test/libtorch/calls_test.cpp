// The ways a LibTorch module call reaches the trackers: holders, the
// tracked Sequential, call() and ForwardScope, and the Flatten customization point.
#include <array>
#include <atomic>
#include <chrono>
#include <map>
#include <optional>
#include <span>
#include <thread>

#include "libtorch/helpers.hpp"

#include <doctest/doctest.h>

#include "support/nesting.hpp"

using namespace scenarios;
using namespace helpers;

TEST_CASE("one tracker, threads each running their own tracked Sequential: each thread's transitions nest") {
  constexpr int threads = 3, steps = 30, layers = 5;
  std::vector<lt::nn::Sequential> models(threads);  // built here: LibTorch's module constructors are not ours to race
  for (auto& m : models)
    for (int l = 0; l < layers; ++l) m->push_back(torch::nn::Linear(4, 4));
  lt::Tracker t;  // the default journal (65536) holds all 2160 transitions
  t.set_diagnostics([](const modtracker::Diagnostic&) {});  // the threads' models share their fqns
  {
    auto scope = t.track();
    std::vector<std::thread> pool;
    for (int i = 0; i < threads; ++i)
      pool.emplace_back([&, i] {
        for (int s = 0; s < steps; ++s) models[static_cast<std::size_t>(i)](torch::randn({2, 4}, torch::requires_grad())).sum().backward();
      });
    for (auto& th : pool) th.join();
  }
  std::map<std::uint32_t, std::vector<modtracker::Transition>> by_thread;
  for (const auto& tr : t.drain_transitions()) by_thread[tr.thread].push_back(tr);
  CHECK(t.dropped_transitions() == 0);
  REQUIRE(by_thread.size() == threads);
  for (const auto& [thread, ts] : by_thread) {
    // Per step: the Sequential and its children enter and exit once in forward and once in backward.
    CHECK(ts.size() == static_cast<std::size_t>(steps * (layers + 1) * 4));
    check_nesting(ts, modtracker::Phase::forward, "thread " + std::to_string(thread));
    check_nesting(ts, modtracker::Phase::backward, "thread " + std::to_string(thread));
  }
  CHECK(parents(t) == "Global");
}

TEST_CASE("holder call, ->forward, as<Holder>(), tracked Sequential, call() and ForwardScope give identical events") {
  auto run = [](auto&& forward) {
    lt::Tracker t;
    auto scope = t.track();
    forward();
    return transitions(t);
  };
  lt::nn::Linear held(3, 3);
  torch::nn::Linear plain(held.ptr());  // a plain holder of the same module: its calls are not tracked
  const auto x = torch::randn({2, 3});
  const auto by_holder = run([&] { held(x); });
  CHECK(run([&] { held->forward(x); }) == by_holder);
  CHECK(run([&] { (*held).forward(x); }) == by_holder);
  torch::nn::ModuleList list;
  list->push_back(held);
  CHECK(run([&] { list[0]->as<lt::nn::Linear>()->forward(x); }) == by_holder);
  CHECK(run([&] { plain(x); }).empty());
  const auto by_call = run([&] { lt::call(*plain, x); });
  CHECK(run([&] { lt::call(*held, x); }) == by_holder);  // a tracked module: tracked once
  const auto by_scope = run([&] {
    lt::ForwardScope s(*plain, x);
    s.finish(plain->forward(x));
  });
  CHECK(by_holder == Strings{"fw enter Linear", "fw exit Linear"});
  CHECK(by_call == by_holder);
  CHECK(by_scope == by_holder);
  const auto by_void_scope = run([&] {  // a call whose output the hooks need not see
    lt::ForwardScope s(*plain, x);
    plain->forward(x);
    s.finish();
  });
  CHECK(by_void_scope == by_holder);
  lt::nn::Sequential seq(plain);
  CHECK(run([&] { seq(x); }) == Strings{"fw enter Sequential", "fw enter Sequential.0", "fw exit Sequential.0", "fw exit Sequential"});
  lt::nn::Sequential named({{"first", plain}, {"act", torch::nn::ReLU()}});
  CHECK(run([&] { named(x); }) == Strings{"fw enter Sequential", "fw enter Sequential.first", "fw exit Sequential.first",
                                          "fw enter Sequential.act", "fw exit Sequential.act", "fw exit Sequential"});
}

TEST_CASE("tracked Sequential: post hooks see each child's live inputs and output, and children added later are tracked") {
  lt::nn::Sequential seq(torch::nn::Linear(3, 4), torch::nn::ReLU());
  lt::Tracker t;
  std::vector<std::pair<std::int64_t, std::int64_t>> widths;  // (input, output) width per call
  t.register_user_hooks(modtracker::no_hook,
                        [&](torch::nn::Module&, const lt::Tensors& in, const lt::Tensors* out) {
                          REQUIRE(in.size() == 1);
                          REQUIRE((out && out->size() == 1));
                          widths.emplace_back(in[0].size(1), (*out)[0].size(1));  // freed inputs would fail here (and under ASan)
                        });
  auto scope = t.track();
  seq->forward(torch::randn({2, 3}));  // an rvalue input: the Sequential's own post hook still sees it
  using W = std::vector<std::pair<std::int64_t, std::int64_t>>;
  CHECK(widths == W{{3, 4}, {4, 4}, {3, 4}});
  seq->push_back(torch::nn::Linear(4, 2));
  widths.clear();
  seq->forward(torch::randn({2, 3}));
  CHECK(widths == W{{3, 4}, {4, 4}, {4, 2}, {3, 2}});
  CHECK(transitions(t).back() == "fw exit Sequential");
  CHECK(t.known_fqn(*seq->ptr(2)) == std::optional<std::string>("Sequential.2"));  // named below it, not as a root
}

TEST_CASE("tracked Sequential names each child's successor as the next-call hint, and other calls give none") {
  struct Recorder final : modtracker::ForwardObserver {
    std::vector<std::pair<const void*, const void*>> calls;  // (module, next)
    modtracker::EnterResult pre_forward(const modtracker::ForwardCall& call) override {
      calls.emplace_back(call.module.ptr, call.likely_next.ptr);
      return {};
    }
    void post_forward(const modtracker::ForwardCall&, modtracker::ValuesRef, std::uintptr_t) override {}
  } recorder;
  lt::nn::Sequential seq(torch::nn::Linear(3, 3), torch::nn::ReLU(), torch::nn::Linear(3, 3));
  lt::nn::Linear held(3, 3);
  auto registration = lt::backend().dispatcher().add(recorder);
  held(seq->forward(torch::randn({2, 3})));
  registration.remove();
  const void* c0 = seq->ptr(0).get();
  const void* c1 = seq->ptr(1).get();
  const void* c2 = seq->ptr(2).get();
  const void* s = static_cast<const torch::nn::Module*>(seq.get());  // a ModuleRef points at the Module base
  const void* h = static_cast<const torch::nn::Module*>(held.get());
  using Calls = std::vector<std::pair<const void*, const void*>>;
  CHECK(recorder.calls == Calls{{s, nullptr}, {c0, c1}, {c1, c2}, {c2, nullptr}, {h, nullptr}});
}

TEST_CASE("a new module at a freed module's address is named afresh, through holders and Sequential alike") {
  // Storage of our own, so that the second module surely lands where the first was.
  using Linear = lt::Tracked<torch::nn::LinearImpl>;
  using Tanh = lt::Tracked<torch::nn::TanhImpl>;
  alignas(std::max_align_t) static unsigned char storage[std::max(sizeof(Linear), sizeof(Tanh))];
  auto place = [](auto* module) {
    using M = std::remove_pointer_t<decltype(module)>;
    return std::shared_ptr<M>(module, [](M* m) { m->~M(); });
  };
  lt::Tracker t;
  auto scope = t.track();
  const auto x = torch::randn({2, 3});
  {
    lt::nn::Linear lin(place(new (storage) Linear(3, 3)));
    lin(x);
    CHECK(t.known_fqn(*lin) == std::optional<std::string>("Linear"));
  }
  lt::nn::Tanh tanh(place(new (storage) Tanh()));
  REQUIRE(static_cast<const void*>(tanh.get()) == static_cast<const void*>(storage));
  tanh(x);  // the holder says which module it holds: not the freed Linear
  CHECK(t.known_fqn(*tanh) == std::optional<std::string>("Tanh"));
  lt::nn::Sequential seq(tanh);
  seq->forward(x);
  CHECK(transitions(t) == Strings{"fw enter Linear", "fw exit Linear", "fw enter Tanh", "fw exit Tanh",
                                  "fw enter Sequential", "fw enter Tanh", "fw exit Tanh", "fw exit Sequential"});
}

namespace {
struct FailingImpl : torch::nn::Module {
  torch::Tensor forward(const torch::Tensor&) { throw std::runtime_error("failing layer"); }
};
TORCH_MODULE(Failing);
}  // namespace

TEST_CASE("tracked Sequential: a child that throws still gives post hooks its inputs, and no output") {
  lt::nn::Sequential seq(torch::nn::Linear(3, 4), Failing());
  lt::Tracker t;
  std::vector<std::string> seen;
  t.register_user_hooks(modtracker::no_hook, [&](torch::nn::Module& m, const lt::Tensors& in, const lt::Tensors* out) {
    seen.push_back(*t.known_fqn(m) + (out ? " out" : " threw") + " in=" + std::to_string(in.size()) + " width=" +
                   std::to_string(in.empty() ? 0 : in[0].size(1)));
  });
  auto scope = t.track();
  CHECK_THROWS_WITH(seq->forward(torch::randn({2, 3}, torch::requires_grad())), doctest::Contains("failing layer"));
  CHECK(seen == std::vector<std::string>{"Sequential.0 out in=1 width=3", "Sequential.1 threw in=1 width=4",
                                         "Sequential threw in=1 width=3"});
  CHECK(parents(t) == "Global");
  t.clear_user_hooks();  // without post hooks the inputs are not kept: nothing is read after the call
  CHECK_THROWS(seq->forward(torch::randn({2, 3})));
  CHECK(parents(t) == "Global");
}

namespace {
struct Batch {
  torch::Tensor tokens, mask;
};
struct BatchNetImpl : torch::nn::Module {
  torch::Tensor forward(const Batch& b) { return b.tokens * b.mask; }
};
}  // namespace
template <>
struct modtracker::libtorch::Flatten<Batch> {
  static void into(const Batch& b, Tensors& out) {
    out.push(b.tokens);
    out.push(b.mask);
  }
};

TEST_CASE("user input types reach the hooks through the Flatten customization point") {
  auto net = std::make_shared<BatchNetImpl>();
  lt::Tracker t;
  std::size_t seen = 0;
  t.register_user_hooks([&](torch::nn::Module&, const lt::Tensors& in) { seen = in.size(); });
  auto scope = t.track();
  Batch b{torch::randn({2, 3}, torch::requires_grad()), torch::ones({2, 3})};
  lt::call(*net, b).sum().backward();
  CHECK(seen == 2);
  CHECK(transitions(t) == Strings{"fw enter BatchNet", "fw exit BatchNet", "bw enter BatchNet", "bw exit BatchNet"});
}

