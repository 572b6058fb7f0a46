import modtracker;
import modtracker.scripted;
#include <doctest/doctest.h>
TEST_CASE("smoke") { modtracker::scripted::Backend b; modtracker::Tracker<modtracker::scripted::Backend> t(b); CHECK(t.parents().contains("Global")); }
