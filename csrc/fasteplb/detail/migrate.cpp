#include "fasteplb/detail/migrate.hpp"

#include <algorithm>
#include <limits>
#include <optional>

#include "fasteplb/interrupt.hpp"

namespace fasteplb::detail {
namespace {

// One node of the layer being re-planned, in node-local expert ids.
struct NodeView {
    const double* w;        // [n] the node's experts' loads
    int64_t n;              // experts
    const int64_t* target;  // [n] the replica counts to move towards
    const int64_t* old;     // [gpus * k] the expert each slot held (-1: another node's)
    int64_t gpus, k;
    int64_t slots() const { return gpus * k; }
};

struct NodeResult {
    double peak;    // the node's largest GPU load
    int64_t moves;  // the copies its plan makes
};

// 1. Counts move from the old ones towards v.target one replica at a time (the expert with the
// largest load per replica gains, the one whose replicas grow least gives), each step costing
// one copy, at most `budget` (< 0: no cap) beyond the free slots, which must all be filled.
// cnt [n] receives the counts; false when the budget cannot even place the experts the node
// lacks. m.old_cnt receives the old counts.
bool repair_counts(const NodeView& v, int64_t budget, NodeScratch& m, int64_t* cnt) {
    const double* w = v.w;
    const int64_t* target = v.target;
    m.old_cnt.assign(static_cast<size_t>(v.n), 0);
    int64_t pool = 0;  // slots holding no expert of this node
    for (int64_t i = 0; i < v.slots(); ++i) v.old[i] >= 0 ? ++m.old_cnt[v.old[i]] : ++pool;
    std::copy(m.old_cnt.begin(), m.old_cnt.end(), cnt);
    // Receivers by (missing first, then load per replica desc, index), donors by load per
    // replica after giving one up, ascending; both heaps hold stale entries, skipped on pop.
    auto recv_key = [&](int64_t e) {
        return cnt[e] == 0 ? std::numeric_limits<double>::infinity()
                           : w[e] / static_cast<double>(cnt[e]);
    };
    auto give_key = [&](int64_t e) { return w[e] / static_cast<double>(cnt[e] - 1); };
    m.receivers.clear();
    m.donors.clear();
    for (int64_t e = 0; e < v.n; ++e) {
        if (cnt[e] < target[e]) m.receivers.push_back(Quotient{recv_key(e), e});
        if (cnt[e] > target[e]) m.donors.push_back(Quotient{-give_key(e), e});
    }
    std::make_heap(m.receivers.begin(), m.receivers.end(), SmallerQuotient{});
    std::make_heap(m.donors.begin(), m.donors.end(), SmallerQuotient{});
    auto pop = [](std::vector<Quotient>& heap, auto valid) {
        while (!heap.empty()) {
            std::pop_heap(heap.begin(), heap.end(), SmallerQuotient{});
            const Quotient top = heap.back();
            heap.pop_back();
            if (valid(top)) return top.e;
        }
        return int64_t{-1};
    };
    auto push = [](std::vector<Quotient>& heap, Quotient q) {
        heap.push_back(q);
        std::push_heap(heap.begin(), heap.end(), SmallerQuotient{});
    };
    int64_t steps = 0;
    for (;;) {
        interruption_point();
        if (pool == 0 && budget >= 0 && steps >= budget) break;
        const int64_t e = pop(m.receivers, [&](const Quotient& q) {
            return cnt[q.e] < target[q.e] && q.q == recv_key(q.e);
        });
        if (e < 0) break;  // counts reached the target
        if (pool > 0) {
            --pool;
        } else {
            const int64_t d = pop(m.donors, [&](const Quotient& q) {
                return cnt[q.e] > target[q.e] && q.q == -give_key(q.e);
            });
            if (d < 0) break;
            --cnt[d];
            if (cnt[d] > target[d]) push(m.donors, Quotient{-give_key(d), d});
        }
        ++cnt[e];
        ++steps;
        if (cnt[e] < target[e]) push(m.receivers, Quotient{recv_key(e), e});
    }
    if (pool > 0) return false;
    return std::find(cnt, cnt + v.n, int64_t{0}) == cnt + v.n;
}

// 2. Per-GPU loads (m.gpu_load) of the old contents at the new loads per replica, then each
// shrinking expert's surplus freed in slot_of (-1): copies sharing a GPU with another copy
// first, then those on the busiest GPUs (ties: lower slot).
void release_surplus(const NodeView& v, const int64_t* cnt, NodeScratch& m, int64_t* slot_of) {
    const int64_t slots = v.slots(), k = v.k;
    const int64_t* old = v.old;
    auto item_load = [&](int64_t e) { return v.w[e] / static_cast<double>(cnt[e]); };
    m.gpu_load.assign(static_cast<size_t>(v.gpus), 0.0);
    for (int64_t i = 0; i < slots; ++i) {
        if (old[i] >= 0) m.gpu_load[i / k] += item_load(old[i]);
    }
    // Slots by expert (counting sort), ascending within each expert.
    m.start.assign(static_cast<size_t>(v.n + 1), 0);
    for (int64_t i = 0; i < slots; ++i) {
        if (old[i] >= 0) ++m.start[old[i] + 1];
    }
    for (int64_t e = 0; e < v.n; ++e) m.start[e + 1] += m.start[e];
    m.by_expert.resize(static_cast<size_t>(slots));
    m.fill.assign(m.start.begin(), m.start.end() - 1);
    for (int64_t i = 0; i < slots; ++i) {
        if (old[i] >= 0) m.by_expert[m.fill[old[i]]++] = i;
    }
    std::copy(old, old + slots, slot_of);
    for (int64_t e = 0; e < v.n; ++e) {
        const int64_t surplus = m.old_cnt[e] - cnt[e];
        if (surplus <= 0) continue;
        int64_t* first = m.by_expert.data() + m.start[e];
        int64_t* last = m.by_expert.data() + m.start[e + 1];
        // (co-located, slot): co-located when its GPU already showed a copy at a lower slot.
        m.surplus.clear();
        for (int64_t* p = first; p != last; ++p) {
            m.surplus.emplace_back(p != first && *(p - 1) / k == *p / k ? 1 : 0, *p);
        }
        std::sort(m.surplus.begin(), m.surplus.end(), [&](const auto& a, const auto& b) {
            if (a.first != b.first) return a.first > b.first;
            const double la = m.gpu_load[a.second / k], lb = m.gpu_load[b.second / k];
            return la > lb || (la == lb && a.second < b.second);
        });
        for (int64_t j = 0; j < surplus; ++j) {
            const int64_t i = m.surplus[j].second;
            slot_of[i] = -1;
            m.gpu_load[i / k] -= item_load(e);
        }
    }
}

// 3. New replicas by (load desc, expert asc), each into a free slot of the lightest GPU with
// one (ties: lower GPU); with `apart`, one that does not hold its expert, if there is one.
void place_new_replicas(const NodeView& v, const int64_t* cnt, bool apart, NodeScratch& m,
                        int64_t* slot_of) {
    const int64_t slots = v.slots(), k = v.k, gpus = v.gpus;
    auto item_load = [&](int64_t e) { return v.w[e] / static_cast<double>(cnt[e]); };
    m.free_count.assign(static_cast<size_t>(gpus), 0);
    m.kept.assign(static_cast<size_t>(v.n), 0);  // copies each expert still holds
    for (int64_t i = 0; i < slots; ++i) {
        if (slot_of[i] < 0) {
            ++m.free_count[i / k];
        } else {
            ++m.kept[slot_of[i]];
        }
    }
    m.fresh.clear();
    for (int64_t e = 0; e < v.n; ++e) {
        for (int64_t r = m.kept[e]; r < cnt[e]; ++r) m.fresh.push_back(Item{item_load(e), e});
    }
    std::sort(m.fresh.begin(), m.fresh.end(),
              [](const Item& a, const Item& b) { return heavier_first(a, b); });
    // Min-heap of GPUs with free slots by (load, index).
    auto heavier_gpu = [](const PackNode& a, const PackNode& b) {
        return a.key > b.key || (a.key == b.key && a.idx > b.idx);
    };
    std::vector<PackNode>& heap = m.heap;
    heap.clear();
    for (int64_t g = 0; g < gpus; ++g) {
        if (m.free_count[g] > 0) heap.push_back(PackNode{m.gpu_load[g], g});
    }
    std::make_heap(heap.begin(), heap.end(), heavier_gpu);
    auto holds = [&](int64_t g, int64_t e) {
        for (int64_t r = 0; r < k; ++r) {
            if (slot_of[g * k + r] == e) return true;
        }
        return false;
    };
    std::vector<PackNode>& passed = m.passed;
    for (const Item& it : m.fresh) {
        interruption_point();
        passed.clear();
        PackNode pick = heap.front();
        if (apart && cnt[it.idx] <= gpus) {
            // Skip GPUs holding the expert; keep the lightest as the fallback.
            while (!heap.empty() && holds(heap.front().idx, it.idx)) {
                std::pop_heap(heap.begin(), heap.end(), heavier_gpu);
                passed.push_back(heap.back());
                heap.pop_back();
            }
            pick = heap.empty() ? passed.front() : heap.front();
        }
        const bool from_heap = !heap.empty() && heap.front().idx == pick.idx;
        if (from_heap) {
            std::pop_heap(heap.begin(), heap.end(), heavier_gpu);
            heap.pop_back();
        } else {
            passed.erase(passed.begin());
        }
        const int64_t g = pick.idx;
        int64_t r = 0;
        while (slot_of[g * k + r] >= 0) ++r;
        slot_of[g * k + r] = it.idx;
        m.gpu_load[g] += it.w;
        for (const PackNode& p : passed) {
            heap.push_back(p);
            std::push_heap(heap.begin(), heap.end(), heavier_gpu);
        }
        if (--m.free_count[g] > 0) {
            heap.push_back(PackNode{m.gpu_load[g], g});
            std::push_heap(heap.begin(), heap.end(), heavier_gpu);
        }
    }
}

// 4. The local search over the slots (item i is slot i, GPU q holds items [q k, (q + 1) k)),
// with what is left of the budget after the copies slot_of already makes. Leaves the result in
// m.packing, each item's expert in m.expert_of.
void search_within_budget(const NodeView& v, const int64_t* cnt, const Options& opt, int64_t budget,
                          double floor, NodeScratch& m, const int64_t* slot_of) {
    const int64_t slots = v.slots(), k = v.k, gpus = v.gpus;
    Packing& p = m.packing;
    m.item_w.resize(static_cast<size_t>(slots));
    p.slot.resize(static_cast<size_t>(slots));
    m.expert_of.resize(static_cast<size_t>(slots));
    m.order.resize(static_cast<size_t>(slots));
    p.load.assign(static_cast<size_t>(gpus), 0.0);
    for (int64_t i = 0; i < slots; ++i) {
        const int64_t e = slot_of[i];
        m.item_w[i] = v.w[e] / static_cast<double>(cnt[e]);
        p.slot[i] = i;
        m.expert_of[i] = e;
        m.order[i] = Item{m.item_w[i], i};
        p.load[i / k] += m.item_w[i];
    }
    const bool apart = opt.refine == Refine::Local;
    p.label.clear();
    if (apart) {
        p.label.resize(static_cast<size_t>(slots));
        for (int64_t i = 0; i < slots; ++i) {
            const int64_t e = slot_of[i];
            p.label[i] = cnt[e] > 1 && cnt[e] <= gpus ? e : -1;
        }
    }
    if (opt.refine == Refine::None || gpus < 2) return;
    const int64_t placed = count_moves(v.old, slot_of, gpus, k, m.stamp, v.n);
    // The search's bound needs the heaviest item first and the k - 1 lightest last, which a
    // selection provides without a full sort.
    auto heavier = [](const Item& a, const Item& b) { return heavier_first(a, b); };
    std::iter_swap(m.order.begin(), std::min_element(m.order.begin(), m.order.end(), heavier));
    if (k > 1) {
        std::nth_element(m.order.begin() + 1, m.order.end() - (k - 1), m.order.end(), heavier);
    }
    SearchLimits limits{fixed_item_bound(m.order.data(), slots, gpus, k)};
    limits.tolerance = kMigrationTolerance;
    limits.floor = floor;
    CopyBudget copies{v.old, m.expert_of.data(),
                      budget < 0 ? -1 : std::max<int64_t>(0, budget - placed)};
    local_search(m.item_w.data(), gpus, k, p, limits, m.search, &copies);
}

// 5. Experts that stay on a GPU keep their old slot there; the rest fill the free slots in the
// order the search left them. Writes out [gpus * k]; returns the largest GPU load.
double keep_old_slots(const NodeView& v, NodeScratch& m, int64_t* out) {
    const int64_t k = v.k;
    const Packing& p = m.packing;
    m.wanted.assign(static_cast<size_t>(v.n), 0);  // replicas of e still to place on this GPU
    m.out.resize(static_cast<size_t>(v.slots()));
    double peak = 0.0;
    for (int64_t g = 0; g < v.gpus; ++g) {
        peak = std::max(peak, p.load[g]);
        const int64_t* items = p.slot.data() + g * k;
        int64_t* dst = m.out.data() + g * k;
        for (int64_t r = 0; r < k; ++r) ++m.wanted[m.expert_of[items[r]]];
        for (int64_t r = 0; r < k; ++r) {
            const int64_t e = v.old[g * k + r];
            dst[r] = e >= 0 && m.wanted[e] > 0 ? e : -1;
            if (dst[r] >= 0) --m.wanted[e];
        }
        int64_t r = 0;
        for (int64_t j = 0; j < k; ++j) {
            const int64_t e = m.expert_of[items[j]];
            if (m.wanted[e] == 0) continue;
            --m.wanted[e];
            while (dst[r] >= 0) ++r;
            dst[r] = e;
        }
    }
    std::copy(m.out.begin(), m.out.end(), out);
    return peak;
}

// Plans one node of v.gpus GPUs x v.k slots from its old contents, spending at most `budget`
// copies (< 0: no cap); floor: a load the search need not get below. out: [gpus * k] the new
// slots; cnt: [n] the counts used. Nothing when the budget cannot place the experts the node
// lacks.
std::optional<NodeResult> migrate_node(const NodeView& v, const Options& opt, int64_t budget,
                                       double floor, NodeScratch& m, int64_t* out, int64_t* cnt) {
    if (!repair_counts(v, budget, m, cnt)) return std::nullopt;
    int64_t* slot_of = out;  // out doubles as the working slot -> expert map
    release_surplus(v, cnt, m, slot_of);
    place_new_replicas(v, cnt, opt.refine == Refine::Local, m, slot_of);
    search_within_budget(v, cnt, opt, budget, floor, m, slot_of);
    const double peak = keep_old_slots(v, m, out);
    return NodeResult{peak, count_moves(v.old, out, v.gpus, v.k, m.stamp, v.n)};
}

// Largest GPU load of placement phy2log[P] under loads w, each expert's load split evenly over
// its replicas there; cnt: [E] its counts (output).
double placement_peak(const double* w, const int64_t* phy2log, int64_t experts, int64_t P,
                      int64_t gpus, std::vector<int64_t>& cnt) {
    cnt.assign(static_cast<size_t>(experts), 0);
    for (int64_t p = 0; p < P; ++p) ++cnt[phy2log[p]];
    const int64_t k = P / gpus;
    double peak = 0.0;
    for (int64_t g = 0; g < gpus; ++g) {
        double load = 0.0;
        for (int64_t r = 0; r < k; ++r) {
            const int64_t e = phy2log[g * k + r];
            load += w[e] / static_cast<double>(cnt[e]);
        }
        peak = std::max(peak, load);
    }
    return peak;
}

// Groups -> nodes split that keeps most of the old placement in place: groups take nodes by
// descending number of their replicas already there (ties: lower group, lower node), at most
// groups / nodes groups per node. pack / rank: [groups] (outputs).
void old_split(const int64_t* old, const Shape& sh, MigrateScratch& s, int64_t* pack,
               int64_t* rank) {
    const int64_t G = sh.groups, N = sh.nodes, group_size = sh.experts / G;
    const int64_t slots_per_node = sh.replicas / N;
    s.overlap.assign(static_cast<size_t>(G * N), 0);
    for (int64_t p = 0; p < sh.replicas; ++p) {
        ++s.overlap[old[p] / group_size * N + p / slots_per_node];
    }
    s.pairs_order.resize(static_cast<size_t>(G * N));
    for (int64_t i = 0; i < G * N; ++i) s.pairs_order[i] = i;
    std::stable_sort(s.pairs_order.begin(), s.pairs_order.end(),
                     [&](int64_t a, int64_t b) { return s.overlap[a] > s.overlap[b]; });
    std::fill(pack, pack + G, int64_t{-1});
    s.node_fill.assign(static_cast<size_t>(N), 0);
    for (const int64_t i : s.pairs_order) {
        const int64_t g = i / N, node = i % N;
        if (pack[g] >= 0 || s.node_fill[node] == G / N) continue;
        pack[g] = node;
        rank[g] = s.node_fill[node]++;
    }
}

// Renames the nodes of split (pack, rank) so that it shares the most groups with split `ref`
// (node pairs by descending shared groups, ties lower ids).
void align_split(const int64_t* ref, const Shape& sh, MigrateScratch& s, int64_t* pack) {
    const int64_t N = sh.nodes;
    s.overlap.assign(static_cast<size_t>(N * N), 0);
    for (int64_t g = 0; g < sh.groups; ++g) ++s.overlap[pack[g] * N + ref[g]];
    s.pairs_order.resize(static_cast<size_t>(N * N));
    for (int64_t i = 0; i < N * N; ++i) s.pairs_order[i] = i;
    std::stable_sort(s.pairs_order.begin(), s.pairs_order.end(),
                     [&](int64_t a, int64_t b) { return s.overlap[a] > s.overlap[b]; });
    s.rename.assign(static_cast<size_t>(N), -1);
    s.node_fill.assign(static_cast<size_t>(N), 0);  // 1: name taken
    for (const int64_t i : s.pairs_order) {
        const int64_t from = i / N, to = i % N;
        if (s.rename[from] >= 0 || s.node_fill[to] != 0) continue;
        s.rename[from] = to;
        s.node_fill[to] = 1;
    }
    for (int64_t g = 0; g < sh.groups; ++g) pack[g] = s.rename[pack[g]];
}

// What a split's re-plan cost and reached.
struct SplitResult {
    double peak;
    int64_t moves;
};

// Plans a layer from its old placement for one groups -> nodes split: each node's experts
// replicated with Adams' counts (tuned as the fresh planner would) as the target, then
// migrate_node on the node's GPUs. The layer's budget is shared out node by node: each node
// first gets the copies it cannot avoid (its slots holding other nodes' experts), then an even
// share of the rest, and leaves what it does not use to the nodes after it. Nothing when the
// budget is too small for this split.
std::optional<SplitResult> migrate_split(const double* w, const int64_t* old, const Shape& sh,
                                         const Options& opt, int64_t budget, MigrateScratch& s,
                                         const int64_t* group_pack, const int64_t* group_rank,
                                         int64_t* out_phy2log, int64_t* out_logcnt) {
    const NodeGeometry ng(sh);
    const int64_t N = sh.nodes, k = ng.slots_per_gpu;
    number_node_major(sh, group_pack, group_rank, s.numbering);
    // Old slots in node-local expert ids, -1 where a slot holds another node's expert.
    s.node_old.resize(static_cast<size_t>(sh.replicas));
    int64_t pools = 0;
    for (int64_t p = 0; p < sh.replicas; ++p) {
        const int64_t node = p / ng.slots, mlog = s.numbering.log2mlog[old[p]];
        const bool own = mlog / ng.experts == node;
        s.node_old[p] = own ? mlog - node * ng.experts : -1;
        pools += !own;
    }
    if (budget >= 0 && pools > budget) return std::nullopt;
    s.mlogcnt.resize(static_cast<size_t>(sh.experts));
    s.mlog_load.resize(static_cast<size_t>(ng.experts));
    s.experts.resize(static_cast<size_t>(ng.experts));
    s.phy2mlog.resize(static_cast<size_t>(ng.slots));
    s.phyrank.resize(static_cast<size_t>(ng.slots));
    s.trial_cnt.resize(static_cast<size_t>(ng.experts));
    s.node_out.resize(static_cast<size_t>(ng.slots));
    const int64_t* mlog2log_all = s.numbering.mlog2log.data();
    // No GPU gets below its node's mean, so no node needs refining below the busiest mean.
    double floor = 0.0;
    for (int64_t node = 0; node < N; ++node) {
        double sum = 0.0;
        for (int64_t j = 0; j < ng.experts; ++j) sum += w[mlog2log_all[node * ng.experts + j]];
        floor = std::max(floor, sum / static_cast<double>(ng.gpus));
    }
    // With a budget, the nodes whose old placement is busiest (at the new loads) go first:
    // they decide the layer's maximum.
    s.node_order.resize(static_cast<size_t>(N));
    for (int64_t node = 0; node < N; ++node) s.node_order[node] = node;
    if (budget >= 0 && N > 1) {
        s.node_peak.assign(static_cast<size_t>(N), 0.0);
        for (int64_t g = 0; g < sh.gpus; ++g) {
            double load = 0.0;
            for (int64_t r = 0; r < k; ++r) {
                const int64_t e = old[g * k + r];
                load += w[e] / static_cast<double>(s.old_cnt[e]);
            }
            const int64_t node = g / ng.gpus;
            s.node_peak[node] = std::max(s.node_peak[node], load);
        }
        std::stable_sort(s.node_order.begin(), s.node_order.end(),
                         [&](int64_t a, int64_t b) { return s.node_peak[a] > s.node_peak[b]; });
    }
    // At two or three slots per GPU the fresh planner may tune Adams' counts; aim at the
    // counts it would tune to, so that an unchanged layer is not re-counted.
    const bool tune =
        opt.refine == Refine::Local && k <= kCountSearchSlots && k >= 2 && ng.gpus >= 2;
    SplitResult result{0.0, 0};
    for (int64_t at = 0; at < N; ++at) {
        const int64_t node = s.node_order[at];
        const int64_t* mlog2log = mlog2log_all + node * ng.experts;
        for (int64_t j = 0; j < ng.experts; ++j) s.mlog_load[j] = w[mlog2log[j]];
        for (int64_t j = 0; j < ng.experts; ++j) s.experts[j] = Item{s.mlog_load[j], j};
        sort_items(s.experts, s.sort);
        replicate_sorted(s.mlog_load.data(), ng.experts, ng.slots, s.experts.data(), s.quotients,
                         s.phy2mlog.data(), s.phyrank.data(), s.trial_cnt.data());
        if (tune) {
            s.kept_cnt = s.trial_cnt;
            if (!improve_counts(s.mlog_load.data(), ng.experts, k, s.trial_cnt.data(), s.pairs,
                                nullptr)
                     .improved) {
                s.trial_cnt.swap(s.kept_cnt);
            }
        }
        const int64_t* node_old = s.node_old.data() + node * ng.slots;
        int64_t node_budget = -1;
        if (budget >= 0) {
            const int64_t pool = std::count(node_old, node_old + ng.slots, int64_t{-1});
            const int64_t spare = budget - result.moves - pools;
            node_budget = node_move_budget(pool, spare, N - at);  // ceiling share
            pools -= pool;
        }
        const NodeView view{s.mlog_load.data(), ng.experts, s.trial_cnt.data(),
                            node_old,           ng.gpus,    k};
        int64_t* cnt = s.mlogcnt.data() + node * ng.experts;
        const std::optional<NodeResult> planned =
            migrate_node(view, opt, node_budget, floor, s.node, s.node_out.data(), cnt);
        if (!planned) return std::nullopt;
        result.peak = std::max(result.peak, planned->peak);
        result.moves += planned->moves;
        for (int64_t i = 0; i < ng.slots; ++i) {
            out_phy2log[node * ng.slots + i] = mlog2log[s.node_out[i]];
        }
    }
    for (int64_t e = 0; e < sh.experts; ++e) {
        out_logcnt[e] = s.mlogcnt[s.numbering.log2mlog[e]];
    }
    return result;
}

// Replica ranks in slot order.
void ranks_by_slot(const int64_t* phy2log, int64_t P, int64_t experts, std::vector<int64_t>& seen,
                   int64_t* phyrank) {
    seen.assign(static_cast<size_t>(experts), 0);
    for (int64_t p = 0; p < P; ++p) phyrank[p] = seen[phy2log[p]]++;
}

// The split to plan from: the old one, unless the fresh planner's best split (named after the
// old nodes) lightens the busiest node by more than kSplitGain (planning both and comparing the
// results took a third of the time and chose the new split every time it was tried), then the
// old one, then all GPUs as one node, until one fits the budget.
std::optional<SplitResult> migrate_splits(const double* w, const int64_t* old, const Shape& sh,
                                          const Options& opt, int64_t budget, MigrateScratch& s,
                                          int64_t* phy2log, int64_t* logcnt) {
    s.group_pack.resize(static_cast<size_t>(sh.groups));
    s.group_rank.resize(static_cast<size_t>(sh.groups));
    if (sh.nodes == 1) {
        std::fill(s.group_pack.begin(), s.group_pack.end(), 0);
        for (int64_t g = 0; g < sh.groups; ++g) s.group_rank[g] = g;
        return migrate_split(w, old, sh, opt, budget, s, s.group_pack.data(), s.group_rank.data(),
                             phy2log, logcnt);
    }
    sum_groups(w, sh, s.split);
    old_split(old, sh, s, s.group_pack.data(), s.group_rank.data());
    s.greedy_pack.resize(static_cast<size_t>(sh.groups));
    s.greedy_rank.resize(static_cast<size_t>(sh.groups));
    choose_split(sh, opt, s.split, s.greedy_pack.data(), s.greedy_rank.data());
    align_split(s.group_pack.data(), sh, s, s.greedy_pack.data());
    const double kept_nodes = busiest_node(sh, s.group_pack.data(), s.split);
    const double new_nodes = busiest_node(sh, s.greedy_pack.data(), s.split);
    if (s.greedy_pack != s.group_pack && new_nodes < kept_nodes * (1.0 - kSplitGain)) {
        if (auto r = migrate_split(w, old, sh, opt, budget, s, s.greedy_pack.data(),
                                   s.greedy_rank.data(), phy2log, logcnt)) {
            return r;
        }
    }
    if (auto r = migrate_split(w, old, sh, opt, budget, s, s.group_pack.data(), s.group_rank.data(),
                               phy2log, logcnt)) {
        return r;
    }
    // The old placement does not follow the groups and the budget cannot move it into shape.
    Shape flat = sh;
    flat.groups = flat.nodes = 1;
    s.group_pack.assign(1, 0);
    s.group_rank.assign(1, 0);
    return migrate_split(w, old, flat, opt, budget, s, s.group_pack.data(), s.group_rank.data(),
                         phy2log, logcnt);
}

}  // namespace

int64_t node_move_budget(int64_t pool, int64_t spare, int64_t parts) {
    constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
    // spare + parts - 1 overflows only for spare > kMax - (parts - 1) > 0, where the ceiling
    // share is spare / parts rounded up.
    const int64_t share = spare > kMax - (parts - 1) ? spare / parts + (spare % parts != 0)
                                                     : (spare + (parts - 1)) / parts;
    return share > kMax - pool ? kMax : pool + share;
}

int64_t count_moves(const int64_t* old_slots, const int64_t* new_slots, int64_t gpus, int64_t k,
                    std::vector<int64_t>& stamp, int64_t experts) {
    stamp.assign(static_cast<size_t>(experts), -1);
    int64_t moves = 0;
    for (int64_t g = 0; g < gpus; ++g) {
        // stamp[e] == 2g: held before; 2g + 1: already counted on this GPU.
        for (int64_t r = 0; r < k; ++r) {
            if (old_slots[g * k + r] >= 0) stamp[old_slots[g * k + r]] = 2 * g;
        }
        for (int64_t r = 0; r < k; ++r) {
            const int64_t e = new_slots[g * k + r];
            if (stamp[e] == 2 * g || stamp[e] == 2 * g + 1) continue;
            stamp[e] = 2 * g + 1;
            ++moves;
        }
    }
    return moves;
}

double migrate_layer(const double* w, const int64_t* old, const Shape& sh, const Options& opt,
                     const Migration& mig, MigrateScratch& s, int64_t* phy2log, int64_t* phyrank,
                     int64_t* logcnt) {
    const int64_t E = sh.experts, P = sh.replicas;
    const double old_peak = placement_peak(w, old, E, P, sh.gpus, s.old_cnt);
    std::optional<double> peak;
    if (mig.max_moves != 0 && migrate_splits(w, old, sh, opt, mig.max_moves, s, phy2log, logcnt)) {
        // The search tracks loads incrementally; compare sums computed the same way for both.
        peak = placement_peak(w, phy2log, E, P, sh.gpus, s.new_cnt);
    }
    // A gain within rounding (1e-12) is no gain: it would move weights for nothing.
    if (!peak || !(*peak < old_peak * (1.0 - std::max(mig.min_gain, 1e-12)))) {
        std::copy(old, old + P, phy2log);
        std::copy(s.old_cnt.begin(), s.old_cnt.end(), logcnt);
        ranks_by_slot(phy2log, P, E, s.old_cnt, phyrank);
        return old_peak;
    }
    ranks_by_slot(phy2log, P, E, s.old_cnt, phyrank);
    return *peak;
}

}  // namespace fasteplb::detail
