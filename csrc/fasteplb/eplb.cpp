#include "fasteplb/eplb.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <thread>
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

// Moves a[at], whose key just changed, to its place in the otherwise sorted a[0..n) (by
// `less`), by adjacent swaps: the element usually moves only a few places.
template <class T, class Less>
void sift_into_place(T* a, int64_t n, int64_t at, Less less) {
    while (at > 0 && less(a[at], a[at - 1])) {
        std::swap(a[at], a[at - 1]);
        --at;
    }
    while (at + 1 < n && less(a[at + 1], a[at])) {
        std::swap(a[at], a[at + 1]);
        ++at;
    }
}

// ---- CPU-specific kernels ---------------------------------------------------------------
// count_above and first_min are compiled twice on x86-64 with GCC or Clang (one source inlined
// into an AVX2 and a baseline function; elsewhere only the baseline), and called through a table
// chosen once per process, on first use (a thread-safe static), from the CPU's features. This
// replaces target_clones, whose ifunc resolvers run before the sanitizer runtimes are
// initialised (ThreadSanitizer crashed on them, and AddressSanitizer builds had to compile them
// out), so both versions now run under every sanitizer. FASTEPLB_SIMD=default in the
// environment (read once) forces the baseline kernels; set_simd_kernels() switches for tests.
// Both versions compute the same integers (comparisons and an integer minimum, no
// floating-point arithmetic), so plans are bit-identical whichever runs.
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define FASTEPLB_AVX2_KERNELS 1
#define FASTEPLB_KERNEL_BODY inline __attribute__((always_inline))
#else
#define FASTEPLB_AVX2_KERNELS 0
#define FASTEPLB_KERNEL_BODY inline
#endif

// above[i] = the number of keys strictly greater than key i. O(n^2) comparisons, but
// independent and branch-free, so they vectorise (8 floats a step with AVX2): for the few
// dozen items of one block this is several times faster than a comparison sort, whose cost
// here is mispredicted branches or a serial dependency chain. `key` is padded with -inf up
// to `padded` (a multiple of 8), which never counts, so no scalar remainder loop runs.
FASTEPLB_KERNEL_BODY void count_above_body(const float* key, int32_t n, int32_t padded,
                                           int32_t* above) {
    for (int32_t i = 0; i < n; ++i) {
        const float x = key[i];
        int32_t r = 0;
        for (int32_t j = 0; j < padded; ++j) r += key[j] > x;
        above[i] = r;
    }
}

// Index of the first smallest of x[0..n), n >= 1, for x >= +0.0 (or +inf): such doubles
// order like their bit patterns, so the minimum is an integer reduction the compiler can
// vectorise, and a second pass finds its first occurrence.
FASTEPLB_KERNEL_BODY int64_t first_min_body(const double* x, int64_t n) {
    int64_t smallest = std::numeric_limits<int64_t>::max();
    for (int64_t i = 0; i < n; ++i) {
        int64_t bits;
        std::memcpy(&bits, x + i, sizeof bits);
        smallest = bits < smallest ? bits : smallest;
    }
    for (int64_t i = 0; i < n; ++i) {
        int64_t bits;
        std::memcpy(&bits, x + i, sizeof bits);
        if (bits == smallest) return i;
    }
    return 0;
}

struct SimdKernels {
    const char* name;
    void (*count_above)(const float* key, int32_t n, int32_t padded, int32_t* above);
    int64_t (*first_min)(const double* x, int64_t n);
};

void count_above_default(const float* key, int32_t n, int32_t padded, int32_t* above) {
    count_above_body(key, n, padded, above);
}
int64_t first_min_default(const double* x, int64_t n) { return first_min_body(x, n); }
constexpr SimdKernels kDefaultKernels{"default", count_above_default, first_min_default};

#if FASTEPLB_AVX2_KERNELS
__attribute__((target("avx2"))) void count_above_avx2(const float* key, int32_t n, int32_t padded,
                                                      int32_t* above) {
    count_above_body(key, n, padded, above);
}
__attribute__((target("avx2"))) int64_t first_min_avx2(const double* x, int64_t n) {
    return first_min_body(x, n);
}
constexpr SimdKernels kAvx2Kernels{"avx2", count_above_avx2, first_min_avx2};
#endif

bool cpu_has_avx2() {
#if FASTEPLB_AVX2_KERNELS
    __builtin_cpu_init();  // harmless if already done; needed if called from a constructor
    return __builtin_cpu_supports("avx2");
#else
    return false;
#endif
}

const SimdKernels* best_kernels() {
    const char* forced = std::getenv("FASTEPLB_SIMD");
    if (forced != nullptr && std::strcmp(forced, "default") == 0) return &kDefaultKernels;
#if FASTEPLB_AVX2_KERNELS
    if (cpu_has_avx2()) return &kAvx2Kernels;
#endif
    return &kDefaultKernels;
}

// The kernels in use. The tables are constants, so relaxed loads of the pointer suffice.
std::atomic<const SimdKernels*>& kernel_table() {
    static std::atomic<const SimdKernels*> table{best_kernels()};
    return table;
}

void count_above(const float* key, int32_t n, int32_t padded, int32_t* above) {
    kernel_table().load(std::memory_order_relaxed)->count_above(key, n, padded, above);
}

int64_t first_min(const double* x, int64_t n) {
    return kernel_table().load(std::memory_order_relaxed)->first_min(x, n);
}

}  // namespace

// For tests (declared in tests/cpp/test_core.cpp, not part of the public header): the name of
// the kernels in use ("avx2" or "default"), and a switch to the named ones; false (and no
// change) when this build or CPU lacks them. Not to be called while a planning call runs.
const char* simd_kernels() { return kernel_table().load(std::memory_order_relaxed)->name; }

bool set_simd_kernels(const char* name) {
    const SimdKernels* want = nullptr;
    if (std::strcmp(name, "default") == 0) want = &kDefaultKernels;
#if FASTEPLB_AVX2_KERNELS
    if (std::strcmp(name, "avx2") == 0 && cpu_has_avx2()) want = &kAvx2Kernels;
#endif
    if (want == nullptr) return false;
    kernel_table().store(want, std::memory_order_relaxed);
    return true;
}

namespace {
// ---- end of the CPU-specific kernels -------------------------------------------------------

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

// One local-search swap: item u left pack h for pack q, item v went the other way; peak: the
// largest pack load after it.
struct SwapRecord {
    int64_t h, u, q, v;
    double peak;
};

// Migration keeps only the swaps needed to come within this fraction of the best maximum
// its local search reaches.
constexpr double kRollback = 1e-3;

// Relative distance to the lower bound at which local search stops: fresh plans (0.05%, well
// inside what the fixed-item bound leaves: the last swaps before it cost a quarter of the
// search on Kimi-K2 for 0.01% of balance), and plans from an old placement, where each
// further swap costs weight copies.
constexpr double kBoundTolerance = 5e-4;
constexpr double kMigrationTolerance = 1e-3;

struct PackScratch {
    std::vector<Item> order, sort_buffer;
    std::vector<float> sort_key;
    std::vector<double> weight, heavy_w, light_w, dist;
    std::vector<int32_t> sort_rank, sort_seen;
    std::vector<double> load;
    std::vector<int64_t> count;
    std::vector<int64_t> slot;  // [num_packs * per_pack]: item held at (pack, rank)
    std::vector<PackNode> tree;
    // Anti-colocation: label[item] names the expert an item replicates, or -1 when it may
    // share a pack with anything. Empty: no labels.
    std::vector<int64_t> label;
    std::vector<int64_t> by_weight;  // [num_packs * per_pack]: items by (weight, index) asc
    std::vector<double> by_weight_w;  // their weights
    std::vector<int64_t> visit;
    // refine="local" with labels keeps the label-respecting plan when its maximum is at most
    // max(limit, the plain greedy's maximum), and reports that greedy maximum.
    double limit = 0.0;
    double greedy_peak = 0.0;
    bool need_greedy = true;  // false: the caller knows its greedy baseline (and set limit)
    bool every_pack = false;  // local search weighs every pack, not the first that helps
    // Local search does not stop at the bound's tolerance before its maximum is <= goal.
    double goal = std::numeric_limits<double>::infinity();
    bool diverted = false;  // the last lpt() moved an item off the lightest open pack
    // Migration: old_slot[q * c + r] is the expert pack q held at rank r in the old plan (-1:
    // none), expert_of[item] each item's expert. Swaps then count the copies they add (moves)
    // and stay within move_budget (< 0: no cap). nullptr: no migration; lpt() resets it.
    const int64_t* old_slot = nullptr;
    std::vector<int64_t> expert_of;
    int64_t move_budget = -1, moves = 0;
    // Local search stops this close (relative) to max(its lower bound, floor); floor: a load
    // the caller cannot get below anyway (migration: the layer's busiest node mean).
    double tolerance = kBoundTolerance, floor = 0.0;
    std::vector<SwapRecord> swap_log;  // migration: the swaps made, to undo the least useful
};

// Copies that swapping item u (pack h) with item v (pack q) adds, minus those it saves: a pack
// gains a copy when it starts holding an expert it held neither now nor in the old plan.
int64_t swap_moves(const PackScratch& s, int64_t c, int64_t h, int64_t u, int64_t q, int64_t v) {
    const int64_t* expert = s.expert_of.data();
    const int64_t eu = expert[u], ev = expert[v];
    if (eu == ev) return 0;
    auto fresh = [&](int64_t p, int64_t e, int64_t except) {  // pack p without `except`
        for (int64_t r = 0; r < c; ++r) {
            const int64_t item = s.slot[p * c + r];
            if ((item != except && expert[item] == e) || s.old_slot[p * c + r] == e) {
                return false;
            }
        }
        return true;
    };
    return fresh(h, ev, u) - fresh(h, eu, u) + fresh(q, eu, v) - fresh(q, ev, v);
}

// Whether a swap adding `delta` copies fits the migration budget (always without migration).
bool affordable(const PackScratch& s, int64_t delta) {
    return s.old_slot == nullptr || s.move_budget < 0 || s.moves + delta <= s.move_budget;
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


// LPT places a replica next to another replica of its expert only when every open pack
// already holds one. Repairs that where possible: swap the extra copy u (pack p) with an item v
// of another pack q such that neither pack then holds two replicas of one expert, choosing
// the swap with the smallest resulting pair maximum (ties: lower q, then lower rank), and
// only if that maximum stays within `limit`.
void separate_replicas(const double* w, int64_t m, int64_t c, PackScratch& s, double limit) {
    double* load = s.load.data();
    int64_t* slot = s.slot.data();
    const int64_t* label = s.label.data();
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
                    if (pair < best && (s.old_slot == nullptr ||
                                        affordable(s, swap_moves(s, c, p, u, q, v)))) {
                        best = pair;
                        best_q = q;
                        best_rv = rv;
                    }
                }
            }
            if (best_q < 0 || !(best <= limit)) continue;
            const int64_t v = slot[best_q * c + best_rv];
            if (s.old_slot != nullptr) s.moves += swap_moves(s, c, p, u, best_q, v);
            const double d = w[u] - w[v];
            slot[p * c + ru] = v;
            slot[best_q * c + best_rv] = u;
            load[p] -= d;
            load[best_q] += d;
        }
    }
}

