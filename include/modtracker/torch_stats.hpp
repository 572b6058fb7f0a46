// The LibTorch statistics tools (kept for code that includes this header:
// <modtracker/torch.hpp> brings them too).
#pragma once

#include <modtracker/libtorch_tools/stats.hpp>
