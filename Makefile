# qpipe's two set-up commands, `make demo` and `make test`, and a few more.
# Each installs the Debian packages it needs (scripts/deps.sh), then builds
# with CMake into build/ (plain) and build-asan/ (ASan+UBSan).

JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=
# make install PREFIX=DIR [DESTDIR=STAGE]: the programs, man pages, header,
# libraries, qpipe.pc and the CMake package under DIR.
PREFIX ?= /usr/local
BUILD_DIR ?= build

.PHONY: all build test test-plain test-asan format-check format demo bench stress clean install install-only

all: build

build:
	@scripts/deps.sh build
	@cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQP_WERROR=ON $(CMAKE_FLAGS) >/dev/null
	@cmake --build build -j $(JOBS)

# Every test: plain build, ASan+UBSan build, formatting.
test:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory format-check
	@$(MAKE) --no-print-directory test-plain
	@$(MAKE) --no-print-directory test-asan
	@echo "qpipe: all tests passed (plain and ASan+UBSan builds, formatting)"

test-plain: build
	@cd build && ctest -j $(JOBS) -LE stress --output-on-failure --timeout 600

test-asan:
	@scripts/deps.sh build
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DQP_WERROR=ON \
		-DQP_SANITIZER=address,undefined -DQP_BENCH=OFF $(CMAKE_FLAGS) >/dev/null
	@cmake --build build-asan -j $(JOBS)
	@cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest -j $(JOBS) -LE stress --output-on-failure --timeout 900

format-check:
	@scripts/format.sh --check

format:
	@scripts/format.sh

install: build
	@$(MAKE) --no-print-directory install-only

# The install step alone, on a tree already built (tests/it_install.sh).
install-only:
	@DESTDIR="$(DESTDIR)" cmake --install $(BUILD_DIR) --prefix "$(PREFIX)"

# The demo installs what is missing and builds by itself (scripts/demo.sh).
demo:
	@scripts/demo.sh

bench: build
	@scripts/deps.sh bench
	@bench/run

stress: build
	@cd build && ctest -L stress --output-on-failure

clean:
	rm -rf build build-asan build-fuzz