// The refinement of refine="local": repeatedly take the heaviest pack h and, visiting the
// other packs q in ascending load, swap with the first one that offers a 1-for-1 swap (u in
// h, v in q, 0 < w_u - w_v < L_h - L_q) lowering L_h: of its swaps, the one whose new pair
// maximum max(L_h - d, L_q + d) is smallest, i.e. d closest to half the gap. (Taking the
// lightest pack that helps, rather than the best swap over all packs, costs a scan of one
// or a few packs per step instead of dozens, and in our loads ends as balanced or better.)
// Each pack keeps its items sorted by weight, so partners are found by one forward sweep
// around w_u - gap / 2. Swaps never put a second replica of a labelled expert into a pack.
// Stops when no swap lowers L_h, when the maximum is within s.tolerance of the fixed-item
// lower bound, or after an iteration cap. Each swap leaves both packs strictly below the
// old L_h, so the maximum never rises.
void local_search(const double* w, int64_t m, int64_t c, PackScratch& s) {
    double* load = s.load.data();
    int64_t* slot = s.slot.data();
    const int64_t* label = s.label.empty() ? nullptr : s.label.data();
    const int64_t n = m * c;
    if (label != nullptr) {
        separate_replicas(w, m, c, s, std::numeric_limits<double>::infinity());
    }
    // Per-pack item lists sorted by (weight, index). LPT fills each pack in descending order,
    // so reversing the pack is nearly sorted and insertion sort only fixes ties and repairs.
    s.by_weight.resize(static_cast<size_t>(n));
    s.by_weight_w.resize(static_cast<size_t>(n));
    int64_t* sorted = s.by_weight.data();
    double* sorted_w = s.by_weight_w.data();
    auto lighter = [w](int64_t a, int64_t b) { return w[a] < w[b] || (w[a] == w[b] && a < b); };
    for (int64_t q = 0; q < m; ++q) {
        int64_t* a = sorted + q * c;
        std::reverse_copy(slot + q * c, slot + (q + 1) * c, a);
        for (int64_t i = 1; i < c; ++i) {
            for (int64_t j = i; j > 0 && lighter(a[j], a[j - 1]); --j) std::swap(a[j], a[j - 1]);
        }
        for (int64_t i = 0; i < c; ++i) sorted_w[q * c + i] = w[a[i]];
    }

    // Fixed-item lower bound: the mean, and the heaviest item with the c - 1 lightest
    // (s.order lists the items by descending weight).
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += s.order[i].w;
    double smallest = 0.0;
    for (int64_t i = n - (c - 1); i < n; ++i) smallest += s.order[i].w;
    const double bound = std::max(total / static_cast<double>(m), s.order[0].w + smallest);

    auto holds_other = [&](int64_t q, int64_t e, int64_t except) {
        if (e < 0) return false;
        for (int64_t r = 0; r < c; ++r) {
            const int64_t item = slot[q * c + r];
            if (item != except && label[item] == e) return true;
        }
        return false;
    };
    // Replaces `out` by `in` in pack q's sorted list, keeping it sorted.
    auto resort = [&](int64_t q, int64_t out, int64_t in) {
        int64_t* a = sorted + q * c;
        int64_t i = 0;
        while (a[i] != out) ++i;
        a[i] = in;
        sift_into_place(a, c, i, lighter);
        for (int64_t r = 0; r < c; ++r) sorted_w[q * c + r] = w[a[r]];
    };
    // Packs by ascending (load, index), kept sorted across iterations: a swap changes two
    // loads, which move by insertion.
    s.visit.resize(static_cast<size_t>(m));
    int64_t* visit = s.visit.data();
    for (int64_t q = 0; q < m; ++q) visit[q] = q;
    auto before_pack = [load](int64_t a, int64_t b) {
        return load[a] < load[b] || (load[a] == load[b] && a < b);
    };
    std::sort(visit, visit + m, before_pack);
    // Moves the pack at visit[at], whose load just changed, to its sorted place: binary search
    // in the rest of the order, then one block move.
    auto reposition = [&](int64_t at) {
        const int64_t pack = visit[at];
        std::copy(visit + at + 1, visit + m, visit + at);
        const int64_t place =
            std::lower_bound(visit, visit + m - 1, pack, before_pack) - visit;
        std::copy_backward(visit + place, visit + m - 1, visit + m);
        visit[place] = pack;
    };
    const int64_t cap = std::max<int64_t>(32, 4 * m);
    s.swap_log.clear();
    const double start_peak = load[visit[m - 1]];
    for (int64_t iter = 0; iter < cap; ++iter) {
        interruption_point();
        const int64_t h = visit[m - 1];  // the heaviest pack (ties: the higher index)
        if (load[h] <= std::min(std::max(bound, s.floor) * (1.0 + s.tolerance), s.goal)) break;
        double best = load[h];  // the pair maximum to beat
        int64_t best_u = -1, best_v = -1, best_q = -1, best_k = -1;
        for (int64_t k = 0; k < m; ++k) {
            // Fresh plans take the lightest pack that helps; migration weighs every pack (the
            // swap it picks decides which copies are made), while one could still do better,
            // and so do refine_local's retries.
            if (best_u >= 0 && s.old_slot == nullptr && !s.every_pack) break;
            const int64_t q = visit[k];
            if (q == h) continue;
            if (!((load[h] + load[q]) / 2.0 < best)) break;
            const double gap = load[h] - load[q];
            if (!(gap > 0.0)) break;
            const int64_t* qs = sorted + q * c;
            const int64_t* hs = sorted + h * c;
            const double* qw = sorted_w + q * c;
            const double* hw = sorted_w + h * c;
            // Whether the scan of one side for u stops at candidate j: at a swap no better
            // than the best (further out only gets worse), or at one that is recorded.
            auto stops_at = [&](int64_t ru, int64_t j) {
                const int64_t u = hs[ru], v = qs[j];
                const double d = hw[ru] - qw[j];
                const double pair = std::max(load[h] - d, load[q] + d);
                if (!(pair < best)) return true;
                if (!(d > 0.0 && d < gap)) return false;
                if (label != nullptr &&
                    (holds_other(q, label[u], v) || holds_other(h, label[v], u))) {
                    return false;
                }
                if (s.old_slot != nullptr && !affordable(s, swap_moves(s, c, h, u, q, v))) {
                    return false;
                }
                best = pair;
                best_u = u;
                best_v = v;
                best_q = q;
                best_k = k;
                return true;
            };
            // u by ascending weight: the target w_u - gap / 2 only grows, so the first item
            // of q at or above it is found by a pointer that only moves forward. Partners
            // below it give d > gap / 2, those at or above it d <= gap / 2.
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
        if (best_u < 0) break;
        const int64_t q = best_q;
        if (s.old_slot != nullptr) s.moves += swap_moves(s, c, h, best_u, q, best_v);
        const double d = w[best_u] - w[best_v];
        for (int64_t r = 0; r < c; ++r) {
            if (slot[h * c + r] == best_u) slot[h * c + r] = best_v;
            if (slot[q * c + r] == best_v) slot[q * c + r] = best_u;
        }
        resort(h, best_u, best_v);
        resort(q, best_v, best_u);
        load[h] -= d;
        load[q] += d;
        reposition(best_k);
        int64_t at = m - 1;
        while (visit[at] != h) --at;
        reposition(at);
        if (s.old_slot != nullptr) s.swap_log.push_back(SwapRecord{h, best_u, q, best_v, load[visit[m - 1]]});
    }
    if (s.old_slot == nullptr || s.swap_log.empty()) return;
    // Migration: the last swaps often buy little balance for their copies. Keep the shortest
    // prefix of the swaps that ends within kRollback of the final maximum; undo the rest.
    const double enough = s.swap_log.back().peak * (1.0 + kRollback);
    size_t keep = 0;
    if (!(start_peak <= enough)) {
        while (!(s.swap_log[keep].peak <= enough)) ++keep;
        ++keep;
    }
    for (size_t i = s.swap_log.size(); i-- > keep;) {
        const SwapRecord& r = s.swap_log[i];  // u went h -> q, v went q -> h
        s.moves += swap_moves(s, c, r.q, r.u, r.h, r.v);
        for (int64_t k = 0; k < c; ++k) {
            if (slot[r.q * c + k] == r.u) slot[r.q * c + k] = r.v;
            if (slot[r.h * c + k] == r.v) slot[r.h * c + k] = r.u;
        }
        const double d = w[r.u] - w[r.v];
        load[r.h] += d;
        load[r.q] -= d;
    }
}

double pack_sorted(int64_t n, int64_t m, Refine refine, int rounds, PackScratch& s,
                   int64_t* pack, int64_t* rank);

// One packing problem: n items onto m packs of exactly c = n / m items. LPT with cardinality
// (items by descending load, each to the lightest pack with room), then optional swaps.
// c == 1 keeps item i in pack i, as DeepSeek's balanced_packing does. Returns the largest
// pack load.
double pack_one(const double* w, int64_t n, int64_t m, Refine refine, int rounds,
                PackScratch& s, int64_t* pack, int64_t* rank) {
    s.label.clear();
    s.order.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) s.order[i] = Item{w[i], i};
    if (n / m > 1) sort_items(s.order, s.sort_buffer, s.sort_key, s.sort_rank, s.sort_seen);
    return pack_sorted(n, m, refine, rounds, s, pack, rank);
}

