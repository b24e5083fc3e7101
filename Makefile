# Thin wrapper around CMake. `make run` and `make test` are the README's two commands.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=
ifeq ($(CI),true)
CMAKE_ARGS += -DTG_WERROR=ON
endif

.PHONY: all deps build build-asan run test test-fast test-asan bench fuzz clean format

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

# The libFuzzer drivers (clang; not part of `make test`): each of
# tests/fuzz/fuzz_<name>.c runs for FUZZ_TIME seconds over its checked-in
# corpus, the inputs it finds kept in $(FUZZ_BUILD)/corpus/<name>/ (the
# checked-in corpus is only read) and any crash in $(FUZZ_BUILD)/. FUZZ_ARGS
# passes more libFuzzer flags (e.g. FUZZ_ARGS=-runs=10000000).
FUZZ_BUILD   ?= build-fuzz
FUZZ_TIME    ?= 60
FUZZ_ARGS    ?=
FUZZ_DRIVERS := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))

fuzz:
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DTG_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(FUZZ_BUILD) -j $(JOBS)
	@set -e; for d in $(FUZZ_DRIVERS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$d; \
	  echo "== fuzz_$$d: $(FUZZ_TIME) s"; \
	  $(FUZZ_BUILD)/fuzz/fuzz_$$d -max_total_time=$(FUZZ_TIME) -print_final_stats=1 \
	    -artifact_prefix=$(FUZZ_BUILD)/fuzz_$$d- $(FUZZ_ARGS) \
	    $(FUZZ_BUILD)/corpus/$$d tests/fuzz/corpus/$$d; \
	done

format:
	clang-format -i $$(find src -name '*.c') include/tollgate/*.h tests/unit/*.c tests/support/*.c tests/fuzz/*.c

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
