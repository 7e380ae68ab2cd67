#include "fasteplb/eplb.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <stdexcept>
#include <utility>
#include <vector>

#include "fasteplb/parallel.hpp"

namespace fasteplb {
namespace {

constexpr double kMaxRowTotal = 1e300;

void require(bool ok, const char* message) {
    if (!ok) throw std::invalid_argument(message);
}

struct Item {
    double w;
    int64_t idx;
};

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define FASTEPLB_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FASTEPLB_SIMD_CLONES
#endif

// above[i] = the number of keys strictly greater than key i. O(n^2) comparisons, but
// independent and branch-free, so they vectorise (8 floats a step with AVX2): for the few
// dozen items of one block this is several times faster than a comparison sort, whose cost
// here is mispredicted branches or a serial dependency chain. `key` is padded with -inf up
// to `padded` (a multiple of 8), which never counts, so no scalar remainder loop runs.
FASTEPLB_SIMD_CLONES
void count_above(const float* key, int32_t n, int32_t padded, int32_t* above) {
    for (int32_t i = 0; i < n; ++i) {
        const float x = key[i];
        int32_t r = 0;
        for (int32_t j = 0; j < padded; ++j) r += key[j] > x;
        above[i] = r;
    }
}

// Sorts one block of items (in index order on entry) by descending load, ties to the lower
// index: rank on float keys, then repair with exact comparisons. Rounding a double to float
// never reverses an order, so only items with equal float keys can be out of order, and
// they end up adjacent: the insertion pass finds them in about n steps. Scaling by a power
// of two (exact) keeps large loads inside float range.
void rank_sort_block(Item* items, int64_t n, Item* buffer, std::vector<float>& key,
                     std::vector<int32_t>& rank, std::vector<int32_t>& seen) {
    double top = 0.0;
    for (int64_t i = 0; i < n; ++i) top = std::max(top, items[i].w);
    int exponent = 0;
    std::frexp(top, &exponent);
    const double scale = std::ldexp(1.0, std::min(1000, 100 - exponent));
    const int64_t padded = (n + 7) / 8 * 8;
    key.assign(static_cast<size_t>(padded), -std::numeric_limits<float>::infinity());
    rank.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) key[i] = static_cast<float>(items[i].w * scale);
    count_above(key.data(), static_cast<int32_t>(n), static_cast<int32_t>(padded), rank.data());
    // Items with equal keys share a count; visiting items in index order and giving each the
    // next free position after its count places them by ascending index.
    seen.assign(static_cast<size_t>(n), 0);
    for (int64_t i = 0; i < n; ++i) buffer[rank[i] + seen[rank[i]]++] = items[i];
    std::copy(buffer, buffer + n, items);
    // Equal float keys are ranked by index, so equal doubles are already in order: only a
    // strictly heavier item after a lighter one needs repair. Check first, branch-free.
    bool disordered = false;
    for (int64_t i = 1; i < n; ++i) disordered |= items[i].w > items[i - 1].w;
    if (!disordered) return;
    for (int64_t i = 1; i < n; ++i) {
        for (int64_t j = i; j > 0; --j) {
            const Item& a = items[j - 1];
            const Item& b = items[j];
            if (!(b.w > a.w || (b.w == a.w && b.idx < a.idx))) break;
            std::swap(items[j - 1], items[j]);
        }
    }
}

// Up to this many items are ranked as one block; larger inputs are ranked in blocks of
// kBlock and merged, since ranking is quadratic.
constexpr int64_t kSingleBlock = 96;
constexpr int64_t kBlock = 64;

// Sorts items (which arrive in index order) by descending load, ties to the lower index.
void sort_items(std::vector<Item>& items, std::vector<Item>& buffer, std::vector<float>& key,
                std::vector<int32_t>& rank, std::vector<int32_t>& seen) {
    const int64_t n = static_cast<int64_t>(items.size());
    buffer.resize(items.size());
    const int64_t block = n <= kSingleBlock ? n : kBlock;
    for (int64_t lo = 0; lo < n; lo += block) {
        rank_sort_block(items.data() + lo, std::min(block, n - lo), buffer.data() + lo, key, rank,
                        seen);
    }
    // Stable bottom-up merges of the sorted blocks, which hold ascending index ranges:
    // keeping the left item on equal loads keeps the tie rule; the merge selects by index
    // arithmetic, not a branch, to avoid mispredictions.
    Item* src = items.data();
    Item* dst = buffer.data();
    for (int64_t width = block; width < n; width *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * width) {
            const int64_t mid = std::min(lo + width, n), hi = std::min(lo + 2 * width, n);
            int64_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                const int64_t right = src[j].w > src[i].w;
                dst[k++] = src[i + ((j - i) & -right)];
                j += right;
                i += 1 - right;
            }
            while (i < mid) dst[k++] = src[i++];
            while (j < hi) dst[k++] = src[j++];
        }
        std::swap(src, dst);
    }
    if (src != items.data()) std::copy(src, src + n, items.data());
}

