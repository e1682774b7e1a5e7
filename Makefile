# ambit: the entry point. `make` builds, `make test` runs every test, `make demo` runs the main
# job, `make SAN=address test` builds and tests with AddressSanitizer + UBSan, `make fuzz` builds
# the libFuzzer targets (tests/fuzz/README.md) and runs each for FUZZ_SECONDS. `make lint` checks
# the module dependency rule (docs/ARCHITECTURE.md#dependency-rule) and clang-format;
# `make format` applies clang-format.
SAN ?=
BUILD_TYPE ?= RelWithDebInfo
ifeq ($(SAN),address)
BUILD_DIR ?= build-asan
CMAKE_EXTRA := -DAMBIT_SANITIZE=ON
else ifeq ($(SAN),)
BUILD_DIR ?= build
CMAKE_EXTRA :=
else
$(error SAN=$(SAN) is not supported; use SAN=address)
endif
JOBS ?= $(shell nproc)
CCACHE := $(shell command -v ccache 2>/dev/null)
LAUNCHER :=
ifneq ($(CCACHE),)
LAUNCHER := -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache
endif
CMAKE_EXTRA += $(LAUNCHER)

# Fuzzing: clang, ASan + UBSan + libFuzzer, in its own build directory.
FUZZ_BUILD_DIR ?= build-fuzz
FUZZ_SECONDS ?= 60
# Empty: every target; else a space-separated list (e.g. FUZZ_TARGETS="hbone_server ca").
FUZZ_TARGETS ?=
# What `make test` gives each target: a smoke run that catches a crash on the seeds or near them.
TEST_FUZZ_SECONDS ?= 5

.PHONY: all setup configure build test demo bench soak clean fuzz fuzz-build lint format
all: build

setup:
	@bash scripts/setup.sh

# The generated Makefile marks a completed configure (a failed one leaves a cache but no Makefile).
$(BUILD_DIR)/Makefile: | setup
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_EXTRA)

configure: setup $(BUILD_DIR)/Makefile

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure --timeout 300 $(CTEST_ARGS)
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(TEST_FUZZ_SECONDS)

# The dependency rule first (it names the rule each violation breaks), then formatting of every
# C++ file; FORMAT_SINCE=REV checks only the C++ files changed since REV.
lint: setup
	/usr/bin/python3 scripts/check_deps.py
	FORMAT_SINCE=$(FORMAT_SINCE) bash scripts/format.sh check

format: setup
	bash scripts/format.sh apply

# -O1 with line tables: what fuzzing wants (symbolized reports), and a cold build in 5 minutes
# on 2 cores instead of 10+ at -O2 -g.
$(FUZZ_BUILD_DIR)/Makefile: | setup
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD_DIR) -DCMAKE_BUILD_TYPE= \
	  -DCMAKE_C_FLAGS="-O1 -gline-tables-only" -DCMAKE_CXX_FLAGS="-O1 -gline-tables-only" \
	  -DAMBIT_FUZZ=ON $(LAUNCHER)

fuzz-build: setup $(FUZZ_BUILD_DIR)/Makefile
	cmake --build $(FUZZ_BUILD_DIR) -j $(JOBS) --target fuzzers

fuzz: fuzz-build
	bash tests/fuzz/run_fuzzers.sh $(FUZZ_BUILD_DIR) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

demo: build
	bash scripts/demo.sh $(BUILD_DIR)

# Every benchmark under bench/ (bench/README.md): tables on stdout, JSON in bench/results/.
bench: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target benchmarks
	bash bench/run.sh $(BUILD_DIR)

# Soak run, not in CI: SOAK_SECONDS (600) of SOAK_CONNS (10 000) tunneled connections with churn;
# prints the RSS and descriptor slope of every ambit process (bench/soak/soak.py).
soak: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target ambitd ambit-tunnel
	/usr/bin/python3 bench/soak/soak.py --build-dir $(BUILD_DIR)

# How cost grows (bench/README.md), not in CI: every sweep (bench/sweep/run.py), one JSON and one
# SVG chart each in bench/results/. Needs root; about 25 minutes on 2 cores.
.PHONY: bench-sweep
bench-sweep: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target ambitd ambit-tunnel ambitctl net_rr net_relay net_tls
	nice -n 10 /usr/bin/python3 bench/sweep/run.py --build-dir $(BUILD_DIR)

clean:
	rm -rf build build-asan build-fuzz
