// LibTorch behaviour beyond the reference scenarios: shared and repeated
// modules, recursion, partial requires_grad, retained graphs, scope and
// lifetime edges, threads, and the three interception styles.
#include <atomic>
#include <chrono>
#include <map>
#include <thread>

#include "scenarios.hpp"

#include <doctest/doctest.h>

#include "../nesting.hpp"

using namespace scenarios;
namespace {
using Strings = std::vector<std::string>;

Strings transitions(lt::Tracker& t) {
  Strings out;
  for (const auto& tr : t.transitions())
    out.push_back(std::string(tr.phase == modtracker::Phase::forward ? "fw " : "bw ") +
                  (tr.kind == modtracker::Kind::enter ? "enter " : "exit ") + std::string(tr.fqn));
  return out;
}
std::string parents(lt::Tracker& t) {
  std::string s;
  for (auto p : t.parents()) s += (s.empty() ? "" : ",") + std::string(p);
  return s;
}

struct SharedImpl : torch::nn::Module {
  lt::nn::Linear a{register_module("a", lt::nn::Linear(3, 3))};
  lt::nn::Linear b{nullptr};
  SharedImpl() { b = register_module("b", a.ptr()); }  // one layer, two names
  torch::Tensor forward(torch::Tensor x) { return b(a(x)); }
};
MODTRACKER_MODULE(Shared);

struct RecursiveImpl : torch::nn::Module {
  lt::nn::Linear lin{register_module("lin", lt::nn::Linear(3, 3))};
  torch::Tensor forward(torch::Tensor x, int depth) {
    x = lin(x);
    return depth == 0 ? x : lt::call(*this, x, depth - 1);
  }
};

struct SplitImpl : torch::nn::Module {
  lt::nn::Linear lin{register_module("lin", lt::nn::Linear(3, 3))};
  std::tuple<torch::Tensor, torch::Tensor> forward(torch::Tensor x) {
    auto y = lin(x);
    return {y, y.detach()};  // only the first output requires grad
  }
};
MODTRACKER_MODULE(Split);
}  // namespace

TEST_CASE("a module registered under two names keeps the first, every call of it uses that fqn") {
  Shared net;
  lt::Tracker t;
  auto scope = t.track();
  net(torch::randn({2, 3}, torch::requires_grad())).sum().backward();
  CHECK(t.known_fqn(*net->b) == "Shared.a");
  CHECK(transitions(t) == Strings{"fw enter Shared", "fw enter Shared.a", "fw exit Shared.a", "fw enter Shared.a",
                                  "fw exit Shared.a", "fw exit Shared", "bw enter Shared", "bw enter Shared.a", "bw exit Shared.a",
                                  "bw enter Shared.a", "bw exit Shared.a", "bw exit Shared"});
  CHECK(parents(t) == "Global");
}

TEST_CASE("a module that calls itself stays in parents until its outermost call ends, and is reported") {
  auto rec = std::make_shared<RecursiveImpl>();
  lt::Tracker t;
  std::vector<modtracker::Diagnostic> diags;
  t.set_diagnostics([&](const modtracker::Diagnostic& d) { diags.push_back(d); });
  std::vector<std::string> seen;
  t.register_user_hooks([&](torch::nn::Module&, const lt::Tensors&) { seen.push_back(parents(t)); });
  auto scope = t.track();
  auto y = lt::call(*rec, torch::randn({2, 3}, torch::requires_grad()), 2);
  CHECK(parents(t) == "Global");
  CHECK(seen.size() == 6);
  CHECK(seen[4] == "Global,Recursive");  // the innermost call: lins have exited
  CHECK(seen[5] == "Global,Recursive,Recursive.lin");
  REQUIRE(diags.size() == 2);
  CHECK(diags[0].fqn == "Recursive");
  (void)transitions(t);
  y.sum().backward();
  const auto bw = transitions(t);
  // Three activations of Recursive, each with its lin: backward nests them.
  CHECK(bw.front() == "bw enter Recursive");
  CHECK(bw.back() == "bw exit Recursive");
  CHECK(std::count(bw.begin(), bw.end(), "bw enter Recursive") == 3);
  CHECK(std::count(bw.begin(), bw.end(), "bw exit Recursive.lin") == 3);
  CHECK(parents(t) == "Global");
}