struct PackNode {
    double key;
    int64_t idx;
};

struct PackScratch {
    std::vector<Item> order, sort_buffer;
    std::vector<float> sort_key;
    std::vector<double> weight, heavy_w, light_w, dist;
    std::vector<int32_t> sort_rank, sort_seen;
    std::vector<double> load;
    std::vector<int64_t> count;
    std::vector<int64_t> slot;  // [num_packs * per_pack]: item held at (pack, rank)
    std::vector<PackNode> tree;
};

// Index of the first smallest of x[0..n), n >= 1. Four interleaved running minima (each keeps
// its first index on ties) shorten the dependency chain; merging them by (value, index)
// restores the first-index rule.
int64_t first_min(const double* x, int64_t n) {
    double v[4];
    int64_t at[4];
    const int64_t lanes = std::min<int64_t>(4, n);
    for (int64_t k = 0; k < lanes; ++k) {
        v[k] = x[k];
        at[k] = k;
    }
    int64_t i = lanes;
    for (; i + 4 <= n; i += 4) {
        for (int64_t k = 0; k < 4; ++k) {
            const bool less = x[i + k] < v[k];
            v[k] = less ? x[i + k] : v[k];
            at[k] = less ? i + k : at[k];
        }
    }
    for (int64_t k = 0; i < n; ++i, ++k) {
        const bool less = x[i] < v[k];
        v[k] = less ? x[i] : v[k];
        at[k] = less ? i : at[k];
    }
    int64_t best = 0;
    for (int64_t k = 1; k < lanes; ++k) {
        if (v[k] < v[best] || (v[k] == v[best] && at[k] < at[best])) best = k;
    }
    return at[best];
}

