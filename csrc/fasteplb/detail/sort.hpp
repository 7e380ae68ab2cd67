// Sorting items by (load desc, index asc): the order in which LPT places items and Adams'
// method hands out replicas.
#pragma once

#include <cstdint>
#include <vector>

#include "fasteplb/detail/common.hpp"

namespace fasteplb::detail {

struct SortScratch {
    std::vector<Item> buffer;
    std::vector<float> key;
    std::vector<int32_t> rank, seen;
};

// Sorts items, which arrive in index order, by (load desc, index asc).
void sort_items(std::vector<Item>& items, SortScratch& s);

// Merges the sorted runs a[0..na) and b[0..nb) into out, taking b's head first when
// take_right(b's head, a's head); selects by arithmetic, not a branch, to avoid mispredictions.
template <class TakeRight>
inline void merge_runs(const Item* a, int64_t na, const Item* b, int64_t nb, Item* out,
                       TakeRight take_right) {
    int64_t i = 0, j = 0, k = 0;
    while (i < na && j < nb) {
        const int64_t right = take_right(b[j], a[i]);
        out[k++] = *(right ? b + j : a + i);
        j += right;
        i += 1 - right;
    }
    while (i < na) out[k++] = a[i++];
    while (j < nb) out[k++] = b[j++];
}

// Merges two runs sorted by (load desc, index asc).
inline void merge_items(const Item* a, int64_t na, const Item* b, int64_t nb, Item* out) {
    merge_runs(a, na, b, nb, out, [](const Item& x, const Item& y) {
        return (x.w > y.w) | ((x.w == y.w) & (x.idx < y.idx));
    });
}

}  // namespace fasteplb::detail
