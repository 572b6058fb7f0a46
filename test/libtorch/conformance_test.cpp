// The reference scenarios, event by event against PyTorch's ModTracker
// traces; where this project orders shared-tensor events on purpose
// differently (docs/semantics.md, "beyond"), the test asserts our order and says so.
#include "libtorch/scenarios.hpp"

#include <doctest/doctest.h>

using namespace scenarios;

namespace {
torch::Tensor input(std::vector<std::int64_t> shape, bool requires_grad) {
  return torch::randn(shape, torch::requires_grad(requires_grad));
}

json events(std::initializer_list<json> list) { return json(list); }
json ev(const char* e, std::optional<std::string> fqn, std::vector<std::string> parents, bool bw) {
  return json::array({e, fqn ? json(*fqn) : json(nullptr), parents, bw});
}

/// Bar's four hooks in our order; backward fqns are null when Bar was freed.
json bar_events(bool alive) {
  const auto bw = [&](const char* fqn) { return alive ? std::optional<std::string>(fqn) : std::nullopt; };
  return events({
      ev("pre_fw", "Bar", {"Bar", "Global"}, false),
      ev("pre_fw", "Bar.foo", {"Bar", "Bar.foo", "Global"}, false),
      ev("post_fw", "Bar.foo", {"Bar", "Bar.foo", "Global"}, false),
      ev("post_fw", "Bar", {"Bar", "Global"}, false),
      ev("pre_bw", bw("Bar"), {"Bar", "Global"}, true),
      ev("pre_bw", bw("Bar.foo"), {"Bar", "Bar.foo", "Global"}, true),
      ev("post_bw", bw("Bar.foo"), {"Bar", "Bar.foo", "Global"}, true),
      ev("post_bw", bw("Bar"), {"Bar", "Global"}, true),
  });
}

struct Fixture {
  lt::Tracker tracker;
  Recorder rec{tracker};
  Fixture() { recorder = &rec; }
  ~Fixture() { recorder = nullptr; }
  /// A model as a temporary (freed before backward), all hooks, one backward.
  template <class Model>
  void run_temporary(std::vector<std::int64_t> shape, bool input_requires_grad, bool probe_after = true) {
    auto scope = tracker.track();
    rec.hook_all();
    torch::Tensor out;
    {
      Model model;
      out = model(input(std::move(shape), input_requires_grad));
    }
    out.sum().backward();
    if (probe_after) rec.probe("after_backward");
  }
};
}  // namespace

TEST_CASE_FIXTURE(Fixture, "module_hierarchy: parents in forward ops and gradient hooks match the reference") {
  Mod mod;
  auto scope = tracker.track();
  for (int i = 0; i < 2; ++i) {
    auto x = input({10, 10}, true).clone();
    mod(x).sum().backward();
    rec.probe("after_backward");
  }
  CHECK(rec.events == reference("module_hierarchy")["events"]);
}

TEST_CASE_FIXTURE(Fixture, "bw_detection: is_bw and parents are reset after backward") {
  lt::nn::Linear lin(2, 2);
  auto scope = tracker.track();
  lin(input({2, 2}, true)).sum().backward();
  rec.probe("after_backward");
  CHECK(rec.events == reference("bw_detection")["events"]);
}

TEST_CASE_FIXTURE(Fixture, "user_hooks: four hooks, backward exits nest (beyond the reference)") {
  Bar bar;
  auto scope = tracker.track();
  rec.hook_all();
  bar(input({2, 10}, true)).sum().backward();
  // The reference exits Bar before Bar.foo (registration order on the
  // shared input); we exit innermost first: Bar.foo, then Bar.
  CHECK(rec.events == bar_events(true));
  const auto ref = reference("user_hooks")["events"];
  CHECK(json(std::vector<json>(ref.begin(), ref.begin() + 6)) ==
        json(std::vector<json>(rec.events.begin(), rec.events.begin() + 6)));
  CHECK_THROWS_AS(rec.hook_all(), modtracker::HooksAlreadySet);  // "second_register": rejected
}

TEST_CASE_FIXTURE(Fixture, "user_hooks_module_deleted: backward hooks get no module") {
  run_temporary<Bar>({2, 10}, true, false);
  CHECK(rec.events == bar_events(false));
}

