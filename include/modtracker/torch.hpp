// modtracker for LibTorch: the one header a LibTorch user includes. It
// includes <torch/torch.h>, imports modtracker, and brings
//   libtorch/tensors.hpp     Tensors (what hooks see), the Flatten customization point
//   libtorch/backend.hpp     the LibTorch hook backend and modtracker::libtorch::Tracker
//   libtorch/calls.hpp       tracked holders (MODTRACKER_MODULE), call(), ForwardScope
//   libtorch/sequential.hpp  the tracked Sequential
//   libtorch/nn.hpp          tracked drop-ins for torch::nn layers
//   libtorch/stats.hpp       LibTorch tools: parameters and output shapes for the statistics
//   libtorch/attribution.hpp whom the tools charge backward work to
//   libtorch/flops.hpp       FlopCounter: FLOPs per module and operator
//   libtorch/backward_time.hpp BackwardTimer: backward time per module, by its autograd nodes
//   libtorch/memory.hpp      MemoryTracker: memory per module, phase and category
//   libtorch/profiler_scopes.hpp ProfilerScopes: module scopes in LibTorch's own profiler
#pragma once

#include <torch/torch.h>

#include <modtracker/libtorch/tensors.hpp>
#include <modtracker/libtorch/backend.hpp>
#include <modtracker/libtorch/calls.hpp>
#include <modtracker/libtorch/sequential.hpp>
#include <modtracker/libtorch/nn.hpp>
#include <modtracker/libtorch/jit.hpp>
#include <modtracker/libtorch/stats.hpp>
#include <modtracker/libtorch/attribution.hpp>
#include <modtracker/libtorch/flops.hpp>
#include <modtracker/libtorch/backward_time.hpp>
#include <modtracker/libtorch/memory.hpp>
#include <modtracker/libtorch/profiler_scopes.hpp>
#include <modtracker/libtorch/operators.hpp>

import modtracker.libtorch_tools;  // modtracker, modtracker.backend and modtracker.stats