TEST_CASE("outputs of which only some require grad: the module enters backward through those") {
  Split split;
  lt::Tracker t;
  auto scope = t.track();
  auto [y, z] = split(torch::randn({2, 3}));
  (void)z;
  (void)transitions(t);
  y.sum().backward();
  CHECK(transitions(t) == Strings{"bw enter Split", "bw enter Split.lin", "bw exit Split.lin", "bw exit Split"});
}

TEST_CASE("each backward over a retained graph fires the events again") {
  lt::nn::Linear lin(3, 3);
  lt::Tracker t;
  auto scope = t.track();
  auto y = lin(torch::randn({2, 3}, torch::requires_grad())).sum();
  (void)transitions(t);
  y.backward({}, /*retain_graph=*/true);
  y.backward();
  CHECK(transitions(t) == Strings{"bw enter Linear", "bw exit Linear", "bw enter Linear", "bw exit Linear"});
}

TEST_CASE("autograd::grad: inputs the pass does not compute do not block the exit") {
  lt::nn::Linear lin(3, 3);
  lt::Tracker t;
  auto scope = t.track();
  auto x = torch::randn({2, 3}, torch::requires_grad());
  auto y = lin(x).sum();
  (void)transitions(t);
  auto g = torch::autograd::grad({y}, {x});  // the leaf's own hook never runs here
  CHECK(g[0].defined());
  CHECK(transitions(t) == Strings{"bw enter Linear", "bw exit Linear"});
  CHECK(parents(t) == "Global");
}

TEST_CASE("hooks outside an active scope, and after the tracker is gone, do nothing") {
  lt::nn::Linear lin(3, 3);
  torch::Tensor y1, y2;
  {
    lt::Tracker t;
    {
      auto scope = t.track();
      y1 = lin(torch::randn({2, 3}, torch::requires_grad())).sum();
      y2 = lin(torch::randn({2, 3}, torch::requires_grad())).sum();
    }
    (void)transitions(t);
    y1.backward();  // scope ended: nothing
    CHECK(transitions(t).empty());
    CHECK(parents(t) == "Global");
  }
  y2.backward();  // tracker destroyed: its hooks are inert
  lt::Tracker fresh;
  CHECK(parents(fresh) == "Global");
}

TEST_CASE("a backward with no tracker ever in scope, and a child not registered under its parent") {
  lt::nn::Linear lin(3, 3);
  lin(torch::randn({2, 3}, torch::requires_grad())).sum().backward();  // untracked: plain LibTorch
  lt::Tracker t;
  auto scope = t.track();
  struct LooseImpl : torch::nn::Module {
    lt::nn::Linear hidden{3, 3};  // a member, but never register_module()d
    torch::Tensor forward(torch::Tensor x) { return hidden(x); }
  };
  auto loose = std::make_shared<LooseImpl>();
  lt::call(*loose, torch::randn({2, 3}));
  CHECK(t.known_fqn(*loose->hidden) == "Linear");  // its own root
  CHECK(transitions(t) == Strings{"fw enter Loose", "fw enter Linear", "fw exit Linear", "fw exit Loose"});
}

TEST_CASE("backward on another thread: is_bw there, and parents back to Global after it") {
  Bar bar;
  lt::Tracker t;
  auto scope = t.track();
  auto y = bar(torch::randn({2, 10}, torch::requires_grad())).sum();
  (void)transitions(t);
  bool saw_bw = false;
  t.register_user_hooks(modtracker::no_hook, modtracker::no_hook,
                        [&](torch::nn::Module*, const lt::Tensors&) { saw_bw = t.is_bw(); });
  std::thread worker([&] { y.backward(); });
  worker.join();
  CHECK(saw_bw);
  CHECK_FALSE(t.is_bw());
  CHECK(parents(t) == "Global");
  CHECK(transitions(t).size() == 4);
}

