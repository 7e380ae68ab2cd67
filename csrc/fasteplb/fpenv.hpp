// The floating-point environment the planner computes in.
//
// Flush-to-zero (FTZ) and denormals-are-zero (DAZ) change how subnormal loads compare and
// add, so a process that turned them on (torch.set_flush_denormal, a library built with
// -ffast-math) would get a different plan from one that did not, and two ranks could disagree.
// Every entry point and every worker thread computes under IEEE semantics instead: the guard
// clears FTZ/DAZ for its scope and restores the caller's setting afterwards. The rounding mode
// is left alone: it is round-to-nearest unless a caller changed it deliberately.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#include <xmmintrin.h>
#define FASTEPLB_FPENV_SSE 1
#elif defined(__aarch64__)
#define FASTEPLB_FPENV_AARCH64 1
#endif

namespace fasteplb {

class IeeeFloatGuard {
  public:
    IeeeFloatGuard() noexcept {
#if defined(FASTEPLB_FPENV_SSE)
        saved_ = _mm_getcsr();
        const unsigned ieee = saved_ & ~kFtzDaz;
        if (ieee != saved_) _mm_setcsr(ieee);
#elif defined(FASTEPLB_FPENV_AARCH64)
        uint64_t fpcr;
        __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
        saved_ = fpcr;
        const uint64_t ieee = fpcr & ~kFz;
        if (ieee != fpcr) __asm__ __volatile__("msr fpcr, %0" : : "r"(ieee));
#endif
    }
    ~IeeeFloatGuard() {
#if defined(FASTEPLB_FPENV_SSE)
        if (_mm_getcsr() != saved_) _mm_setcsr(saved_);
#elif defined(FASTEPLB_FPENV_AARCH64)
        __asm__ __volatile__("msr fpcr, %0" : : "r"(saved_));
#endif
    }
    IeeeFloatGuard(const IeeeFloatGuard&) = delete;
    IeeeFloatGuard& operator=(const IeeeFloatGuard&) = delete;

  private:
#if defined(FASTEPLB_FPENV_SSE)
    static constexpr unsigned kFtzDaz = 0x8040u;  // MXCSR bit 15 (FTZ) and bit 6 (DAZ)
    unsigned saved_;
#elif defined(FASTEPLB_FPENV_AARCH64)
    static constexpr uint64_t kFz = (uint64_t{1} << 24) | (uint64_t{1} << 19);  // FZ, FZ16
    uint64_t saved_;
#endif
};

}  // namespace fasteplb
