// One layer re-planned from its current placement: the old groups -> nodes split kept unless
// another gains clearly, replica counts repaired one copy at a time, then the local search
// within a budget of weight copies; experts that stay on a GPU keep their old slot.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "fasteplb/detail/common.hpp"
#include "fasteplb/detail/local_search.hpp"
#include "fasteplb/detail/replicate.hpp"
#include "fasteplb/detail/sort.hpp"
#include "fasteplb/detail/split.hpp"
#include "fasteplb/options.hpp"

namespace fasteplb::detail {

// A groups -> nodes split must lower the largest node load by more than this fraction before
// migration gives up the old split (moving a group re-copies all of its experts).
constexpr double kSplitGain = 2e-3;

// Scratch of one node's re-plan (migrate_node).
struct NodeScratch {
    std::vector<int64_t> old_cnt;  // each expert's replicas in the old slots
    std::vector<int64_t> kept, by_expert, start, fill, stamp, free_count, wanted, out;
    std::vector<double> gpu_load, item_w;
    std::vector<Item> fresh, order;
    std::vector<PackNode> heap, passed;
    std::vector<Quotient> receivers, donors;
    std::vector<std::pair<int64_t, int64_t>> surplus;
    Packing packing;  // item i is slot i
    std::vector<int64_t> expert_of;
    SearchScratch search;
};

struct MigrateScratch {
    NodeScratch node;
    SplitScratch split;
    NodeNumbering numbering;
    SortScratch sort;
    PairScratch pairs;
    std::vector<Quotient> quotients;
    std::vector<Item> experts;
    std::vector<double> mlog_load, node_peak;
    std::vector<int64_t> old_cnt, new_cnt, group_pack, group_rank, greedy_pack, greedy_rank;
    std::vector<int64_t> overlap, pairs_order, node_fill, rename, node_order;
    std::vector<int64_t> node_old, node_out, mlogcnt, phy2mlog, phyrank, trial_cnt, kept_cnt;
};

// Re-plans one layer.
//   w: [experts]; old: [replicas] its current phy2log; phy2log, phyrank: [replicas];
//   logcnt: [experts] (outputs)
// The old placement is kept unless the new one lowers the largest GPU load by more than
// mig.min_gain (and at all); mig.max_moves caps the copies (mig.max_moves_total is the
// caller's). Replica ranks follow slot order. Returns the largest GPU load of the plan.
double migrate_layer(const double* w, const int64_t* old, const Shape& sh, const Options& opt,
                     const Migration& mig, MigrateScratch& s, int64_t* phy2log, int64_t* phyrank,
                     int64_t* logcnt);

// A node's move budget: `pool` plus the ceiling share (spare + parts - 1) / parts of `spare`
// over `parts` >= 1 nodes, saturated at INT64_MAX instead of overflowing for budgets near 2^63
// (max_moves may be up to 2^63 - 1); the same value wherever that expression does not
// overflow. pool >= 0.
int64_t node_move_budget(int64_t pool, int64_t spare, int64_t parts);

// Copies the new slots add over the old ones, GPU by GPU (distinct experts new to a GPU).
//   old_slots, new_slots: [gpus * k] expert ids (old: -1 for none); stamp: scratch
int64_t count_moves(const int64_t* old_slots, const int64_t* new_slots, int64_t gpus, int64_t k,
                    std::vector<int64_t>& stamp, int64_t experts);

}  // namespace fasteplb::detail
