#include "fasteplb/detail/sort.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "fasteplb/detail/simd.hpp"

namespace fasteplb::detail {
namespace {

// Up to this many items are ranked as one block; larger inputs are ranked in blocks of
// kBlock and merged, since ranking is quadratic.
constexpr int64_t kSingleBlock = 96;
constexpr int64_t kBlock = 64;
// Up to this many items, a plain insertion sort beats ranking's set-up.
constexpr int64_t kInsertion = 16;

// Sorts one block of items (in index order on entry) by descending load, ties to the lower
// index: rank on float keys, then repair with exact comparisons. Rounding a double to float
// never reverses an order, so only items with equal float keys can be out of order, and
// they end up adjacent: the insertion pass finds them in about n steps. Scaling by a power
// of two (exact) keeps large loads inside float range.
void rank_sort_block(Item* items, int64_t n, Item* buffer, SortScratch& s) {
    double top = 0.0;
    for (int64_t i = 0; i < n; ++i) top = std::max(top, items[i].w);
    int exponent = 0;
    std::frexp(top, &exponent);
    const double scale = std::ldexp(1.0, std::min(1000, 100 - exponent));
    const int64_t padded = (n + 7) / 8 * 8;
    s.key.assign(static_cast<size_t>(padded), -std::numeric_limits<float>::infinity());
    s.rank.resize(static_cast<size_t>(n));
    float* key = s.key.data();
    int32_t* rank = s.rank.data();
    for (int64_t i = 0; i < n; ++i) key[i] = static_cast<float>(items[i].w * scale);
    count_above(key, static_cast<int32_t>(n), static_cast<int32_t>(padded), rank);
    // Items with equal keys share a count; visiting items in index order and giving each the
    // next free position after its count places them by ascending index.
    s.seen.assign(static_cast<size_t>(n), 0);
    int32_t* seen = s.seen.data();
    for (int64_t i = 0; i < n; ++i) buffer[rank[i] + seen[rank[i]]++] = items[i];
    std::copy(buffer, buffer + n, items);
    // Equal float keys are ranked by index, so equal doubles are already in order: only a
    // strictly heavier item after a lighter one needs repair. Check first, branch-free.
    bool disordered = false;
    for (int64_t i = 1; i < n; ++i) disordered |= items[i].w > items[i - 1].w;
    if (!disordered) return;
    for (int64_t i = 1; i < n; ++i) {
        for (int64_t j = i; j > 0; --j) {
            if (!heavier_first(items[j], items[j - 1])) break;
            std::swap(items[j - 1], items[j]);
        }
    }
}

}  // namespace

void sort_items(std::vector<Item>& items, SortScratch& s) {
    const int64_t n = static_cast<int64_t>(items.size());
    if (n <= kInsertion) {
        // (load desc, index asc) is a strict total order: any exact sort gives this order.
        Item* a = items.data();
        for (int64_t i = 1; i < n; ++i) {
            const Item x = a[i];
            int64_t j = i;
            for (; j > 0 && heavier_first(x, a[j - 1]); --j) a[j] = a[j - 1];
            a[j] = x;
        }
        return;
    }
    s.buffer.resize(items.size());
    const int64_t block = n <= kSingleBlock ? n : kBlock;
    for (int64_t lo = 0; lo < n; lo += block) {
        rank_sort_block(items.data() + lo, std::min(block, n - lo), s.buffer.data() + lo, s);
    }
    // Stable bottom-up merges of the sorted blocks, which hold ascending index ranges: keeping
    // the left item on equal loads keeps the tie rule.
    Item* src = items.data();
    Item* dst = s.buffer.data();
    for (int64_t width = block; width < n; width *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * width) {
            const int64_t mid = std::min(lo + width, n), hi = std::min(lo + 2 * width, n);
            merge_runs(src + lo, mid - lo, src + mid, hi - mid, dst + lo,
                       [](const Item& right, const Item& left) { return right.w > left.w; });
        }
        std::swap(src, dst);
    }
    if (src != items.data()) std::copy(src, src + n, items.data());
}

}  // namespace fasteplb::detail
