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

// rank[i] = the number of items that come before item i in (load desc, index asc) order.
// O(n^2) comparisons, but independent and branch-free, so they vectorise: for the few dozen
// to few hundred items of one packing call this is several times faster than a comparison
// sort, whose cost here is mispredicted branches or a serial dependency chain.
FASTEPLB_SIMD_CLONES
void order_ranks(const double* w, int64_t n, int64_t* rank) {
    for (int64_t i = 0; i < n; ++i) {
        const double x = w[i];
        int64_t r = 0;
        for (int64_t j = 0; j < i; ++j) r += w[j] >= x;
        for (int64_t j = i + 1; j < n; ++j) r += w[j] > x;
        rank[i] = r;
    }
}

// Above this many items the quadratic ranking loses to a merge sort.
constexpr int64_t kRankSortMax = 384;

// Sorts items (which arrive in index order) by descending load, ties to the lower index.
void sort_items(std::vector<Item>& items, std::vector<Item>& buffer, std::vector<double>& load,
                std::vector<int64_t>& rank) {
    const int64_t n = static_cast<int64_t>(items.size());
    buffer.resize(items.size());
    if (n <= kRankSortMax) {
        load.resize(items.size());
        rank.resize(items.size());
        for (int64_t i = 0; i < n; ++i) load[i] = items[i].w;
        order_ranks(load.data(), n, rank.data());
        for (int64_t i = 0; i < n; ++i) buffer[rank[i]] = items[i];
        items.swap(buffer);
        return;
    }
    // Stable bottom-up merge sort: items start in index order, so keeping the left item on
    // equal loads gives the tie rule; the merge selects by index arithmetic, not a branch.
    Item* src = items.data();
    Item* dst = buffer.data();
    for (int64_t width = 1; width < n; width *= 2) {
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

struct PackScratch {
    std::vector<Item> order, sort_buffer;
    std::vector<double> sort_load, heavy_w, light_w, dist;
    std::vector<int64_t> sort_rank;
    std::vector<double> load;
    std::vector<int64_t> count;
    std::vector<int64_t> slot;  // [num_packs * per_pack]: item held at (pack, rank)
    std::vector<double> key;
    std::vector<int64_t> tree;
};

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
        int64_t best = 0;
        for (int64_t i = 1; i < c * c; ++i) best = dist[i] < dist[best] ? i : best;
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

// One packing problem: n items onto m packs of exactly c = n / m items. LPT with cardinality
// (items by descending load, each to the lightest pack with room), then optional swaps.
// c == 1 keeps item i in pack i, as DeepSeek's balanced_packing does.
void pack_one(const double* w, int64_t n, int64_t m, const Options& opt, PackScratch& s,
              int64_t* pack, int64_t* rank) {
    const int64_t c = n / m;
    if (c == 1) {
        for (int64_t i = 0; i < n; ++i) {
            pack[i] = i;
            rank[i] = 0;
        }
        return;
    }
    s.order.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) s.order[i] = Item{w[i], i};
    sort_items(s.order, s.sort_buffer, s.sort_load, s.sort_rank);

    s.load.assign(static_cast<size_t>(m), 0.0);
    s.count.assign(static_cast<size_t>(m), 0);
    s.slot.resize(static_cast<size_t>(n));
    // Winner tree over the packs' keys (load, or +inf once full): the root names the lightest
    // open pack, ties to the lower index, and an update costs log2(m) branch-free steps.
    // +inf is a safe "full" mark because check_weights keeps every load far below it.
    int64_t leaves = 1;
    while (leaves < m) leaves *= 2;
    s.key.assign(static_cast<size_t>(leaves), std::numeric_limits<double>::infinity());
    for (int64_t p = 0; p < m; ++p) s.key[p] = 0.0;
    s.tree.resize(static_cast<size_t>(2 * leaves));
    const double* key = s.key.data();
    int64_t* tree = s.tree.data();
    auto winner = [key](int64_t a, int64_t b) {
        const int64_t take_b = -static_cast<int64_t>(key[b] < key[a]);  // all ones or zero
        return a ^ ((a ^ b) & take_b);
    };
    for (int64_t q = 0; q < leaves; ++q) tree[leaves + q] = q;
    for (int64_t i = leaves - 1; i >= 1; --i) tree[i] = winner(tree[2 * i], tree[2 * i + 1]);
    for (const Item& it : s.order) {
        const int64_t p = tree[1];
        s.slot[p * c + s.count[p]] = it.idx;
        s.load[p] += it.w;
        s.key[p] = ++s.count[p] < c ? s.load[p] : std::numeric_limits<double>::infinity();
        for (int64_t i = (leaves + p) / 2; i >= 1; i /= 2) {
            tree[i] = winner(tree[2 * i], tree[2 * i + 1]);
        }
    }
    if (opt.refine == Refine::Swap && m > 1) swap_refine(w, m, c, opt.swap_rounds, s);

    for (int64_t p = 0; p < m; ++p) {
        for (int64_t r = 0; r < c; ++r) {
            const int64_t item = s.slot[p * c + r];
            pack[item] = p;
            rank[item] = r;
        }
    }
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
constexpr int64_t kScanWork = 4096;

// DeepSeek's greedy replication (Adams' divisor method). Slots [0, n) hold experts 0..n-1;
// extra slots follow in pick order. Only the first `extra` experts by (load desc, index asc)
// can receive a replica: an expert picked while a heavier one still has a single replica
// would contradict the pick rule, and with `extra` picks in all some candidate always still
// has one replica and beats every non-candidate. So the search runs over those candidates.
void replicate_one(const double* w, int64_t n, int64_t num_phy, std::vector<Quotient>& cand,
                   int64_t* phy2log, int64_t* rank, int64_t* logcnt) {
    for (int64_t e = 0; e < n; ++e) {
        phy2log[e] = e;
        rank[e] = 0;
        logcnt[e] = 1;
    }
    const int64_t extra = num_phy - n;
    if (extra == 0) return;
    cand.clear();
    if (extra >= n) {
        for (int64_t e = 0; e < n; ++e) cand.push_back(Quotient{w[e], e});
    } else {
        // Keep the `extra` first experts, sorted, by insertion; most experts are rejected by
        // a single comparison with the last kept one.
        for (int64_t e = 0; e < n; ++e) {
            const Quotient x{w[e], e};
            if (static_cast<int64_t>(cand.size()) == extra) {
                if (!before(x, cand.back())) continue;
                cand.pop_back();
            }
            auto pos = cand.end();
            while (pos != cand.begin() && before(x, *(pos - 1))) --pos;
            cand.insert(pos, x);
        }
    }
    const int64_t m = static_cast<int64_t>(cand.size());
    if (extra * m <= kScanWork) {
        Quotient* c = cand.data();
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
    std::vector<double> group_load, mlog_load, phy_load;
    std::vector<int64_t> group_pack, group_rank, log2mlog, mlog2log, mlogcnt;
    std::vector<int64_t> phy2mlog, phyrank, gpu_of_phy, rank_on_gpu;
};

struct Shape {
    int64_t experts, replicas, groups, nodes, gpus;
};

void rebalance_layer(const double* w, const Shape& sh, const Options& opt, LayerScratch& s,
                     int64_t* out_phy2log, int64_t* out_phyrank, int64_t* out_logcnt) {
    const int64_t E = sh.experts, P = sh.replicas;
    const int64_t group_size = E / sh.groups;
    const int64_t groups_per_node = sh.groups / sh.nodes;
    const int64_t experts_per_node = E / sh.nodes;
    const int64_t slots_per_node = P / sh.nodes;
    const int64_t gpus_per_node = sh.gpus / sh.nodes;
    const int64_t slots_per_gpu = P / sh.gpus;

    // Step 1: groups -> nodes. Explicit sequential sums keep the reference bit-identical.
    s.group_load.resize(static_cast<size_t>(sh.groups));
    for (int64_t g = 0; g < sh.groups; ++g) {
        double sum = 0.0;
        for (int64_t j = 0; j < group_size; ++j) sum += w[g * group_size + j];
        s.group_load[g] = sum;
    }
    s.group_pack.resize(static_cast<size_t>(sh.groups));
    s.group_rank.resize(static_cast<size_t>(sh.groups));
    pack_one(s.group_load.data(), sh.groups, sh.nodes, opt, s.pack, s.group_pack.data(),
             s.group_rank.data());

    // "mlog" numbers experts node-major: node n owns mlog ids [n * E/N, (n + 1) * E/N).
    s.log2mlog.resize(static_cast<size_t>(E));
    s.mlog2log.resize(static_cast<size_t>(E));
    for (int64_t g = 0; g < sh.groups; ++g) {
        const int64_t base = (s.group_pack[g] * groups_per_node + s.group_rank[g]) * group_size;
        for (int64_t j = 0; j < group_size; ++j) {
            s.log2mlog[g * group_size + j] = base + j;
            s.mlog2log[base + j] = g * group_size + j;
        }
    }

    // Steps 2 and 3 per node: replicate with budget P/N, then pack replicas onto its GPUs.
    s.mlogcnt.resize(static_cast<size_t>(E));
    s.mlog_load.resize(static_cast<size_t>(experts_per_node));
    s.phy_load.resize(static_cast<size_t>(slots_per_node));
    s.phy2mlog.resize(static_cast<size_t>(slots_per_node));
    s.phyrank.resize(static_cast<size_t>(slots_per_node));
    s.gpu_of_phy.resize(static_cast<size_t>(slots_per_node));
    s.rank_on_gpu.resize(static_cast<size_t>(slots_per_node));
    for (int64_t node = 0; node < sh.nodes; ++node) {
        const int64_t* mlog2log = s.mlog2log.data() + node * experts_per_node;
        int64_t* mlogcnt = s.mlogcnt.data() + node * experts_per_node;
        for (int64_t j = 0; j < experts_per_node; ++j) s.mlog_load[j] = w[mlog2log[j]];
        replicate_one(s.mlog_load.data(), experts_per_node, slots_per_node, s.quotients,
                      s.phy2mlog.data(), s.phyrank.data(), mlogcnt);
        for (int64_t i = 0; i < slots_per_node; ++i) {
            const int64_t j = s.phy2mlog[i];
            s.phy_load[i] = s.mlog_load[j] / static_cast<double>(mlogcnt[j]);
        }
        pack_one(s.phy_load.data(), slots_per_node, gpus_per_node, opt, s.pack,
                 s.gpu_of_phy.data(), s.rank_on_gpu.data());
        int64_t* node_phy2log = out_phy2log + node * slots_per_node;
        int64_t* node_phyrank = out_phyrank + node * slots_per_node;
        for (int64_t i = 0; i < slots_per_node; ++i) {
            const int64_t slot = s.gpu_of_phy[i] * slots_per_gpu + s.rank_on_gpu[i];
            node_phy2log[slot] = mlog2log[s.phy2mlog[i]];
            node_phyrank[slot] = s.phyrank[i];
        }
    }
    for (int64_t e = 0; e < E; ++e) out_logcnt[e] = s.mlogcnt[s.log2mlog[e]];
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
            pack_one(weight + r * n, n, num_packs, opt, s, pack_index + r * n,
                     rank_in_pack + r * n);
        });
}

void replicate_experts(const double* weight, int64_t rows, int64_t num_log, int64_t num_phy,
                       const Options& opt, int64_t* phy2log, int64_t* rank, int64_t* logcnt) {
    check_options(opt);
    require(rows >= 0 && num_log >= 1, "weight must have at least one expert per row");
    require(num_phy >= num_log, "num_phy must be >= the number of experts");
    check_weights(weight, rows, num_log, "weight");
    parallel_rows(
        rows, opt.num_threads, [] { return std::vector<Quotient>{}; },
        [&](std::vector<Quotient>& heap, int64_t r) {
            replicate_one(weight + r * num_log, num_log, num_phy, heap, phy2log + r * num_phy,
                          rank + r * num_phy, logcnt + r * num_log);
        });
}

void rebalance_experts(const double* weight, int64_t layers, int64_t experts,
                       int64_t num_replicas, int64_t num_groups, int64_t num_nodes,
                       int64_t num_gpus, const Options& opt, int64_t* phy2log, int64_t* phyrank,
                       int64_t* logcnt) {
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
    parallel_rows(
        layers, opt.num_threads, [] { return LayerScratch{}; },
        [&](LayerScratch& s, int64_t l) {
            rebalance_layer(weight + l * experts, sh, opt, s, phy2log + l * num_replicas,
                            phyrank + l * num_replicas, logcnt + l * experts);
        });
}

int64_t max_count(const int64_t* logcnt, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 0; i < n; ++i) best = std::max(best, logcnt[i]);
    return best;
}

void fill_log2phy(const int64_t* phy2log, const int64_t* phyrank, int64_t layers,
                  int64_t experts, int64_t num_replicas, int64_t max_cnt, int64_t* log2phy) {
    std::fill(log2phy, log2phy + layers * experts * max_cnt, int64_t{-1});
    for (int64_t l = 0; l < layers; ++l) {
        int64_t* out = log2phy + l * experts * max_cnt;
        for (int64_t p = 0; p < num_replicas; ++p) {
            const int64_t e = phy2log[l * num_replicas + p];
            const int64_t r = phyrank[l * num_replicas + p];
            require(e >= 0 && e < experts && r >= 0 && r < max_cnt,
                    "internal error: replica out of range while building log2phy");
            out[e * max_cnt + r] = p;
        }
    }
}

}  // namespace fasteplb
