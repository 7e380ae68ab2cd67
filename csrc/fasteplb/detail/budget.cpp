#include "fasteplb/detail/budget.hpp"

#include <algorithm>
#include <queue>

namespace fasteplb::detail {
namespace {

// Load removed per copy from point a to point b (b has more copies).
double slope(const BudgetPoint& a, const BudgetPoint& b) {
    return (a.peak - b.peak) / static_cast<double>(b.moves - a.moves);
}

// The indices of pts on their lower convex hull over (moves, peak), from the point without
// copies with the lowest peak: Pareto points only (more copies, strictly lower peak), then each
// kept point's slope to the next no larger than the previous one's.
void hull_of(const std::vector<BudgetPoint>& pts, std::vector<int64_t>& pareto,
             std::vector<int64_t>& hull) {
    std::vector<int64_t> order(pts.size());
    for (size_t i = 0; i < pts.size(); ++i) order[i] = static_cast<int64_t>(i);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return pts[a].moves < pts[b].moves ||
               (pts[a].moves == pts[b].moves && pts[a].peak < pts[b].peak);
    });
    pareto.clear();
    for (const int64_t i : order) {
        if (pareto.empty() || pts[i].peak < pts[pareto.back()].peak) pareto.push_back(i);
    }
    hull.clear();
    for (const int64_t i : pareto) {
        while (hull.size() >= 2 && !(slope(pts[hull[hull.size() - 2]], pts[hull.back()]) >
                                     slope(pts[hull.back()], pts[i]))) {
            hull.pop_back();
        }
        hull.push_back(i);
    }
}

}  // namespace

void budget_grid(int64_t uncapped, std::vector<int64_t>& budgets) {
    budgets.assign(1, 0);
    for (int64_t b = 1; b < uncapped; b *= 2) {
        budgets.push_back(b);
        if (b >= 8 && b + b / 2 < uncapped) budgets.push_back(b + b / 2);
    }
    if (uncapped > 0) budgets.push_back(uncapped);
}

std::vector<int64_t> allocate_moves(const std::vector<std::vector<BudgetPoint>>& points,
                                    int64_t total) {
    const int64_t layers = static_cast<int64_t>(points.size());
    std::vector<int64_t> chosen(static_cast<size_t>(layers), 0);
    std::vector<std::vector<int64_t>> pareto(static_cast<size_t>(layers));
    std::vector<std::vector<int64_t>> hull(static_cast<size_t>(layers));
    std::vector<size_t> at(static_cast<size_t>(layers), 0);  // position on the layer's hull
    // Steps by (load per copy desc, layer asc).
    struct Step {
        double gain;
        int64_t layer;
    };
    auto worse = [](const Step& a, const Step& b) {
        return a.gain < b.gain || (a.gain == b.gain && a.layer > b.layer);
    };
    std::priority_queue<Step, std::vector<Step>, decltype(worse)> steps(worse);
    auto push_next = [&](int64_t l) {
        const std::vector<int64_t>& h = hull[l];
        if (at[l] + 1 < h.size()) {
            steps.push(Step{slope(points[l][h[at[l]]], points[l][h[at[l] + 1]]), l});
        }
    };
    for (int64_t l = 0; l < layers; ++l) {
        hull_of(points[l], pareto[l], hull[l]);
        chosen[l] = hull[l][0];
        push_next(l);
    }
    int64_t left = total;
    while (!steps.empty()) {
        const int64_t l = steps.top().layer;
        steps.pop();
        const std::vector<BudgetPoint>& pts = points[l];
        const BudgetPoint& from = pts[hull[l][at[l]]];
        const BudgetPoint& to = pts[hull[l][at[l] + 1]];
        if (to.moves - from.moves <= left) {
            left -= to.moves - from.moves;
            ++at[l];
            chosen[l] = hull[l][at[l]];
            push_next(l);
            continue;
        }
        // The step does not fit: the Pareto point short of it that removes the most load and
        // fits, and the layer stops there.
        int64_t pick = -1;
        for (const int64_t i : pareto[l]) {
            if (pts[i].moves <= from.moves || pts[i].moves - from.moves > left) continue;
            if (pick < 0 || pts[i].peak < pts[pick].peak) pick = i;
        }
        if (pick >= 0) {
            left -= pts[pick].moves - from.moves;
            chosen[l] = pick;
        }
    }
    return chosen;
}

}  // namespace fasteplb::detail
