// Moved to <modtracker/libtorch_tools/memory.hpp>, with the other tools' headers;
// this path stays for code written against modtracker 0.2.
#pragma once

#include <modtracker/libtorch_tools/memory.hpp>
