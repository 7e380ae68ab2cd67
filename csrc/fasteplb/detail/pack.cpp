#include "fasteplb/detail/pack.hpp"

#include <cmath>
#include <limits>

#include "fasteplb/detail/simd.hpp"
#include "fasteplb/interrupt.hpp"

namespace fasteplb::detail {
namespace {

// refine="local": local search from the label-aware LPT (which `diverted` tells whether it
// differed from the plain one, whose maximum is then `label_greedy`). Refinement must never
// end above the plain greedy's maximum (beyond base.limit), so when it does, it is retried
// from other starts, in order, and as a last resort run without labels. Returns the plain
// greedy's maximum.
double refine_local(int64_t n, int64_t m, int rounds, PackScratch& s, bool diverted,
                    double label_greedy, const LocalBaseline& base) {
    const int64_t c = n / m;
    const double* w = s.weight.data();
    Packing& p = s.packing;
    const SearchLimits first{fixed_item_bound(s.order.data(), n, m, c)};
    local_search(w, m, c, p, first, s.search, nullptr);
    if (p.label.empty()) return label_greedy;
    const double refined = max_load(p);
    if (!diverted && refined <= std::max(label_greedy, base.limit)) return label_greedy;
    if (base.greedy_known && refined <= base.limit) return label_greedy;
    s.kept_slot.assign(p.slot.begin(), p.slot.end());
    s.kept_load.assign(p.load.begin(), p.load.end());
    lpt(n, m, s, false);
    const double greedy = max_load(p);
    const double allowed = std::max(greedy, base.limit);
    if (refined <= allowed) {
        p.slot.swap(s.kept_slot);
        p.load.swap(s.kept_load);
        return greedy;
    }
    // The retries must reach `allowed`, even where it lies within the bound's tolerance (the
    // first search may have stopped there). Weighing every pack helps where the lightest pack
    // that helps leads into a dead end, which labels make likelier.
    struct Start {
        bool labels;      // the label-aware LPT (else the plain one)
        bool seed_swaps;  // then the seed's max/min swaps
        bool every_pack;
    };
    constexpr Start kStarts[] = {
        {false, false, false},  // the plain LPT, already in place
        {true, false, true},
        {false, true, false},
        {false, true, true},
    };
    SearchLimits retry = first;
    retry.goal = allowed;
    for (size_t i = 0; i < sizeof kStarts / sizeof kStarts[0]; ++i) {
        if (i > 0) {
            lpt(n, m, s, kStarts[i].labels);
            if (kStarts[i].seed_swaps) swap_refine(w, m, c, rounds, s);
        }
        retry.every_pack = kStarts[i].every_pack;
        local_search(w, m, c, p, retry, s.search, nullptr);
        if (max_load(p) <= allowed) return greedy;
    }
    // Keeping replicas apart costs balance here: plan without labels, then separate what can
    // be separated without raising the maximum.
    std::vector<int64_t> labels;
    labels.swap(p.label);
    lpt(n, m, s, false);
    local_search(w, m, c, p, first, s.search, nullptr);
    labels.swap(p.label);
    separate_replicas(w, m, c, p, std::max(max_load(p), base.limit), nullptr);
    return greedy;
}

}  // namespace

bool lpt(int64_t n, int64_t m, PackScratch& s, bool use_labels) {
    const int64_t c = n / m;
    Packing& pk = s.packing;
    pk.load.assign(static_cast<size_t>(m), 0.0);
    s.count.assign(static_cast<size_t>(m), 0);
    pk.slot.resize(static_cast<size_t>(n));
    double* load = pk.load.data();
    int64_t* count = s.count.data();
    int64_t* slot = pk.slot.data();
    // Winner tree over the packs' keys (load, or +inf once full): the root names the lightest
    // open pack, ties to the lower index (left subtrees hold lower indices). Nodes carry the
    // key itself, and an update walks up with the winner in registers, so each level costs
    // one compare and select. +inf is a safe "full" mark: check_weights keeps loads finite.
    const double inf = std::numeric_limits<double>::infinity();
    int64_t leaves = 1;
    while (leaves < m) leaves *= 2;
    s.tree.resize(static_cast<size_t>(2 * leaves));
    PackNode* tree = s.tree.data();
    // While some pack is empty and every placed item weighs something, the lightest open pack
    // is the first empty one, which holds no label: the first m items go to packs 0..m-1 in
    // turn (items are sorted, so it suffices that item m-2 weighs something). Those packs are
    // filled directly and the tree is built once over them, which is the tree the updates
    // below would have left (each node: its subtree's least key, ties to the left).
    const Item* items = s.order.data();
    const int64_t direct = (m >= 2 && n >= m && items[m - 2].w > 0.0) || m == 1 ? m : 0;
    for (int64_t q = 0; q < direct; ++q) {
        slot[q * c] = items[q].idx;
        load[q] = items[q].w;
        count[q] = 1;
    }
    for (int64_t q = 0; q < leaves; ++q) {
        const double key = q < direct ? (c > 1 ? load[q] : inf) : q < m ? 0.0 : inf;
        tree[leaves + q] = PackNode{key, q};
    }
    for (int64_t i = leaves - 1; i >= 1; --i) {
        const PackNode& l = tree[2 * i];
        const PackNode& r = tree[2 * i + 1];
        tree[i] = r.key < l.key ? r : l;
    }
    const int64_t* label = use_labels && !pk.label.empty() ? pk.label.data() : nullptr;
    auto holds = [&](int64_t q, int64_t e) {
        for (int64_t r = 0; r < count[q]; ++r) {
            if (label[slot[q * c + r]] == e) return true;
        }
        return false;
    };
    // One interruption point per call: LPT is O(n log m), under 0.1 s at the largest sizes.
    interruption_point();
    bool diverted = false;
    int64_t p = tree[1].idx;
    for (int64_t at = direct; at < n; ++at) {
        const Item& it = items[at];
        if (label != nullptr && label[it.idx] >= 0 && holds(p, label[it.idx])) {
            // The lightest open pack already holds this expert: take the lightest open pack
            // that does not (ties: lower index), if any.
            int64_t best = -1;
            for (int64_t q = 0; q < m; ++q) {
                if (count[q] < c && (best < 0 || load[q] < load[best]) &&
                    !holds(q, label[it.idx])) {
                    best = q;
                }
            }
            if (best >= 0) {
                p = best;
                diverted = true;
            }
        }
        slot[p * c + count[p]] = it.idx;
        load[p] += it.w;
        PackNode cur{++count[p] < c ? load[p] : inf, p};
        int64_t i = leaves + p;
        tree[i] = cur;
        for (; i > 1; i /= 2) {
            const PackNode sib = tree[i ^ 1];
            // The sibling wins on a smaller key, or on an equal key when it is the left child.
            const bool take = (sib.key < cur.key) | ((sib.key == cur.key) & ((i & 1) != 0));
            cur.key = take ? sib.key : cur.key;
            cur.idx = take ? sib.idx : cur.idx;
            tree[i / 2] = cur;
        }
        p = cur.idx;
    }
    return diverted;
}

// Takes the heaviest and the lightest pack (ties: lower index) and swaps the pair (u from the
// heaviest, v from the lightest) with 0 < w_u - w_v < gap whose difference is closest to
// gap / 2 (ties: lower rank of u, then of v). Each swap leaves both packs strictly below the
// old maximum, so the maximum never rises.
void swap_refine(const double* w, int64_t m, int64_t c, int rounds, PackScratch& s) {
    double* load = s.packing.load.data();
    int64_t* slot = s.packing.slot.data();
    s.heavy_w.resize(static_cast<size_t>(c));
    s.light_w.resize(static_cast<size_t>(c));
    s.dist.resize(static_cast<size_t>(c * c));
    double* hw = s.heavy_w.data();
    double* lw = s.light_w.data();
    double* dist = s.dist.data();
    const double inf = std::numeric_limits<double>::infinity();
    for (int round = 0; round < rounds; ++round) {
        interruption_point();
        int64_t h = 0, l = 0;
        for (int64_t p = 1; p < m; ++p) {
            if (load[p] > load[h]) h = p;
            if (load[p] < load[l]) l = p;
        }
        const double top = load[h], bottom = load[l];
        const double gap = top - bottom;
        if (!(gap > 0.0)) return;
        const double half = gap / 2.0;
        for (int64_t r = 0; r < c; ++r) {
            hw[r] = w[slot[h * c + r]];
            lw[r] = w[slot[l * c + r]];
        }
        // All c*c candidate distances first (branch-free, vectorisable), then the first
        // smallest in (rank of u, rank of v) order. Invalid pairs get +inf.
        for (int64_t ru = 0; ru < c; ++ru) {
            for (int64_t rv = 0; rv < c; ++rv) {
                const double d = hw[ru] - lw[rv];
                // The third test guards the comparison against rounding in `gap`.
                const bool ok = (d > 0.0) & (d < gap) & (bottom + d < top);
                dist[ru * c + rv] = ok ? std::fabs(d - half) : inf;
            }
        }
        const int64_t best = first_min(dist, c * c);
        if (!(dist[best] < inf)) return;
        const int64_t ru = best / c, rv = best % c;
        const int64_t u = slot[h * c + ru], v = slot[l * c + rv];
        const double d = w[u] - w[v];
        slot[h * c + ru] = v;
        slot[l * c + rv] = u;
        load[h] -= d;
        load[l] += d;
    }
}

PackResult pack_sorted(int64_t n, int64_t m, Refine refine, int rounds, PackScratch& s,
                       int64_t* pack, int64_t* rank, const LocalBaseline& base) {
    const int64_t c = n / m;
    if (c == 1) {
        double peak = 0.0;
        for (const Item& it : s.order) {
            pack[it.idx] = it.idx;
            rank[it.idx] = 0;
            peak = std::max(peak, it.w);
        }
        return PackResult{peak, peak};
    }
    const bool diverted = lpt(n, m, s, true);
    double greedy = max_load(s.packing);  // with labels, refine_local finds the plain LPT's
    if (refine != Refine::None && m > 1) {
        s.weight.resize(static_cast<size_t>(n));
        for (const Item& it : s.order) s.weight[it.idx] = it.w;
        if (refine == Refine::Swap) {
            swap_refine(s.weight.data(), m, c, rounds, s);
        } else {
            greedy = refine_local(n, m, rounds, s, diverted, greedy, base);
        }
    }
    const double* load = s.packing.load.data();
    const int64_t* slot = s.packing.slot.data();
    double peak = 0.0;
    for (int64_t q = 0; q < m; ++q) {
        peak = std::max(peak, load[q]);
        for (int64_t r = 0; r < c; ++r) {
            const int64_t item = slot[q * c + r];
            pack[item] = q;
            rank[item] = r;
        }
    }
    return PackResult{peak, greedy};
}

double pack_one(const double* w, int64_t n, int64_t m, Refine refine, int rounds, PackScratch& s,
                int64_t* pack, int64_t* rank) {
    s.packing.label.clear();
    s.order.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) s.order[i] = Item{w[i], i};
    if (n / m > 1) sort_items(s.order, s.sort);
    return pack_sorted(n, m, refine, rounds, s, pack, rank).peak;
}

}  // namespace fasteplb::detail
