# The two commands: `make demo` and `make test`. Both install what is
# missing (Debian packages, see cmake/install-deps.sh), configure, build.
PRESET ?= release
BUILD  := build/$(PRESET)
ARGS   ?=

.PHONY: all deps configure build test demo bench asan clean
all: build

deps:
	@bash cmake/install-deps.sh

configure: deps
	@test -f $(BUILD)/build.ninja || cmake --preset $(PRESET)

build: configure
	@cmake --build --preset $(PRESET)

test: build
	@ctest --preset $(PRESET)

demo: build
	@$(BUILD)/examples/modtracker-demo $(ARGS)

bench: build
	@$(BUILD)/bench/modtracker-bench $(ARGS)

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer.
asan:
	@$(MAKE) --no-print-directory test PRESET=asan

clean:
	rm -rf build
