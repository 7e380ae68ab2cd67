// One layer planned afresh: stage 1 (groups -> nodes), then for each node stage 2 (replica
// counts) and stage 3 (replicas -> GPUs), as DeepSeek's rebalance_experts_hierarchical.
#pragma once

#include <cstdint>
#include <vector>

#include "fasteplb/detail/common.hpp"
#include "fasteplb/detail/pack.hpp"
#include "fasteplb/detail/replicate.hpp"
#include "fasteplb/detail/split.hpp"
#include "fasteplb/options.hpp"

namespace fasteplb::detail {

struct LayerScratch {
    SplitScratch split;
    NodeNumbering numbering;
    PackScratch pack;
    PairScratch pairs;
    std::vector<Quotient> quotients;
    std::vector<Item> experts, single, multi;
    std::vector<double> mlog_load, phy_load, node_peak, start_loads;
    std::vector<int64_t> group_pack, group_rank, greedy_pack, greedy_rank;
    std::vector<int64_t> mlogcnt, phy2mlog, phyrank, gpu_of_phy, rank_on_gpu;
    std::vector<int64_t> alt_phy2log, alt_phyrank, alt_logcnt;
    std::vector<int64_t> trial_cnt, kept_cnt, seen;
};

// Plans one layer.
//   w: [experts]; phy2log, phyrank: [replicas]; logcnt: [experts] (outputs)
// With refine != "none" and several nodes, the greedy split is planned too when the refined
// split could lose to it, and the better plan is kept: refinement never raises the layer's
// largest GPU load.
void plan_layer(const double* w, const Shape& sh, const Options& opt, LayerScratch& s,
                int64_t* phy2log, int64_t* phyrank, int64_t* logcnt);

}  // namespace fasteplb::detail
