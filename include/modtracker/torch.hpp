// modtracker for LibTorch: the one header a LibTorch user includes. It
// includes <torch/torch.h>, imports modtracker, and brings
// the LibTorch backend (libtorch/):
//   tensors.hpp      Tensors (what hooks see), the Flatten customization point
//   backend.hpp      the LibTorch hook backend and modtracker::libtorch::Tracker
//   calls.hpp        tracked holders (MODTRACKER_MODULE), call(), ForwardScope
//   sequential.hpp   the tracked Sequential
//   nn.hpp           tracked drop-ins for torch::nn layers
//   jit.hpp          TorchScript models: jit::instrument
// and the LibTorch tools (libtorch_tools/):
//   stats.hpp        parameters and output shapes for the statistics, annotate()
//   attribution.hpp  whom the tools charge backward work to
//   flops.hpp        FlopCounter: FLOPs per module and operator
//   backward_time.hpp BackwardTimer: backward time per module, by its autograd nodes
//   memory.hpp       MemoryTracker: memory per module, phase and category
//   profiler_scopes.hpp ProfilerScopes: module scopes in LibTorch's own profiler
//   operators.hpp    OperatorRecorder: operators in the trace
// (libtorch_tools/ranks.hpp, the ranks over c10d, is included on its own.)
#pragma once

#include <torch/torch.h>

#include <modtracker/libtorch/tensors.hpp>
#include <modtracker/libtorch/backend.hpp>
#include <modtracker/libtorch/calls.hpp>
#include <modtracker/libtorch/sequential.hpp>
#include <modtracker/libtorch/nn.hpp>
#include <modtracker/libtorch/jit.hpp>
#include <modtracker/libtorch_tools/stats.hpp>
#include <modtracker/libtorch_tools/attribution.hpp>
#include <modtracker/libtorch_tools/flops.hpp>
#include <modtracker/libtorch_tools/backward_time.hpp>
#include <modtracker/libtorch_tools/memory.hpp>
#include <modtracker/libtorch_tools/profiler_scopes.hpp>
#include <modtracker/libtorch_tools/operators.hpp>

import modtracker.libtorch_tools;  // modtracker, modtracker.backend and modtracker.stats
