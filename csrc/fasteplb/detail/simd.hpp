// CPU-specific kernels: count_above (the ranking step of the sort) and first_min (the seed's
// swap search), each compiled for AVX2 and for the baseline on x86-64 with GCC or Clang (only
// the baseline elsewhere) and called through a table chosen once per process from the CPU's
// features. Both versions compute the same integers (comparisons and an integer minimum, no
// floating-point arithmetic), so plans are bit-identical whichever runs.
#pragma once

#include <atomic>
#include <cstdint>

namespace fasteplb::detail {

struct SimdKernels {
    const char* name;
    // above[i] = the number of keys key[0..padded) strictly greater than key[i], i < n; the
    // keys past n are -inf, padded a multiple of 8.
    void (*count_above)(const float* key, int32_t n, int32_t padded, int32_t* above);
    // Index of the first smallest of x[0..n), n >= 1, all x >= +0.0 (or +inf).
    int64_t (*first_min)(const double* x, int64_t n);
};

// The kernels in use, chosen on first use. The tables are constants, so relaxed loads of the
// pointer suffice.
std::atomic<const SimdKernels*>& kernel_table();

inline void count_above(const float* key, int32_t n, int32_t padded, int32_t* above) {
    kernel_table().load(std::memory_order_relaxed)->count_above(key, n, padded, above);
}

inline int64_t first_min(const double* x, int64_t n) {
    return kernel_table().load(std::memory_order_relaxed)->first_min(x, n);
}

// For tests: the name of the kernels in use ("avx2" or "default"), and a switch to the named
// ones; false (and no change) when this build or CPU lacks them. FASTEPLB_SIMD=default in the
// environment (read once) forces the baseline. Not to be called while a planning call runs.
const char* simd_kernels();
bool set_simd_kernels(const char* name);

}  // namespace fasteplb::detail
