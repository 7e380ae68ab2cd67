#include "fasteplb/detail/replicate.hpp"

#include <algorithm>

#include "fasteplb/interrupt.hpp"

namespace fasteplb::detail {
namespace {

// From this many slots on, the count search re-deals a trial only in part.
constexpr int64_t kIncrementalDeal = 64;

// Above this many (extra slots x candidates) steps, replication uses a heap instead of scans.
constexpr int64_t kScanWork = 256;

// Expert e's count just changed: refresh its load per replica and move it to its sorted
// place by adjacent steps (a count changes by one, so it moves a few places).
void recount(const double* w, const int64_t* cnt, PairScratch& s, int64_t e) {
    s.q[e] = w[e] / static_cast<double>(cnt[e]);
    const double* q = s.q.data();
    int64_t* order = s.order.data();
    int64_t* pos = s.pos.data();
    auto ahead = [q](int64_t x, int64_t y) { return q[x] > q[y] || (q[x] == q[y] && x < y); };
    const int64_t n = static_cast<int64_t>(s.order.size());
    int64_t at = pos[e];
    for (; at > 0 && ahead(e, order[at - 1]); --at) {
        order[at] = order[at - 1];
        pos[order[at]] = at;
    }
    for (; at + 1 < n && ahead(order[at + 1], e); ++at) {
        order[at] = order[at + 1];
        pos[order[at]] = at;
    }
    order[at] = e;
    pos[e] = at;
}

// worst[e]: the heaviest GPU holding a replica of e, in the last dealt_peak's deal.
void worst_gpus(PairScratch& s, int64_t gpus, int64_t c) {
    std::fill(s.worst.begin(), s.worst.end(), 0.0);
    for (int64_t round = 0; round < c; ++round) {
        const int64_t* block = s.owner.data() + round * gpus;
        for (int64_t g = 0; g < gpus; ++g) {
            const int64_t e = block[round % 2 == 0 ? g : gpus - 1 - g];
            s.worst[e] = std::max(s.worst[e], s.sums[g]);
        }
    }
}

// How many GPUs of the last dealt_peak reach `peak` (the tie-breaking objective: fewer GPUs
// at the peak is progress too).
int64_t at_peak(const PairScratch& s, double peak) {
    // Counted in a double (exact below 2^53), which the compiler can vectorise.
    double ties = 0.0;
    for (const double x : s.sums) ties += x == peak ? 1.0 : 0.0;
    return static_cast<int64_t>(ties);
}

// Up to kDonors experts with >= 2 replicas whose heaviest GPU has the most room left for the
// growth of their replicas (peak - worst GPU - growth), largest room first.
constexpr int kDonors = 4;
struct Donors {
    int64_t expert[kDonors];
    int found = 0;
};

Donors pick_donors(const double* w, int64_t n, const int64_t* cnt, const PairScratch& s,
                   double peak) {
    Donors d;
    double room[kDonors];
    const double* q = s.q.data();
    for (int64_t e = 0; e < n; ++e) {
        if (cnt[e] < 2) continue;
        const double growth = w[e] / static_cast<double>(cnt[e] - 1) - q[e];
        const double r = peak - s.worst[e] - growth;
        int at = d.found < kDonors ? d.found++ : kDonors;
        while (at > 0 && r > room[at - 1]) {
            if (at < kDonors) {
                d.expert[at] = d.expert[at - 1];
                room[at] = room[at - 1];
            }
            --at;
        }
        if (at < kDonors) {
            d.expert[at] = e;
            room[at] = r;
        }
    }
    return d;
}

// The deal's first slot of each expert, by place in the order (start[n]: every slot).
void deal_starts(const int64_t* cnt, PairScratch& s) {
    const int64_t n = static_cast<int64_t>(s.order.size());
    s.start.resize(static_cast<size_t>(n + 1));
    int64_t k = 0;
    for (int64_t i = 0; i < n; ++i) {
        s.start[i] = k;
        k += cnt[s.order[i]];
    }
    s.start[n] = k;
}

// The deal's per-GPU sums from its replicas r, round by round in dealing order, so that each
// sum is rounded as LPT's would be.
// A deal's result from its GPU sums: the largest (the first GPU with it), the expert dealt
// first onto that GPU and, with two or more slots per GPU, the one dealt second.
Deal deal_of(const double* sum, int64_t gpus, int64_t c, const int64_t* owner) {
    double peak = sum[0];
    for (int64_t g = 1; g < gpus; ++g) peak = std::max(peak, sum[g]);
    int64_t g_peak = 0;
    while (sum[g_peak] != peak) ++g_peak;
    const int64_t top = owner[g_peak];
    return Deal{peak, top, c >= 2 ? owner[2 * gpus - 1 - g_peak] : top};
}

void deal_sums(const double* r, int64_t gpus, int64_t c, double* sum) {
    if (gpus < 8) {    // too few GPUs for the vector loops below to pay for their set-up
        if (c == 3) {  // the same additions, in the same order, as the general loop
            for (int64_t g = 0; g < gpus; ++g) {
                sum[g] = r[g] + r[2 * gpus - 1 - g] + r[2 * gpus + g];
            }
            return;
        }
        for (int64_t g = 0; g < gpus; ++g) {
            double x = r[g];
            for (int64_t j = 1; j < c; ++j) x += r[j * gpus + (j % 2 == 1 ? gpus - 1 - g : g)];
            sum[g] = x;
        }
        return;
    }
    for (int64_t g = 0; g < gpus; ++g) sum[g] = r[g];
    for (int64_t round = 1; round < c; ++round) {
        const double* block = r + round * gpus;
        if (round % 2 == 1) {
            for (int64_t g = 0; g < gpus; ++g) sum[g] += block[gpus - 1 - g];
        } else {
            for (int64_t g = 0; g < gpus; ++g) sum[g] += block[g];
        }
    }
}

// A trial deal after the experts at places lo..hi of the order changed (counts and places;
// the set of them, and so their slots, unchanged): re-deals only their replica loads (not the
// owners) and the sums of the GPUs holding those slots, bit-identical to dealt_peak's. The
// old loads of those slots go to s.saved_replica, the old sums to s.saved_sums.
void trial_deal(int64_t lo, int64_t hi, const int64_t* cnt, int64_t gpus, int64_t c,
                PairScratch& s) {
    const double* q = s.q.data();
    const int64_t* order = s.order.data();
    double* r = s.replica.data();
    const int64_t first = s.start[lo], last = s.start[hi + 1];
    s.saved_replica.assign(r + first, r + last);
    s.saved_sums.assign(s.sums.begin(), s.sums.end());
    int64_t k = first;
    // As dealt_peak: four writes without a loop, those past an expert's run overwritten by
    // the next experts, while all four land inside the re-dealt slots (those after stay).
    constexpr int64_t kUnrolled = 4;
    int64_t i = lo;
    for (; i <= hi && k + kUnrolled <= last; ++i) {
        const int64_t e = order[i];
        for (int64_t t = 0; t < kUnrolled; ++t) r[k + t] = q[e];
        for (int64_t t = kUnrolled; t < cnt[e]; ++t) r[k + t] = q[e];
        k += cnt[e];
    }
    for (; i <= hi; ++i) {
        const int64_t e = order[i];
        for (int64_t t = 0; t < cnt[e]; ++t) r[k + t] = q[e];
        k += cnt[e];
    }
    double* sum = s.sums.data();
    if (last - first >= gpus) {
        deal_sums(r, gpus, c, sum);
        return;
    }
    for (int64_t slot = first; slot < last; ++slot) {
        const int64_t round = slot / gpus, at = slot % gpus;
        const int64_t g = round % 2 == 0 ? at : gpus - 1 - at;
        if (c == 2) {  // the same additions, in the same order, as the general loop
            sum[g] = r[g] + r[2 * gpus - 1 - g];
            continue;
        }
        double x = r[g];
        for (int64_t j = 1; j < c; ++j) x += r[j * gpus + (j % 2 == 1 ? gpus - 1 - g : g)];
        sum[g] = x;
    }
}

// Keeps trial_deal's deal: the owners and starts of places lo..hi follow. Returns its
// heaviest GPU as dealt_peak does.
Deal keep_trial(int64_t lo, int64_t hi, const int64_t* cnt, int64_t gpus, int64_t c,
                PairScratch& s) {
    const int64_t* order = s.order.data();
    int64_t* owner = s.owner.data();
    const int64_t last = s.start[hi + 1];
    int64_t k = s.start[lo];
    constexpr int64_t kUnrolled = 4;  // as in trial_deal
    int64_t i = lo;
    for (; i <= hi && k + kUnrolled <= last; ++i) {
        const int64_t e = order[i];
        s.start[i] = k;
        for (int64_t t = 0; t < kUnrolled; ++t) owner[k + t] = e;
        for (int64_t t = kUnrolled; t < cnt[e]; ++t) owner[k + t] = e;
        k += cnt[e];
    }
    for (; i <= hi; ++i) {
        const int64_t e = order[i];
        s.start[i] = k;
        for (int64_t t = 0; t < cnt[e]; ++t) owner[k + t] = e;
        k += cnt[e];
    }
    const double* sum = s.sums.data();
    return deal_of(sum, gpus, c, owner);
}

// Undoes trial_deal (the order already restored).
void undo_trial(int64_t lo, PairScratch& s) {
    std::copy(s.saved_replica.begin(), s.saved_replica.end(), s.replica.begin() + s.start[lo]);
    s.sums.swap(s.saved_sums);
}

// The peak of the trial deal: its heaviest GPU's sum.
double trial_peak(const PairScratch& s, int64_t gpus) {
    const double* sum = s.sums.data();
    double peak = sum[0];
    for (int64_t g = 1; g < gpus; ++g) peak = std::max(peak, sum[g]);
    return peak;
}

}  // namespace

// Only the first `extra` experts of `order` can receive a replica: an expert picked while a
// heavier one still has a single replica would contradict the pick rule, and with `extra`
// picks in all some candidate always still has one replica and beats every non-candidate.
// So the search runs over those candidates.
void replicate_sorted(const double* w, int64_t n, int64_t num_phy, const Item* order,
                      std::vector<Quotient>& cand, int64_t* phy2log, int64_t* rank,
                      int64_t* logcnt) {
    for (int64_t e = 0; e < n; ++e) {
        phy2log[e] = e;
        rank[e] = 0;
        logcnt[e] = 1;
    }
    const int64_t extra = num_phy - n;
    if (extra == 0) return;
    const int64_t m = std::min(extra, n);
    cand.resize(static_cast<size_t>(m));
    Quotient* c = cand.data();
    for (int64_t i = 0; i < m; ++i) c[i] = Quotient{order[i].w, order[i].idx};
    if (extra * m <= kScanWork) {
        for (int64_t i = n; i < num_phy; ++i) {
            int64_t best = 0;
            for (int64_t j = 1; j < m; ++j) best = before(c[j], c[best]) ? j : best;
            const int64_t e = c[best].e;
            phy2log[i] = e;
            rank[i] = logcnt[e];
            ++logcnt[e];
            c[best].q = w[e] / static_cast<double>(logcnt[e]);
        }
        return;
    }
    std::make_heap(cand.begin(), cand.end(), SmallerQuotient{});
    for (int64_t i = n; i < num_phy; ++i) {
        const int64_t e = cand.front().e;
        phy2log[i] = e;
        rank[i] = logcnt[e];
        ++logcnt[e];
        std::pop_heap(cand.begin(), cand.end(), SmallerQuotient{});
        cand.back() = Quotient{w[e] / static_cast<double>(logcnt[e]), e};
        std::push_heap(cand.begin(), cand.end(), SmallerQuotient{});
    }
}

void layout_counts(int64_t n, const int64_t* cnt, int64_t* phy2log, int64_t* rank) {
    int64_t slot = n;
    for (int64_t e = 0; e < n; ++e) {
        phy2log[e] = e;
        rank[e] = 0;
    }
    for (int64_t e = 0; e < n; ++e) {
        for (int64_t r = 1; r < cnt[e]; ++r) {
            phy2log[slot] = e;
            rank[slot++] = r;
        }
    }
}

Deal dealt_peak(const double* q, const int64_t* cnt, const std::vector<int64_t>& order,
                int64_t gpus, int64_t c, PairScratch& s) {
    constexpr int64_t kUnrolled = 4;  // most experts have at most this many replicas
    const int64_t slots = gpus * c;
    s.replica.resize(static_cast<size_t>(slots + kUnrolled));
    s.owner.resize(static_cast<size_t>(slots + kUnrolled));
    s.sums.resize(static_cast<size_t>(gpus));
    double* r = s.replica.data();
    int64_t* owner = s.owner.data();
    double* sum = s.sums.data();
    int64_t k = 0;
    for (const int64_t e : order) {
        const int64_t n = cnt[e];
        // Four writes without a loop; writes past the expert's run are overwritten by the
        // next expert, or land in the padding.
        for (int64_t t = 0; t < kUnrolled; ++t) {
            r[k + t] = q[e];
            owner[k + t] = e;
        }
        for (int64_t t = kUnrolled; t < n; ++t) {
            r[k + t] = q[e];
            owner[k + t] = e;
        }
        k += n;
    }
    deal_sums(r, gpus, c, sum);
    return deal_of(sum, gpus, c, owner);
}

namespace {

// dealt_peak's peak, without the owners (s.replica and s.sums only).
double deal_loads(const double* q, const int64_t* cnt, const std::vector<int64_t>& order,
                  int64_t gpus, int64_t c, PairScratch& s) {
    constexpr int64_t kUnrolled = 4;  // as dealt_peak
    double* r = s.replica.data();
    int64_t k = 0;
    for (const int64_t e : order) {
        const int64_t n = cnt[e];
        for (int64_t t = 0; t < kUnrolled; ++t) r[k + t] = q[e];
        for (int64_t t = kUnrolled; t < n; ++t) r[k + t] = q[e];
        k += n;
    }
    double* sum = s.sums.data();
    deal_sums(r, gpus, c, sum);
    double peak = sum[0];
    for (int64_t g = 1; g < gpus; ++g) peak = std::max(peak, sum[g]);
    return peak;
}

}  // namespace

// A local search that moves one replica at a time from a donor (among the few experts whose
// replicas would grow least) to an expert of the heaviest GPU, re-evaluating the deal exactly
// (at k = 3 through the zig-zag proxy), and takes the first move that lowers the heaviest
// GPU, or keeps it and reaches it fewer times.
CountSearch improve_counts(const double* w, int64_t n, int64_t c, int64_t* cnt, PairScratch& s,
                           std::vector<double>* start_loads) {
    int64_t slots = 0;
    for (int64_t e = 0; e < n; ++e) slots += cnt[e];
    const int64_t gpus = slots / c;
    s.q.resize(static_cast<size_t>(n));
    for (int64_t e = 0; e < n; ++e) s.q[e] = w[e] / static_cast<double>(cnt[e]);
    const double* q = s.q.data();
    // Sorting (load, id) pairs compares within the array, not through q.
    s.by_load.resize(static_cast<size_t>(n));
    for (int64_t e = 0; e < n; ++e) s.by_load[e] = Item{q[e], e};
    std::sort(s.by_load.begin(), s.by_load.end(),
              [](const Item& x, const Item& y) { return heavier_first(x, y); });
    s.order.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) s.order[i] = s.by_load[i].idx;
    s.pos.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) s.pos[s.order[i]] = i;
    // Small deals are cheaper dealt afresh for each trial than re-dealt in part and undone.
    const bool incremental = slots >= kIncrementalDeal;
    // One replica of `from` goes to `to`; returns the places lo..hi of the order whose experts
    // changed (each recount moves one expert and shifts those in between).
    auto shift = [&](int64_t from, int64_t to) {
        --cnt[from];
        ++cnt[to];
        const int64_t from0 = s.pos[from], to0 = s.pos[to];
        recount(w, cnt, s, from);
        const int64_t from1 = s.pos[from], to1 = s.pos[to];
        recount(w, cnt, s, to);
        return std::make_pair(std::min({from0, from1, to0, to1, s.pos[from], s.pos[to]}),
                              std::max({from0, from1, to0, to1, s.pos[from], s.pos[to]}));
    };
    Deal deal = dealt_peak(q, cnt, s.order, gpus, c, s);
    if (incremental) {
        deal_starts(cnt, s);
    } else {
        s.saved_order.resize(static_cast<size_t>(n));
        s.saved_pos.resize(static_cast<size_t>(n));
    }
    int64_t ties = at_peak(s, deal.peak);
    const double start = deal.peak;
    if (start_loads != nullptr) start_loads->assign(s.replica.begin(), s.replica.begin() + slots);
    s.worst.resize(static_cast<size_t>(n));
    worst_gpus(s, gpus, c);
    const int64_t cap = n + 8;
    for (int64_t iter = 0; iter < cap; ++iter) {
        interruption_point();
        const Donors donors = pick_donors(w, n, cnt, s, deal.peak);
        // The first improving move, takers before donors; its evaluation carries over to the
        // next step.
        bool moved = false;
        const int64_t takers[2] = {deal.top, deal.bottom};
        for (int t = 0; t < 2 && !moved; ++t) {
            const int64_t b = takers[t];
            if (t == 1 && b == deal.top) break;
            for (int d = 0; d < donors.found; ++d) {
                const int64_t a = donors.expert[d];
                if (a == b) continue;
                if (!incremental) {
                    // A small deal: the trial's loads dealt afresh (owners only if kept), the
                    // order restored from a copy.
                    const double qa = q[a], qb = q[b];
                    std::copy(s.order.begin(), s.order.end(), s.saved_order.begin());
                    std::copy(s.pos.begin(), s.pos.end(), s.saved_pos.begin());
                    --cnt[a];
                    ++cnt[b];
                    recount(w, cnt, s, a);
                    recount(w, cnt, s, b);
                    const double peak = deal_loads(q, cnt, s.order, gpus, c, s);
                    if (peak < deal.peak || (peak == deal.peak && at_peak(s, peak) < ties)) {
                        deal = dealt_peak(q, cnt, s.order, gpus, c, s);
                        ties = at_peak(s, deal.peak);
                        worst_gpus(s, gpus, c);
                        moved = true;
                        break;
                    }
                    ++cnt[a];
                    --cnt[b];
                    s.q[a] = qa;
                    s.q[b] = qb;
                    std::copy(s.saved_order.begin(), s.saved_order.end(), s.order.begin());
                    std::copy(s.saved_pos.begin(), s.saved_pos.end(), s.pos.begin());
                    continue;
                }
                const auto [lo, hi] = shift(a, b);
                trial_deal(lo, hi, cnt, gpus, c, s);
                const double peak = trial_peak(s, gpus);
                if (peak < deal.peak || (peak == deal.peak && at_peak(s, peak) < ties)) {
                    deal = keep_trial(lo, hi, cnt, gpus, c, s);
                    ties = at_peak(s, deal.peak);
                    worst_gpus(s, gpus, c);
                    moved = true;
                    break;
                }
                // Undo: the order is a strict total order, so re-sorting restores it exactly.
                shift(b, a);
                undo_trial(lo, s);
            }
        }
        if (!moved) break;
    }
    return CountSearch{deal.peak < start, start};
}

}  // namespace fasteplb::detail
