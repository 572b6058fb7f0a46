// The tracked Sequential's children: a chain of tracked calls in which each
// child's call hands over to the next (ForwardDispatcher::Call's chained
// constructor), one Tensors serving as a child's output and the next one's
// input.
#include <torch/torch.h>

#include <array>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include <gsl/gsl>

#include "modtracker/libtorch/calls.hpp"
#include "modtracker/libtorch/sequential.hpp"

// `modtracker` first: clang 16 then merges the std headers of both modules cleanly.
import modtracker;
import modtracker.backend;

namespace modtracker::libtorch {

// Lazily found Tensors: a call whose observers never look pays nothing.
class detail::TensorsAccess {
 public:
  static Tensors lazy(const void* source, void (*find)(const void*, Tensors&)) noexcept { return {source, find}; }
};

namespace {
// The child after the one running (ForwardCall::likely_next), if any.
ModuleRef next_of(const detail::ChildPointers::Children& children, std::size_t i) noexcept {
  return i < children.size() ? module_ref(*children[i]) : ModuleRef{};
}

// The tensor in a child's output (an AnyValue), if it holds one.
void tensor_in(const void* value, Tensors& out) {
  auto& v = *const_cast<torch::nn::AnyValue*>(static_cast<const torch::nn::AnyValue*>(value));
  if (const auto* t = v.try_get<at::Tensor>()) out.push(*t);
}
}  // namespace

const detail::ChildPointers::Children& detail::ChildPointers::get(const torch::nn::SequentialImpl& seq,
                                                                    ForwardDispatcher& d) {
  const auto* now = current_.load(std::memory_order_acquire);
  if (now && now->size() == seq.size()) [[likely]] return *now;
  const Children* fresh = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto made = std::make_unique<Children>();
    for (const auto& m : seq) made->push_back(m.ptr());
    fresh = made.get();
    all_.push_back(std::move(made));
    current_.store(fresh, std::memory_order_release);
  }
  if (now) d.children_changed(module_ref(seq));  // grown since it last ran: name the new ones
  return *fresh;
}

torch::nn::AnyValue SequentialImpl::run_children(ForwardDispatcher& d, Tensors& in,
                                                 c10::function_ref<torch::nn::AnyValue()> first) {
  const auto& children = children_.get(*this, d);
  // A child's input kept for observers that read it after the forward (the
  // call consumes the value): it outlives the calls, even a throwing one's.
  at::Tensor kept;
  std::optional<torch::nn::AnyValue> value;
  // A child's output is the next child's input: one Tensors for both (found
  // once, if an observer looks), two in turn.
  std::array<Tensors, 2> io;
  // The running child's call, and the previous one's, which hands over to it.
  std::array<std::optional<ForwardDispatcher::Call>, 2> calls;
  calls[0].emplace(d, module_ref(*children[0]), ValuesRef{&in}, detail::owner_of(children[0]), next_of(children, 1));
  value.emplace(first());
  io[0] = detail::TensorsAccess::lazy(&*value, &tensor_in);
  std::size_t i = 0;
  for (auto it = std::next(begin()); it != end(); ++it) {
    ++i;
    Tensors& child_in = io[(i - 1) & 1];  // the previous output, which the call consumes
    auto& previous = calls[(i - 1) & 1];
    auto& child = calls[i & 1].emplace(*previous, ValuesRef{&child_in}, module_ref(*children[i]), ValuesRef{&child_in},
                                       detail::owner_of(children[i]), next_of(children, i + 1));
    previous.reset();
    kept = at::Tensor();
    if (child.inputs_read_after()) {
      if (!child_in.empty()) kept = child_in[0];
      child_in = Tensors();
      if (kept.defined()) child_in.push(kept);
    }
    // The value child_in may point into dies inside the call: forget it once
    // the call ends, also before a throwing call's post hooks read it.
    const auto forget = gsl::finally([&] {
      if (!kept.defined()) child_in = Tensors();
    });
    value.emplace(it->any_forward(std::move(*value)));
    io[i & 1] = detail::TensorsAccess::lazy(&*value, &tensor_in);
  }
  calls[i & 1]->finish(ValuesRef{&io[i & 1]});
  return std::move(*value);
}

nn::Sequential::Sequential(std::initializer_list<torch::nn::NamedAnyModule> named)
    : torch::nn::ModuleHolder<libtorch::SequentialImpl>(
          std::make_shared<libtorch::SequentialImpl>([&] {
            torch::OrderedDict<std::string, torch::nn::AnyModule> d;
            for (const auto& m : named) d.insert(m.name(), m.module());
            return d;
          }())) {}

nn::Sequential::Sequential(const torch::nn::Sequential& plain)
    : torch::nn::ModuleHolder<libtorch::SequentialImpl>(std::make_shared<libtorch::SequentialImpl>()) {
  const auto names = plain->named_children();
  std::size_t i = 0;
  for (const auto& child : *plain) get()->push_back(names[i++].key(), child);
}

}  // namespace modtracker::libtorch