TEST_CASE("threads each training their own model under their own tracker stay consistent") {
  constexpr int threads = 4, steps = 20;
  std::vector<std::thread> pool;
  std::vector<int> entries(threads, 0);
  std::vector<Bar> bars(threads);  // built here: LibTorch's module constructors are not ours to race
  for (int i = 0; i < threads; ++i) {
    pool.emplace_back([&, i] {
      auto& bar = bars[static_cast<std::size_t>(i)];
      lt::Tracker t;
      t.set_diagnostics([](const modtracker::Diagnostic&) {});  // other threads' Bar re-enter "Bar"
      auto scope = t.track();
      for (int s = 0; s < steps; ++s) {
        bar(torch::randn({2, 10}, torch::requires_grad())).sum().backward();
        for (const auto& tr : t.transitions())
          if (tr.kind == modtracker::Kind::enter && tr.phase == modtracker::Phase::backward) ++entries[i];
      }
    });
  }
  for (auto& th : pool) th.join();
  // Each tracker sees every thread's Bar while active; each saw at least its own.
  for (int i = 0; i < threads; ++i) CHECK(entries[i] >= 2 * steps);
}

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
  for (const auto& tr : t.transitions()) by_thread[tr.thread].push_back(tr);
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

TEST_CASE("holder, tracked Sequential, call() and ForwardScope give identical events") {
  auto run = [](auto&& forward) {
    lt::Tracker t;
    auto scope = t.track();
    forward();
    return transitions(t);
  };
  torch::nn::Linear plain(3, 3);
  lt::nn::Linear held(plain.ptr());
  const auto x = torch::randn({2, 3});
  const auto by_holder = run([&] { held(x); });
  const auto by_call = run([&] { lt::call(*plain, x); });
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
    std::uintptr_t pre_forward(const modtracker::ForwardCall& call) override {
      calls.emplace_back(call.module.ptr, call.next.ptr);
      return 0;
    }
    void post_forward(const modtracker::ForwardCall&, modtracker::Payload, std::uintptr_t) override {}
  } recorder;
  lt::nn::Sequential seq(torch::nn::Linear(3, 3), torch::nn::ReLU(), torch::nn::Linear(3, 3));
  lt::nn::Linear held(3, 3);
  auto registration = lt::backend().add_forward_observer(recorder);
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
  alignas(std::max_align_t) static unsigned char storage[std::max(sizeof(torch::nn::LinearImpl), sizeof(torch::nn::TanhImpl))];
  auto place = [](auto* module) {
    using M = std::remove_pointer_t<decltype(module)>;
    return std::shared_ptr<M>(module, [](M* m) { m->~M(); });
  };
  lt::Tracker t;
  auto scope = t.track();
  const auto x = torch::randn({2, 3});
  {
    lt::nn::Linear lin(place(new (storage) torch::nn::LinearImpl(3, 3)));
    lin(x);
    CHECK(t.known_fqn(*lin) == std::optional<std::string>("Linear"));
  }
  lt::nn::Tanh tanh(place(new (storage) torch::nn::TanhImpl()));
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

TEST_CASE("a model freed in the middle of its backward: later hooks get no module, nothing dangles") {
  lt::Tracker t;
  std::vector<std::string> seen;
  auto bar = std::make_shared<BarImpl>();
  auto scope = t.track();
  auto y = lt::call(*bar, torch::randn({2, 10}, torch::requires_grad())).sum();
  t.register_user_hooks(modtracker::no_hook, modtracker::no_hook,
                        [&](torch::nn::Module* m, const lt::Tensors&) {
                          seen.push_back(m ? "module" : "null");
                          bar.reset();  // the first backward hook frees the whole model
                        });
  y.backward();
  CHECK(seen == std::vector<std::string>{"module", "null"});
  CHECK(parents(t) == "Global");
}

