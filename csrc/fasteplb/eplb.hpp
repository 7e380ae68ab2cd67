// fasteplb core: Expert Parallelism Load Balancing on plain row-major arrays.
//
// Pure C++17, no Python. Every function works on all rows (layers) in one call, threads over
// rows, and gives bit-identical output for any thread count. Loads are doubles; every tie is
// broken by a fixed rule (load, then lower index), so results are reproducible on every rank.
#pragma once

// check_weights and check_placement (checks.hpp) are part of this API too.

#include <cstdint>
#include <functional>
#include <vector>

#include "fasteplb/checks.hpp"
#include "fasteplb/options.hpp"

namespace fasteplb {

// Packs each row's n items into num_packs packs of exactly n / num_packs items.
//   weight: [rows, n]; pack_index, rank_in_pack: [rows, n] (outputs)
void balanced_packing(const double* weight, int64_t rows, int64_t n, int64_t num_packs,
                      const Options& opt, int64_t* pack_index, int64_t* rank_in_pack);

// Gives each of a row's num_log experts >= 1 replicas, num_phy in all, each extra replica to
// the expert with the largest load per replica (ties: lower expert index).
//   weight: [rows, num_log]; phy2log, rank: [rows, num_phy]; logcnt: [rows, num_log] (outputs)
void replicate_experts(const double* weight, int64_t rows, int64_t num_log, int64_t num_phy,
                       const Options& opt, int64_t* phy2log, int64_t* rank, int64_t* logcnt);

// Called once, after every layer is planned, with the largest replica count R; returns the
// buffer for log2phy [layers, experts, R], which rebalance_experts then fills.
using Log2PhyAlloc = std::function<int64_t*(int64_t max_cnt)>;

// Full plan: hierarchical (groups -> nodes, replicate within node, replicas -> GPUs) when
// num_groups % num_nodes == 0, else global (one group, one node), as DeepSeek's eplb.py.
//   weight: [layers, experts]; phy2log, phyrank: [layers, num_replicas];
//   logcnt: [layers, experts] (outputs); log2phy via `alloc` when it is set: each expert's
//   slots by replica rank, -1 past its count.
// With mig.old_phy2log set, each layer is planned from its current placement instead: the old
// groups -> nodes split is kept unless another gains clearly, replica counts are repaired
// (surplus replicas freed on the busiest GPUs, new ones placed in the freed slots), then the
// local search runs with at most mig.max_moves moves per layer, and experts that stay on a
// GPU keep their old slot. Replica ranks then follow slot order.
void rebalance_experts(const double* weight, int64_t layers, int64_t experts, int64_t num_replicas,
                       int64_t num_groups, int64_t num_nodes, int64_t num_gpus, const Options& opt,
                       int64_t* phy2log, int64_t* phyrank, int64_t* logcnt,
                       const Log2PhyAlloc& alloc = nullptr, const Migration& mig = Migration{});

// Forecasts the next window's load of every layer from a history of windows, oldest first
// (f.mode; see Forecast). "auto" scores every candidate of history_candidates() on the last
// f.replays windows, each forecast from the windows before it, summed over all layers (one
// choice per model), and forecasts with the best; with one window every mode is "last".
//   history: [windows, layers, experts]; out: [layers, experts] (output)
// Returns the index in history_candidates() of the candidate used ("auto"), else -1.
int64_t forecast_load(const double* history, int64_t windows, int64_t layers, int64_t experts,
                      const Forecast& f, int num_threads, double* out);

// The candidates "auto" chooses from, in tie order: (mode, alpha, window, z).
struct HistoryChoice {
    HistoryMode mode;
    double alpha;
    int64_t window;
    double z;
};
std::vector<HistoryChoice> history_candidates();

}  // namespace fasteplb
