// LibTorch behaviour beyond the reference scenarios: shared and repeated
// modules, recursion, partial requires_grad, retained graphs, scope and
// lifetime edges, threads.
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
        for (const auto& tr : t.drain_transitions())
          if (tr.kind == modtracker::Kind::enter && tr.phase == modtracker::Phase::backward) ++entries[i];
      }
    });
  }
  for (auto& th : pool) th.join();
  // Each tracker sees every thread's Bar while active; each saw at least its own.
  for (int i = 0; i < threads; ++i) CHECK(entries[i] >= 2 * steps);
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
