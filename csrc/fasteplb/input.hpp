// Snapshots of the caller's buffers: the planner never reads memory its caller owns.
//
// A serving loop may update its load tensor in place from another thread while a plan is
// being made; reading that buffer twice (once to validate, once to plan) could plan on values
// that were never validated. So every input is copied exactly once, converted to the core's
// type on the way, and only the copy is validated and planned on.
#pragma once

#include <cstdint>
#include <vector>

namespace fasteplb {

// Element types a load buffer may hold. BF16 is bfloat16 (the top half of a float32).
enum class DType { F16, BF16, F32, F64, I8, I16, I32, I64, U8, U16, U32, U64 };

// Integers above this lose their last digit in a double; loads must stay at or below it.
constexpr int64_t kMaxExactInteger = int64_t{1} << 53;

// A 2-D strided view of a buffer; strides in bytes, either sign; elements may be unaligned.
struct StridedView {
    const void* data;
    DType dtype;
    int64_t rows, cols;
    int64_t row_stride, col_stride;
};

// Copies `src` into `out` (resized to rows * cols, row-major) as doubles, exactly: every
// float16/bfloat16/float32 value, subnormals included, and every integer up to 2^53.
// Throws std::invalid_argument naming `name` for an integer above 2^53 (the first in
// row-major order). NaN, infinities and negatives are copied as they are, for check_weights.
void snapshot_weights(const StridedView& src, std::vector<double>& out, const char* name);

// Copies `src` (int64 elements) into `out` (resized to rows * cols, row-major).
void snapshot_ids(const StridedView& src, std::vector<int64_t>& out);

}  // namespace fasteplb