// pack_one's work once s.order holds the items (load, index) sorted by (load desc, index
// asc); c == 1 ignores the order.
// LPT with cardinality over s.order (sorted by load desc, index asc) into s.slot / s.load;
// with `use_labels`, an item avoids packs that already hold its label when it can.
void lpt(int64_t n, int64_t m, PackScratch& s, bool use_labels) {
    const int64_t c = n / m;
    s.old_slot = nullptr;
    s.diverted = false;
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
    const int64_t* label = use_labels && !s.label.empty() ? s.label.data() : nullptr;
    auto holds = [&](int64_t q, int64_t e) {
        for (int64_t r = 0; r < count[q]; ++r) {
            if (label[slot[q * c + r]] == e) return true;
        }
        return false;
    };
    // One interruption point per call: LPT is O(n log m), under 0.1 s at the largest sizes.
    interruption_point();
    int64_t p = tree[1].idx;
    for (const Item& it : s.order) {
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
                s.diverted = true;
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
}

double max_load(const PackScratch& s) {
    return *std::max_element(s.load.begin(), s.load.end());
}

// refine="local": local search from the label-aware LPT. Refinement must never end above the
// plain greedy's maximum, so when it does, it is retried from the plain greedy and from the
// seed's swap plan (each repaired, then searched with labels), and as a last resort run
// without labels.
void refine_local(int64_t n, int64_t m, int rounds, PackScratch& s) {
    const int64_t c = n / m;
    if (s.label.empty()) {
        s.greedy_peak = max_load(s);
        local_search(s.weight.data(), m, c, s);
        return;
    }
    // Without a diverted item the label-aware LPT was the plain one, whose maximum
    // pack_sorted already recorded in greedy_peak.
    const bool diverted = s.diverted;
    local_search(s.weight.data(), m, c, s);
    const double refined = max_load(s);
    if (!diverted && refined <= std::max(s.greedy_peak, s.limit)) return;
    if (!s.need_greedy && refined <= s.limit) return;
    std::vector<int64_t> kept_slot = s.slot;
    std::vector<double> kept_load = s.load;
    lpt(n, m, s, false);
    s.greedy_peak = max_load(s);
    const double allowed = std::max(s.greedy_peak, s.limit);
    if (refined <= allowed) {
        s.slot.swap(kept_slot);
        s.load.swap(kept_load);
        return;
    }
    // The retries must reach the greedy's maximum, even where that lies within the bound's
    // tolerance (the first search may have stopped there).
    s.goal = allowed;
    local_search(s.weight.data(), m, c, s);
    if (max_load(s) <= allowed) {
        s.goal = std::numeric_limits<double>::infinity();
        return;
    }
    // Other starts: the label-aware LPT again, and the seed's plan (plain LPT, then the
    // max/min swaps), its replicas separated; each searched weighing every pack, since the
    // lightest pack that helps can lead into a dead end that labels make likelier, and the
    // seed's plan also with the first pack that helps.
    for (int attempt = 0; attempt < 3; ++attempt) {
        lpt(n, m, s, attempt == 0);
        if (attempt > 0) swap_refine(s.weight.data(), m, c, rounds, s);
        s.every_pack = attempt != 1;
        local_search(s.weight.data(), m, c, s);
        s.every_pack = false;
        if (max_load(s) <= allowed) break;
    }
    s.goal = std::numeric_limits<double>::infinity();
    if (max_load(s) <= allowed) return;
    // Keeping replicas apart costs balance here: plan without labels, then separate what can
    // be separated without raising the maximum.
    std::vector<int64_t> labels;
    labels.swap(s.label);
    lpt(n, m, s, false);
    local_search(s.weight.data(), m, c, s);
    labels.swap(s.label);
    separate_replicas(s.weight.data(), m, c, s, std::max(max_load(s), s.limit));
}

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
        s.greedy_peak = peak;
        return peak;
    }
    lpt(n, m, s, true);
    s.greedy_peak = max_load(s);  // refine="local" with labels replaces it by the plain LPT's
    if (refine != Refine::None && m > 1) {
        s.weight.resize(static_cast<size_t>(n));
        for (const Item& it : s.order) s.weight[it.idx] = it.w;
        if (refine == Refine::Swap) {
            swap_refine(s.weight.data(), m, c, rounds, s);
        } else {
            refine_local(n, m, rounds, s);
        }
    }
    const double* load = s.load.data();
    const int64_t* slot = s.slot.data();
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

// Scratch of the replica-count search (improve_counts).
struct PairScratch {
    std::vector<int64_t> order;  // experts by (load per replica desc, index asc)
    std::vector<int64_t> pos;    // pos[e]: expert e's place in order
    std::vector<double> q;       // load per replica, w[e] / cnt[e]
    std::vector<double> worst;   // per expert, its heaviest GPU (worst_gpus)
    // The search's start (Adams' counts): its evaluated peak, and its replica loads heaviest
    // first, the order LPT places them in.
    double start_peak = 0.0;
    std::vector<double> start_loads;
    std::vector<double> sums, replica;  // dealt_peak: per GPU; replicas heaviest first
    std::vector<int64_t> owner;          // dealt_peak: each replica's expert
};

// Expert e's count just changed: refresh its load per replica and move it to its sorted
// place by adjacent steps (a count changes by one, so it moves a few places).
void recount(const double* w, const int64_t* cnt, PairScratch& s, int64_t e) {
    s.q[e] = w[e] / static_cast<double>(cnt[e]);
    const double* q = s.q.data();
    int64_t* order = s.order.data();
    int64_t* pos = s.pos.data();
    auto before = [q](int64_t x, int64_t y) { return q[x] > q[y] || (q[x] == q[y] && x < y); };
    const int64_t n = static_cast<int64_t>(s.order.size());
    int64_t at = pos[e];
    for (; at > 0 && before(e, order[at - 1]); --at) {
        order[at] = order[at - 1];
        pos[order[at]] = at;
    }
    for (; at + 1 < n && before(order[at + 1], e); ++at) {
        order[at] = order[at + 1];
        pos[order[at]] = at;
    }
    order[at] = e;
    pos[e] = at;
}

// The heaviest GPU when the replicas, heaviest first, are dealt to `gpus` GPUs in zig-zag
// rounds (GPUs 0..G-1, then G-1..0, ...): GPU g holds replicas g, 2G-1-g, 2G+g, ... For two
// slots per GPU this pairs the i-th heaviest replica with the i-th lightest, which is exactly
// what LPT does; for three it is an O(slots) proxy for LPT. Also reports top / bottom, the
// experts of that GPU's first two replicas; s.replica / s.owner keep the deal and s.sums the
// GPU sums (see at_peak, worst_gpus).
double dealt_peak(const double* q, const int64_t* cnt, const std::vector<int64_t>& order,
                  int64_t gpus, int64_t c, PairScratch& s, int64_t* top, int64_t* bottom) {
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
    // Round by round, in dealing order, so each GPU's sum is rounded as LPT's would be.
    for (int64_t g = 0; g < gpus; ++g) sum[g] = r[g];
    for (int64_t round = 1; round < c; ++round) {
        const double* block = r + round * gpus;
        if (round % 2 == 1) {
            for (int64_t g = 0; g < gpus; ++g) sum[g] += block[gpus - 1 - g];
        } else {
            for (int64_t g = 0; g < gpus; ++g) sum[g] += block[g];
        }
    }
    double peak = sum[0];
    for (int64_t g = 1; g < gpus; ++g) peak = std::max(peak, sum[g]);
    int64_t g_peak = 0;
    while (sum[g_peak] != peak) ++g_peak;
    *top = owner[g_peak];
    *bottom = c >= 2 ? owner[2 * gpus - 1 - g_peak] : *top;
    return peak;
}

// worst[e]: the heaviest GPU holding a replica of e, in the last dealt_peak's deal.
void worst_gpus(const PairScratch& s, int64_t gpus, int64_t c, std::vector<double>& worst) {
    std::fill(worst.begin(), worst.end(), 0.0);
    for (int64_t round = 0; round < c; ++round) {
        const int64_t* block = s.owner.data() + round * gpus;
        for (int64_t g = 0; g < gpus; ++g) {
            const int64_t e = block[round % 2 == 0 ? g : gpus - 1 - g];
            worst[e] = std::max(worst[e], s.sums[g]);
        }
    }
}

// How many GPUs of the last dealt_peak reach `peak` (the tie-breaking objective: fewer GPUs
// at the peak is progress too).
int64_t at_peak(const PairScratch& s, double peak) {
    int64_t ties = 0;
    for (const double x : s.sums) ties += x == peak;
    return ties;
}

