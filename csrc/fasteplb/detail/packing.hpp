// Stage 3's state: items placed in packs (GPUs) of equal size, as LPT leaves it and the
// refinements change it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fasteplb/detail/common.hpp"

namespace fasteplb::detail {

// m packs of c items each: slot[q * c + r] is the item at (pack q, rank r), load[q] the sum of
// pack q's item weights. label[item] names the expert an item replicates, or -1 when it may
// share a pack with anything (anti-colocation); empty: no labels.
struct Packing {
    std::vector<double> load;
    std::vector<int64_t> slot;
    std::vector<int64_t> label;
};

inline double max_load(const Packing& p) { return *std::max_element(p.load.begin(), p.load.end()); }

// The fixed-item lower bound of packing the items of `order` into m packs of c: the mean, and
// the heaviest item with the c - 1 lightest. `order` must hold the heaviest item first and the
// c - 1 lightest last (a sorted order does); its n weights are summed in array order.
inline double fixed_item_bound(const Item* order, int64_t n, int64_t m, int64_t c) {
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += order[i].w;
    double smallest = 0.0;
    for (int64_t i = n - (c - 1); i < n; ++i) smallest += order[i].w;
    return std::max(total / static_cast<double>(m), order[0].w + smallest);
}

}  // namespace fasteplb::detail
