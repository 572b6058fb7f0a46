// The TorchScript part's own declarations, shared by its files:
//   stand_ins.cpp   ScriptedModule stand-ins, by TorchScript object
//   calls.cpp       the calls open on each thread, and the enter/exit operators
//   unwinding.cpp   calls unwound by an exception in scripted code; the
//                   LibTorch backend's scope observer
//   graphs.cpp      editing the method graphs: instrument()
#pragma once

#include <torch/torch.h>
#include <torch/script.h>

#include <cstddef>
#include <memory>

#include "modtracker/libtorch/jit.hpp"

namespace modtracker::libtorch::jit::detail {

// stand_ins.cpp
/// The stand-in of `obj` and its subtree, made where missing.
std::shared_ptr<ScriptedModule> stand_in(const c10::intrusive_ptr<c10::ivalue::Object>& obj);
/// The stand-in of the module running an operator (made on first sight).
const ScriptedModule& stand_in_of(const c10::IValue& self);

// calls.cpp: the calls open on this thread
[[nodiscard]] std::size_t open_calls() noexcept;
/// The calls opened after the first `keep` exit, each as a forward that threw.
void close_calls(std::size_t keep) noexcept;
/// Is this thread inside one of the operators (a hook may end a scope there)?
[[nodiscard]] bool in_operator() noexcept;

// unwinding.cpp
/// From the first instrumented model or TorchScript call on: the LibTorch
/// backend tells this part of its scopes (and the unwinding watch runs while
/// one is active, once a model was instrumented).
void observe_scopes(bool instrumented);

}  // namespace modtracker::libtorch::jit::detail
