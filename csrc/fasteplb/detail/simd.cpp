#include "fasteplb/detail/simd.hpp"

#include <cstdlib>
#include <cstring>
#include <limits>

// A table chosen at run time rather than target_clones: ifunc resolvers run before the
// sanitizer runtimes are initialised (ThreadSanitizer crashed on them), so with a table both
// versions run under every sanitizer.
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define FASTEPLB_AVX2_KERNELS 1
#define FASTEPLB_KERNEL_BODY inline __attribute__((always_inline))
#else
#define FASTEPLB_AVX2_KERNELS 0
#define FASTEPLB_KERNEL_BODY inline
#endif

namespace fasteplb::detail {
namespace {

// O(n^2) comparisons, but independent and branch-free, so they vectorise (8 floats a step
// with AVX2): for the few dozen items of one block this is several times faster than a
// comparison sort, whose cost here is mispredicted branches or a serial dependency chain.
// The -inf padding never counts, so no scalar remainder loop runs.
FASTEPLB_KERNEL_BODY void count_above_body(const float* key, int32_t n, int32_t padded,
                                           int32_t* above) {
    for (int32_t i = 0; i < n; ++i) {
        const float x = key[i];
        int32_t r = 0;
        for (int32_t j = 0; j < padded; ++j) r += key[j] > x;
        above[i] = r;
    }
}

// Doubles >= +0.0 order like their bit patterns, so the minimum is an integer reduction the
// compiler can vectorise, and a second pass finds its first occurrence.
FASTEPLB_KERNEL_BODY int64_t first_min_body(const double* x, int64_t n) {
    int64_t smallest = std::numeric_limits<int64_t>::max();
    for (int64_t i = 0; i < n; ++i) {
        int64_t bits;
        std::memcpy(&bits, x + i, sizeof bits);
        smallest = bits < smallest ? bits : smallest;
    }
    for (int64_t i = 0; i < n; ++i) {
        int64_t bits;
        std::memcpy(&bits, x + i, sizeof bits);
        if (bits == smallest) return i;
    }
    return 0;
}

void count_above_default(const float* key, int32_t n, int32_t padded, int32_t* above) {
    count_above_body(key, n, padded, above);
}
int64_t first_min_default(const double* x, int64_t n) { return first_min_body(x, n); }
constexpr SimdKernels kDefaultKernels{"default", count_above_default, first_min_default};

#if FASTEPLB_AVX2_KERNELS
__attribute__((target("avx2"))) void count_above_avx2(const float* key, int32_t n, int32_t padded,
                                                      int32_t* above) {
    count_above_body(key, n, padded, above);
}
__attribute__((target("avx2"))) int64_t first_min_avx2(const double* x, int64_t n) {
    return first_min_body(x, n);
}
constexpr SimdKernels kAvx2Kernels{"avx2", count_above_avx2, first_min_avx2};
#endif

bool cpu_has_avx2() {
#if FASTEPLB_AVX2_KERNELS
    __builtin_cpu_init();  // harmless if already done; needed if called from a constructor
    return __builtin_cpu_supports("avx2");
#else
    return false;
#endif
}

const SimdKernels* best_kernels() {
    const char* forced = std::getenv("FASTEPLB_SIMD");
    if (forced != nullptr && std::strcmp(forced, "default") == 0) return &kDefaultKernels;
#if FASTEPLB_AVX2_KERNELS
    if (cpu_has_avx2()) return &kAvx2Kernels;
#endif
    return &kDefaultKernels;
}

}  // namespace

std::atomic<const SimdKernels*>& kernel_table() {
    static std::atomic<const SimdKernels*> table{best_kernels()};
    return table;
}

const char* simd_kernels() { return kernel_table().load(std::memory_order_relaxed)->name; }

bool set_simd_kernels(const char* name) {
    const SimdKernels* want = nullptr;
    if (std::strcmp(name, "default") == 0) want = &kDefaultKernels;
#if FASTEPLB_AVX2_KERNELS
    if (std::strcmp(name, "avx2") == 0 && cpu_has_avx2()) want = &kAvx2Kernels;
#endif
    if (want == nullptr) return false;
    kernel_table().store(want, std::memory_order_relaxed);
    return true;
}

}  // namespace fasteplb::detail
