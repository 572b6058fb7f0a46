// The FLOP formulas (hand counts, 2 FLOPs per multiply-add) of the matmul
// and convolution family, and an operator's description for a trace. Used
// by FlopCounter and OperatorRecorder; built with NDEBUG (RecordFunction).
#pragma once

#include <ATen/record_function.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace modtracker::libtorch::detail {

namespace formulas {
// `_convolution` is what torch.jit.trace records for every convolution (the
// eager `convolution` calls it inside, where it is not counted again).
enum Operator : std::uint8_t { mm, addmm, bmm, baddbmm, convolution, convolution_, convolution_backward, operators };
inline constexpr std::array<std::string_view, operators> operator_names{
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution", "aten::_convolution",
    "aten::convolution_backward"};
using Inputs = c10::ArrayRef<const c10::IValue>;
/// The formula's operator of that name (`operators` if none).
inline Operator operator_named(std::string_view name) {
  for (std::size_t i = 0; i < operator_names.size(); ++i)
    if (operator_names[i] == name) return static_cast<Operator>(i);
  return operators;
}
/// Throws c10::Error on arguments of unexpected types or shapes.
std::uint64_t flops_of(Operator op, Inputs all);
}  // namespace formulas

/// An operator call as a trace shows it: its tensor arguments' shapes (each
/// as its dimension count then its sizes; -1 for an undefined tensor), and
/// its FLOPs where a formula counts it.
struct OperatorDescription {
  std::vector<std::int64_t> shapes;
  std::optional<std::uint64_t> flops;
};
OperatorDescription describe(const at::RecordFunction& fn);
/// "[8, 4], [3, 4], [3]" from OperatorDescription::shapes.
std::string format_shapes(const std::vector<std::int64_t>& shapes);

}  // namespace modtracker::libtorch::detail
