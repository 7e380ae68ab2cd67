#!/usr/bin/env bash
# Builds tests/cpp/test_core.cpp and the fasteplb core with AddressSanitizer and
# UndefinedBehaviorSanitizer (-O1) in build/sanitizers, and runs it. Exits non-zero on any
# build error, test failure or sanitizer report.
#
#   tests/cpp/run_sanitizers.sh [test_core arguments...]   e.g. --scale 0.2 or --case SEED
#
# Environment: CXX (compiler), BUILD_DIR (default build/sanitizers), JOBS (default 2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/sanitizers}"
JOBS="${JOBS:-2}"
SAN_FLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"

start=$(date +%s.%N)
mkdir -p "$BUILD_DIR"
# CMAKE_BUILD_TYPE=None: no per-configuration flags, so the -O1 above is what is used
# (CMakeLists.txt would otherwise default to Release and append -O3).
cmake -S "$ROOT" -B "$BUILD_DIR" \
    -DFASTEPLB_BUILD_TESTS=ON \
    -DCMAKE_BUILD_TYPE=None \
    -DCMAKE_CXX_FLAGS="$SAN_FLAGS" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
    >"$BUILD_DIR/configure.log" 2>&1 || { cat "$BUILD_DIR/configure.log"; exit 1; }
configured=$(date +%s.%N)
cmake --build "$BUILD_DIR" --target test_core -j"$JOBS"
built=$(date +%s.%N)

TEST="$BUILD_DIR/test_core"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

# LeakSanitizer needs ptrace-like access to stop the process's threads; some containers deny
# it. Probe with a run that does nothing, and fall back to detect_leaks=0 if LSan cannot work.
leaks=1
set +e
probe_out="$(ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" "$TEST" --noop 2>&1)"
probe_rc=$?
set -e
if [[ $probe_rc -ne 0 ]]; then
    if grep -qE "LeakSanitizer (has encountered a fatal error|does not work under ptrace)" \
        <<<"$probe_out"; then
        echo "note: LeakSanitizer does not work in this environment (ptrace restrictions);" \
             "running with detect_leaks=0" >&2
        leaks=0
    else
        echo "$probe_out" >&2
        echo "error: test_core --noop failed (rc=$probe_rc) under the sanitizers" >&2
        exit 1
    fi
fi
export ASAN_OPTIONS="detect_leaks=$leaks:abort_on_error=1"

echo "running $TEST $* (ASAN_OPTIONS=$ASAN_OPTIONS UBSAN_OPTIONS=$UBSAN_OPTIONS)"
set +e
"$TEST" "$@"
rc=$?
set -e
done_at=$(date +%s.%N)
awk -v a="$start" -v b="$configured" -v c="$built" -v d="$done_at" 'BEGIN {
    printf "timing: configure %.1fs, build %.1fs, run %.1fs, total %.1fs\n",
           b - a, c - b, d - c, d - a }'
if [[ $rc -ne 0 ]]; then
    echo "FAILED: test_core exited with $rc" >&2
fi
exit $rc
