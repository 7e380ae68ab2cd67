#include "fasteplb/detail/local_search.hpp"

#include <algorithm>
#include <optional>

#include "fasteplb/interrupt.hpp"

namespace fasteplb::detail {
namespace {

// Copies that swapping item u (pack h) with item v (pack q) adds, minus those it saves.
int64_t swap_moves(const Packing& p, const CopyBudget& b, int64_t c, int64_t h, int64_t u,
                   int64_t q, int64_t v) {
    const int64_t* expert = b.expert_of;
    const int64_t eu = expert[u], ev = expert[v];
    if (eu == ev) return 0;
    auto fresh = [&](int64_t pack, int64_t e, int64_t except) {  // pack without `except`
        for (int64_t r = 0; r < c; ++r) {
            const int64_t item = p.slot[pack * c + r];
            if ((item != except && expert[item] == e) || b.old_slot[pack * c + r] == e) {
                return false;
            }
        }
        return true;
    };
    return fresh(h, ev, u) - fresh(h, eu, u) + fresh(q, eu, v) - fresh(q, ev, v);
}

// Whether a swap adding `delta` copies fits the budget (always without one).
bool affordable(const CopyBudget& b, int64_t delta) {
    return b.budget < 0 || b.moves + delta <= b.budget;
}

// The packing being searched, with each pack's items sorted by (weight, index) and the packs
// sorted by (load, index), kept sorted across swaps.
struct SearchView {
    const double* w;
    int64_t m, c;
    double* load;
    int64_t* slot;
    const int64_t* label;  // nullptr: no labels
    int64_t* sorted;       // [m * c]
    double* sorted_w;      // [m * c]
    int64_t* visit;        // [m]