TEST_CASE_FIXTURE(Fixture, "activation_checkpoint: recomputed forward runs with is_bw") {
  run_temporary<Ck>({4, 8}, false, false);
  // The reference gives post_bw of Ck.linears.1 no module although the
  // checkpoint keeps it alive; our backward hooks see every live module.
  auto expected = reference("activation_checkpoint")["events"];
  REQUIRE(expected[10][0] == "post_bw");
  expected[10][1] = "Ck.linears.1";
  CHECK(rec.events == expected);
  Checkpoint::layers.clear();
}

namespace {
json seq_forward() {
  json fw = json::array();
  fw.push_back(ev("pre_fw", "Seq3", {"Global", "Seq3"}, false));
  fw.push_back(ev("pre_fw", "Seq3.net", {"Global", "Seq3", "Seq3.net"}, false));
  for (int i = 0; i < 5; ++i) {
    const auto n = "Seq3.net." + std::to_string(i);
    fw.push_back(ev("pre_fw", n, {"Global", "Seq3", "Seq3.net", n}, false));
    fw.push_back(ev("post_fw", n, {"Global", "Seq3", "Seq3.net", n}, false));
  }
  fw.push_back(ev("post_fw", "Seq3.net", {"Global", "Seq3", "Seq3.net"}, false));
  fw.push_back(ev("post_fw", "Seq3", {"Global", "Seq3"}, false));
  return fw;
}
}  // namespace

TEST_CASE_FIXTURE(Fixture, "sequential_input_requires_grad: backward transitions nest (beyond the reference)") {
  run_temporary<Seq3>({3, 4}, true);
  json expected = seq_forward();
  // Reference: pre_bw Seq3.net.4, then Seq3.net, then Seq3 (registration
  // order). Ours: outermost first, and exits innermost first.
  const std::vector<std::string> outer{"Global", "Seq3", "Seq3.net"};
  expected.push_back(ev("pre_bw", std::nullopt, {"Global", "Seq3"}, true));
  expected.push_back(ev("pre_bw", std::nullopt, outer, true));
  for (int i = 4; i >= 0; --i) {
    auto p = outer;
    p.push_back("Seq3.net." + std::to_string(i));
    expected.push_back(ev("pre_bw", std::nullopt, p, true));
    expected.push_back(ev("post_bw", std::nullopt, p, true));
  }
  expected.push_back(ev("post_bw", std::nullopt, outer, true));
  expected.push_back(ev("post_bw", std::nullopt, {"Global", "Seq3"}, true));
  expected.push_back(ev("probe:after_backward", std::nullopt, {"Global"}, false));
  CHECK(rec.events == expected);
  const auto ref = reference("sequential_input_requires_grad")["events"];
  CHECK(json(std::vector<json>(ref.begin(), ref.begin() + 14)) == seq_forward());
}

TEST_CASE_FIXTURE(Fixture, "sequential_input_no_grad: exits whose inputs need no grad are deferred to the end") {
  run_temporary<Seq3>({3, 4}, false);
  const auto ref = reference("sequential_input_no_grad")["events"];
  // Forward and the deferred tail match the reference; the entries nest.
  CHECK(json(std::vector<json>(ref.begin(), ref.begin() + 14)) ==
        json(std::vector<json>(rec.events.begin(), rec.events.begin() + 14)));
  CHECK(json(std::vector<json>(ref.end() - 4, ref.end())) ==
        json(std::vector<json>(rec.events.end() - 4, rec.events.end())));
  CHECK(rec.events[14] == ev("pre_bw", std::nullopt, {"Global", "Seq3"}, true));
  CHECK(rec.events[15] == ev("pre_bw", std::nullopt, {"Global", "Seq3", "Seq3.net"}, true));
  CHECK(rec.events.size() == ref.size());
}

TEST_CASE_FIXTURE(Fixture, "no_grad_forward: forward hooks only") {
  Seq3 seq;
  auto scope = tracker.track();
  rec.hook_all();
  {
    torch::NoGradGuard no_grad;
    seq(input({3, 4}, false));
  }
  rec.probe("after_forward");
  CHECK(rec.events == reference("no_grad_forward")["events"]);
}

TEST_CASE_FIXTURE(Fixture, "exception_in_forward: post hooks run and parents recover") {
  Outer outer;
  auto scope = tracker.track();
  rec.hook_all();
  try {
    outer(input({2, 2}, false));
  } catch (const std::runtime_error&) {
    rec.push("caught", std::nullopt);
  }
  rec.probe("after_exception");
  CHECK(rec.events == reference("exception_in_forward")["events"]);
}
