# The two commands: `make demo` and `make test`. Both install what is
# missing (Debian packages, see cmake/install-deps.sh), configure, build.
PRESET ?= release
BUILD  := build/$(PRESET)
ARGS   ?=

.PHONY: all deps configure build test demo bench asan tsan clean
all: build

DEPS_FLAGS := $(if $(filter asan tsan,$(PRESET)),--sanitizers,)

deps:
	@bash cmake/install-deps.sh $(DEPS_FLAGS)

configure: deps
	@test -f $(BUILD)/build.ninja || cmake --preset $(PRESET)

build: configure
	@cmake --build --preset $(PRESET)

# The tests also need test-only packages (python3-torchvision, for the real
# models): a target-specific flag that `deps` inherits under `make test`.
test: DEPS_FLAGS += --test-packages
test: build
	@ctest --preset $(PRESET)

demo: build
	@$(BUILD)/examples/modtracker demo $(ARGS)

bench: build
	@$(BUILD)/bench/modtracker-bench $(ARGS)

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer, and
# under ThreadSanitizer (LibTorch itself is not instrumented: see README).
asan:
	@$(MAKE) --no-print-directory test PRESET=asan

tsan:
	@$(MAKE) --no-print-directory test PRESET=tsan

clean:
	rm -rf build