// Replica counts for two or three slots per GPU. With fixed replicas the best packing at two
// slots pairs the i-th heaviest with the i-th lightest (LPT does exactly that), so at k = 2
// everything that is left to gain lies in the counts: Adams' counts minimise the largest
// replica, not the largest pair. This local search moves one replica at a time from a donor
// (among the few experts whose replicas would grow least) to an expert of the heaviest pair
// (GPU), re-evaluating the pairing exactly (at k = 3 through the zig-zag proxy), and takes
// the first move that lowers the heaviest pair, or keeps it and reaches it fewer times.
// Returns whether the evaluated peak got lower.
bool improve_counts(const double* w, int64_t n, int64_t c, int64_t* cnt, PairScratch& s) {
    constexpr int kDonors = 4;
    int64_t slots = 0;
    for (int64_t e = 0; e < n; ++e) slots += cnt[e];
    const int64_t gpus = slots / c;
    s.q.resize(static_cast<size_t>(n));
    for (int64_t e = 0; e < n; ++e) s.q[e] = w[e] / static_cast<double>(cnt[e]);
    const double* q = s.q.data();
    auto evaluate = [&](int64_t* top, int64_t* bottom) {
        return dealt_peak(q, cnt, s.order, gpus, c, s, top, bottom);
    };
    s.order.resize(static_cast<size_t>(n));
    for (int64_t e = 0; e < n; ++e) s.order[e] = e;
    std::sort(s.order.begin(), s.order.end(), [q](int64_t x, int64_t y) {
        return q[x] > q[y] || (q[x] == q[y] && x < y);
    });
    s.pos.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) s.pos[s.order[i]] = i;
    auto shift = [&](int64_t from, int64_t to) {  // one replica of `from` goes to `to`
        --cnt[from];
        ++cnt[to];
        recount(w, cnt, s, from);
        recount(w, cnt, s, to);
    };
    int64_t top = 0, bottom = 0;
    double peak = evaluate(&top, &bottom);
    int64_t ties = at_peak(s, peak);
    const double start = peak;
    s.start_peak = peak;
    s.start_loads.assign(s.replica.begin(), s.replica.begin() + slots);
    s.worst.resize(static_cast<size_t>(n));
    worst_gpus(s, gpus, c, s.worst);
    const int64_t cap = n + 8;
    for (int64_t iter = 0; iter < cap; ++iter) {
        interruption_point();
        // Donors: experts with >= 2 replicas whose heaviest pair has the most room left for
        // the growth of their replicas (peak - worst pair - growth), largest first.
        int64_t donor[kDonors];
        double room[kDonors];
        int found = 0;
        for (int64_t e = 0; e < n; ++e) {
            if (cnt[e] < 2) continue;
            const double growth = w[e] / static_cast<double>(cnt[e] - 1) - q[e];
            const double r = peak - s.worst[e] - growth;
            int at = found < kDonors ? found++ : kDonors;
            while (at > 0 && r > room[at - 1]) {
                if (at < kDonors) {
                    donor[at] = donor[at - 1];
                    room[at] = room[at - 1];
                }
                --at;
            }
            if (at < kDonors) {
                donor[at] = e;
                room[at] = r;
            }
        }
        // The first improving move, takers before donors; its evaluation carries over to the
        // next step.
        bool moved = false;
        const int64_t takers[2] = {top, bottom};
        for (int t = 0; t < 2 && !moved; ++t) {
            const int64_t b = takers[t];
            if (t == 1 && b == top) break;
            for (int d = 0; d < found; ++d) {
                const int64_t a = donor[d];
                if (a == b) continue;
                shift(a, b);
                int64_t nt = 0, nb = 0;
                const double trial = evaluate(&nt, &nb);
                if (trial < peak || (trial == peak && at_peak(s, trial) < ties)) {
                    peak = trial;
                    ties = at_peak(s, trial);
                    top = nt;
                    bottom = nb;
                    worst_gpus(s, gpus, c, s.worst);
                    moved = true;
                    break;
                }
                // Undo: the order is a strict total order, so re-sorting restores it exactly.
                shift(b, a);
            }
        }
        if (!moved) break;
    }
    return peak < start;
}

// Slots for counts cnt: slots [0, n) hold experts 0..n-1, then each expert's further replicas
// in expert order.
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

// Up to this many slots per GPU, refine="local" also searches the replica counts.
constexpr int64_t kCountSearchSlots = 3;

// Up to this many groups, refine="local" splits groups over nodes optimally.
constexpr int64_t kExactGroups = 12;

struct PartitionScratch {
    std::vector<int64_t> order, node, best_node, count;
    std::vector<double> load;
};

// Depth-first branch and bound over balanced partitions: groups by descending load, each to a
// node with room; an empty node is tried only once (nodes are interchangeable) and a branch is
// cut as soon as a node reaches the best maximum so far (only strictly better splits count).
void partition_search(const double* w, int64_t k, int64_t nodes, int64_t cap, int64_t i,
                      double& best, PartitionScratch& s, bool& found) {
    interruption_point();
    if (i == k) {
        best = *std::max_element(s.load.begin(), s.load.end());
        s.best_node = s.node;
        found = true;
        return;
    }
    const int64_t g = s.order[i];
    bool tried_empty = false;
    for (int64_t nd = 0; nd < nodes; ++nd) {
        if (s.count[nd] == cap) continue;
        if (s.count[nd] == 0) {
            if (tried_empty) continue;
            tried_empty = true;
        }
        const double next = s.load[nd] + w[g];
        if (!(next < best)) continue;
        s.load[nd] = next;
        ++s.count[nd];
        s.node[g] = nd;
        partition_search(w, k, nodes, cap, i + 1, best, s, found);
        --s.count[nd];
        s.load[nd] -= w[g];
    }
}

// The groups -> nodes split with the smallest maximum node load, if it beats `upper` (the
// greedy split's maximum); otherwise pack / rank are left as they are. Rank within a node is
// the order of assignment (descending load).
void exact_partition(const double* w, int64_t k, int64_t nodes, double upper,
                     PartitionScratch& s, int64_t* pack, int64_t* rank) {
    s.order.resize(static_cast<size_t>(k));
    for (int64_t g = 0; g < k; ++g) s.order[g] = g;
    std::stable_sort(s.order.begin(), s.order.end(),
                     [w](int64_t a, int64_t b) { return w[a] > w[b]; });
    s.node.assign(static_cast<size_t>(k), -1);
    s.count.assign(static_cast<size_t>(nodes), 0);
    s.load.assign(static_cast<size_t>(nodes), 0.0);
    bool found = false;
    double best = upper;
    partition_search(w, k, nodes, k / nodes, 0, best, s, found);
    if (!found) return;
    s.count.assign(static_cast<size_t>(nodes), 0);
    for (const int64_t g : s.order) {
        pack[g] = s.best_node[g];
        rank[g] = s.count[s.best_node[g]]++;
    }
}


// Scratch of migrate_node.
struct MigrateScratch {
    std::vector<int64_t> cur, cnt, kept, by_expert, start, stamp, free_count, need, out;
    std::vector<double> gpu_load, item_w;
    std::vector<Item> fresh;
    std::vector<PackNode> heap, passed;
    std::vector<Quotient> receivers, donors;
    std::vector<std::pair<int64_t, int64_t>> surplus;
};

