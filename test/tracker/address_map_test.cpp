// The engine's module lookup (a private container, tested directly).
#include <vector>

#include "tracker/address_map.hpp"

#include <doctest/doctest.h>

TEST_CASE("AddressMap: finds what it holds across growth, assign replaces in place, never loses an entry") {
  modtracker::detail::AddressMap<int> map;
  std::vector<int> objects(5000);
  CHECK(map.find(&objects[0]) == nullptr);
  for (int i = 0; i < 5000; ++i) map.assign(&objects[i], i);
  bool all_found = true;
  for (int i = 0; i < 5000; ++i) all_found = all_found && map.find(&objects[i]) && *map.find(&objects[i]) == i;
  CHECK(all_found);
  int outside = 0;
  CHECK(map.find(&outside) == nullptr);
  CHECK(map.assign(&objects[7], -7) == -7);  // a new value at a known address
  CHECK(*map.find(&objects[7]) == -7);
  CHECK(map.size() == 5000);
  long sum = 0;
  std::size_t visited = 0;
  bool keys_given = true;
  map.for_each([&](const void* key, int& v) {
    sum += v;
    ++visited;
    keys_given = keys_given && key == &objects[static_cast<std::size_t>(v < 0 ? -v : v)];
  });
  CHECK(visited == 5000);
  CHECK(keys_given);
  CHECK(sum == 4999L * 5000 / 2 - 7 - 7);
}