TEST_CASE("user hooks that throw: forward and backward report to the caller, the next step works") {
  Bar bar;
  lt::Tracker t;
  std::vector<modtracker::Diagnostic> diags;
  t.set_diagnostics([&](const modtracker::Diagnostic& d) { diags.push_back(d); });
  auto scope = t.track();
  t.register_user_hooks([](torch::nn::Module&, const lt::Tensors&) { throw std::runtime_error("pre_fw hook"); });
  CHECK_THROWS_WITH(bar(torch::randn({2, 10})), doctest::Contains("pre_fw hook"));
  CHECK(parents(t) == "Global");
  t.clear_user_hooks();
  t.register_user_hooks(modtracker::no_hook, modtracker::no_hook,
                        [](torch::nn::Module*, const lt::Tensors&) { throw std::runtime_error("pre_bw hook"); });
  auto y = bar(torch::randn({2, 10}, torch::requires_grad())).sum();
  CHECK_THROWS_WITH(y.backward(), doctest::Contains("pre_bw hook"));
  t.clear_user_hooks();
  (void)bar(torch::randn({2, 10}));  // the next forward closes what the aborted pass left open
  CHECK(parents(t) == "Global");
  // LibTorch 1.13 runs no end-of-pass callbacks after an error: the tracker
  // noticed at the next forward and said so.
  REQUIRE(diags.size() == 1);
  CHECK(diags[0].code == modtracker::Diagnostic::Code::unfinished_backward);
  bar(torch::randn({2, 10}, torch::requires_grad())).sum().backward();
  CHECK(parents(t) == "Global");
}

TEST_CASE("backend registrations: first-of-any and all-of fire once per pass in GradOrder, remove() stops them") {
  auto& b = lt::backend();
  const auto leaf = torch::randn({2, 2}, torch::requires_grad());
  const auto mid = leaf * 2;   // a non-leaf edge
  const auto out = mid + leaf;  // leaf reaches out twice
  std::vector<std::string> fired;
  auto on = [&](const char* what) {
    return modtracker::GradCallback([&fired, what](modtracker::Payload p) {
      const auto& grads = *static_cast<const lt::Tensors*>(p.ptr);
      fired.push_back(std::string(what) + ":" + std::to_string(grads.size()));
    });
  };
  using modtracker::GradOrder;
  using modtracker::Kind;
  lt::Tensors outs;
  outs.push(out);
  lt::Tensors ins;
  ins.push(mid);
  ins.push(leaf);
  // Registered against GradOrder: the inner (deeper) entry first, the outer one second.
  auto inner = b.on_first_gradient(modtracker::Payload{&outs}, GradOrder{Kind::enter, 1, 1}, on("inner enter"));
  auto outer = b.on_first_gradient(modtracker::Payload{&outs}, GradOrder{Kind::enter, 0, 0}, on("outer enter"));
  auto all = b.on_all_gradients(modtracker::Payload{&ins}, GradOrder{Kind::exit, 1, 1}, on("all inputs"));
  REQUIRE(inner);
  REQUIRE(outer);
  REQUIRE(all);
  out.sum().backward({}, /*retain_graph=*/true);
  CHECK(fired == std::vector<std::string>{"outer enter:1", "inner enter:1", "all inputs:2"});
  fired.clear();
  outer->remove();
  CHECK_THROWS_AS(outer->remove(), std::logic_error);
  out.sum().backward({}, /*retain_graph=*/true);  // another pass: fires again, without the removed one
  CHECK(fired == std::vector<std::string>{"inner enter:1", "all inputs:2"});
  const auto constant = torch::ones({2});  // requires no grad: nothing to register
  lt::Tensors none;
  none.push(constant);
  CHECK_FALSE(b.on_first_gradient(modtracker::Payload{&none}, GradOrder{}, on("never")));
  CHECK_FALSE(b.keep_all_gradients(modtracker::Payload{&none}, GradOrder{}, on("never")));
}

