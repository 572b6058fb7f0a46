// What the LibTorch backend asks of the TorchScript calls (src/libtorch/jit.cpp).
#pragma once

namespace modtracker::libtorch::jit::detail {
/// Ends the TorchScript calls still open on this thread (unwound by an
/// exception in scripted code), unless the thread is inside one's operator.
/// Linking it also links the operators' registration, so a program with a
/// tracker loads instrumented models.
void unwind_this_thread() noexcept;
}  // namespace modtracker::libtorch::jit::detail
