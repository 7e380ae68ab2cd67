#include "fasteplb/input.hpp"

#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "fasteplb/fpenv.hpp"

namespace fasteplb {
namespace {

template <class T>
T load_unaligned(const char* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// float16 bits -> double by integer arithmetic: exact, and independent of FTZ/DAZ.
double half_to_double(uint16_t h) {
    const bool negative = (h & 0x8000u) != 0;
    const int exponent = (h >> 10) & 0x1f;
    const int mantissa = h & 0x3ff;
    double v;
    if (exponent == 0) {
        v = static_cast<double>(mantissa) * 0x1p-24;  // zero or subnormal
    } else if (exponent == 31) {
        v = mantissa == 0 ? __builtin_inf() : __builtin_nan("");
    } else {
        v = static_cast<double>(mantissa | 0x400) * static_cast<double>(int64_t{1} << exponent) *
            0x1p-25;
    }
    return negative ? -v : v;
}

double bf16_to_double(uint16_t b) {
    const uint32_t bits = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return static_cast<double>(f);  // exact under the IEEE guard, subnormals included
}

[[noreturn]] void too_large(const char* name, const char* value, int64_t r, int64_t c) {
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "%s holds an integer load above 2**53, which float64 cannot represent "
                  "exactly; found %s at [%lld, %lld]",
                  name, value, static_cast<long long>(r), static_cast<long long>(c));
    throw std::invalid_argument(buf);
}

template <class T, class Convert>
void copy_rows(const StridedView& src, double* out, Convert convert) {
    const char* base = static_cast<const char*>(src.data);
    for (int64_t r = 0; r < src.rows; ++r) {
        const char* row = base + r * src.row_stride;
        double* dst = out + r * src.cols;
        if (src.col_stride == static_cast<int64_t>(sizeof(T))) {
            for (int64_t c = 0; c < src.cols; ++c) {
                dst[c] = convert(load_unaligned<T>(row + c * static_cast<int64_t>(sizeof(T))));
            }
        } else {
            for (int64_t c = 0; c < src.cols; ++c) {
                dst[c] = convert(load_unaligned<T>(row + c * src.col_stride));
            }
        }
    }
}

// Integers of up to 32 bits fit a double exactly; 64-bit ones are checked one by one.
template <class T>
void copy_wide_integers(const StridedView& src, double* out, const char* name) {
    const char* base = static_cast<const char*>(src.data);
    for (int64_t r = 0; r < src.rows; ++r) {
        const char* row = base + r * src.row_stride;
        for (int64_t c = 0; c < src.cols; ++c) {
            const T v = load_unaligned<T>(row + c * src.col_stride);
            if (v > static_cast<T>(kMaxExactInteger)) {
                char value[32];
                if (sizeof(T) == 8 && static_cast<T>(-1) > 0) {
                    std::snprintf(value, sizeof value, "%llu", static_cast<unsigned long long>(v));
                } else {
                    std::snprintf(value, sizeof value, "%lld", static_cast<long long>(v));
                }
                too_large(name, value, r, c);
            }
            out[r * src.cols + c] = static_cast<double>(v);
        }
    }
}

}  // namespace

void snapshot_weights(const StridedView& src, std::vector<double>& out, const char* name) {
    IeeeFloatGuard ieee;
    out.resize(static_cast<size_t>(src.rows * src.cols));
    double* dst = out.data();
    auto as_double = [](auto v) { return static_cast<double>(v); };
    switch (src.dtype) {
        case DType::F64:
            copy_rows<double>(src, dst, as_double);
            break;
        case DType::F32:
            copy_rows<float>(src, dst, as_double);
            break;
        case DType::F16:
            copy_rows<uint16_t>(src, dst, half_to_double);
            break;
        case DType::BF16:
            copy_rows<uint16_t>(src, dst, bf16_to_double);
            break;
        case DType::I8:
            copy_rows<int8_t>(src, dst, as_double);
            break;
        case DType::I16:
            copy_rows<int16_t>(src, dst, as_double);
            break;
        case DType::I32:
            copy_rows<int32_t>(src, dst, as_double);
            break;
        case DType::U8:
            copy_rows<uint8_t>(src, dst, as_double);
            break;
        case DType::U16:
            copy_rows<uint16_t>(src, dst, as_double);
            break;
        case DType::U32:
            copy_rows<uint32_t>(src, dst, as_double);
            break;
        case DType::I64:
            copy_wide_integers<int64_t>(src, dst, name);
            break;
        case DType::U64:
            copy_wide_integers<uint64_t>(src, dst, name);
            break;
    }
}

void snapshot_ids(const StridedView& src, std::vector<int64_t>& out) {
    out.resize(static_cast<size_t>(src.rows * src.cols));
    const char* base = static_cast<const char*>(src.data);
    for (int64_t r = 0; r < src.rows; ++r) {
        const char* row = base + r * src.row_stride;
        for (int64_t c = 0; c < src.cols; ++c) {
            out[static_cast<size_t>(r * src.cols + c)] =
                load_unaligned<int64_t>(row + c * src.col_stride);
        }
    }
}

}  // namespace fasteplb
