// Stage 2: how many replicas each expert gets. Adams' divisor method (DeepSeek's greedy), and
// for refine="local" at two or three slots per GPU a search over the counts themselves.
#pragma once

#include <cstdint>
#include <vector>

#include "fasteplb/detail/common.hpp"

namespace fasteplb::detail {

// Up to this many slots per GPU, refine="local" also searches the replica counts.
constexpr int64_t kCountSearchSlots = 3;

// DeepSeek's greedy replication: each of the num_phy - n extra slots goes to the expert with
// the largest load per replica (ties: lower expert). Slots [0, n) hold experts 0..n-1; extra
// slots follow in pick order.
//   w: [n]; order: [n] the experts by (load desc, index asc); cand: scratch;
//   phy2log, rank: [num_phy]; logcnt: [n] (outputs)
void replicate_sorted(const double* w, int64_t n, int64_t num_phy, const Item* order,
                      std::vector<Quotient>& cand, int64_t* phy2log, int64_t* rank,
                      int64_t* logcnt);

// Slots for counts cnt: slots [0, n) hold experts 0..n-1, then each expert's further replicas
// in expert order.
void layout_counts(int64_t n, const int64_t* cnt, int64_t* phy2log, int64_t* rank);

// Scratch of the replica-count search. After improve_counts, `q` and `order` describe the
// counts it returned (each expert's load per replica, and the experts by it, descending), and
// dealt_peak over them deals those counts; `replica` / `owner` then hold the deal.
struct PairScratch {
    std::vector<Item> by_load;    // (load per replica, expert), sorted into `order`
    std::vector<int64_t> order;   // experts by (load per replica desc, index asc)
    std::vector<int64_t> pos;     // pos[e]: expert e's place in order
    std::vector<double> q;        // load per replica, w[e] / cnt[e]
    std::vector<double> worst;    // per expert, its heaviest GPU in the current deal
    std::vector<double> sums;     // the deal's per-GPU sums
    std::vector<double> replica;  // the deal: replica loads, heaviest first (padded)
    std::vector<int64_t> owner;   // the deal: each replica's expert
    std::vector<int64_t> start;   // start[i]: the first slot of order[i]'s replicas in the deal
    std::vector<double> saved_replica, saved_sums;  // a trial deal's undo: loads, sums
    std::vector<int64_t> saved_order, saved_pos;    // or (small deals) order and places
};

// The heaviest GPU when the replicas, heaviest first, are dealt to `gpus` GPUs in zig-zag
// rounds (GPUs 0..G-1, then G-1..0, ...): GPU g holds replicas g, 2G-1-g, 2G+g, ... For two
// slots per GPU this pairs the i-th heaviest replica with the i-th lightest, which is exactly
// what LPT does; for three it is an O(slots) proxy for LPT. top / bottom: the experts of that
// GPU's first two replicas.
struct Deal {
    double peak;
    int64_t top, bottom;
};
Deal dealt_peak(const double* q, const int64_t* cnt, const std::vector<int64_t>& order,
                int64_t gpus, int64_t c, PairScratch& s);

// What the count search found: whether its evaluated peak got lower, and that peak at its
// start (Adams' counts), which at two slots per GPU is the plain LPT's maximum exactly.
struct CountSearch {
    bool improved;
    double start_peak;
};

// Replica counts for c = 2 or 3 slots per GPU, improving cnt [n] (Adams' counts) in place.
// With fixed replicas the best packing at two slots pairs the i-th heaviest with the i-th
// lightest (LPT does exactly that), so at k = 2 everything left to gain lies in the counts:
// Adams' counts minimise the largest replica, not the largest pair. start_loads (if not null)
// receives the start's replica loads heaviest first, the order LPT places them in.
CountSearch improve_counts(const double* w, int64_t n, int64_t c, int64_t* cnt, PairScratch& s,
                           std::vector<double>* start_loads);

}  // namespace fasteplb::detail
