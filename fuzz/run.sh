#!/usr/bin/env bash
# Builds the wire codec's libFuzzer target (clang, ASan+UBSan) in
# build-fuzz/ and runs it for SECONDS (default 180) on 1 core, starting from
# the seed corpus tests/corpus/wire. New inputs go to build-fuzz/corpus (the
# seed corpus is never written); crashes to build-fuzz/crash-*. Copy a
# crashing input into tests/corpus/wire/ once it is fixed, so that every
# test run replays it.
# Usage: fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-180}
cmake -S . -B build-fuzz -DQP_FUZZ=ON -DCMAKE_C_COMPILER=clang \
	-DQP_TESTS=OFF -DQP_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz --target fuzz_wire -j 2
mkdir -p build-fuzz/corpus
cd build-fuzz
exec ./bin/fuzz_wire -max_total_time="$secs" -max_len=65536 -timeout=10 \
	-rss_limit_mb=2048 -print_final_stats=1 corpus ../tests/corpus/wire
