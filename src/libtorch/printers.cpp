// Six printers that LibTorch 1.13 defines for its BatchNorm and InstanceNorm
// modules in class templates it does not export: a class derived from one of
// those modules (Tracked<BatchNorm2dImpl>) needs them by name, for its
// construction vtables (Module is a virtual base). Each is defined here as an
// explicit specialization that prints a plain copy of the module through
// that copy's own vtable, which is LibTorch's, so the text is LibTorch's.
#include <torch/torch.h>

#include <ostream>

namespace modtracker::libtorch::detail {
namespace {
// Out of line, so that the compiler cannot see where the virtual call lands.
[[gnu::noinline]] void print_through_vtable(const torch::nn::Module& module, std::ostream& stream) {
  module.pretty_print(stream);
}
template <class Plain, class Base>
void print_as(const Base& self, std::ostream& stream) {
  const Plain plain(static_cast<const Plain&>(self));
  print_through_vtable(plain, stream);
}
}  // namespace
}  // namespace modtracker::libtorch::detail

namespace torch::nn {
using modtracker::libtorch::detail::print_as;
template <>
void BatchNormImplBase<1, BatchNorm1dImpl>::pretty_print(std::ostream& stream) const {
  print_as<BatchNorm1dImpl>(*this, stream);
}
template <>
void BatchNormImplBase<2, BatchNorm2dImpl>::pretty_print(std::ostream& stream) const {
  print_as<BatchNorm2dImpl>(*this, stream);
}
template <>
void BatchNormImplBase<3, BatchNorm3dImpl>::pretty_print(std::ostream& stream) const {
  print_as<BatchNorm3dImpl>(*this, stream);
}
template <>
void InstanceNormImpl<1, InstanceNorm1dImpl>::pretty_print(std::ostream& stream) const {
  print_as<InstanceNorm1dImpl>(*this, stream);
}
template <>
void InstanceNormImpl<2, InstanceNorm2dImpl>::pretty_print(std::ostream& stream) const {
  print_as<InstanceNorm2dImpl>(*this, stream);
}
template <>
void InstanceNormImpl<3, InstanceNorm3dImpl>::pretty_print(std::ostream& stream) const {
  print_as<InstanceNorm3dImpl>(*this, stream);
}
}  // namespace torch::nn