struct LayerScratch {
    PackScratch pack;
    std::vector<Quotient> quotients;
    std::vector<double> group_load, mlog_load, phy_load, node_load, node_peak;
    std::vector<int64_t> group_pack, group_rank, greedy_pack, greedy_rank;
    std::vector<int64_t> log2mlog, mlog2log, mlogcnt;
    std::vector<int64_t> phy2mlog, phyrank, gpu_of_phy, rank_on_gpu;
    std::vector<int64_t> alt_phy2log, alt_phyrank, alt_logcnt;
    std::vector<Item> experts, single, multi;
    PartitionScratch partition;
    PairScratch pairs;
    std::vector<int64_t> trial_cnt, kept_cnt, seen;
    // Migration.
    MigrateScratch migrate;
    std::vector<int64_t> old_cnt, new_cnt, node_old, node_out, overlap, pairs_order, node_fill,
        rename, node_order;
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

// "mlog" numbers experts node-major for the split (pack, rank): node n owns mlog ids
// [n * E/N, (n + 1) * E/N). Fills s.log2mlog and s.mlog2log.
void number_node_major(const Shape& sh, const int64_t* group_pack, const int64_t* group_rank,
                       LayerScratch& s) {
    const int64_t E = sh.experts, group_size = E / sh.groups;
    const int64_t groups_per_node = sh.groups / sh.nodes;
    s.log2mlog.resize(static_cast<size_t>(E));
    s.mlog2log.resize(static_cast<size_t>(E));
    for (int64_t g = 0; g < sh.groups; ++g) {
        const int64_t base = (group_pack[g] * groups_per_node + group_rank[g]) * group_size;
        for (int64_t j = 0; j < group_size; ++j) {
            s.log2mlog[g * group_size + j] = base + j;
            s.mlog2log[base + j] = g * group_size + j;
        }
    }
}

// s.group_load: each group's load. Explicit sequential sums keep the reference bit-identical.
void sum_groups(const double* w, const Shape& sh, LayerScratch& s) {
    const int64_t group_size = sh.experts / sh.groups;
    s.group_load.resize(static_cast<size_t>(sh.groups));
    for (int64_t g = 0; g < sh.groups; ++g) {
        double sum = 0.0;
        for (int64_t j = 0; j < group_size; ++j) sum += w[g * group_size + j];
        s.group_load[g] = sum;
    }
}

// The groups -> nodes split the fresh planner uses (greedy, refined by opt.refine; exact for
// refine="local" and few groups) into pack / rank [groups].
void choose_split(const Shape& sh, const Options& opt, LayerScratch& s, int64_t* pack,
                  int64_t* rank) {
    const bool exact = opt.refine == Refine::Local && sh.groups <= kExactGroups &&
                       sh.groups > sh.nodes && sh.nodes > 1;
    // The exact split needs only the greedy's maximum as its starting bound.
    const double greedy_nodes =
        pack_one(s.group_load.data(), sh.groups, sh.nodes, exact ? Refine::None : opt.refine,
                 opt.swap_rounds, s.pack, pack, rank);
    if (exact) {
        exact_partition(s.group_load.data(), sh.groups, sh.nodes, greedy_nodes, s.partition,
                        pack, rank);
    }
}

// The largest node load under the split `pack` (s.group_load must be current).
double busiest_node(const Shape& sh, const int64_t* pack, LayerScratch& s) {
    s.node_load.assign(static_cast<size_t>(sh.nodes), 0.0);
    for (int64_t g = 0; g < sh.groups; ++g) s.node_load[pack[g]] += s.group_load[g];
    return *std::max_element(s.node_load.begin(), s.node_load.end());
}

// Steps 2 and 3 for a given groups -> nodes partition: replicate inside each node with budget
// P/N, then pack each node's replicas onto its GPUs. Returns the layer's largest GPU load.
double place_layer(const double* w, const Shape& sh, const Options& opt, LayerScratch& s,
                   const int64_t* group_pack, const int64_t* group_rank, int64_t* out_phy2log,
                   int64_t* out_phyrank, int64_t* out_logcnt) {
    const int64_t E = sh.experts, P = sh.replicas;
    const int64_t experts_per_node = E / sh.nodes;
    const int64_t slots_per_node = P / sh.nodes;
    const int64_t gpus_per_node = sh.gpus / sh.nodes;
    const int64_t slots_per_gpu = P / sh.gpus;
    number_node_major(sh, group_pack, group_rank, s);
    s.mlogcnt.resize(static_cast<size_t>(E));
    s.mlog_load.resize(static_cast<size_t>(experts_per_node));
    s.experts.resize(static_cast<size_t>(experts_per_node));
    s.phy_load.resize(static_cast<size_t>(slots_per_node));
    s.phy2mlog.resize(static_cast<size_t>(slots_per_node));
    s.phyrank.resize(static_cast<size_t>(slots_per_node));
    s.gpu_of_phy.resize(static_cast<size_t>(slots_per_node));
    s.rank_on_gpu.resize(static_cast<size_t>(slots_per_node));
    // Packs one node's replicas, as given by s.phy2mlog / s.phyrank / mlogcnt, onto its GPUs
    // and writes the node's slots; returns the node's largest GPU load.
    auto pack_node = [&](int64_t node, double limit, Refine refine) {
        const int64_t* mlog2log = s.mlog2log.data() + node * experts_per_node;
        const int64_t* mlogcnt = s.mlogcnt.data() + node * experts_per_node;
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
        // refine="local" keeps replicas of one expert on different GPUs whenever the expert
        // has no more replicas than the node has GPUs.
        s.pack.label.clear();
        if (refine == Refine::Local) {
            s.pack.label.resize(static_cast<size_t>(slots_per_node));
            for (int64_t i = 0; i < slots_per_node; ++i) {
                const int64_t cnt = mlogcnt[s.phy2mlog[i]];
                s.pack.label[i] = cnt > 1 && cnt <= gpus_per_node ? s.phy2mlog[i] : -1;
            }
        }
        s.pack.limit = limit;
        s.pack.greedy_peak = 0.0;
        const double node_peak =
            pack_sorted(slots_per_node, gpus_per_node, refine, opt.swap_rounds, s.pack,
                        s.gpu_of_phy.data(), s.rank_on_gpu.data());
        int64_t* node_phy2log = out_phy2log + node * slots_per_node;
        int64_t* node_phyrank = out_phyrank + node * slots_per_node;
        for (int64_t i = 0; i < slots_per_node; ++i) {
            const int64_t slot = s.gpu_of_phy[i] * slots_per_gpu + s.rank_on_gpu[i];
            node_phy2log[slot] = mlog2log[s.phy2mlog[i]];
            node_phyrank[slot] = s.phyrank[i];
        }
        return node_peak;
    };
    // Plans one node; with refine="local" its label-respecting plan may exceed that node's
    // greedy maximum up to `limit`.
    auto place_node = [&](int64_t node, double limit) {
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
        if (opt.refine != Refine::Local || slots_per_gpu > kCountSearchSlots ||
            slots_per_gpu < 2 || gpus_per_node < 2) {
            return pack_node(node, limit, opt.refine);
        }
        s.trial_cnt.assign(mlogcnt, mlogcnt + experts_per_node);
        const bool tuned = improve_counts(s.mlog_load.data(), experts_per_node, slots_per_gpu,
                                          s.trial_cnt.data(), s.pairs);
        if (!tuned) return pack_node(node, limit, Refine::Local);
        if (slots_per_gpu == 2) {
            // Two slots per GPU: pairing the i-th heaviest replica with the i-th lightest is
            // the best packing of the tuned counts (and LPT's), so it is written directly,
            // unless it would pair two replicas of one expert.
            PairScratch& ps = s.pairs;
            int64_t top = 0, bottom = 0;
            const double peak = dealt_peak(ps.q.data(), s.trial_cnt.data(), ps.order,
                                           gpus_per_node, 2, ps, &top, &bottom);
            int64_t* owner = ps.owner.data();
            const double* r = ps.replica.data();
            const int64_t last = 2 * gpus_per_node - 1;
            // Only the expert whose replicas straddle the middle can be paired with itself,
            // in pairs g0..G-1. Each such pair trades its second replica with the next pair
            // outwards, whose heavier replica then meets one of that expert's: kept when no
            // sum exceeds the peak (then the pairing is still the best).
            int64_t g0 = gpus_per_node;
            while (g0 > 0 && owner[g0 - 1] == owner[last - (g0 - 1)]) --g0;
            bool apart = true;
            for (int64_t g = gpus_per_node - 1, alt = g0 - 1; g >= g0; --g, --alt) {
                const int64_t e = owner[g];
                if (alt < 0 || owner[alt] == e || owner[last - alt] == e ||
                    !(r[alt] + r[last - g] <= peak)) {
                    apart = false;
                    break;
                }
                std::swap(owner[last - g], owner[last - alt]);
            }
            if (apart) {
                std::copy(s.trial_cnt.begin(), s.trial_cnt.end(), mlogcnt);
                int64_t* node_phy2log = out_phy2log + node * slots_per_node;
                int64_t* node_phyrank = out_phyrank + node * slots_per_node;
                s.seen.assign(static_cast<size_t>(experts_per_node), 0);
                for (int64_t g = 0; g < gpus_per_node; ++g) {
                    for (int64_t j = 0; j < 2; ++j) {
                        const int64_t e = owner[j == 0 ? g : last - g];
                        node_phy2log[2 * g + j] = mlog2log[e];
                        node_phyrank[2 * g + j] = s.seen[e]++;
                    }
                }
                s.pack.greedy_peak = s.pairs.start_peak;
                return peak;
            }
        }
        // "Never worse than the greedy" refers to DeepSeek's plan, with Adams' counts: its
        // plain LPT maximum is the baseline. The tuned counts are packed and refined, and
        // kept when they come out strictly lighter; refining Adams' counts as well would
        // double the work for the rare layer where tuning does not pay. LPT's maximum
        // depends only on the sequence of loads it places: at two slots per GPU it is the
        // search's evaluated start, otherwise LPT over the start's replica loads.
        double greedy_peak = s.pairs.start_peak;
        if (slots_per_gpu > 2) {
            const std::vector<double>& loads = s.pairs.start_loads;
            s.pack.order.resize(loads.size());
            for (size_t i = 0; i < loads.size(); ++i) {
                s.pack.order[i] = Item{loads[i], static_cast<int64_t>(i)};
            }
            lpt(slots_per_node, gpus_per_node, s.pack, false);
            greedy_peak = max_load(s.pack);
        }
        s.kept_cnt.assign(mlogcnt, mlogcnt + experts_per_node);
        std::copy(s.trial_cnt.begin(), s.trial_cnt.end(), mlogcnt);
        layout_counts(experts_per_node, mlogcnt, s.phy2mlog.data(), s.phyrank.data());
        s.pack.need_greedy = false;
        const double trial = pack_node(node, std::max(limit, greedy_peak), Refine::Local);
        s.pack.need_greedy = true;
        s.pack.greedy_peak = greedy_peak;
        if (trial < greedy_peak) return trial;
        std::copy(s.kept_cnt.begin(), s.kept_cnt.end(), mlogcnt);
        replicate_sorted(s.mlog_load.data(), experts_per_node, slots_per_node,
                         s.experts.data(), s.quotients, s.phy2mlog.data(), s.phyrank.data(),
                         mlogcnt);
        return pack_node(node, limit, Refine::Local);
    };
    const bool local = opt.refine == Refine::Local;
    const double inf = std::numeric_limits<double>::infinity();
    double peak = 0.0, greedy = 0.0;
    s.node_peak.resize(static_cast<size_t>(sh.nodes));
    for (int64_t node = 0; node < sh.nodes; ++node) {
        // Several nodes: keep every node's replicas apart first; a node only has to stay
        // within the layer's greedy maximum, known once all nodes are planned.
        s.node_peak[node] = place_node(node, local && sh.nodes > 1 ? inf : 0.0);
        greedy = std::max(greedy, s.pack.greedy_peak);
    }
    for (int64_t node = 0; node < sh.nodes; ++node) {
        if (local && sh.nodes > 1 && s.node_peak[node] > greedy) {
            s.node_peak[node] = place_node(node, greedy);
        }
        peak = std::max(peak, s.node_peak[node]);
    }
    for (int64_t e = 0; e < E; ++e) out_logcnt[e] = s.mlogcnt[s.log2mlog[e]];
    return peak;
}

void rebalance_layer(const double* w, const Shape& sh, const Options& opt, LayerScratch& s,
                     int64_t* out_phy2log, int64_t* out_phyrank, int64_t* out_logcnt) {
    // Step 1: groups -> nodes.
    sum_groups(w, sh, s);
    s.group_pack.resize(static_cast<size_t>(sh.groups));
    s.group_rank.resize(static_cast<size_t>(sh.groups));
    choose_split(sh, opt, s, s.group_pack.data(), s.group_rank.data());
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
    const double busiest = busiest_node(sh, s.greedy_pack.data(), s);
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

// ---------------------------------------------------------------------------------------------
// Migration-aware planning: a layer re-planned from its current placement.


// Copies the new slots add over the old ones, GPU by GPU (distinct experts new to a GPU).
// stamp: scratch of one entry per expert.
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

// Plans one node of `gpus` GPUs x k slots from its old contents.
//   w: [n] loads of the node's experts; target: [n] replica counts to move towards;
//   old: [gpus * k] the expert each slot held (-1: none of this node's); out: [gpus * k];
//   cnt: [n] the counts used (outputs).
// Counts move from the old ones towards `target` one replica at a time (the expert with the
// largest load per replica gains, the one whose replicas grow least gives), each such step
// costing one copy; `budget` (< 0: none) caps copies in all. Surplus replicas are freed on the
// busiest GPUs (co-located copies first), new ones go by LPT into the freed slots, then the
// local search runs with what is left of the budget. Returns the node's largest GPU load and
// adds its moves to `moves`; returns -1 when the budget cannot even place the experts the
// node lacks.
double migrate_node(const double* w, int64_t n, const int64_t* target, const int64_t* old,
                    int64_t gpus, int64_t k, const Options& opt, int64_t budget, double floor,
                    MigrateScratch& m, PackScratch& s, int64_t* out, int64_t* cnt,
                    int64_t& moves) {
    const int64_t slots = gpus * k;
    m.cur.assign(static_cast<size_t>(n), 0);
    int64_t pool = 0;  // slots holding no expert of this node
    for (int64_t i = 0; i < slots; ++i) old[i] >= 0 ? ++m.cur[old[i]] : ++pool;
    std::copy(m.cur.begin(), m.cur.end(), cnt);

    // Receivers by (missing first, then load per replica desc, index), donors by load per
    // replica after giving one up, ascending; both heaps hold stale entries, skipped on pop.
    auto recv_key = [&](int64_t e) {
        return cnt[e] == 0 ? std::numeric_limits<double>::infinity()
                           : w[e] / static_cast<double>(cnt[e]);
    };
    auto give_key = [&](int64_t e) { return w[e] / static_cast<double>(cnt[e] - 1); };
    m.receivers.clear();
    m.donors.clear();
    for (int64_t e = 0; e < n; ++e) {
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
    auto take_receiver = [&] {
        return pop(m.receivers,
                   [&](const Quotient& q) { return cnt[q.e] < target[q.e] && q.q == recv_key(q.e); });
    };
    int64_t steps = 0;
    for (;;) {
        interruption_point();
        if (pool == 0 && budget >= 0 && steps >= budget) break;
        const int64_t e = take_receiver();
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
    if (pool > 0) return -1.0;
    for (int64_t e = 0; e < n; ++e) {
        if (cnt[e] == 0) return -1.0;
    }

    // Per-GPU loads of the old contents at the new loads per replica, then free each
    // shrinking expert's surplus: copies sharing a GPU with another copy first, then those on
    // the busiest GPUs (ties: lower slot).
    auto item_load = [&](int64_t e) { return w[e] / static_cast<double>(cnt[e]); };
    m.gpu_load.assign(static_cast<size_t>(gpus), 0.0);
    for (int64_t i = 0; i < slots; ++i) {
        if (old[i] >= 0) m.gpu_load[i / k] += item_load(old[i]);
    }
    // Slots by expert (counting sort), ascending within each expert.
    m.start.assign(static_cast<size_t>(n + 1), 0);
    for (int64_t i = 0; i < slots; ++i) {
        if (old[i] >= 0) ++m.start[old[i] + 1];
    }
    for (int64_t e = 0; e < n; ++e) m.start[e + 1] += m.start[e];
    m.by_expert.resize(static_cast<size_t>(slots));
    m.need.assign(m.start.begin(), m.start.end() - 1);  // fill pointers
    for (int64_t i = 0; i < slots; ++i) {
        if (old[i] >= 0) m.by_expert[m.need[old[i]]++] = i;
    }
    int64_t* slot_of = out;  // out doubles as the working slot -> expert map
    std::copy(old, old + slots, slot_of);
    for (int64_t e = 0; e < n; ++e) {
        const int64_t surplus = m.cur[e] - cnt[e];
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
    // New replicas by (load desc, expert asc), each to the lightest GPU with a free slot
    // (ties: lower GPU) that does not hold its expert, if there is one.
    m.fresh.clear();
    m.free_count.assign(static_cast<size_t>(gpus), 0);
    for (int64_t i = 0; i < slots; ++i) {
        if (slot_of[i] < 0) ++m.free_count[i / k];
    }
    {
        m.kept.assign(static_cast<size_t>(n), 0);  // copies each expert still holds
        for (int64_t i = 0; i < slots; ++i) {
            if (slot_of[i] >= 0) ++m.kept[slot_of[i]];
        }
        for (int64_t e = 0; e < n; ++e) {
            for (int64_t r = m.kept[e]; r < cnt[e]; ++r) m.fresh.push_back(Item{item_load(e), e});
        }
        std::sort(m.fresh.begin(), m.fresh.end(), [](const Item& a, const Item& b) {
            return a.w > b.w || (a.w == b.w && a.idx < b.idx);
        });
    }
    // Min-heap of GPUs with free slots by (load, index).
    auto heavier = [](const PackNode& a, const PackNode& b) {
        return a.key > b.key || (a.key == b.key && a.idx > b.idx);
    };
    m.heap.clear();
    for (int64_t g = 0; g < gpus; ++g) {
        if (m.free_count[g] > 0) m.heap.push_back(PackNode{m.gpu_load[g], g});
    }
    std::make_heap(m.heap.begin(), m.heap.end(), heavier);
    const bool apart = opt.refine == Refine::Local;
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
        PackNode pick = m.heap.front();
        if (apart && cnt[it.idx] <= gpus) {
            // Skip GPUs holding the expert; keep the lightest as the fallback.
            while (!m.heap.empty() && holds(m.heap.front().idx, it.idx)) {
                std::pop_heap(m.heap.begin(), m.heap.end(), heavier);
                passed.push_back(m.heap.back());
                m.heap.pop_back();
            }
            pick = m.heap.empty() ? passed.front() : m.heap.front();
        }
        const bool from_heap = !m.heap.empty() && m.heap.front().idx == pick.idx;
        if (from_heap) {
            std::pop_heap(m.heap.begin(), m.heap.end(), heavier);
            m.heap.pop_back();
        } else {
            passed.erase(passed.begin());
        }
        const int64_t g = pick.idx;
        int64_t r = 0;
        while (slot_of[g * k + r] >= 0) ++r;
        slot_of[g * k + r] = it.idx;
        m.gpu_load[g] += it.w;
        for (const PackNode& p : passed) {
            m.heap.push_back(p);
            std::push_heap(m.heap.begin(), m.heap.end(), heavier);
        }
        if (--m.free_count[g] > 0) {
            m.heap.push_back(PackNode{m.gpu_load[g], g});
            std::push_heap(m.heap.begin(), m.heap.end(), heavier);
        }
    }

    // Local search over the slots: item i is slot i, pack q holds items [q k, (q + 1) k).
    m.item_w.resize(static_cast<size_t>(slots));
    s.slot.resize(static_cast<size_t>(slots));
    s.expert_of.resize(static_cast<size_t>(slots));
    s.order.resize(static_cast<size_t>(slots));
    s.load.assign(static_cast<size_t>(gpus), 0.0);
    for (int64_t i = 0; i < slots; ++i) {
        const int64_t e = slot_of[i];
        m.item_w[i] = item_load(e);
        s.slot[i] = i;
        s.expert_of[i] = e;
        s.order[i] = Item{m.item_w[i], i};
        s.load[i / k] += m.item_w[i];
    }
    s.label.clear();
    if (apart) {
        s.label.resize(static_cast<size_t>(slots));
        for (int64_t i = 0; i < slots; ++i) {
            const int64_t e = slot_of[i];
            s.label[i] = cnt[e] > 1 && cnt[e] <= gpus ? e : -1;
        }
    }
    const int64_t placed = count_moves(old, slot_of, gpus, k, m.stamp, n);
    if (opt.refine != Refine::None && gpus > 1) {
        // local_search reads only its bound off s.order: the heaviest item first and the
        // k - 1 lightest last, which a selection provides without a full sort.
        auto heavier = [](const Item& a, const Item& b) {
            return a.w > b.w || (a.w == b.w && a.idx < b.idx);
        };
        std::iter_swap(s.order.begin(),
                       std::min_element(s.order.begin(), s.order.end(), heavier));
        if (k > 1) {
            std::nth_element(s.order.begin() + 1, s.order.end() - (k - 1), s.order.end(),
                             heavier);
        }
        s.old_slot = old;
        s.move_budget = budget < 0 ? -1 : std::max<int64_t>(0, budget - placed);
        s.moves = 0;
        s.tolerance = kMigrationTolerance;
        s.floor = floor;
        local_search(m.item_w.data(), gpus, k, s);
        s.tolerance = kBoundTolerance;
        s.floor = 0.0;
        s.old_slot = nullptr;
    }
    // Experts that stay on a GPU keep their old slot there; the rest fill the free slots in
    // the order the search left them.
    m.need.assign(static_cast<size_t>(n), 0);
    m.out.resize(static_cast<size_t>(slots));
    double peak = 0.0;
    for (int64_t g = 0; g < gpus; ++g) {
        peak = std::max(peak, s.load[g]);
        const int64_t* items = s.slot.data() + g * k;
        int64_t* dst = m.out.data() + g * k;
        for (int64_t r = 0; r < k; ++r) ++m.need[s.expert_of[items[r]]];
        for (int64_t r = 0; r < k; ++r) {
            const int64_t e = old[g * k + r];
            dst[r] = e >= 0 && m.need[e] > 0 ? e : -1;
            if (dst[r] >= 0) --m.need[e];
        }
        int64_t r = 0;
        for (int64_t j = 0; j < k; ++j) {
            const int64_t e = s.expert_of[items[j]];
            if (m.need[e] == 0) continue;
            --m.need[e];
            while (dst[r] >= 0) ++r;
            dst[r] = e;
        }
    }
    std::copy(m.out.begin(), m.out.end(), out);
    moves += count_moves(old, out, gpus, k, m.stamp, n);
    return peak;
}

// A groups -> nodes split must lower the largest node load by more than this fraction before
// migration gives up the old split (moving a group re-copies all of its experts).
constexpr double kSplitGain = 2e-3;

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
void old_split(const int64_t* old, const Shape& sh, LayerScratch& s, int64_t* pack,
               int64_t* rank) {
    const int64_t G = sh.groups, N = sh.nodes, group_size = sh.experts / G;
    const int64_t slots_per_node = sh.replicas / N;
    s.overlap.assign(static_cast<size_t>(G * N), 0);
    for (int64_t p = 0; p < sh.replicas; ++p) ++s.overlap[old[p] / group_size * N + p / slots_per_node];
    s.pairs_order.resize(static_cast<size_t>(G * N));
    for (int64_t i = 0; i < G * N; ++i) s.pairs_order[i] = i;
    std::stable_sort(s.pairs_order.begin(), s.pairs_order.end(), [&](int64_t a, int64_t b) {
        return s.overlap[a] > s.overlap[b];
    });
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
void align_split(const int64_t* ref, const Shape& sh, LayerScratch& s, int64_t* pack) {
    const int64_t N = sh.nodes;
    s.overlap.assign(static_cast<size_t>(N * N), 0);
    for (int64_t g = 0; g < sh.groups; ++g) ++s.overlap[pack[g] * N + ref[g]];
    s.pairs_order.resize(static_cast<size_t>(N * N));
    for (int64_t i = 0; i < N * N; ++i) s.pairs_order[i] = i;
    std::stable_sort(s.pairs_order.begin(), s.pairs_order.end(), [&](int64_t a, int64_t b) {
        return s.overlap[a] > s.overlap[b];
    });
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

// A node's move budget: `pool` plus the ceiling share (spare + parts - 1) / parts of `spare`
// over `parts` >= 1 nodes, saturated at INT64_MAX instead of overflowing for budgets near 2^63
// (max_moves may be up to 2^63 - 1); the same value wherever that expression does not overflow.
// pool >= 0.
int64_t node_move_budget(int64_t pool, int64_t spare, int64_t parts) {
    constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
    // spare + parts - 1 overflows only for spare > kMax - (parts - 1) > 0, where the ceiling
    // share is spare / parts rounded up.
    const int64_t share = spare > kMax - (parts - 1) ? spare / parts + (spare % parts != 0)
                                                     : (spare + (parts - 1)) / parts;
    return share > kMax - pool ? kMax : pool + share;
}

// Plans a layer from its old placement for one groups -> nodes split: each node's experts
// replicated with Adams' counts as the target, then migrate_node on the node's GPUs. The
// layer's budget is shared out node by node: each node first gets the copies it cannot avoid
// (its slots holding other nodes' experts), then an even share of the rest, and leaves what it
// does not use to the nodes after it. Returns the largest GPU load, or -1 when the budget is
// too small for this split; adds the copies to `moves`.
double migrate_split(const double* w, const int64_t* old, const Shape& sh, const Options& opt,
                     int64_t budget, LayerScratch& s, const int64_t* group_pack,
                     const int64_t* group_rank, int64_t* out_phy2log, int64_t* out_logcnt,
                     int64_t& moves) {
    const int64_t E = sh.experts, N = sh.nodes;
    const int64_t experts_per_node = E / N, slots_per_node = sh.replicas / N;
    const int64_t gpus_per_node = sh.gpus / N, k = sh.replicas / sh.gpus;
    number_node_major(sh, group_pack, group_rank, s);
    // Old slots in node-local expert ids, -1 where a slot holds another node's expert.
    s.node_old.resize(static_cast<size_t>(sh.replicas));
    int64_t pools = 0;
    for (int64_t p = 0; p < sh.replicas; ++p) {
        const int64_t node = p / slots_per_node, mlog = s.log2mlog[old[p]];
        const bool own = mlog / experts_per_node == node;
        s.node_old[p] = own ? mlog - node * experts_per_node : -1;
        pools += !own;
    }
    if (budget >= 0 && pools > budget) return -1.0;
    s.mlogcnt.resize(static_cast<size_t>(E));
    s.mlog_load.resize(static_cast<size_t>(experts_per_node));
    s.experts.resize(static_cast<size_t>(experts_per_node));
    s.phy2mlog.resize(static_cast<size_t>(slots_per_node));
    s.phyrank.resize(static_cast<size_t>(slots_per_node));
    s.trial_cnt.resize(static_cast<size_t>(experts_per_node));
    s.node_out.resize(static_cast<size_t>(slots_per_node));
    // No GPU gets below its node's mean, so no node needs refining below the busiest mean.
    double floor = 0.0;
    for (int64_t node = 0; node < N; ++node) {
        double sum = 0.0;
        for (int64_t j = 0; j < experts_per_node; ++j) sum += w[s.mlog2log[node * experts_per_node + j]];
        floor = std::max(floor, sum / static_cast<double>(gpus_per_node));
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
            const int64_t node = g / gpus_per_node;
            s.node_peak[node] = std::max(s.node_peak[node], load);
        }
        std::stable_sort(s.node_order.begin(), s.node_order.end(),
                         [&](int64_t a, int64_t b) { return s.node_peak[a] > s.node_peak[b]; });
    }
    double peak = 0.0;
    for (int64_t at = 0; at < N; ++at) {
        const int64_t node = s.node_order[at];
        const int64_t* mlog2log = s.mlog2log.data() + node * experts_per_node;
        for (int64_t j = 0; j < experts_per_node; ++j) s.mlog_load[j] = w[mlog2log[j]];
        // At two or three slots per GPU the fresh planner may tune Adams' counts; aim at the
        // counts it would tune to, so that an unchanged layer is not re-counted.
        const bool tune = opt.refine == Refine::Local && k <= kCountSearchSlots && k >= 2 &&
                          gpus_per_node >= 2;
        for (int64_t j = 0; j < experts_per_node; ++j) s.experts[j] = Item{s.mlog_load[j], j};
        sort_items(s.experts, s.pack.sort_buffer, s.pack.sort_key, s.pack.sort_rank,
                   s.pack.sort_seen);
        replicate_sorted(s.mlog_load.data(), experts_per_node, slots_per_node, s.experts.data(),
                         s.quotients, s.phy2mlog.data(), s.phyrank.data(), s.trial_cnt.data());
        if (tune) {
            s.kept_cnt = s.trial_cnt;
            if (!improve_counts(s.mlog_load.data(), experts_per_node, k, s.trial_cnt.data(),
                                s.pairs)) {
                s.trial_cnt.swap(s.kept_cnt);
            }
        }
        const int64_t* node_old = s.node_old.data() + node * slots_per_node;
        int64_t node_budget = -1;
        if (budget >= 0) {
            const int64_t pool = std::count(node_old, node_old + slots_per_node, int64_t{-1});
            const int64_t spare = budget - moves - pools;
            node_budget = node_move_budget(pool, spare, N - at);  // ceiling share
            pools -= pool;
        }
        int64_t* cnt = s.mlogcnt.data() + node * experts_per_node;
        const double node_peak =
            migrate_node(s.mlog_load.data(), experts_per_node, s.trial_cnt.data(), node_old,
                         gpus_per_node, k, opt, node_budget, floor, s.migrate, s.pack,
                         s.node_out.data(), cnt, moves);
        if (node_peak < 0.0) return -1.0;
        peak = std::max(peak, node_peak);
        for (int64_t i = 0; i < slots_per_node; ++i) {
            out_phy2log[node * slots_per_node + i] = mlog2log[s.node_out[i]];
        }
    }
    for (int64_t e = 0; e < E; ++e) out_logcnt[e] = s.mlogcnt[s.log2mlog[e]];
    return peak;
}

// Replica ranks in slot order.
void ranks_by_slot(const int64_t* phy2log, int64_t P, int64_t experts, std::vector<int64_t>& seen,
                   int64_t* phyrank) {
    seen.assign(static_cast<size_t>(experts), 0);
    for (int64_t p = 0; p < P; ++p) phyrank[p] = seen[phy2log[p]]++;
}

// One layer planned from its old placement (see rebalance_experts).
void migrate_layer(const double* w, const int64_t* old, const Shape& sh, const Options& opt,
                   const Migration& mig, LayerScratch& s, int64_t* out_phy2log,
                   int64_t* out_phyrank, int64_t* out_logcnt) {
    const int64_t E = sh.experts, P = sh.replicas;
    const double old_peak = placement_peak(w, old, E, P, sh.gpus, s.old_cnt);
    double peak = -1.0;
    if (mig.max_moves != 0) {
        int64_t moves = 0;
        s.group_pack.resize(static_cast<size_t>(sh.groups));
        s.group_rank.resize(static_cast<size_t>(sh.groups));
        if (sh.nodes == 1) {
            std::fill(s.group_pack.begin(), s.group_pack.end(), 0);
            for (int64_t g = 0; g < sh.groups; ++g) s.group_rank[g] = g;
            peak = migrate_split(w, old, sh, opt, mig.max_moves, s, s.group_pack.data(),
                                 s.group_rank.data(), out_phy2log, out_logcnt, moves);
        } else {
            sum_groups(w, sh, s);
            old_split(old, sh, s, s.group_pack.data(), s.group_rank.data());
            // The best split the fresh planner would use, named after the old nodes. It
            // replaces the old split when it lightens the busiest node by more than
            // kSplitGain (planning both and comparing the results took a third of the time
            // and chose the new split every time it was tried).
            s.greedy_pack.resize(static_cast<size_t>(sh.groups));
            s.greedy_rank.resize(static_cast<size_t>(sh.groups));
            choose_split(sh, opt, s, s.greedy_pack.data(), s.greedy_rank.data());
            align_split(s.group_pack.data(), sh, s, s.greedy_pack.data());
            const double kept_nodes = busiest_node(sh, s.group_pack.data(), s);
            const double new_nodes = busiest_node(sh, s.greedy_pack.data(), s);
            if (s.greedy_pack != s.group_pack && new_nodes < kept_nodes * (1.0 - kSplitGain)) {
                peak = migrate_split(w, old, sh, opt, mig.max_moves, s, s.greedy_pack.data(),
                                     s.greedy_rank.data(), out_phy2log, out_logcnt, moves);
            }
            if (peak < 0.0) {
                moves = 0;
                peak = migrate_split(w, old, sh, opt, mig.max_moves, s, s.group_pack.data(),
                                     s.group_rank.data(), out_phy2log, out_logcnt, moves);
            }
            if (peak < 0.0) {
                // The old placement does not follow the groups and the budget cannot move it
                // into shape: plan across all GPUs as one node instead.
                Shape flat = sh;
                flat.groups = flat.nodes = 1;
                s.group_pack.assign(1, 0);
                s.group_rank.assign(1, 0);
                moves = 0;
                peak = migrate_split(w, old, flat, opt, mig.max_moves, s, s.group_pack.data(),
                                     s.group_rank.data(), out_phy2log, out_logcnt, moves);
            }
        }
    }
    // The search tracks loads incrementally; compare sums computed the same way for both.
    if (peak >= 0.0) peak = placement_peak(w, out_phy2log, E, P, sh.gpus, s.new_cnt);
    // A gain within rounding (1e-12) is no gain: it would move weights for nothing.
    if (peak < 0.0 || !(peak < old_peak * (1.0 - std::max(mig.min_gain, 1e-12)))) {
        std::copy(old, old + P, out_phy2log);
        std::copy(s.old_cnt.begin(), s.old_cnt.end(), out_logcnt);
    }
    ranks_by_slot(out_phy2log, P, E, s.old_cnt, out_phyrank);
}

// Starting a thread costs about as much as planning this many slots (~50 us here), so by
// default small inputs get fewer threads than the hardware has.
constexpr int64_t kSlotsPerThread = 4096;

// opt.num_threads if set, else the hardware concurrency, at most one thread per
// kSlotsPerThread slots of work.
int threads_for(const Options& opt, int64_t rows, int64_t slots_per_row) {
    if (opt.num_threads > 0) return opt.num_threads;  // capped by resolve_threads
    const int64_t cpus = usable_cpus();
    const int64_t work = rows * std::max<int64_t>(1, slots_per_row);
    return static_cast<int>(std::min(cpus, 1 + work / kSlotsPerThread));
}

void check_options(const Options& opt) {
    require(opt.swap_rounds >= 0, "swap_rounds must be >= 0");
}

}  // namespace

Refine parse_refine(const std::string& name) {
    if (name == "none") return Refine::None;
    if (name == "swap") return Refine::Swap;
    if (name == "local") return Refine::Local;
    throw std::invalid_argument("refine must be one of 'local', 'swap', 'none'; got '" + name +
                                "'");
}

void check_weights(const double* weight, int64_t rows, int64_t cols, const char* name) {
    IeeeFloatGuard ieee;  // a negative subnormal must not pass as zero
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

void check_placement(const int64_t* phy2log, int64_t rows, int64_t experts,
                     int64_t num_replicas, const char* name) {
    std::vector<char> seen;
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t* row = phy2log + r * num_replicas;
        seen.assign(static_cast<size_t>(experts), 0);
        for (int64_t p = 0; p < num_replicas; ++p) {
            if (row[p] < 0 || row[p] >= experts) {
                char buf[256];
                std::snprintf(buf, sizeof buf,
                              "%s must hold expert ids in [0, %lld); found %lld at [%lld, %lld]",
                              name, static_cast<long long>(experts),
                              static_cast<long long>(row[p]), static_cast<long long>(r),
                              static_cast<long long>(p));
                throw std::invalid_argument(buf);
            }
            seen[row[p]] = 1;
        }
        const auto missing = std::find(seen.begin(), seen.end(), 0);
        if (missing != seen.end()) {
            char buf[256];
            std::snprintf(buf, sizeof buf,
                          "%s must place every expert at least once; layer %lld lacks expert %lld",
                          name, static_cast<long long>(r),
                          static_cast<long long>(missing - seen.begin()));
            throw std::invalid_argument(buf);
        }
    }
}

namespace {

// Supported sizes, as python/fasteplb/_checks.py (which names the arguments in its messages;
// README "Supported sizes" gives the measured worst cases): beyond them some path would take
// seconds per layer or allocate gigabytes, so the entry points refuse them up front.
constexpr int64_t kMaxExperts = int64_t{1} << 20;       // experts (items) per row
constexpr int64_t kMaxReplicas = int64_t{1} << 20;      // num_replicas, num_phy
constexpr int64_t kMaxLog2PhyLayer = int64_t{1} << 24;  // experts * (num_replicas - experts + 1)
constexpr int64_t kLocalMaxSlots = int64_t{1} << 13;    // Refine::Local, migration: slots per row
constexpr int64_t kLocalMaxPerPack = int64_t{1} << 8;   // Refine::Local: slots per GPU (pack)
constexpr int64_t kSwapMaxSlots = int64_t{1} << 16;     // Refine::Swap: slots per row
constexpr int64_t kSwapMaxPerPack = int64_t{1} << 8;    // Refine::Swap: slots per GPU (pack)
constexpr int kMaxSwapRounds = 1000;                    // Refine::Swap and Refine::Local
constexpr int64_t kMigrationMaxNodes = int64_t{1} << 10;

// The limits of opt.refine on n slots (items) per row in packs of per_pack.
void check_mode_limits(const Options& opt, int64_t n, int64_t per_pack) {
    if (opt.refine == Refine::Local) {
        require(n <= kLocalMaxSlots, "refine='local' supports at most 8192 slots (items) per row");
        require(per_pack <= kLocalMaxPerPack,
                "refine='local' supports at most 256 slots per GPU (items per pack)");
    } else if (opt.refine == Refine::Swap) {
        require(n <= kSwapMaxSlots, "refine='swap' supports at most 65536 slots (items) per row");
        require(per_pack <= kSwapMaxPerPack,
                "refine='swap' supports at most 256 slots per GPU (items per pack)");
    }
    require(opt.refine == Refine::None || opt.swap_rounds <= kMaxSwapRounds,
            "swap_rounds must be <= 1000 with refine='swap' or 'local'");
}

}  // namespace

void balanced_packing(const double* weight, int64_t rows, int64_t n, int64_t num_packs,
                      const Options& opt, int64_t* pack_index, int64_t* rank_in_pack) {
    IeeeFloatGuard ieee;
    check_options(opt);
    require(rows >= 0 && n >= 1, "weight must have at least one item per row");
    require(num_packs >= 1, "num_packs must be >= 1");
    require(n % num_packs == 0, "the number of items must be divisible by num_packs");
    require(n <= kMaxExperts, "weight must have at most 2**20 items per row");
    check_mode_limits(opt, n, n / num_packs);
    check_weights(weight, rows, n, "weight");
    parallel_rows(
        rows, threads_for(opt, rows, n), [] { return PackScratch{}; },
        [&](PackScratch& s, int64_t r) {
            pack_one(weight + r * n, n, num_packs, opt.refine, opt.swap_rounds, s,
                     pack_index + r * n, rank_in_pack + r * n);
        });
}

void replicate_experts(const double* weight, int64_t rows, int64_t num_log, int64_t num_phy,
                       const Options& opt, int64_t* phy2log, int64_t* rank, int64_t* logcnt) {
    IeeeFloatGuard ieee;
    check_options(opt);
    require(rows >= 0 && num_log >= 1, "weight must have at least one expert per row");
    require(num_phy >= num_log, "num_phy must be >= the number of experts");
    require(num_log <= kMaxExperts, "weight must have at most 2**20 experts per row");
    require(num_phy <= kMaxReplicas, "num_phy must be <= 2**20");
    check_weights(weight, rows, num_log, "weight");
    parallel_rows(
        rows, threads_for(opt, rows, num_phy), [] { return ReplicateScratch{}; },
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
                       int64_t* logcnt, const Log2PhyAlloc& alloc, const Migration& mig) {
    IeeeFloatGuard ieee;
    check_options(opt);
    require(layers >= 0 && experts >= 1, "weight must have at least one expert per layer");
    require(num_replicas >= 1 && num_groups >= 1 && num_nodes >= 1 && num_gpus >= 1,
            "num_replicas, num_groups, num_nodes and num_gpus must be >= 1");
    require(num_replicas >= experts, "num_replicas must be >= the number of experts");
    require(num_replicas % num_gpus == 0, "num_replicas must be divisible by num_gpus");
    require(num_gpus % num_nodes == 0, "num_gpus must be divisible by num_nodes");
    require(experts % num_groups == 0, "the number of experts must be divisible by num_groups");
    require(experts <= kMaxExperts, "weight must have at most 2**20 experts per layer");
    require(num_replicas <= kMaxReplicas, "num_replicas must be <= 2**20");
    require(experts * (num_replicas - experts + 1) <= kMaxLog2PhyLayer,
            "experts * (num_replicas - experts + 1) must be <= 2**24");
    check_mode_limits(opt, num_replicas, num_replicas / num_gpus);
    if (mig.old_phy2log != nullptr) {
        require(num_replicas <= kLocalMaxSlots,
                "old_phy2log supports at most 8192 slots per layer");
        require(num_nodes <= kMigrationMaxNodes, "old_phy2log supports at most 1024 nodes");
    }
    check_weights(weight, layers, experts, "weight");
    if (mig.old_phy2log != nullptr) {
        require(mig.min_gain >= 0.0 && mig.min_gain < 1.0, "min_gain must be in [0, 1)");
        check_placement(mig.old_phy2log, layers, experts, num_replicas, "old_phy2log");
    }
    Shape sh{experts, num_replicas, num_groups, num_nodes, num_gpus};
    if (num_groups % num_nodes != 0) sh.groups = sh.nodes = 1;  // global policy
    const int threads = threads_for(opt, layers, num_replicas);
    auto plan = [&](LayerScratch& s, int64_t l) {
        if (mig.old_phy2log != nullptr) {
            migrate_layer(weight + l * experts, mig.old_phy2log + l * num_replicas, sh, opt, mig,
                          s, phy2log + l * num_replicas, phyrank + l * num_replicas,
                          logcnt + l * experts);
            return;
        }
        rebalance_layer(weight + l * experts, sh, opt, s, phy2log + l * num_replicas,
                        phyrank + l * num_replicas, logcnt + l * experts);
    };
    if (!alloc) {
        parallel_rows(layers, threads, [] { return LayerScratch{}; }, plan);
        return;
    }
    // log2phy's last dimension is the largest count over all layers, so it is allocated
    // between the planning pass and the filling pass, on the same threads.
    int64_t* log2phy = nullptr;
    int64_t max_cnt = 0;
    parallel_two_pass(
        layers, threads, [] { return LayerScratch{}; }, plan,
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