// The seed's refinement: take the heaviest and the lightest pack (ties: lower index) and swap
// the pair (u from the heaviest, v from the lightest) with 0 < w_u - w_v < gap whose
// difference is closest to gap / 2 (ties: lower rank of u, then of v). Each swap leaves both
// packs strictly below the old maximum, so the maximum never rises.
void swap_refine(const double* w, int64_t m, int64_t c, int rounds, PackScratch& s) {
    double* load = s.load.data();
    int64_t* slot = s.slot.data();
    s.heavy_w.resize(static_cast<size_t>(c));
    s.light_w.resize(static_cast<size_t>(c));
    s.dist.resize(static_cast<size_t>(c * c));
    double* hw = s.heavy_w.data();
    double* lw = s.light_w.data();
    double* dist = s.dist.data();
    const double inf = std::numeric_limits<double>::infinity();
    for (int round = 0; round < rounds; ++round) {
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

// Merges two runs sorted by (load desc, index asc) into out, branch-free.
void merge_items(const Item* a, int64_t na, const Item* b, int64_t nb, Item* out) {
    int64_t i = 0, j = 0, k = 0;
    while (i < na && j < nb) {
        const int64_t right = (b[j].w > a[i].w) | ((b[j].w == a[i].w) & (b[j].idx < a[i].idx));
        out[k++] = *(right ? b + j : a + i);
        j += right;
        i += 1 - right;
    }
    while (i < na) out[k++] = a[i++];
    while (j < nb) out[k++] = b[j++];
}

double pack_sorted(int64_t n, int64_t m, Refine refine, int rounds, PackScratch& s,
                   int64_t* pack, int64_t* rank);

// One packing problem: n items onto m packs of exactly c = n / m items. LPT with cardinality
// (items by descending load, each to the lightest pack with room), then optional swaps.
// c == 1 keeps item i in pack i, as DeepSeek's balanced_packing does. Returns the largest
// pack load.
double pack_one(const double* w, int64_t n, int64_t m, Refine refine, int rounds,
                PackScratch& s, int64_t* pack, int64_t* rank) {
    s.order.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) s.order[i] = Item{w[i], i};
    if (n / m > 1) sort_items(s.order, s.sort_buffer, s.sort_key, s.sort_rank, s.sort_seen);
    return pack_sorted(n, m, refine, rounds, s, pack, rank);
}

// pack_one's work once s.order holds the items (load, index) sorted by (load desc, index
// asc); c == 1 ignores the order.
double pack_sorted(int64_t n, int64_t m, Refine refine, int rounds, PackScratch& s,
                   int64_t* pack, int64_t* rank) {
    const int64_t c = n / m;
    if (c == 1) {
        double peak = 0.0;
        for (const Item& it : s.order) {
            pack[it.idx] = it.idx;
            rank[it.idx] = 0;
            peak = std::max(peak, it.w);
        }
        return peak;
    }
    s.load.assign(static_cast<size_t>(m), 0.0);
    s.count.assign(static_cast<size_t>(m), 0);
    s.slot.resize(static_cast<size_t>(n));
    double* load = s.load.data();
    int64_t* count = s.count.data();
    int64_t* slot = s.slot.data();
    // Winner tree over the packs' keys (load, or +inf once full): the root names the lightest
    // open pack, ties to the lower index (left subtrees hold lower indices). Nodes carry the
    // key itself, and an update walks up with the winner in registers, so each level costs
    // one compare and select. +inf is a safe "full" mark: check_weights keeps loads finite.
    const double inf = std::numeric_limits<double>::infinity();
    int64_t leaves = 1;
    while (leaves < m) leaves *= 2;
    s.tree.resize(static_cast<size_t>(2 * leaves));
    PackNode* tree = s.tree.data();
    for (int64_t q = 0; q < leaves; ++q) tree[leaves + q] = PackNode{q < m ? 0.0 : inf, q};
    for (int64_t i = leaves - 1; i >= 1; --i) {
        const PackNode& l = tree[2 * i];
        const PackNode& r = tree[2 * i + 1];
        tree[i] = r.key < l.key ? r : l;
    }
    int64_t p = tree[1].idx;
    for (const Item& it : s.order) {
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
    if (refine == Refine::Swap && m > 1) {
        s.weight.resize(static_cast<size_t>(n));
        for (const Item& it : s.order) s.weight[it.idx] = it.w;
        swap_refine(s.weight.data(), m, c, rounds, s);
    }

    double peak = 0.0;
    for (int64_t q = 0; q < m; ++q) {
        peak = std::max(peak, load[q]);
        for (int64_t r = 0; r < c; ++r) {
            const int64_t item = slot[q * c + r];
            pack[item] = q;
            rank[item] = r;
        }
    }
    return peak;
}

// (load per replica, expert): `before` orders by larger load, ties to the lower expert.
struct Quotient {
    double q;
    int64_t e;
};
inline bool before(const Quotient& a, const Quotient& b) {
    return (a.q > b.q) | ((a.q == b.q) & (a.e < b.e));
}
struct SmallerQuotient {  // heap order: the top is the first by `before`
    bool operator()(const Quotient& a, const Quotient& b) const { return before(b, a); }
};

// Above this many (extra slots x candidates) steps, replication uses a heap instead of scans.
constexpr int64_t kScanWork = 256;

// DeepSeek's greedy replication (Adams' divisor method). Slots [0, n) hold experts 0..n-1;
// extra slots follow in pick order. `order` lists the experts by (load desc, index asc).
// Only the first `extra` of them can receive a replica: an expert picked while a heavier one
// still has a single replica would contradict the pick rule, and with `extra` picks in all
// some candidate always still has one replica and beats every non-candidate. So the search
// runs over those candidates.
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

struct LayerScratch {
    PackScratch pack;
    std::vector<Quotient> quotients;
    std::vector<double> group_load, mlog_load, phy_load, node_load;
    std::vector<int64_t> group_pack, group_rank, greedy_pack, greedy_rank;
    std::vector<int64_t> log2mlog, mlog2log, mlogcnt;
    std::vector<int64_t> phy2mlog, phyrank, gpu_of_phy, rank_on_gpu;
    std::vector<int64_t> alt_phy2log, alt_phyrank, alt_logcnt;
    std::vector<Item> experts, single, multi;
};

struct ReplicateScratch {
    std::vector<Item> experts, buffer;
    std::vector<float> key;
    std::vector<int32_t> rank, seen;
    std::vector<Quotient> quotients;
};

struct Shape {
    int64_t experts, replicas, groups, nodes, gpus;
};

// Steps 2 and 3 for a given groups -> nodes partition: replicate inside each node with budget
// P/N, then pack each node's replicas onto its GPUs. Returns the layer's largest GPU load.
double place_layer(const double* w, const Shape& sh, const Options& opt, LayerScratch& s,
                   const int64_t* group_pack, const int64_t* group_rank, int64_t* out_phy2log,
                   int64_t* out_phyrank, int64_t* out_logcnt) {
    const int64_t E = sh.experts, P = sh.replicas;
    const int64_t group_size = E / sh.groups;
    const int64_t groups_per_node = sh.groups / sh.nodes;
    const int64_t experts_per_node = E / sh.nodes;
    const int64_t slots_per_node = P / sh.nodes;
    const int64_t gpus_per_node = sh.gpus / sh.nodes;
    const int64_t slots_per_gpu = P / sh.gpus;

    // "mlog" numbers experts node-major: node n owns mlog ids [n * E/N, (n + 1) * E/N).
    s.log2mlog.resize(static_cast<size_t>(E));
    s.mlog2log.resize(static_cast<size_t>(E));
    for (int64_t g = 0; g < sh.groups; ++g) {
        const int64_t base = (group_pack[g] * groups_per_node + group_rank[g]) * group_size;
        for (int64_t j = 0; j < group_size; ++j) {
            s.log2mlog[g * group_size + j] = base + j;
            s.mlog2log[base + j] = g * group_size + j;
        }
    }
    s.mlogcnt.resize(static_cast<size_t>(E));
    s.mlog_load.resize(static_cast<size_t>(experts_per_node));
    s.experts.resize(static_cast<size_t>(experts_per_node));
    s.phy_load.resize(static_cast<size_t>(slots_per_node));
    s.phy2mlog.resize(static_cast<size_t>(slots_per_node));
    s.phyrank.resize(static_cast<size_t>(slots_per_node));
    s.gpu_of_phy.resize(static_cast<size_t>(slots_per_node));
    s.rank_on_gpu.resize(static_cast<size_t>(slots_per_node));
    double peak = 0.0;
    for (int64_t node = 0; node < sh.nodes; ++node) {
        const int64_t* mlog2log = s.mlog2log.data() + node * experts_per_node;
        int64_t* mlogcnt = s.mlogcnt.data() + node * experts_per_node;
        for (int64_t j = 0; j < experts_per_node; ++j) {
            s.mlog_load[j] = w[mlog2log[j]];
            s.experts[j] = Item{s.mlog_load[j], j};
        }
        sort_items(s.experts, s.pack.sort_buffer, s.pack.sort_key, s.pack.sort_rank,
                   s.pack.sort_seen);
        replicate_sorted(s.mlog_load.data(), experts_per_node, slots_per_node,
                         s.experts.data(), s.quotients, s.phy2mlog.data(), s.phyrank.data(),
                         mlogcnt);
        // The replicas in (load desc, slot asc) order, for the packer: experts that kept a
        // single replica stay in the order just computed (slot j holds expert j, load / 1 is
        // exact); the replicas of replicated experts are sorted apart and merged in.
        s.single.clear();
        for (const Item& it : s.experts) {
            if (mlogcnt[it.idx] == 1) s.single.push_back(it);
        }
        s.multi.clear();
        for (int64_t i = 0; i < slots_per_node; ++i) {
            const int64_t j = s.phy2mlog[i];
            s.phy_load[i] = s.mlog_load[j] / static_cast<double>(mlogcnt[j]);
            if (mlogcnt[j] > 1) s.multi.push_back(Item{s.phy_load[i], i});
        }
        sort_items(s.multi, s.pack.sort_buffer, s.pack.sort_key, s.pack.sort_rank,
                   s.pack.sort_seen);
        s.pack.order.resize(static_cast<size_t>(slots_per_node));
        merge_items(s.single.data(), static_cast<int64_t>(s.single.size()), s.multi.data(),
                    static_cast<int64_t>(s.multi.size()), s.pack.order.data());
        const double node_peak =
            pack_sorted(slots_per_node, gpus_per_node, opt.refine, opt.swap_rounds, s.pack,
                        s.gpu_of_phy.data(), s.rank_on_gpu.data());
        peak = std::max(peak, node_peak);
        int64_t* node_phy2log = out_phy2log + node * slots_per_node;
        int64_t* node_phyrank = out_phyrank + node * slots_per_node;
        for (int64_t i = 0; i < slots_per_node; ++i) {
            const int64_t slot = s.gpu_of_phy[i] * slots_per_gpu + s.rank_on_gpu[i];
            node_phy2log[slot] = mlog2log[s.phy2mlog[i]];
            node_phyrank[slot] = s.phyrank[i];
        }
    }
    for (int64_t e = 0; e < E; ++e) out_logcnt[e] = s.mlogcnt[s.log2mlog[e]];
    return peak;
}

void rebalance_layer(const double* w, const Shape& sh, const Options& opt, LayerScratch& s,
                     int64_t* out_phy2log, int64_t* out_phyrank, int64_t* out_logcnt) {
    const int64_t group_size = sh.experts / sh.groups;
    // Step 1: groups -> nodes. Explicit sequential sums keep the reference bit-identical.
    s.group_load.resize(static_cast<size_t>(sh.groups));
    for (int64_t g = 0; g < sh.groups; ++g) {
        double sum = 0.0;
        for (int64_t j = 0; j < group_size; ++j) sum += w[g * group_size + j];
        s.group_load[g] = sum;
    }
    s.group_pack.resize(static_cast<size_t>(sh.groups));
    s.group_rank.resize(static_cast<size_t>(sh.groups));
    pack_one(s.group_load.data(), sh.groups, sh.nodes, opt.refine, opt.swap_rounds, s.pack,
             s.group_pack.data(), s.group_rank.data());
    const double peak = place_layer(w, sh, opt, s, s.group_pack.data(), s.group_rank.data(),
                                    out_phy2log, out_phyrank, out_logcnt);
    if (opt.refine == Refine::None || sh.nodes == 1) return;

    // Evening out node loads changes what each node replicates, which can leave some GPU
    // busier than under the greedy partition. Keep the greedy partition in that case, so
    // that refinement never raises a layer's largest GPU load.
    s.greedy_pack.resize(static_cast<size_t>(sh.groups));
    s.greedy_rank.resize(static_cast<size_t>(sh.groups));
    pack_one(s.group_load.data(), sh.groups, sh.nodes, Refine::None, 0, s.pack,
             s.greedy_pack.data(), s.greedy_rank.data());
    if (s.greedy_pack == s.group_pack && s.greedy_rank == s.group_rank) return;
    // No GPU can carry less than its node's mean, so when the greedy split's busiest node
    // already averages at least `peak`, that split cannot win: skip planning it. The margin
    // covers rounding in the sums (relative error below n * 2^-53 for n < 2^20 terms).
    const int64_t gpus_per_node = sh.gpus / sh.nodes;
    s.node_load.assign(static_cast<size_t>(sh.nodes), 0.0);
    for (int64_t g = 0; g < sh.groups; ++g) s.node_load[s.greedy_pack[g]] += s.group_load[g];
    const double busiest = *std::max_element(s.node_load.begin(), s.node_load.end());
    if (peak <= busiest / static_cast<double>(gpus_per_node) * (1.0 - 1e-9)) return;
    s.alt_phy2log.resize(static_cast<size_t>(sh.replicas));
    s.alt_phyrank.resize(static_cast<size_t>(sh.replicas));
    s.alt_logcnt.resize(static_cast<size_t>(sh.experts));
    const double greedy_peak =
        place_layer(w, sh, opt, s, s.greedy_pack.data(), s.greedy_rank.data(),
                    s.alt_phy2log.data(), s.alt_phyrank.data(), s.alt_logcnt.data());
    if (greedy_peak < peak) {
        std::copy(s.alt_phy2log.begin(), s.alt_phy2log.end(), out_phy2log);
        std::copy(s.alt_phyrank.begin(), s.alt_phyrank.end(), out_phyrank);
        std::copy(s.alt_logcnt.begin(), s.alt_logcnt.end(), out_logcnt);
    }
}

void check_options(const Options& opt) {
    require(opt.swap_rounds >= 0, "swap_rounds must be >= 0");
}

}  // namespace

Refine parse_refine(const std::string& name) {
    if (name == "none") return Refine::None;
    if (name == "swap") return Refine::Swap;
    throw std::invalid_argument("refine must be one of 'swap', 'none'; got '" + name + "'");
}

void check_weights(const double* weight, int64_t rows, int64_t cols, const char* name) {
    for (int64_t r = 0; r < rows; ++r) {
        const double* row = weight + r * cols;
        double total = 0.0;
        for (int64_t j = 0; j < cols; ++j) {
            const double x = row[j];
            if (!(x >= 0.0) || std::isinf(x)) {
                // Spell NaN without its sign bit so the message matches Python's formatting.
                char value[32];
                if (std::isnan(x)) {
                    std::snprintf(value, sizeof value, "nan");
                } else {
                    std::snprintf(value, sizeof value, "%g", x);
                }
                char buf[256];
                std::snprintf(buf, sizeof buf,
                              "%s must be finite and non-negative; found %s at [%lld, %lld]",
                              name, value, static_cast<long long>(r), static_cast<long long>(j));
                throw std::invalid_argument(buf);
            }
            total += x;
        }
        // Keeps every pack load (a partial sum in any order) far from overflow, which lets
        // the packer use +inf as its "pack full" mark.
        if (!(total <= kMaxRowTotal)) {
            char buf[256];
            std::snprintf(buf, sizeof buf, "%s's row sums must be <= 1e300; row %lld sums to %g",
                          name, static_cast<long long>(r), total);
            throw std::invalid_argument(buf);
        }
    }
}

void balanced_packing(const double* weight, int64_t rows, int64_t n, int64_t num_packs,
                      const Options& opt, int64_t* pack_index, int64_t* rank_in_pack) {
    check_options(opt);
    require(rows >= 0 && n >= 1, "weight must have at least one item per row");
    require(num_packs >= 1, "num_packs must be >= 1");
    require(n % num_packs == 0, "the number of items must be divisible by num_packs");
    check_weights(weight, rows, n, "weight");
    parallel_rows(
        rows, opt.num_threads, [] { return PackScratch{}; },
        [&](PackScratch& s, int64_t r) {
            pack_one(weight + r * n, n, num_packs, opt.refine, opt.swap_rounds, s,
                     pack_index + r * n, rank_in_pack + r * n);
        });
}

void replicate_experts(const double* weight, int64_t rows, int64_t num_log, int64_t num_phy,
                       const Options& opt, int64_t* phy2log, int64_t* rank, int64_t* logcnt) {
    check_options(opt);
    require(rows >= 0 && num_log >= 1, "weight must have at least one expert per row");
    require(num_phy >= num_log, "num_phy must be >= the number of experts");
    check_weights(weight, rows, num_log, "weight");
    parallel_rows(
        rows, opt.num_threads, [] { return ReplicateScratch{}; },
        [&](ReplicateScratch& s, int64_t r) {
            const double* w = weight + r * num_log;
            s.experts.resize(static_cast<size_t>(num_log));
            for (int64_t e = 0; e < num_log; ++e) s.experts[e] = Item{w[e], e};
            sort_items(s.experts, s.buffer, s.key, s.rank, s.seen);
            replicate_sorted(w, num_log, num_phy, s.experts.data(), s.quotients,
                             phy2log + r * num_phy, rank + r * num_phy, logcnt + r * num_log);
        });
}

void rebalance_experts(const double* weight, int64_t layers, int64_t experts,
                       int64_t num_replicas, int64_t num_groups, int64_t num_nodes,
                       int64_t num_gpus, const Options& opt, int64_t* phy2log, int64_t* phyrank,
                       int64_t* logcnt, const Log2PhyAlloc& alloc) {
    check_options(opt);
    require(layers >= 0 && experts >= 1, "weight must have at least one expert per layer");
    require(num_replicas >= 1 && num_groups >= 1 && num_nodes >= 1 && num_gpus >= 1,
            "num_replicas, num_groups, num_nodes and num_gpus must be >= 1");
    require(num_replicas >= experts, "num_replicas must be >= the number of experts");
    require(num_replicas % num_gpus == 0, "num_replicas must be divisible by num_gpus");
    require(num_gpus % num_nodes == 0, "num_gpus must be divisible by num_nodes");
    require(experts % num_groups == 0, "the number of experts must be divisible by num_groups");
    check_weights(weight, layers, experts, "weight");
    Shape sh{experts, num_replicas, num_groups, num_nodes, num_gpus};
    if (num_groups % num_nodes != 0) sh.groups = sh.nodes = 1;  // global policy
    auto plan = [&](LayerScratch& s, int64_t l) {
        rebalance_layer(weight + l * experts, sh, opt, s, phy2log + l * num_replicas,
                        phyrank + l * num_replicas, logcnt + l * experts);
    };
    if (!alloc) {
        parallel_rows(layers, opt.num_threads, [] { return LayerScratch{}; }, plan);
        return;
    }
    // log2phy's last dimension is the largest count over all layers, so it is allocated
    // between the planning pass and the filling pass, on the same threads.
    int64_t* log2phy = nullptr;
    int64_t max_cnt = 0;
    parallel_two_pass(
        layers, opt.num_threads, [] { return LayerScratch{}; }, plan,
        [&] {
            max_cnt = layers > 0 ? *std::max_element(logcnt, logcnt + layers * experts) : 0;
            log2phy = alloc(max_cnt);
        },
        [&](LayerScratch&, int64_t l) {
            int64_t* out = log2phy + l * experts * max_cnt;
            std::fill(out, out + experts * max_cnt, int64_t{-1});
            for (int64_t p = 0; p < num_replicas; ++p) {
                const int64_t e = phy2log[l * num_replicas + p];
                out[e * max_cnt + phyrank[l * num_replicas + p]] = p;
            }
        });
}

}  // namespace fasteplb
