// A model-wide budget of weight copies (max_moves_total), shared out over the layers where it
// buys the most balance.
#pragma once

#include <cstdint>
#include <vector>

namespace fasteplb::detail {

// One re-plan of a layer: the per-layer budget it ran with, the copies it made and the largest
// GPU load it reached.
struct BudgetPoint {
    int64_t budget, moves;
    double peak;
};

// The per-layer budgets tried for a model-wide budget: 0, 1, 2, 4, 8, 12, 16, 24, 32, 48, ...
// below `uncapped` (the copies of the layer's plan without a model-wide budget), then
// `uncapped`: steps of at most 1.5x from 8 on, so that a budget between grid points loses
// little.
void budget_grid(int64_t uncapped, std::vector<int64_t>& budgets);

// Chooses one point per layer so that the copies sum to at most `total` and the sum of the
// layers' largest loads (what balancedness weighs) falls the most: each layer's points reduced
// to their lower convex hull over copies (each further copy then buys no more than the one
// before), hull steps taken greedily by load removed per copy over all layers (ties: the lower
// layer), a step that no longer fits replaced by the layer's best point that does. Deterministic.
//   points: [layers] each layer's points, at least one of them without copies (budget 0: the
//   old placement). Returns [layers] the index of each layer's chosen point.
std::vector<int64_t> allocate_moves(const std::vector<std::vector<BudgetPoint>>& points,
                                    int64_t total);

}  // namespace fasteplb::detail