TEST_CASE("backend boundary registration: first-of-any and all-of on the same tensors, one or several edges") {
  auto& b = lt::backend();
  using modtracker::GradOrder;
  using modtracker::Kind;
  std::vector<std::string> fired;
  auto on = [&](const char* what) {
    return modtracker::GradCallback([&fired, what](modtracker::Payload p) {
      const auto& grads = *static_cast<const lt::Tensors*>(p.ptr);
      fired.push_back(std::string(what) + ":" + std::to_string(grads.size()));
    });
  };
  const auto x = torch::randn({2, 2}, torch::requires_grad());
  const auto y = x * 2;  // one edge
  const auto z = x * 3;  // with y: two edges
  lt::Tensors one;
  one.push(y);
  lt::Tensors two;
  two.push(y);
  two.push(z);
  REQUIRE(b.keep_boundary(modtracker::Payload{&one}, GradOrder{Kind::enter, 0, 0}, on("enter one"),
                          GradOrder{Kind::exit, 0, 1}, on("exit one")));
  REQUIRE(b.keep_boundary(modtracker::Payload{&two}, GradOrder{Kind::enter, 0, 2}, on("enter two"),
                          GradOrder{Kind::exit, 0, 3}, on("exit two")));
  // z's node runs first (the engine takes later nodes first): "two" enters
  // there, and exits at y, with both gradients, after "one" (GradOrder: of
  // one depth, exits earliest first).
  (y.sum() + z.sum()).backward({}, /*retain_graph=*/true);
  CHECK(fired == std::vector<std::string>{"enter two:1", "exit one:1", "exit two:2", "enter one:1"});
  fired.clear();
  // A pass that computes only y's gradient: z does not block "exit two".
  (void)torch::autograd::grad({y.sum()}, {x}, {}, /*retain_graph=*/true);
  CHECK(fired == std::vector<std::string>{"exit one:1", "exit two:1", "enter two:1", "enter one:1"});
  const auto constant = torch::ones({2});
  lt::Tensors none;
  none.push(constant);
  CHECK_FALSE(b.keep_boundary(modtracker::Payload{&none}, GradOrder{}, on("never"), GradOrder{}, on("never")));
}

TEST_CASE("after a backward that threw, every later pass is a pass of its own (no stale pass identity)") {
  auto& b = lt::backend();
  using modtracker::GradOrder;
  int fired = 0;
  auto count = [&] { return modtracker::GradCallback([&fired](modtracker::Payload) { ++fired; }); };
  {
    // LibTorch runs no end-of-pass callbacks for a backward that throws.
    const auto x = torch::randn({2, 2}, torch::requires_grad());
    const auto mid = x * 2;
    const auto y = mid * 3;
    lt::Tensors ys;
    ys.push(y);
    REQUIRE(b.keep_first_gradient(modtracker::Payload{&ys}, GradOrder{}, count()));
    mid.register_hook([](const at::Tensor&) -> at::Tensor { throw std::runtime_error("boom"); });
    CHECK_THROWS_WITH(y.sum().backward(), doctest::Contains("boom"));
    CHECK(fired == 1);
  }
  // New graphs (their graph tasks often at the dead one's address), each run twice.
  int twice = 0;
  for (int i = 0; i < 20; ++i) {
    fired = 0;
    const auto x = torch::randn({2, 2}, torch::requires_grad());
    const auto y = x * 2;
    lt::Tensors ys;
    ys.push(y);
    REQUIRE(b.keep_first_gradient(modtracker::Payload{&ys}, GradOrder{}, count()));
    y.sum().backward({}, /*retain_graph=*/true);
    y.sum().backward();
    twice += fired == 2;
  }
  CHECK(twice == 20);
}

TEST_CASE("a scope ended while another thread runs its backward hooks waits for the running one, and later ones do nothing") {
  Bar bar;
  lt::Tracker t;
  std::atomic<int> calls{0};
  std::atomic<bool> first_started{false}, first_done{false};
  t.register_user_hooks(modtracker::no_hook, modtracker::no_hook, [&](torch::nn::Module*, const lt::Tensors&) {
    if (calls.fetch_add(1) == 0) {
      first_started = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      first_done = true;
    }
  });
  auto scope = std::make_unique<lt::Tracker::Scope>(t.track());
  auto y = bar(torch::randn({2, 10}, torch::requires_grad())).sum();
  std::thread backward([&] { y.backward(); });
  while (!first_started.load()) std::this_thread::yield();
  scope.reset();  // Bar's hook is running on the other thread: the end waits for it
  CHECK(first_done.load());
  const int at_end = calls.load();
  backward.join();
  CHECK(at_end == 1);
  CHECK(calls.load() == 1);  // Bar.foo's entry came after the end: not reported
  CHECK(parents(t) == "Global");
}

