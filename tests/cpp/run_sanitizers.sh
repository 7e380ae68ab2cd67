#!/usr/bin/env bash
# Builds tests/cpp/test_core.cpp (end to end) and tests/cpp/test_stages.cpp (each algorithm stage
# through its detail/ header) with the fasteplb core under sanitizers (-O1) and runs them. Exits
# non-zero on any build error, test failure or sanitizer report.
#
#   tests/cpp/run_sanitizers.sh [test_core arguments...]     e.g. --scale 0.2 or --case SEED
#   (test_stages always runs its default cases)
#   SANITIZER=thread tests/cpp/run_sanitizers.sh --scale 0.5
#
# SANITIZER: address (default: AddressSanitizer + UndefinedBehaviorSanitizer, in
# build/sanitizers) or thread (ThreadSanitizer, in build/tsan).
# Both dispatch paths of the CPU-specific kernels (detail/simd.cpp) run: the main run uses the CPU's
# best (AVX2 where the CPU has it; test_core also compares the AVX2 and the baseline kernels on
# random cases), then a short run forces the baseline kernels with FASTEPLB_SIMD=default. (GCC
# does not vectorise instrumented loops, so here the AVX2 kernels run as AVX2-encoded scalar
# code; tests/test_threads.py compares the release build's vector code with the baseline.)
# Environment: CXX (compiler), BUILD_DIR, JOBS (default 2), SANITIZER.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SANITIZER="${SANITIZER:-address}"
JOBS="${JOBS:-2}"
case "$SANITIZER" in
    address | address,undefined)
        SANITIZER=address
        SAN="-fsanitize=address,undefined"
        SAN_FLAGS="$SAN -fno-sanitize-recover=undefined"
        BUILD_DIR="${BUILD_DIR:-$ROOT/build/sanitizers}"
        ;;
    thread)
        SAN="-fsanitize=thread"
        SAN_FLAGS="$SAN"
        BUILD_DIR="${BUILD_DIR:-$ROOT/build/tsan}"
        ;;
    *)
        echo "error: SANITIZER must be 'address' (ASan + UBSan) or 'thread' (TSan)," \
             "not '$SANITIZER'" >&2
        exit 2
        ;;
esac
SAN_FLAGS="-O1 -g -fno-omit-frame-pointer $SAN_FLAGS"

start=$(date +%s.%N)
mkdir -p "$BUILD_DIR"
# CMAKE_BUILD_TYPE=None: no per-configuration flags, so the -O1 above is what is used
# (CMakeLists.txt would otherwise default to Release and append -O3).
cmake -S "$ROOT" -B "$BUILD_DIR" \
    -DFASTEPLB_BUILD_TESTS=ON \
    -DFASTEPLB_WERROR=ON \
    -DCMAKE_BUILD_TYPE=None \
    -DCMAKE_CXX_FLAGS="$SAN_FLAGS" \
    -DCMAKE_EXE_LINKER_FLAGS="$SAN" \
    -DCMAKE_SHARED_LINKER_FLAGS="$SAN" \
    >"$BUILD_DIR/configure.log" 2>&1 || { cat "$BUILD_DIR/configure.log"; exit 1; }
configured=$(date +%s.%N)
cmake --build "$BUILD_DIR" --target test_core test_stages -j"$JOBS"
built=$(date +%s.%N)

TEST="$BUILD_DIR/test_core"
RUN=()  # a prefix for every run of $TEST (setarch -R where TSan needs it)
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

if [[ $SANITIZER == address ]]; then
    # LeakSanitizer needs ptrace-like access to stop the process's threads; some containers
    # deny it. Probe with a run that does nothing, and fall back to detect_leaks=0 if LSan
    # cannot work.
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
    OPTIONS="ASAN_OPTIONS=$ASAN_OPTIONS UBSAN_OPTIONS=$UBSAN_OPTIONS"
else
    export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"
    # ThreadSanitizer's fixed shadow layout does not fit every address-space randomisation:
    # older runtimes die with "unexpected memory mapping" when vm.mmap_rnd_bits is above 28.
    # Probe; if it fails that way, rerun without randomisation (setarch -R) for this process.
    set +e
    probe_out="$("$TEST" --noop 2>&1)"
    probe_rc=$?
    set -e
    if [[ $probe_rc -ne 0 ]]; then
        rnd_bits="$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo unknown)"
        if grep -qE "ThreadSanitizer|FATAL" <<<"$probe_out" &&
            command -v setarch >/dev/null &&
            setarch "$(uname -m)" -R "$TEST" --noop >/dev/null 2>&1; then
            echo "note: ThreadSanitizer cannot start with this address-space randomisation" \
                 "(vm.mmap_rnd_bits=$rnd_bits); running test_core under setarch -R" >&2
            RUN=(setarch "$(uname -m)" -R)
        else
            echo "$probe_out" >&2
            echo "error: test_core --noop failed (rc=$probe_rc) under ThreadSanitizer" \
                 "(vm.mmap_rnd_bits=$rnd_bits; setarch -R did not help or is unavailable)" >&2
            exit 1
        fi
    fi
    OPTIONS="TSAN_OPTIONS=$TSAN_OPTIONS"
fi

echo "running ${RUN[*]:+${RUN[*]} }$TEST $* ($OPTIONS)"
set +e
"${RUN[@]}" "$TEST" "$@"
rc=$?
set -e
if [[ $rc -eq 0 ]]; then
    echo "running ${RUN[*]:+${RUN[*]} }$BUILD_DIR/test_stages"
    set +e
    "${RUN[@]}" "$BUILD_DIR/test_stages"
    rc=$?
    set -e
fi
main_done=$(date +%s.%N)
# The baseline kernels forced through the environment, on a few cases of every test.
base_rc=0
if [[ $rc -eq 0 ]]; then
    echo "running FASTEPLB_SIMD=default ${RUN[*]:+${RUN[*]} }$TEST --scale 0.05"
    set +e
    base_out="$(FASTEPLB_SIMD=default "${RUN[@]}" "$TEST" --scale 0.05 2>&1)"
    base_rc=$?
    set -e
    echo "$base_out" | tail -n 2
    if [[ $base_rc -eq 0 ]] && ! grep -q "^simd kernels: default$" <<<"$base_out"; then
        echo "error: FASTEPLB_SIMD=default did not select the default kernels" >&2
        base_rc=1
    fi
    [[ $base_rc -eq 0 ]] || echo "$base_out" >&2
fi
done_at=$(date +%s.%N)
awk -v a="$start" -v b="$configured" -v c="$built" -v d="$main_done" -v e="$done_at" \
    -v san="$SANITIZER" 'BEGIN {
    printf "timing (%s): configure %.1fs, build %.1fs, run %.1fs, default-kernel run %.1fs, " \
           "total %.1fs\n", san, b - a, c - b, d - c, e - d, e - a }'
if [[ $rc -ne 0 ]]; then
    echo "FAILED: test_core or test_stages exited with $rc" >&2
    exit $rc
fi
if [[ $base_rc -ne 0 ]]; then
    echo "FAILED: test_core with FASTEPLB_SIMD=default exited with $base_rc" >&2
    exit $base_rc
fi
