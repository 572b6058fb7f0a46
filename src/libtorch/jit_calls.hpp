// What the LibTorch backend asks of the TorchScript calls (src/libtorch/jit.cpp).
#pragma once

namespace modtracker::libtorch::jit::detail {
/// A tracking scope starts: while one is active and a model has been
/// instrumented, a RecordFunction callback on TorchScript function frames
/// ends the calls that an exception in scripted code unwinds, as it unwinds
/// (scripted code skips the exit operators after a raise). Linking this also
/// links the operators' registration, so a program with a tracker loads
/// instrumented models.
void scope_started();
/// A tracking scope ends on this thread: the TorchScript calls still open on
/// it exit (unless the thread is inside one's operator: a hook ends the scope).
void scope_ended() noexcept;
}  // namespace modtracker::libtorch::jit::detail
