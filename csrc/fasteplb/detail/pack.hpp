// Stage 3: items (replicas) onto packs (GPUs) of equal size. LPT with cardinality (DeepSeek's
// balanced_packing), then refine="swap" (the seed's max/min swaps) or refine="local" (the
// local search, with replicas of one expert kept apart).
#pragma once

#include <cstdint>
#include <vector>

#include "fasteplb/detail/local_search.hpp"
#include "fasteplb/detail/packing.hpp"
#include "fasteplb/detail/sort.hpp"
#include "fasteplb/options.hpp"

namespace fasteplb::detail {

struct PackScratch {
    std::vector<Item> order;  // the items to place, by (load desc, index asc)
    SortScratch sort;
    Packing packing;  // the result; packing.label: the items' labels, set by the caller
    SearchScratch search;
    std::vector<double> weight;                  // item weights by index
    std::vector<double> heavy_w, light_w, dist;  // swap_refine
    std::vector<int64_t> count;                  // lpt: items per pack so far
    std::vector<PackNode> tree;                  // lpt: winner tree over the packs
    std::vector<int64_t> kept_slot;              // refine_local: the first search's packing
    std::vector<double> kept_load;
};

// A packing's largest pack load, and the plain greedy's (LPT without labels) on the same items.
struct PackResult {
    double peak;
    double greedy_peak;
};

// refine="local" with labels must not end above the plain greedy's maximum unless the caller
// allows it: a result up to max(limit, that maximum) is kept. With greedy_known the caller
// judges the greedy itself, and a result within `limit` is kept without computing it.
struct LocalBaseline {
    double limit = 0.0;
    bool greedy_known = false;
};

// LPT with cardinality over s.order into s.packing: each item to the lightest pack with room
// (ties: lower index); with use_labels and s.packing.label set, an item avoids packs that
// already hold its label when it can. Returns whether any item was so diverted.
bool lpt(int64_t n, int64_t m, PackScratch& s, bool use_labels);

// The seed's refinement: up to `rounds` swaps between the heaviest and the lightest pack.
void swap_refine(const double* w, int64_t m, int64_t c, int rounds, PackScratch& s);

// Packs the n items of s.order (sorted) onto m packs of n / m, refines them, and writes
// pack / rank [n] by item index. c == 1 keeps item i in pack i, as DeepSeek's
// balanced_packing does.
PackResult pack_sorted(int64_t n, int64_t m, Refine refine, int rounds, PackScratch& s,
                       int64_t* pack, int64_t* rank, const LocalBaseline& base = {});

// One packing problem from unsorted loads w [n], no labels; returns the largest pack load.
double pack_one(const double* w, int64_t n, int64_t m, Refine refine, int rounds, PackScratch& s,
                int64_t* pack, int64_t* rank);

}  // namespace fasteplb::detail