TEST_CASE("boundary tensors that are views (and a view of a leaf) nest in backward like plain ones") {
  struct HalvesImpl : torch::nn::Module {  // returns two views of one result
    lt::nn::Linear lin{register_module("lin", lt::nn::Linear(4, 4))};
    std::tuple<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) {
      auto y = lin(x);
      return {y.narrow(1, 0, 2), y.narrow(1, 2, 2).t()};
    }
  };
  auto halves = std::make_shared<HalvesImpl>();
  lt::nn::Linear after(2, 2);
  lt::Tracker t;
  auto scope = t.track();
  const auto leaf = torch::randn({3, 4}, torch::requires_grad());
  auto [a, b] = lt::call(*halves, leaf.view({3, 4}));  // the input is a view of a leaf
  auto out = after(a).sum() + b.sum();
  (void)transitions(t);
  out.backward();
  CHECK(transitions(t) == Strings{"bw enter Linear", "bw enter Halves", "bw exit Linear", "bw enter Halves.lin",
                                  "bw exit Halves.lin", "bw exit Halves"});
  CHECK(parents(t) == "Global");
  CHECK(leaf.grad().defined());
}

TEST_CASE("the user's own tensor hooks on a boundary tensor still see the gradient and can change it") {
  torch::manual_seed(0);
  torch::nn::Linear plain_a(3, 3), plain_b(3, 3);
  lt::nn::Linear a(plain_a.ptr()), b(plain_b.ptr());  // the same layers, tracked
  const auto x = torch::randn({2, 3});
  auto step = [&](auto& first, auto& second) {
    auto w = torch::randn({3, 3}, torch::requires_grad());  // a leaf upstream of the boundary
    auto h = first(x.mm(w));
    at::Tensor seen;
    h.register_hook([&](const at::Tensor& g) {  // after the tracker's own hook on h's node
      seen = g.clone();
      return g * 2;
    });
    second(h).sum().backward();
    return std::pair{seen, w.grad()};
  };
  torch::manual_seed(1);
  const auto [plain_seen, plain_grad] = step(plain_a, plain_b);
  lt::Tracker t;
  auto scope = t.track();
  torch::manual_seed(1);
  const auto [tracked_seen, tracked_grad] = step(a, b);
  REQUIRE(tracked_seen.defined());
  CHECK(torch::equal(tracked_seen, plain_seen));
  CHECK(torch::equal(tracked_grad, plain_grad));  // doubled by the user's hook in both
  CHECK(transitions(t) == Strings{"fw enter Linear", "fw exit Linear", "fw enter Linear", "fw exit Linear",
                                  "bw enter Linear", "bw exit Linear", "bw enter Linear", "bw exit Linear"});
}

TEST_CASE("siblings that read one tensor exit backward in the reverse of their entries (they nest)") {
  struct HeadsImpl : torch::nn::Module {  // two heads on one input, summed
    lt::nn::Linear a{register_module("a", lt::nn::Linear(3, 3))};
    lt::nn::Linear b{register_module("b", lt::nn::Linear(3, 3))};
    torch::Tensor forward(const torch::Tensor& x) { return a(x) + b(x); }
  };
  auto heads = std::make_shared<HeadsImpl>();
  lt::Tracker t;
  auto scope = t.track();
  const auto x = torch::randn({2, 3}, torch::requires_grad());
  auto out = lt::call(*heads, x).sum();
  (void)transitions(t);
  out.backward();
  // The engine runs b's nodes first (made later), so b enters first and exits
  // last; both exit when x's gradient is done, inside Heads.
  CHECK(transitions(t) == Strings{"bw enter Heads", "bw enter Heads.b", "bw enter Heads.a", "bw exit Heads.a",
                                  "bw exit Heads.b", "bw exit Heads"});
  CHECK(parents(t) == "Global");
  // An input that needs no grad: the three exits wait for the end of the
  // pass, and nest there too.
  out = lt::call(*heads, torch::randn({2, 3})).sum();
  (void)transitions(t);
  out.backward();
  CHECK(transitions(t) == Strings{"bw enter Heads", "bw enter Heads.b", "bw enter Heads.a", "bw exit Heads.a",
                                  "bw exit Heads.b", "bw exit Heads"});
  CHECK(parents(t) == "Global");
}
