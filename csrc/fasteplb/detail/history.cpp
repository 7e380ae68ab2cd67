#include "fasteplb/detail/history.hpp"

#include <algorithm>
#include <cmath>

#include "fasteplb/interrupt.hpp"

namespace fasteplb::detail {
namespace {

constexpr double kAlphas[] = {0.2, 0.4, 0.6, 0.8};
constexpr int64_t kAlphaCount = sizeof kAlphas / sizeof kAlphas[0];

std::vector<HistoryCandidate> make_candidates() {
    std::vector<HistoryCandidate> c;
    c.push_back({HistoryMode::Last, 0.0, 0, 0.0});
    for (const double a : kAlphas) c.push_back({HistoryMode::Ema, a, 0, 0.0});
    for (const int64_t w : {2, 4, 8, 16, 32}) c.push_back({HistoryMode::Mean, 0.0, w, 0.0});
    for (const auto& [w, z] :
         {std::pair<int64_t, double>{8, 0.5}, {8, 1.0}, {16, 0.5}, {16, 1.0}, {32, 1.0}}) {
        c.push_back({HistoryMode::Robust, 0.0, w, z});
    }
    c.push_back({HistoryMode::Trend, 0.0, 0, 0.0});
    return c;
}

// s.s1 / s.s2 over windows [0, upto): s1[t * E + e] = sum of window loads before t.
void prefix_sums(const double* x, int64_t stride, int64_t experts, int64_t upto,
                 HistoryScratch& s) {
    s.s1.resize(static_cast<size_t>((upto + 1) * experts));
    s.s2.resize(static_cast<size_t>((upto + 1) * experts));
    double* s1 = s.s1.data();
    double* s2 = s.s2.data();
    std::fill(s1, s1 + experts, 0.0);
    std::fill(s2, s2 + experts, 0.0);
    for (int64_t t = 0; t < upto; ++t) {
        const double* row = x + t * stride;
        const double* a1 = s1 + t * experts;
        const double* a2 = s2 + t * experts;
        double* b1 = s1 + (t + 1) * experts;
        double* b2 = s2 + (t + 1) * experts;
        for (int64_t e = 0; e < experts; ++e) {
            b1[e] = a1[e] + row[e];
            b2[e] = a2[e] + row[e] * row[e];
        }
    }
}

// Mean (z < 0: plain) or mean + z std of the last min(window, upto) windows before `upto`,
// from the prefix sums: emit(e, forecast of expert e) for every expert. One definition for
// the final forecast and the replays, so both compute the same bits.
template <class Emit>
void window_forecast(const HistoryScratch& s, int64_t experts, int64_t upto, int64_t window,
                     double z, Emit emit) {
    const int64_t n = std::min(window, upto);
    const double inv = static_cast<double>(n);
    const double* hi1 = s.s1.data() + upto * experts;
    const double* lo1 = s.s1.data() + (upto - n) * experts;
    if (z < 0.0) {
        for (int64_t e = 0; e < experts; ++e) emit(e, (hi1[e] - lo1[e]) / inv);
        return;
    }
    const double* hi2 = s.s2.data() + upto * experts;
    const double* lo2 = s.s2.data() + (upto - n) * experts;
    for (int64_t e = 0; e < experts; ++e) {
        const double m = (hi1[e] - lo1[e]) / inv;
        const double v = (hi2[e] - lo2[e]) / inv - m * m;
        emit(e, m + z * std::sqrt(std::max(v, 0.0)));
    }
}

// One step of an exponential moving average: avg = alpha * row + (1 - alpha) * avg.
void ema_step(double* avg, const double* row, double alpha, int64_t experts) {
    const double keep = 1.0 - alpha;
    for (int64_t e = 0; e < experts; ++e) avg[e] = alpha * row[e] + keep * avg[e];
}

// Newest + 0.5 (newest - the one before), at least 0 (the newest alone when upto < 2).
template <class Emit>
void trend_forecast(const double* x, int64_t stride, int64_t experts, int64_t upto, Emit emit) {
    const double* now = x + (upto - 1) * stride;
    if (upto < 2) {
        for (int64_t e = 0; e < experts; ++e) emit(e, now[e]);
        return;
    }
    const double* before = x + (upto - 2) * stride;
    for (int64_t e = 0; e < experts; ++e) {
        emit(e, std::max(0.0, now[e] + 0.5 * (now[e] - before[e])));
    }
}

// The error of a forecast f of window x: sum_e (f_e / F - x_e / X)^2 over the shares (F, X the
// totals), expanded as FF / F^2 - 2 FX / (F X) + XX / X^2 so that one pass over the experts
// (which computes f_e on the fly) suffices; a forecast without load counts as uniform shares.
struct Moments {
    double f = 0.0, ff = 0.0, fx = 0.0;
    void add(double fe, double xe) {
        f += fe;
        ff += fe * fe;
        fx += fe * xe;
    }
};

double share_error(const Moments& m, double x, double xx, int64_t experts) {
    const double inv_x = 1.0 / x;
    if (!(m.f > 0.0)) return std::max(0.0, xx * inv_x * inv_x - 1.0 / static_cast<double>(experts));
    const double inv_f = 1.0 / m.f;
    return std::max(0.0, m.ff * inv_f * inv_f - 2.0 * m.fx * inv_f * inv_x + xx * inv_x * inv_x);
}

}  // namespace

const std::vector<HistoryCandidate>& auto_candidates() {
    static const std::vector<HistoryCandidate> candidates = make_candidates();
    return candidates;
}

void forecast_layer(const double* x, int64_t stride, int64_t experts, int64_t upto,
                    const HistoryCandidate& c, HistoryScratch& s, double* out) {
    switch (c.mode) {
        case HistoryMode::Ema:
            std::copy(x, x + experts, out);
            for (int64_t t = 1; t < upto; ++t) ema_step(out, x + t * stride, c.alpha, experts);
            return;
        case HistoryMode::Mean:
        case HistoryMode::Robust:
            prefix_sums(x, stride, experts, upto, s);
            window_forecast(s, experts, upto, c.window, c.mode == HistoryMode::Mean ? -1.0 : c.z,
                            [out](int64_t e, double v) { out[e] = v; });
            return;
        case HistoryMode::Trend:
            trend_forecast(x, stride, experts, upto, [out](int64_t e, double v) { out[e] = v; });
            return;
        case HistoryMode::Last:
        case HistoryMode::Auto:
            break;
    }
    const double* last = x + (upto - 1) * stride;
    std::copy(last, last + experts, out);
}

void replay_errors(const double* x, int64_t stride, int64_t experts, int64_t windows,
                   int64_t replays, HistoryScratch& s, double* err) {
    const std::vector<HistoryCandidate>& cands = auto_candidates();
    const int64_t count = static_cast<int64_t>(cands.size());
    std::fill(err, err + count, 0.0);
    if (windows < 2) return;
    prefix_sums(x, stride, experts, windows, s);
    // Running averages, one per alpha, each over the windows before u.
    s.ema.resize(static_cast<size_t>(kAlphaCount * experts));
    for (int64_t a = 0; a < kAlphaCount; ++a) std::copy(x, x + experts, s.ema.data() + a * experts);
    const int64_t first = std::max<int64_t>(1, windows - replays);
    for (int64_t u = 1; u < windows; ++u) {
        interruption_point();
        const double* actual = x + u * stride;
        double total = 0.0, squares = 0.0;
        for (int64_t e = 0; e < experts; ++e) {
            total += actual[e];
            squares += actual[e] * actual[e];
        }
        if (u >= first && total > 0.0) {  // a window without load adds nothing
            const double* newest = x + (u - 1) * stride;
            for (int64_t c = 0; c < count; ++c) {
                const HistoryCandidate& cand = cands[c];
                Moments m;
                auto add = [&m, actual](int64_t e, double v) { m.add(v, actual[e]); };
                switch (cand.mode) {
                    case HistoryMode::Ema: {
                        const int64_t a =
                            std::find(kAlphas, kAlphas + kAlphaCount, cand.alpha) - kAlphas;
                        const double* f = s.ema.data() + a * experts;
                        for (int64_t e = 0; e < experts; ++e) m.add(f[e], actual[e]);
                        break;
                    }
                    case HistoryMode::Mean:
                    case HistoryMode::Robust:
                        window_forecast(s, experts, u, cand.window,
                                        cand.mode == HistoryMode::Mean ? -1.0 : cand.z, add);
                        break;
                    case HistoryMode::Trend:
                        trend_forecast(x, stride, experts, u, add);
                        break;
                    case HistoryMode::Last:
                    case HistoryMode::Auto:
                        for (int64_t e = 0; e < experts; ++e) m.add(newest[e], actual[e]);
                        break;
                }
                err[c] += share_error(m, total, squares, experts);
            }
        }
        // Include window u in the running averages.
        for (int64_t a = 0; a < kAlphaCount; ++a) {
            ema_step(s.ema.data() + a * experts, actual, kAlphas[a], experts);
        }
    }
}

}  // namespace fasteplb::detail
