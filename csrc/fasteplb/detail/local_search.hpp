// Stage 3's refinement of refine="local": 1-for-1 swaps that lower the heaviest pack, with
// replicas of one expert kept apart, and, when re-planning from an old placement, the weight
// copies each swap costs counted against a budget.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "fasteplb/detail/packing.hpp"

namespace fasteplb::detail {

// Relative distance to the lower bound at which the search stops: fresh plans (well inside
// what the fixed-item bound leaves), and plans from an old placement, where each further swap
// costs weight copies.
constexpr double kBoundTolerance = 5e-4;
constexpr double kMigrationTolerance = 1e-3;

// Migration keeps only the swaps needed to come within this fraction of the best maximum its
// local search reaches.
constexpr double kRollback = 1e-3;

// When the search stops: at a maximum <= min(max(bound, floor) * (1 + tolerance), goal), or
// when no swap lowers the heaviest pack.
struct SearchLimits {
    double bound;  // the fixed-item lower bound (fixed_item_bound)
    double tolerance = kBoundTolerance;
    double floor = 0.0;  // a load the caller cannot get below anyway
    double goal = std::numeric_limits<double>::infinity();
    bool every_pack = false;  // weigh every pack, not only the lightest that helps
};

// Re-planning from an old placement: swaps count the copies they add (a pack gains a copy when
// it starts holding an expert it held neither now nor in the old plan) and stay within budget.
struct CopyBudget {
    const int64_t* old_slot;   // [packs * per_pack]: the expert each (pack, rank) held, -1: none
    const int64_t* expert_of;  // [items]: each item's expert
    int64_t budget;            // most copies; < 0: no cap
    int64_t moves = 0;         // copies added so far (swaps can also save some)
};

struct SearchScratch {
    std::vector<int64_t> by_weight;   // [packs * per_pack]: each pack's items by (weight, index)
    std::vector<double> by_weight_w;  // their weights
    std::vector<int64_t> visit;       // packs by (load, index)
    struct Swap {                     // u left pack h for pack q, v went the other way
        int64_t h, u, q, v;
        double peak;  // the largest pack load after it
    };
    std::vector<Swap> log;  // migration: the swaps made, to undo the least useful
};

// Repeatedly takes the heaviest pack h and, visiting the other packs q in ascending load,
// swaps with the first one that offers a 1-for-1 swap (u in h, v in q, 0 < w_u - w_v < L_h -
// L_q) lowering L_h: of its swaps, the one whose new pair maximum max(L_h - d, L_q + d) is
// smallest, i.e. d closest to half the gap. With `copies`, or limits.every_pack, every pack is
// weighed, not the first that helps. Labelled replicas are first separated (separate_replicas)
// and never again co-located. Each swap leaves both packs strictly below the old L_h, so the
// maximum never rises. With `copies`, the last swaps that buy less than kRollback are undone.
//   w: [m * c] item weights; p: the packing, changed in place
void local_search(const double* w, int64_t m, int64_t c, Packing& p, const SearchLimits& limits,
                  SearchScratch& s, CopyBudget* copies);

// LPT places a replica next to another replica of its expert only when every open pack
// already holds one. Repairs that where possible: swap the extra copy u (pack p) with an item v
// of another pack q such that neither pack then holds two replicas of one expert, choosing the
// swap with the smallest resulting pair maximum (ties: lower q, then lower rank), and only if
// that maximum stays within `limit`. p.label must be set.
void separate_replicas(const double* w, int64_t m, int64_t c, Packing& p, double limit,
                       CopyBudget* copies);

}  // namespace fasteplb::detail
