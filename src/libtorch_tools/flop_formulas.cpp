// The FLOP formulas: hand counts, 2 FLOPs per multiply-add. Built with
// NDEBUG always (CMakeLists.txt), like flops.cpp: RecordFunction's layout
// differs without it.
#include <torch/torch.h>
#include <ATen/record_function.h>

#include <cstring>
#include <string>
#include <vector>

#include "libtorch_tools/flop_formulas.hpp"

namespace modtracker::libtorch::detail {

namespace formulas {

namespace {

std::int64_t product(c10::IntArrayRef v, std::size_t from = 0) {
  std::int64_t p = 1;
  for (std::size_t i = from; i < v.size(); ++i) p *= v[i];
  return p;
}

// A convolution's forward FLOPs: 2 * batch * (output positions, or for a
// transposed one input positions) * every weight element.
std::uint64_t convolution_flops(c10::IntArrayRef x, c10::IntArrayRef w, c10::IntArrayRef out_spatial, bool transposed) {
  const auto positions = transposed ? product(x, 2) : product(out_spatial);
  return static_cast<std::uint64_t>(2 * x[0] * positions * product(w));
}

std::int64_t at_or_first(const c10::List<std::int64_t>& v, std::size_t i) { return v.size() > i ? v.get(i) : v.get(0); }

// An operator's own arguments: the last ones of what its record gives.
// Called through the dispatcher, a record holds exactly them; the
// TorchScript interpreter gives more, values of the frame before them.
Inputs arguments(Operator op, Inputs in) {
  static constexpr std::array<std::size_t, operators> arity{2, 5, 2, 5, 9, 13, 11};
  auto n = arity[op];
  // _convolution's deprecated overload has no allow_tf32: 12, starting with the two tensors.
  if (op == convolution_ && in.size() >= 13 && !(in[in.size() - 13].isTensor() && in[in.size() - 12].isTensor())) n = 12;
  TORCH_CHECK(in.size() >= n, "fewer arguments than the operator takes");
  return in.slice(in.size() - n);
}

}  // namespace

std::uint64_t flops_of(Operator op, Inputs all) {
  const auto in = arguments(op, all);
  switch (op) {
    case mm:
    case addmm: {
      const auto a = in[op == mm ? 0 : 1].toTensor().sizes(), b = in[op == mm ? 1 : 2].toTensor().sizes();
      TORCH_CHECK(a.size() == 2 && b.size() == 2, "not matrices");
      return static_cast<std::uint64_t>(2 * a[0] * a[1] * b[1]);
    }
    case bmm:
    case baddbmm: {
      const auto a = in[op == bmm ? 0 : 1].toTensor().sizes(), b = in[op == bmm ? 1 : 2].toTensor().sizes();
      TORCH_CHECK(a.size() == 3 && b.size() == 3, "not batches of matrices");
      return static_cast<std::uint64_t>(2 * a[0] * a[1] * a[2] * b[2]);
    }
    case convolution:
    case convolution_: {  // (input, weight, bias, stride, padding, dilation, transposed, output_padding, groups, ...)
      const auto x = in[0].toTensor().sizes(), w = in[1].toTensor().sizes();
      const bool transposed = in[6].toBool();
      TORCH_CHECK(x.size() >= 3 && x.size() == w.size(), "not a convolution's shapes");
      const auto stride = in[3].toIntList(), padding = in[4].toIntList(), dilation = in[5].toIntList();
      std::vector<std::int64_t> out;
      for (std::size_t i = 2; i < x.size(); ++i) {
        const auto k = i - 2;
        out.push_back((x[i] + 2 * at_or_first(padding, k) - at_or_first(dilation, k) * (w[i] - 1) - 1) /
                          at_or_first(stride, k) + 1);
      }
      return convolution_flops(x, w, out, transposed);
    }
    case convolution_backward: {  // (grad_output, input, weight, bias_sizes, stride, padding, dilation,
                                  //  transposed, output_padding, groups, output_mask)
      const auto g = in[0].toTensor().sizes(), x = in[1].toTensor().sizes(), w = in[2].toTensor().sizes();
      const bool transposed = in[7].toBool();
      const auto mask = in[10].toBoolList();
      TORCH_CHECK(g.size() >= 3 && mask.size() >= 2, "not a convolution's backward");
      // The input's and the weight's gradients each cost a forward; the bias's is a sum.
      const std::uint64_t gradients = (mask.get(0) ? 1 : 0) + (mask.get(1) ? 1 : 0);
      return gradients * convolution_flops(x, w, g.slice(2), transposed);
    }
    case operators: break;
  }
  return 0;
}

}  // namespace formulas

namespace {
void shape_of(const c10::IValue& v, std::vector<std::int64_t>& out) {
  const auto one = [&](const at::Tensor& t) {
    if (!t.defined()) return out.push_back(-1);
    const auto sizes = t.sizes();
    out.push_back(static_cast<std::int64_t>(sizes.size()));
    out.insert(out.end(), sizes.begin(), sizes.end());
  };
  if (v.isTensor()) one(v.toTensor());
  else if (v.isTensorList())
    for (const at::Tensor& t : v.toTensorList()) one(t);
}
}  // namespace

std::string format_shapes(const std::vector<std::int64_t>& shapes) {
  std::string out;
  for (std::size_t i = 0; i < shapes.size();) {
    if (!out.empty()) out += ", ";
    if (shapes[i] < 0) {
      out += "undefined";
      ++i;
      continue;
    }
    const auto n = static_cast<std::size_t>(shapes[i++]);
    out += '[';
    for (std::size_t k = 0; k < n && i < shapes.size(); ++k, ++i) out += (k ? ", " : "") + std::to_string(shapes[i]);
    out += ']';
  }
  return out;
}

OperatorDescription describe(const at::RecordFunction& fn) {
  OperatorDescription d;
  const auto inputs = fn.inputs();
  for (const auto& v : inputs) shape_of(v, d.shapes);
  if (const auto op = formulas::operator_named(fn.name()); op != formulas::operators) {
    try {
      d.flops = formulas::flops_of(op, inputs);
    } catch (const std::exception&) {  // not understood: no FLOPs to show
    }
  }
  return d;
}

}  // namespace modtracker::libtorch::detail
