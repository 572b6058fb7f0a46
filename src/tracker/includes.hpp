// The headers of the engine's module units, included first by each of them
// (partitions and implementation units alike): clang 16 needs a unit to
// include what it uses of a partition's global module fragment, and one
// order everywhere keeps its ODR checks quiet.
#pragma once
#include <cstdint>
#include <algorithm>
#include <array>
#include <cstddef>
#include <atomic>
#include <bit>
#include <chrono>
#include <coroutine>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <gsl/gsl>

#include "tracker/address_map.hpp"
#include "tracker/clock.hpp"
#include "backend/pool.hpp"
#include "tracker/prefetch.hpp"
#include "backend/sections.hpp"
#include "backend/spin_lock.hpp"
