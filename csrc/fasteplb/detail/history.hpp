// Forecasting the next window's load from a history of windows, per layer: the fixed modes,
// and the replay errors "auto" chooses a candidate by. A plan is made from past loads and
// served on future ones; at small windows the newest one is mostly noise, at large ones the
// traffic drifts, and which forecast serves best differs by workload.
#pragma once

#include <cstdint>
#include <vector>

#include "fasteplb/options.hpp"

namespace fasteplb::detail {

// One forecast "auto" may choose (a fixed mode with its parameters).
struct HistoryCandidate {
    HistoryMode mode;
    double alpha;    // Ema
    int64_t window;  // Mean, Robust
    double z;        // Robust
};

// The candidates of "auto", in tie order (the first of equal errors wins; "last" is first).
const std::vector<HistoryCandidate>& auto_candidates();

struct HistoryScratch {
    std::vector<double> s1, s2;  // prefix sums of loads and squared loads, [(windows + 1) * E]
    std::vector<double> ema;     // [alphas * E] running averages
};

// The forecast of candidate c from windows [0, upto) of one layer, upto >= 1. Window t of the
// layer is x[t * stride .. t * stride + experts).   out: [experts]
void forecast_layer(const double* x, int64_t stride, int64_t experts, int64_t upto,
                    const HistoryCandidate& c, HistoryScratch& s, double* out);

// For every auto candidate, the summed error of its forecasts of windows u = max(1, windows -
// replays) .. windows - 1, each from the windows before u: sum over u and experts of (forecast
// share - actual share)^2 (a window without load adds nothing).   err: [candidates]
void replay_errors(const double* x, int64_t stride, int64_t experts, int64_t windows,
                   int64_t replays, HistoryScratch& s, double* err);

}  // namespace fasteplb::detail
