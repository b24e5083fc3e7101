# Thin wrapper around CMake. `make run` and `make test` are the README's two commands.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=
ifeq ($(CI),true)
CMAKE_ARGS += -DTG_WERROR=ON
endif

.PHONY: all deps build build-asan run test test-fast test-asan bench clean format

all: build

deps:
	@scripts/install-deps.sh

$(BUILD)/Makefile:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS)

build: $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

$(ASAN_BUILD)/Makefile:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DTG_SANITIZE=address,undefined $(CMAKE_ARGS)

build-asan: $(ASAN_BUILD)/Makefile
	cmake --build $(ASAN_BUILD) -j $(JOBS)

# Starts tollgate on config/tollgate.yaml beside the demo model server.
run: deps build
	@scripts/run-demo.sh $(BUILD)

test-fast: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan: build-asan
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(JOBS)

# Every test, in a normal build and again under AddressSanitizer + UBSan.
test: deps
	$(MAKE) test-fast
	$(MAKE) test-asan

bench: deps build
	tests/bench/run.sh $(BUILD)

format:
	clang-format -i $$(find src -name '*.c') include/tollgate/*.h tests/unit/*.c tests/support/*.c tests/fuzz/*.c

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
