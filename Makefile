# ambit: the entry point. `make` builds, `make test` runs every test, `make demo` runs the main
# job, `make SAN=address test` builds and tests with AddressSanitizer + UBSan.
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
ifneq ($(CCACHE),)
CMAKE_EXTRA += -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache
endif

.PHONY: all setup configure build test demo bench soak clean
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

clean:
	rm -rf build build-asan