    bool lighter(int64_t a, int64_t b) const { return w[a] < w[b] || (w[a] == w[b] && a < b); }
    bool before_pack(int64_t a, int64_t b) const {
        return load[a] < load[b] || (load[a] == load[b] && a < b);
    }
    // Whether pack q holds a replica of expert e other than `except` (e < 0: never).
    bool holds_other(int64_t q, int64_t e, int64_t except) const {
        if (e < 0) return false;
        for (int64_t r = 0; r < c; ++r) {
            const int64_t item = slot[q * c + r];
            if (item != except && label[item] == e) return true;
        }
        return false;
    }
    // Replaces `out` by `in` in pack q's sorted list, keeping it sorted.
    void resort(int64_t q, int64_t out, int64_t in) const {
        int64_t* a = sorted + q * c;
        int64_t i = 0;
        while (a[i] != out) ++i;
        a[i] = in;
        sift_into_place(a, c, i, [this](int64_t x, int64_t y) { return lighter(x, y); });
        for (int64_t r = 0; r < c; ++r) sorted_w[q * c + r] = w[a[r]];
    }
    // Moves the pack at visit[at], whose load just changed, to its sorted place: binary search
    // in the rest of the order, then one block move.
    void reposition(int64_t at) const {
        const int64_t pack = visit[at];
        std::copy(visit + at + 1, visit + m, visit + at);
        const int64_t place =
            std::lower_bound(visit, visit + m - 1, pack,
                             [this](int64_t a, int64_t b) { return before_pack(a, b); }) -
            visit;
        std::copy_backward(visit + place, visit + m - 1, visit + m);
        visit[place] = pack;
    }
};

// LPT fills each pack in descending order, so reversing the pack is nearly sorted and
// insertion sort only fixes ties and repairs.
SearchView prepare(const double* w, int64_t m, int64_t c, Packing& p, SearchScratch& s) {
    const int64_t n = m * c;
    s.by_weight.resize(static_cast<size_t>(n));
    s.by_weight_w.resize(static_cast<size_t>(n));
    s.visit.resize(static_cast<size_t>(m));
    SearchView v{w,
                 m,
                 c,
                 p.load.data(),
                 p.slot.data(),
                 p.label.empty() ? nullptr : p.label.data(),
                 s.by_weight.data(),
                 s.by_weight_w.data(),
                 s.visit.data()};
    for (int64_t q = 0; q < m; ++q) {
        int64_t* a = v.sorted + q * c;
        std::reverse_copy(v.slot + q * c, v.slot + (q + 1) * c, a);
        for (int64_t i = 1; i < c; ++i) {
            for (int64_t j = i; j > 0 && v.lighter(a[j], a[j - 1]); --j) {
                std::swap(a[j], a[j - 1]);
            }
        }
        for (int64_t i = 0; i < c; ++i) v.sorted_w[q * c + i] = w[a[i]];
    }
    for (int64_t q = 0; q < m; ++q) v.visit[q] = q;
    std::sort(v.visit, v.visit + m, [&v](int64_t a, int64_t b) { return v.before_pack(a, b); });
    return v;
}

// A swap of item u in the heaviest pack with item v in pack q = visit[k]; pair: the larger of
// the two packs' loads after it.
struct Swap {
    int64_t u, v, q, k;
    double pair;
};

// The best swap for the heaviest pack h = visit[m - 1] (see local_search), if any.
std::optional<Swap> find_best_swap(const SearchView& sv, const Packing& p, bool every_pack,
                                   const CopyBudget* copies) {
    const int64_t m = sv.m, c = sv.c;
    const double* load = sv.load;
    const int64_t h = sv.visit[m - 1];
    double best = load[h];  // the pair maximum to beat
    int64_t best_u = -1, best_v = -1, best_q = -1, best_k = -1;
    for (int64_t k = 0; k < m; ++k) {
        // Fresh plans take the lightest pack that helps; migration weighs every pack (the swap
        // it picks decides which copies are made), and so do refine_local's retries.
        if (best_u >= 0 && copies == nullptr && !every_pack) break;
        const int64_t q = sv.visit[k];
        if (q == h) continue;
        if (!((load[h] + load[q]) / 2.0 < best)) break;
        const double gap = load[h] - load[q];
        if (!(gap > 0.0)) break;
        const int64_t* qs = sv.sorted + q * c;
        const int64_t* hs = sv.sorted + h * c;
        const double* qw = sv.sorted_w + q * c;
        const double* hw = sv.sorted_w + h * c;
        // Whether the scan of one side for u stops at candidate j: at a swap no better than
        // the best (further out only gets worse), or at one that is recorded.
        auto stops_at = [&](int64_t ru, int64_t j) {
            const int64_t u = hs[ru], v = qs[j];
            const double d = hw[ru] - qw[j];
            const double pair = std::max(load[h] - d, load[q] + d);
            if (!(pair < best)) return true;
            if (!(d > 0.0 && d < gap)) return false;
            if (sv.label != nullptr &&
                (sv.holds_other(q, sv.label[u], v) || sv.holds_other(h, sv.label[v], u))) {
                return false;
            }
            if (copies != nullptr && !affordable(*copies, swap_moves(p, *copies, c, h, u, q, v))) {
                return false;
            }
            best = pair;
            best_u = u;
            best_v = v;
            best_q = q;
            best_k = k;
            return true;
        };
        // u by ascending weight: the target w_u - gap / 2 only grows, so the first item of q
        // at or above it is found by a pointer that only moves forward. Partners below it give
        // d > gap / 2, those at or above it d <= gap / 2.
        const double half = gap / 2.0;
        int64_t lo = 0;
        for (int64_t ru = 0; ru < c; ++ru) {
            const double target = hw[ru] - half;
            while (lo < c && qw[lo] < target) ++lo;
            for (int64_t j = lo - 1; j >= 0 && !stops_at(ru, j); --j) {
            }
            for (int64_t j = lo; j < c && !stops_at(ru, j); ++j) {
            }
        }
    }
    if (best_u < 0) return std::nullopt;
    return Swap{best_u, best_v, best_q, best_k, best};
}

void apply_swap(const SearchView& sv, const Swap& sw) {
    const int64_t m = sv.m, c = sv.c;
    const int64_t h = sv.visit[m - 1], q = sw.q;
    const double d = sv.w[sw.u] - sv.w[sw.v];
    for (int64_t r = 0; r < c; ++r) {
        if (sv.slot[h * c + r] == sw.u) sv.slot[h * c + r] = sw.v;
        if (sv.slot[q * c + r] == sw.v) sv.slot[q * c + r] = sw.u;
    }
    sv.resort(h, sw.u, sw.v);
    sv.resort(q, sw.v, sw.u);
    sv.load[h] -= d;
    sv.load[q] += d;
    sv.reposition(sw.k);
    int64_t at = m - 1;
    while (sv.visit[at] != h) --at;
    sv.reposition(at);
}

// Migration: the last swaps often buy little balance for their copies. Keeps the shortest
// prefix of the logged swaps that ends within kRollback of the final maximum and undoes the
// rest. start_peak: the maximum before the first swap.
void roll_back(const double* w, int64_t c, Packing& p, const std::vector<SearchScratch::Swap>& log,
               double start_peak, CopyBudget& copies) {
    const double enough = log.back().peak * (1.0 + kRollback);
    size_t keep = 0;
    if (!(start_peak <= enough)) {
        while (!(log[keep].peak <= enough)) ++keep;
        ++keep;
    }
    int64_t* slot = p.slot.data();
    for (size_t i = log.size(); i-- > keep;) {
        const SearchScratch::Swap& r = log[i];  // u went h -> q, v went q -> h
        copies.moves += swap_moves(p, copies, c, r.q, r.u, r.h, r.v);
        for (int64_t k = 0; k < c; ++k) {
            if (slot[r.q * c + k] == r.u) slot[r.q * c + k] = r.v;
            if (slot[r.h * c + k] == r.v) slot[r.h * c + k] = r.u;
        }
        const double d = w[r.u] - w[r.v];
        p.load[r.h] += d;
        p.load[r.q] -= d;
    }
}

}  // namespace

void separate_replicas(const double* w, int64_t m, int64_t c, Packing& pk, double limit,
                       CopyBudget* copies) {
    double* load = pk.load.data();
    int64_t* slot = pk.slot.data();
    const int64_t* label = pk.label.data();
    auto count_in = [&](int64_t q, int64_t e, int64_t except) {
        int64_t k = 0;
        for (int64_t r = 0; r < c; ++r) {
            const int64_t item = slot[q * c + r];
            k += item != except && label[item] == e;
        }
        return k;
    };
    for (int64_t p = 0; p < m; ++p) {
        for (int64_t ru = 0; ru < c; ++ru) {
            interruption_point();
            const int64_t u = slot[p * c + ru];
            if (label[u] < 0 || count_in(p, label[u], u) == 0) continue;
            double best = std::numeric_limits<double>::infinity();
            int64_t best_q = -1, best_rv = -1;
            for (int64_t q = 0; q < m; ++q) {
                if (q == p || count_in(q, label[u], -1) > 0) continue;
                for (int64_t rv = 0; rv < c; ++rv) {
                    const int64_t v = slot[q * c + rv];
                    if (label[v] >= 0 && count_in(p, label[v], u) > 0) continue;
                    const double d = w[u] - w[v];
                    const double pair = std::max(load[p] - d, load[q] + d);
                    if (pair < best &&
                        (copies == nullptr ||
                         affordable(*copies, swap_moves(pk, *copies, c, p, u, q, v)))) {
                        best = pair;
                        best_q = q;
                        best_rv = rv;
                    }
                }
            }
            if (best_q < 0 || !(best <= limit)) continue;
            const int64_t v = slot[best_q * c + best_rv];
            if (copies != nullptr) copies->moves += swap_moves(pk, *copies, c, p, u, best_q, v);
            const double d = w[u] - w[v];
            slot[p * c + ru] = v;
            slot[best_q * c + best_rv] = u;
            load[p] -= d;
            load[best_q] += d;
        }
    }
}

void local_search(const double* w, int64_t m, int64_t c, Packing& p, const SearchLimits& limits,
                  SearchScratch& s, CopyBudget* copies) {
    if (!p.label.empty()) {
        separate_replicas(w, m, c, p, std::numeric_limits<double>::infinity(), copies);
    }
    const SearchView sv = prepare(w, m, c, p, s);
    const double stop =
        std::min(std::max(limits.bound, limits.floor) * (1.0 + limits.tolerance), limits.goal);
    const int64_t cap = std::max<int64_t>(32, 4 * m);
    s.log.clear();
    const double start_peak = sv.load[sv.visit[m - 1]];
    for (int64_t iter = 0; iter < cap; ++iter) {
        interruption_point();
        const int64_t h = sv.visit[m - 1];  // the heaviest pack (ties: the higher index)
        if (sv.load[h] <= stop) break;
        const std::optional<Swap> swap = find_best_swap(sv, p, limits.every_pack, copies);
        if (!swap) break;
        if (copies != nullptr)
            copies->moves += swap_moves(p, *copies, c, h, swap->u, swap->q, swap->v);
        apply_swap(sv, *swap);
        if (copies != nullptr) {
            s.log.push_back(
                SearchScratch::Swap{h, swap->u, swap->q, swap->v, sv.load[sv.visit[m - 1]]});
        }
    }
    if (copies != nullptr && !s.log.empty()) roll_back(w, c, p, s.log, start_peak, *copies);
}

}  // namespace fasteplb::detail
