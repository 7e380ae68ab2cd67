// Standalone tests for the fasteplb C++ core (csrc/fasteplb/eplb.hpp), meant to run under
// AddressSanitizer and UndefinedBehaviorSanitizer, and under ThreadSanitizer (see
// tests/cpp/run_sanitizers.sh).
//
// No test framework: CHECK counts passes and failures and prints file:line with the case
// being tested; main returns non-zero on any failure and ends with "N passed, M failed".
//
// Usage: test_core [--scale X] [--seed S] [--case SEED] [--simd NAME] [--noop]
//   --scale X   multiply the number of random cases (default 1; 0.2 is a smoke run)
//   --seed S    base seed of the random cases (default fixed, so runs are reproducible)
//   --case SEED re-run only the random rebalance case with that seed (printed on failure)
//   --simd NAME run everything on the "avx2" or "default" kernels (default: the CPU's best,
//               or "default" with FASTEPLB_SIMD=default in the environment); the kernel test
//               compares both in any case, where the CPU has AVX2
//   --noop      do nothing and exit 0 (used by run_sanitizers.sh to probe LeakSanitizer)

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "check.hpp"
#include "fasteplb/detail/simd.hpp"
#include "fasteplb/eplb.hpp"

namespace {

using fasteplb::Options;
using fasteplb::Refine;
using I64 = std::vector<int64_t>;
using F64 = std::vector<double>;

const char* refine_name(Refine r) {
    switch (r) {
        case Refine::None:
            return "none";
        case Refine::Swap:
            return "swap";
        case Refine::Local:
            return "local";
    }
    return "?";
}

constexpr Refine kRefines[] = {Refine::None, Refine::Swap, Refine::Local};

// ------------------------------------------------------------------------------------------
// Load generators

enum LoadKind {
    kLogNormal,
    kSmallInts,  // 0..3: many ties
    kTokens,     // integer token counts
    kZeros,
    kEqual,
    kSparse,  // mostly zero, a few hot experts
    kHuge,    // around 1e290 (row sums stay below the 1e300 limit for <= 300 experts)
    kTiny,    // 1e-300 scale and subnormal multiples of 5e-324
    kMixed,   // each entry drawn from all of the above magnitudes
    kNumLoadKinds
};

const char* load_name(int kind) {
    static const char* names[] = {"lognormal", "small_ints", "tokens", "zeros", "equal",
                                  "sparse",    "huge",       "tiny",   "mixed"};
    return names[kind];
}

F64 make_loads(std::mt19937_64& rng, int kind, int64_t count) {
    F64 w(static_cast<size_t>(count));
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    std::uniform_int_distribution<int> small(0, 3);
    const double sigma = std::vector<double>{0.5, 1.0, 2.0, 3.0}[rng() % 4];
    std::lognormal_distribution<double> logn(0.0, sigma);
    const double equal = static_cast<double>(1 + rng() % 100);
    for (auto& x : w) {
        switch (kind) {
            case kLogNormal:
                x = logn(rng);
                break;
            case kSmallInts:
                x = small(rng);
                break;
            case kTokens:
                x = static_cast<double>(rng() % 100000);
                break;
            case kZeros:
                x = 0.0;
                break;
            case kEqual:
                x = equal;
                break;
            case kSparse:
                x = unit(rng) < 0.1 ? static_cast<double>(1 + rng() % 1000) : 0.0;
                break;
            case kHuge:
                x = rng() % 8 == 0 ? 1e290 : 1e290 * (0.25 + 0.75 * unit(rng));
                break;
            case kTiny:
                x = rng() % 2 == 0 ? 1e-300 * (1.0 + unit(rng))
                                   : 5e-324 * static_cast<double>(rng() % 5);
                break;
            case kMixed: {
                static const double pool[] = {0.0, 5e-324, 1e-310, 1e-300, 1e-5,
                                              1.0, 3.0,    1e200,  7e250,  1e290};
                const int pick = static_cast<int>(rng() % 12);
                x = pick < 10 ? pool[pick] : (pick == 10 ? logn(rng) : small(rng));
                break;
            }
            default:
                x = 0.0;
        }
    }
    return w;
}

// ------------------------------------------------------------------------------------------
// rebalance_experts helpers

struct Shape {
    int64_t L, E, P, K, N, G;
    bool hierarchical() const { return K % N == 0; }
};

struct Plan {
    I64 phy2log, phyrank, logcnt, log2phy;
    int64_t max_cnt = -1;  // the argument of the single allocator call, -1 if none
    int alloc_calls = 0;
    bool operator==(const Plan& o) const {
        return phy2log == o.phy2log && phyrank == o.phyrank && logcnt == o.logcnt &&
               log2phy == o.log2phy && max_cnt == o.max_cnt;
    }
};

constexpr int64_t kSentinel = -7;  // log2phy's initial content: never a valid output

Plan rebalance(const F64& w, const Shape& s, const Options& opt, bool with_alloc) {
    Plan p;
    p.phy2log.assign(static_cast<size_t>(s.L * s.P), kSentinel);
    p.phyrank.assign(static_cast<size_t>(s.L * s.P), kSentinel);
    p.logcnt.assign(static_cast<size_t>(s.L * s.E), kSentinel);
    fasteplb::Log2PhyAlloc alloc;
    if (with_alloc) {
        alloc = [&p, &s](int64_t r) -> int64_t* {
            ++p.alloc_calls;
            p.max_cnt = r;
            p.log2phy.assign(static_cast<size_t>(std::max<int64_t>(s.L * s.E * r, 1)), kSentinel);
            return p.log2phy.data();
        };
    }
    fasteplb::rebalance_experts(w.data(), s.L, s.E, s.P, s.K, s.N, s.G, opt, p.phy2log.data(),
                                p.phyrank.data(), p.logcnt.data(), alloc);
    return p;
}

// rebalance_experts from an old placement (migration), with log2phy.
Plan migrate(const F64& w, const Shape& s, const Options& opt, const I64& old, int64_t max_moves,
             double min_gain) {
    Plan p;
    p.phy2log.assign(static_cast<size_t>(s.L * s.P), kSentinel);
    p.phyrank.assign(static_cast<size_t>(s.L * s.P), kSentinel);
    p.logcnt.assign(static_cast<size_t>(s.L * s.E), kSentinel);
    fasteplb::Log2PhyAlloc alloc = [&p, &s](int64_t r) -> int64_t* {
        ++p.alloc_calls;
        p.max_cnt = r;
        p.log2phy.assign(static_cast<size_t>(std::max<int64_t>(s.L * s.E * r, 1)), kSentinel);
        return p.log2phy.data();
    };
    fasteplb::Migration mig;
    mig.old_phy2log = old.data();
    mig.max_moves = max_moves;
    mig.min_gain = min_gain;
    fasteplb::rebalance_experts(w.data(), s.L, s.E, s.P, s.K, s.N, s.G, opt, p.phy2log.data(),
                                p.phyrank.data(), p.logcnt.data(), alloc, mig);
    return p;
}

// Weight copies from old to new in layer l: experts new to each GPU.
int64_t moves_in_layer(const I64& old, const I64& now, const Shape& s, int64_t l) {
    const int64_t k = s.P / s.G;
    int64_t moves = 0;
    for (int64_t g = 0; g < s.G; ++g) {
        const int64_t* o = old.data() + l * s.P + g * k;
        const int64_t* n = now.data() + l * s.P + g * k;
        for (int64_t r = 0; r < k; ++r) {
            if (std::find(n, n + r, n[r]) != n + r) continue;  // counted already
            moves += std::find(o, o + k, n[r]) == o + k;
        }
    }
    return moves;
}

// Largest GPU load of layer l: each slot carries its expert's load / its replica count.
double max_gpu_load(const F64& w, const Shape& s, const Plan& p, int64_t l) {
    const int64_t k = s.P / s.G;
    double peak = 0.0;
    for (int64_t g = 0; g < s.G; ++g) {
        double load = 0.0;
        for (int64_t j = 0; j < k; ++j) {
            const int64_t e = p.phy2log[l * s.P + g * k + j];
            if (e < 0 || e >= s.E) return std::numeric_limits<double>::quiet_NaN();
            load += w[l * s.E + e] / static_cast<double>(p.logcnt[l * s.E + e]);
        }
        peak = std::max(peak, load);
    }
    return peak;
}

// Checks every structural invariant of a plan; returns false (after recording failures) when
// the plan is too broken to look at further.
bool check_plan(const Shape& s, const Plan& p, bool with_alloc) {
    const int64_t L = s.L, E = s.E, P = s.P;
    bool valid_experts = true;
    for (int64_t i = 0; i < L * P; ++i) valid_experts &= p.phy2log[i] >= 0 && p.phy2log[i] < E;
    CHECK_MSG(valid_experts, "every slot holds an expert in [0, E)");
    if (!valid_experts) return false;

    bool cnt_ok = true, each_replicated = true, ranks_ok = true;
    I64 count(static_cast<size_t>(E)), seen;
    for (int64_t l = 0; l < L; ++l) {
        std::fill(count.begin(), count.end(), 0);
        for (int64_t q = 0; q < P; ++q) ++count[p.phy2log[l * P + q]];
        for (int64_t e = 0; e < E; ++e) {
            cnt_ok &= p.logcnt[l * E + e] == count[e];
            each_replicated &= count[e] >= 1;
        }
        // phyrank of each expert's slots: exactly 0..cnt-1.
        seen.assign(static_cast<size_t>(P), 0);  // seen[e * ... ] would be E*P; use offsets
        I64 offset(static_cast<size_t>(E) + 1, 0);
        for (int64_t e = 0; e < E; ++e) offset[e + 1] = offset[e] + count[e];
        for (int64_t q = 0; q < P; ++q) {
            const int64_t e = p.phy2log[l * P + q], r = p.phyrank[l * P + q];
            if (r < 0 || r >= count[e] || seen[offset[e] + r]++ != 0) ranks_ok = false;
        }
    }
    CHECK_MSG(each_replicated, "every expert has >= 1 replica");
    CHECK_MSG(cnt_ok, "logcnt equals the counts in phy2log");
    CHECK_MSG(ranks_ok, "phyrank of each expert is exactly 0..cnt-1");

    if (s.hierarchical()) {
        // Node n owns slots [n * P/N, (n+1) * P/N); each group's experts sit on one node, and
        // each node holds exactly K/N groups.
        const int64_t per_node = P / s.N, group_size = E / s.K;
        bool groups_ok = true, spread_ok = true;
        for (int64_t l = 0; l < L; ++l) {
            I64 node_of(static_cast<size_t>(s.K), -1);
            for (int64_t q = 0; q < P; ++q) {
                const int64_t g = p.phy2log[l * P + q] / group_size, node = q / per_node;
                if (node_of[g] < 0) node_of[g] = node;
                groups_ok &= node_of[g] == node;
            }
            I64 per(static_cast<size_t>(s.N), 0);
            for (int64_t g = 0; g < s.K; ++g) {
                if (node_of[g] >= 0) ++per[node_of[g]];
            }
            for (int64_t n = 0; n < s.N; ++n) spread_ok &= per[n] == s.K / s.N;
        }
        CHECK_MSG(groups_ok, "hierarchical: each group's experts stay on one node");
        CHECK_MSG(spread_ok, "hierarchical: each node holds exactly K/N groups");
    }

    if (with_alloc) {
        CHECK_MSG(p.alloc_calls == 1, fmt("allocator called %d times", p.alloc_calls));
        int64_t want_max = 0;
        for (int64_t i = 0; i < L * E; ++i) want_max = std::max(want_max, p.logcnt[i]);
        CHECK_MSG(p.max_cnt == want_max,
                  fmt("allocator got %lld, largest count is %lld",
                      static_cast<long long>(p.max_cnt), static_cast<long long>(want_max)));
        if (p.alloc_calls == 1 && p.max_cnt == want_max) {
            const int64_t R = p.max_cnt;
            bool l2p_ok = true;
            for (int64_t l = 0; l < L; ++l) {
                for (int64_t e = 0; e < E; ++e) {
                    const int64_t cnt = p.logcnt[l * E + e];
                    for (int64_t r = 0; r < R; ++r) {
                        const int64_t v = p.log2phy[(l * E + e) * R + r];
                        if (r >= cnt) {
                            l2p_ok &= v == -1;
                        } else {
                            l2p_ok &= v >= 0 && v < P && p.phy2log[l * P + v] == e &&
                                      p.phyrank[l * P + v] == r;
                        }
                    }
                }
            }
            CHECK_MSG(l2p_ok, "log2phy lists each expert's slots by rank, then -1");
        }
    }
    return true;
}

// refine='swap' and 'local' plan at most this many slots per GPU (the core's supported sizes;
// larger requests are refused with std::invalid_argument).
constexpr int64_t kMaxSlotsPerGpu = 256;

// A random valid shape: E in [1, max_e], P in [E, 4E], at most kMaxSlotsPerGpu slots per GPU,
// hierarchical or global.
Shape random_shape(std::mt19937_64& rng, int64_t max_e) {
    auto pick = [&rng](int64_t lo, int64_t hi) {  // inclusive
        return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
    };
    for (;;) {
        Shape s{};
        s.L = pick(1, 8);
        if (rng() % 5 == 0) {
            // 3..12 groups on 2..K-1 nodes (refine=local's exact groups -> nodes split).
            s.K = pick(3, 12);
            I64 kd;
            for (int64_t d = 2; d < s.K; ++d) {
                if (s.K % d == 0) kd.push_back(d);
            }
            if (kd.empty()) continue;
            s.N = kd[rng() % kd.size()];
            s.E = s.K * pick(1, max_e / s.K);
            s.G = s.N * pick(1, 4);
            const int64_t k_lo = (s.E + s.G - 1) / s.G, k_hi = 4 * s.E / s.G;
            if (k_lo > k_hi) continue;
            s.P = s.G * pick(k_lo, std::min(k_hi, k_lo + 3));
            if (s.P / s.G > kMaxSlotsPerGpu) continue;
            return s;
        }
        // Small sizes are where the corner cases live: weight them up.
        s.E = rng() % 3 == 0 ? pick(1, 16) : pick(1, max_e);
        I64 divisors;
        for (int64_t d = 1; d <= s.E; ++d) {
            if (s.E % d == 0) divisors.push_back(d);
        }
        const bool hierarchical = rng() % 2 == 0;
        if (hierarchical && rng() % 2 == 0) {
            // Few groups (<= 12): refine=local splits them over nodes exactly.
            while (divisors.size() > 1 && divisors.back() > 12) divisors.pop_back();
        }
        s.K = divisors[rng() % divisors.size()];
        if (hierarchical) {
            I64 kd;  // node counts dividing K; mostly more than one node
            for (int64_t d = rng() % 4 == 0 ? 1 : 2; d <= s.K; ++d) {
                if (s.K % d == 0) kd.push_back(d);
            }
            if (kd.empty()) kd.push_back(1);
            s.N = kd[rng() % kd.size()];
        } else {
            I64 nd;
            for (int64_t d = 2; d <= 8; ++d) {
                if (s.K % d != 0) nd.push_back(d);
            }
            if (nd.empty()) continue;
            s.N = nd[rng() % nd.size()];
        }
        const int64_t gpn = pick(1, 8);
        s.G = s.N * gpn;
        const int64_t k_lo = (s.E + s.G - 1) / s.G, k_hi = 4 * s.E / s.G;
        if (k_lo > k_hi) continue;
        int64_t k;
        switch (rng() % 4) {
            case 0:
                k = k_lo;
                break;  // as few spare slots as possible
            case 1:
                k = k_lo <= 2 && 2 <= k_hi ? 2 : k_lo;
                break;  // 2 slots/GPU: pair search
            default:
                k = pick(k_lo, k_hi);
        }
        s.P = s.G * k;
        if (s.P < s.E || s.P > 4 * s.E || s.P / s.G > kMaxSlotsPerGpu) continue;
        return s;
    }
}

std::string describe(const Shape& s, int kind, uint64_t seed) {
    return fmt("seed=%llu L=%lld E=%lld P=%lld K=%lld N=%lld G=%lld (%s) loads=%s",
               static_cast<unsigned long long>(seed), static_cast<long long>(s.L),
               static_cast<long long>(s.E), static_cast<long long>(s.P),
               static_cast<long long>(s.K), static_cast<long long>(s.N),
               static_cast<long long>(s.G), s.hierarchical() ? "hierarchical" : "global",
               load_name(kind));
}

// Coverage of the random shapes (printed at the end): which code paths the cases reach.
struct Coverage {
    long cases = 0, hierarchical_multi_node = 0, single_node = 0, global_multi = 0, two_per_gpu = 0,
         exact_split = 0, no_spare = 0, big = 0;
} g_cov;

void count_coverage(const Shape& s) {
    ++g_cov.cases;
    if (s.hierarchical()) {
        if (s.N > 1)
            ++g_cov.hierarchical_multi_node;
        else
            ++g_cov.single_node;
        if (s.N > 1 && s.K > s.N && s.K <= 12) ++g_cov.exact_split;  // refine=local's exact split
    } else {
        ++g_cov.global_multi;
    }
    if (s.P / s.G == 2) ++g_cov.two_per_gpu;
    if (s.P == s.E) ++g_cov.no_spare;
    if (s.E >= 150) ++g_cov.big;
}

// One random case: all three refine modes, with and without the log2phy callback; invariants,
// and Swap / Local never above None's per-layer maximum GPU load.
void rebalance_case(uint64_t seed, bool determinism) {
    std::mt19937_64 rng(seed);
    const Shape s = random_shape(rng, 300);
    const int kind = static_cast<int>(rng() % kNumLoadKinds);
    const F64 w = make_loads(rng, kind, s.L * s.E);
    const int rounds = std::vector<int>{0, 1, 20, 20, 100}[rng() % 5];
    const int threads = static_cast<int>(1 + rng() % 3);
    const std::string base = describe(s, kind, seed);
    count_coverage(s);

    std::vector<Plan> plans;
    for (const Refine refine : kRefines) {
        Options opt;
        opt.refine = refine;
        opt.swap_rounds = rounds;
        opt.num_threads = threads;
        g_context = base + fmt(" refine=%s swap_rounds=%d threads=%d", refine_name(refine), rounds,
                               threads);
        Plan with, without;
        try {
            with = rebalance(w, s, opt, true);
            without = rebalance(w, s, opt, false);
        } catch (const std::exception& e) {
            CHECK_MSG(false, std::string("unexpected exception: ") + e.what());
            plans.emplace_back();
            continue;
        }
        if (check_plan(s, with, true)) {
            Plan stripped = with;
            stripped.log2phy.clear();
            stripped.max_cnt = -1;
            CHECK_MSG(stripped == without, "the callback does not change the plan");
        }
        if (determinism) {
            // Identical output for any thread count, and on a repeated call.
            bool same = true;
            std::string which;
            for (const int t : {1, 2, 7, 0}) {
                Options o = opt;
                o.num_threads = t;
                if (!(rebalance(w, s, o, true) == with)) {
                    same = false;
                    which += fmt(" threads=%d", t);
                }
            }
            if (!(rebalance(w, s, opt, true) == with)) {
                same = false;
                which += " repeat";
            }
            CHECK_MSG(same, "deterministic across thread counts and calls; differs at" + which);
        }
        plans.push_back(std::move(with));
    }
    // Migration from the default plan (drifted loads) and from a random placement, with and
    // without a budget: valid plans (groups may be ignored when kept from the old layout),
    // within budget, deterministic over thread counts.
    if (plans.size() == 3 && !plans[2].phy2log.empty()) {
        F64 drifted = w;
        std::lognormal_distribution<double> noise(0.0, 0.3);
        for (double& x : drifted) x = std::min(x * noise(rng), 1e250);
        I64 random_old(static_cast<size_t>(s.L * s.P));
        for (int64_t l = 0; l < s.L; ++l) {
            int64_t* row = random_old.data() + l * s.P;
            for (int64_t p = 0; p < s.P; ++p) {
                row[p] = p < s.E ? p : static_cast<int64_t>(rng() % static_cast<uint64_t>(s.E));
            }
            std::shuffle(row, row + s.P, rng);
        }
        Shape flat = s;
        flat.K = flat.N = 1;
        for (const I64* old : {&plans[2].phy2log, &random_old}) {
            for (const int64_t budget : {int64_t{-1}, int64_t{0}, int64_t{2}}) {
                Options opt;
                opt.refine = Refine::Local;
                opt.num_threads = threads;
                g_context = base + fmt(" migration budget=%lld random_old=%d",
                                       static_cast<long long>(budget), old == &random_old);
                Plan m;
                try {
                    m = migrate(drifted, s, opt, *old, budget, 0.0);
                } catch (const std::exception& e) {
                    CHECK_MSG(false, std::string("unexpected exception: ") + e.what());
                    continue;
                }
                if (!check_plan(flat, m, true)) continue;
                for (int64_t l = 0; l < s.L; ++l) {
                    const int64_t moves = moves_in_layer(*old, m.phy2log, s, l);
                    CHECK_MSG(budget < 0 || moves <= budget,
                              fmt("layer %lld: %lld moves", static_cast<long long>(l),
                                  static_cast<long long>(moves)));
                }
                if (budget == 0) CHECK(m.phy2log == *old);
                if (determinism) {
                    Options one = opt;
                    one.num_threads = 1;
                    CHECK(migrate(drifted, s, one, *old, budget, 0.0) == m);
                }
            }
        }
    }
    // Refinement never raises a layer's largest GPU load.
    if (plans.size() == 3 && !plans[0].phy2log.empty()) {
        for (int r = 1; r < 3; ++r) {
            if (plans[r].phy2log.empty()) continue;
            for (int64_t l = 0; l < s.L; ++l) {
                const double none = max_gpu_load(w, s, plans[0], l);
                const double refined = max_gpu_load(w, s, plans[r], l);
                g_context = base + fmt(" refine=%s swap_rounds=%d layer=%lld",
                                       refine_name(kRefines[r]), rounds, static_cast<long long>(l));
                CHECK_MSG(refined <= none + 1e-12 * none,
                          fmt("max GPU load %.17g > none's %.17g (ratio %.17g)", refined, none,
                              refined / none));
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// balanced_packing

// DeepSeek's greedy: items by (load desc, index asc), each to the lightest pack with room
// (ties: lower pack), rank = order of arrival; one item per pack keeps item i in pack i.
void reference_packing(const double* w, int64_t n, int64_t m, int64_t* pack, int64_t* rank) {
    const int64_t c = n / m;
    if (c == 1) {
        for (int64_t i = 0; i < n; ++i) {
            pack[i] = i;
            rank[i] = 0;
        }
        return;
    }
    I64 order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [w](int64_t a, int64_t b) { return w[a] > w[b]; });
    F64 load(static_cast<size_t>(m), 0.0);
    I64 count(static_cast<size_t>(m), 0);
    for (const int64_t i : order) {
        int64_t best = -1;
        for (int64_t q = 0; q < m; ++q) {
            if (count[q] < c && (best < 0 || load[q] < load[best])) best = q;
        }
        pack[i] = best;
        rank[i] = count[best]++;
        load[best] += w[i];
    }
}

double max_pack_load(const double* w, int64_t n, int64_t m, const int64_t* pack) {
    F64 load(static_cast<size_t>(m), 0.0);
    for (int64_t i = 0; i < n; ++i) {
        if (pack[i] < 0 || pack[i] >= m) return std::numeric_limits<double>::quiet_NaN();
        load[pack[i]] += w[i];
    }
    return *std::max_element(load.begin(), load.end());
}

void packing_case(uint64_t seed) {
    std::mt19937_64 rng(seed);
    const int64_t rows = 1 + static_cast<int64_t>(rng() % 8);
    // Separate statements: the order of two rng() calls in one expression is unspecified.
    const uint64_t max_m = rng() % 2 ? 8 : 64;
    const int64_t m = 1 + static_cast<int64_t>(rng() % max_m);
    const uint64_t max_c = rng() % 2 ? 4 : 16;
    const int64_t c = 1 + static_cast<int64_t>(rng() % max_c);
    const int64_t n = m * c;
    const int kind = static_cast<int>(rng() % kNumLoadKinds);
    const F64 w = make_loads(rng, kind, rows * n);
    const int rounds = std::vector<int>{0, 1, 20, 100}[rng() % 4];
    const std::string base =
        fmt("packing seed=%llu rows=%lld n=%lld packs=%lld loads=%s",
            static_cast<unsigned long long>(seed), static_cast<long long>(rows),
            static_cast<long long>(n), static_cast<long long>(m), load_name(kind));
    std::vector<I64> packs;
    for (const Refine refine : kRefines) {
        g_context = base + fmt(" refine=%s swap_rounds=%d", refine_name(refine), rounds);
        Options opt;
        opt.refine = refine;
        opt.swap_rounds = rounds;
        opt.num_threads = 1;
        I64 pack(static_cast<size_t>(rows * n), kSentinel), rank(pack);
        try {
            fasteplb::balanced_packing(w.data(), rows, n, m, opt, pack.data(), rank.data());
        } catch (const std::exception& e) {
            CHECK_MSG(false, std::string("unexpected exception: ") + e.what());
            packs.emplace_back();
            continue;
        }
        bool range_ok = true, sizes_ok = true, ranks_ok = true;
        for (int64_t r = 0; r < rows; ++r) {
            I64 seen(static_cast<size_t>(n), 0);
            for (int64_t i = 0; i < n; ++i) {
                const int64_t q = pack[r * n + i], k = rank[r * n + i];
                if (q < 0 || q >= m || k < 0 || k >= c) {
                    range_ok = false;
                    continue;
                }
                if (seen[q * c + k]++ != 0) ranks_ok = false;
            }
            for (int64_t q = 0; q < m * c; ++q) sizes_ok &= seen[q] == 1;
        }
        CHECK_MSG(range_ok, "pack_index in [0, packs), rank_in_pack in [0, n/packs)");
        CHECK_MSG(ranks_ok && sizes_ok, "each pack holds n/packs items with ranks 0..n/packs-1");
        if (refine == Refine::None || c == 1) {
            // refine=none is DeepSeek's greedy exactly; one item per pack is the identity.
            I64 want_pack(static_cast<size_t>(rows * n)), want_rank(want_pack);
            for (int64_t r = 0; r < rows; ++r) {
                reference_packing(w.data() + r * n, n, m, want_pack.data() + r * n,
                                  want_rank.data() + r * n);
            }
            CHECK_MSG(pack == want_pack && rank == want_rank, "equals the reference greedy");
        }
        // Identical output for any thread count and on a repeated call.
        bool same = true;
        for (const int t : {1, 2, 7}) {
            Options o = opt;
            o.num_threads = t;
            I64 p2(pack.size()), r2(pack.size());
            fasteplb::balanced_packing(w.data(), rows, n, m, o, p2.data(), r2.data());
            same &= p2 == pack && r2 == rank;
        }
        CHECK_MSG(same, "deterministic across thread counts and calls");
        packs.push_back(std::move(pack));
    }
    if (!packs[0].empty()) {
        for (int r = 1; r < 3; ++r) {
            if (packs[r].empty()) continue;
            bool ok = true;
            std::string detail;
            for (int64_t row = 0; row < rows; ++row) {
                const double none =
                    max_pack_load(w.data() + row * n, n, m, packs[0].data() + row * n);
                const double refined =
                    max_pack_load(w.data() + row * n, n, m, packs[r].data() + row * n);
                if (!(refined <= none + 1e-12 * none)) {
                    ok = false;
                    detail +=
                        fmt(" row %lld: %.17g > %.17g", static_cast<long long>(row), refined, none);
                }
            }
            g_context = base + fmt(" refine=%s swap_rounds=%d", refine_name(kRefines[r]), rounds);
            CHECK_MSG(ok, "refined max pack load <= greedy's:" + detail);
        }
    }
}

// ------------------------------------------------------------------------------------------
// replicate_experts

// DeepSeek's greedy replication: slots [0, n) hold experts 0..n-1, each further slot goes to
// the expert with the largest load per replica (ties: lower index).
void reference_replication(const double* w, int64_t n, int64_t num_phy, int64_t* phy2log,
                           int64_t* rank, int64_t* logcnt) {
    for (int64_t e = 0; e < n; ++e) {
        phy2log[e] = e;
        rank[e] = 0;
        logcnt[e] = 1;
    }
    for (int64_t i = n; i < num_phy; ++i) {
        int64_t best = 0;
        for (int64_t e = 1; e < n; ++e) {
            const double qe = w[e] / static_cast<double>(logcnt[e]);
            const double qb = w[best] / static_cast<double>(logcnt[best]);
            if (qe > qb) best = e;
        }
        phy2log[i] = best;
        rank[i] = logcnt[best]++;
    }
}

void replicate_case(uint64_t seed) {
    std::mt19937_64 rng(seed);
    const int64_t rows = 1 + static_cast<int64_t>(rng() % 8);
    const int64_t n = rng() % 3 == 0 ? 1 + static_cast<int64_t>(rng() % 8)
                                     : 1 + static_cast<int64_t>(rng() % 300);
    // Spare slots: none, a few (scan path) or many (heap path).
    int64_t extra;
    switch (rng() % 4) {
        case 0:
            extra = 0;
            break;
        case 1:
            extra = static_cast<int64_t>(rng() % 8);
            break;
        default:
            extra = static_cast<int64_t>(rng() % (3 * n + 1));
    }
    const int64_t num_phy = n + extra;
    const int kind = static_cast<int>(rng() % kNumLoadKinds);
    const F64 w = make_loads(rng, kind, rows * n);
    const std::string base =
        fmt("replicate seed=%llu rows=%lld n=%lld num_phy=%lld loads=%s",
            static_cast<unsigned long long>(seed), static_cast<long long>(rows),
            static_cast<long long>(n), static_cast<long long>(num_phy), load_name(kind));
    I64 want_p2l(static_cast<size_t>(rows * num_phy)), want_rank(want_p2l),
        want_cnt(static_cast<size_t>(rows * n));
    for (int64_t r = 0; r < rows; ++r) {
        reference_replication(w.data() + r * n, n, num_phy, want_p2l.data() + r * num_phy,
                              want_rank.data() + r * num_phy, want_cnt.data() + r * n);
    }
    for (const Refine refine : kRefines) {
        g_context = base + fmt(" refine=%s", refine_name(refine));
        Options opt;
        opt.refine = refine;
        opt.num_threads = static_cast<int>(1 + rng() % 3);
        I64 p2l(static_cast<size_t>(rows * num_phy), kSentinel), rank(p2l),
            cnt(static_cast<size_t>(rows * n), kSentinel);
        try {
            fasteplb::replicate_experts(w.data(), rows, n, num_phy, opt, p2l.data(), rank.data(),
                                        cnt.data());
        } catch (const std::exception& e) {
            CHECK_MSG(false, std::string("unexpected exception: ") + e.what());
            continue;
        }
        bool valid = true, counts = true, ranks = true, greedy = true;
        for (int64_t r = 0; r < rows && valid; ++r) {
            I64 c(static_cast<size_t>(n), 0);
            for (int64_t i = 0; i < num_phy; ++i) {
                const int64_t e = p2l[r * num_phy + i];
                if (e < 0 || e >= n) {
                    valid = false;
                    break;
                }
                ++c[e];
            }
            if (!valid) break;
            for (int64_t e = 0; e < n; ++e) counts &= c[e] >= 1 && cnt[r * n + e] == c[e];
            std::vector<I64> seen(static_cast<size_t>(n));
            for (int64_t e = 0; e < n; ++e) seen[e].assign(static_cast<size_t>(c[e]), 0);
            for (int64_t i = 0; i < num_phy; ++i) {
                const int64_t e = p2l[r * num_phy + i], k = rank[r * num_phy + i];
                if (k < 0 || k >= c[e] || seen[e][k]++ != 0) ranks = false;
            }
            // Greedy optimality: an expert's last replica was taken when its load per replica
            // was the largest, so w_e / (cnt_e - 1) >= w_f / cnt_f for all f.
            double top = 0.0;
            for (int64_t e = 0; e < n; ++e) {
                top = std::max(top, w[r * n + e] / static_cast<double>(c[e]));
            }
            for (int64_t e = 0; e < n; ++e) {
                if (c[e] > 1) greedy &= w[r * n + e] / static_cast<double>(c[e] - 1) >= top;
            }
        }
        CHECK_MSG(valid, "every slot holds an expert in [0, n)");
        CHECK_MSG(counts, "every expert >= 1 replica; logcnt equals counts");
        CHECK_MSG(ranks, "ranks of each expert are exactly 0..cnt-1");
        CHECK_MSG(greedy, "replica counts satisfy the greedy (Adams) pick rule");
        CHECK_MSG(p2l == want_p2l && rank == want_rank && cnt == want_cnt,
                  "equals the reference greedy replication");
        bool same = true;
        for (const int t : {1, 2, 7}) {
            Options o = opt;
            o.num_threads = t;
            I64 a(p2l.size()), b(p2l.size()), d(cnt.size());
            fasteplb::replicate_experts(w.data(), rows, n, num_phy, o, a.data(), b.data(),
                                        d.data());
            same &= a == p2l && b == rank && d == cnt;
        }
        CHECK_MSG(same, "deterministic across thread counts and calls");
    }
}

// ------------------------------------------------------------------------------------------
// Fixed cases

void test_fixed_cases() {
    // DeepSeek's worked example (EPLB README; tests/test_deepseek_example.py): 2 layers,
    // 12 experts, 16 replicas, 4 groups, 2 nodes, 8 GPUs; the invariants for every mode.
    const F64 w = {90, 132, 40,  61, 104, 165, 39,  4,   73,  56, 183, 86,
                   20, 107, 104, 64, 19,  197, 187, 157, 172, 86, 16,  27};
    const Shape s{2, 12, 16, 4, 2, 8};
    for (const Refine refine : kRefines) {
        Options opt;
        opt.refine = refine;
        opt.num_threads = 2;
        g_context = fmt("deepseek example refine=%s", refine_name(refine));
        const Plan p = rebalance(w, s, opt, true);
        check_plan(s, p, true);
    }
    // DeepSeek's documented output for the greedy (refine=none).
    {
        Options opt;
        opt.refine = Refine::None;
        g_context = "deepseek example refine=none: README phy2log";
        const Plan p = rebalance(w, s, opt, true);
        const I64 want = {5, 6,  5, 7, 8, 4,  3, 4, 10, 9, 10, 2, 0, 1, 11, 1,
                          7, 10, 6, 8, 6, 11, 8, 9, 2,  4, 5,  1, 5, 0, 3,  1};
        CHECK_MSG(p.phy2log == want, "phy2log matches DeepSeek's README example");
    }

    // Zero layers: nothing to do, the allocator is still called once, with 0.
    for (const int t : {1, 2}) {
        Options opt;
        opt.num_threads = t;
        g_context = fmt("zero layers threads=%d", t);
        Plan p;
        CHECK_NO_THROW(p = rebalance(F64{}, Shape{0, 4, 8, 2, 1, 2}, opt, true));
        CHECK(p.alloc_calls == 1 && p.max_cnt == 0);
        I64 pack(1), rank(1), cnt(1);
        CHECK_NO_THROW(fasteplb::balanced_packing(nullptr, 0, 4, 2, opt, pack.data(), rank.data()));
        CHECK_NO_THROW(fasteplb::replicate_experts(nullptr, 0, 4, 6, opt, pack.data(), rank.data(),
                                                   cnt.data()));
    }

    // One expert, one GPU; one expert with every slot.
    for (const Refine refine : kRefines) {
        Options opt;
        opt.refine = refine;
        g_context = fmt("one expert refine=%s", refine_name(refine));
        Plan p = rebalance(F64{3.0}, Shape{1, 1, 1, 1, 1, 1}, opt, true);
        CHECK(p.phy2log == I64{0} && p.phyrank == I64{0} && p.logcnt == I64{1} &&
              p.log2phy == I64{0});
        p = rebalance(F64{3.0}, Shape{1, 1, 4, 1, 1, 2}, opt, true);
        CHECK(p.logcnt == I64{4});
        check_plan(Shape{1, 1, 4, 1, 1, 2}, p, true);
    }

    // -0.0 is a valid (zero) load.
    {
        Options opt;
        g_context = "negative zero load";
        const F64 wz = {-0.0, 1.0, 2.0, -0.0};
        Plan p;
        CHECK_NO_THROW(p = rebalance(wz, Shape{1, 4, 8, 2, 1, 4}, opt, true));
        if (!p.phy2log.empty()) check_plan(Shape{1, 4, 8, 2, 1, 4}, p, true);
    }

    // Row sums right at the limit (1e300) are accepted.
    {
        Options opt;
        g_context = "row sum at 1e300";
        const F64 wl = {5e299, 5e299};
        Plan p;
        CHECK_NO_THROW(p = rebalance(wl, Shape{1, 2, 4, 1, 1, 2}, opt, true));
        if (!p.phy2log.empty()) check_plan(Shape{1, 2, 4, 1, 1, 2}, p, true);
    }

    // parse_refine round-trips the three names.
    g_context = "parse_refine";
    CHECK(fasteplb::parse_refine("none") == Refine::None);
    CHECK(fasteplb::parse_refine("swap") == Refine::Swap);
    CHECK(fasteplb::parse_refine("local") == Refine::Local);
}

// ------------------------------------------------------------------------------------------
// Errors

void test_migration_errors() {
    g_context = "old_phy2log checks";
    const F64 w(2 * 4, 1.0);
    const Shape s{2, 4, 6, 2, 1, 2};
    I64 old = {0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 3, 3};
    Options opt;
    CHECK(migrate(w, s, opt, old, -1, 0.0).phy2log.size() == 12);
    I64 bad = old;
    bad[7] = 4;
    CHECK_THROWS_INVALID(migrate(w, s, opt, bad, -1, 0.0), "expert ids in [0, 4)");
    bad = old;
    bad[8] = -1;
    CHECK_THROWS_INVALID(migrate(w, s, opt, bad, -1, 0.0), "expert ids in [0, 4)");
    bad = old;
    bad[7] = 0;
    CHECK_THROWS_INVALID(migrate(w, s, opt, bad, -1, 0.0), "layer 1 lacks expert 1");
    CHECK_THROWS_INVALID(migrate(w, s, opt, old, -1, 1.0), "min_gain must be in [0, 1)");
    CHECK_THROWS_INVALID(migrate(w, s, opt, old, -1, std::nan("")), "min_gain");
}

// Move budgets near 2^63 (the README allows max_moves up to 2^63 - 1): the per-node ceiling
// share of the budget must not overflow (UBSan aborts on signed overflow), and a budget that
// no layer can exhaust must give exactly the uncapped plan. Several nodes, so the share is
// split more than once, from the old fresh plan (no slot holds another node's expert) and from
// a random placement (some do), with one and several threads.
void test_migration_budget_limits() {
    constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
    std::mt19937_64 rng(777);
    for (const Shape& s :
         {Shape{3, 16, 32, 4, 4, 8}, Shape{4, 24, 48, 8, 4, 8}, Shape{2, 12, 24, 6, 3, 6}}) {
        const F64 w = make_loads(rng, kLogNormal, s.L * s.E);
        F64 drifted = w;
        std::lognormal_distribution<double> noise(0.0, 0.5);
        for (double& x : drifted) x *= noise(rng);
        Options opt;
        opt.refine = Refine::Local;
        opt.num_threads = 1;
        const I64 fresh = rebalance(w, s, opt, false).phy2log;
        I64 random_old(static_cast<size_t>(s.L * s.P));
        for (int64_t l = 0; l < s.L; ++l) {
            int64_t* row = random_old.data() + l * s.P;
            for (int64_t p = 0; p < s.P; ++p) {
                row[p] = p < s.E ? p : static_cast<int64_t>(rng() % static_cast<uint64_t>(s.E));
            }
            std::shuffle(row, row + s.P, rng);
        }
        for (const I64* old : {&fresh, static_cast<const I64*>(&random_old)}) {
            for (const Refine refine : {Refine::Local, Refine::None}) {
                for (const int threads : {1, 3}) {
                    Options o;
                    o.refine = refine;
                    o.num_threads = threads;
                    const Plan uncapped = migrate(drifted, s, o, *old, -1, 0.0);
                    for (const int64_t budget : {kMax, kMax - 1, kMax - 2, kMax - 3, kMax / 2 + 1,
                                                 int64_t{1} << 62, kMax - s.P, s.P * s.N}) {
                        g_context =
                            fmt("migration budget=%lld refine=%s threads=%d L=%lld "
                                "E=%lld P=%lld N=%lld random_old=%d",
                                static_cast<long long>(budget), refine_name(refine), threads,
                                static_cast<long long>(s.L), static_cast<long long>(s.E),
                                static_cast<long long>(s.P), static_cast<long long>(s.N),
                                old == &random_old);
                        Plan capped;
                        CHECK_NO_THROW(capped = migrate(drifted, s, o, *old, budget, 0.0));
                        CHECK_MSG(capped == uncapped,
                                  "a budget no layer can use up gives the uncapped plan");
                    }
                }
            }
        }
    }
}

void test_errors() {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    Options opt;
    I64 a(64), b(64), c(64);
    auto reb = [&](const F64& w, int64_t L, int64_t E, int64_t P, int64_t K, int64_t N, int64_t G,
                   const Options& o) {
        fasteplb::rebalance_experts(w.data(), L, E, P, K, N, G, o, a.data(), b.data(), c.data());
    };
    const F64 good = {1, 2, 3, 4, 5, 6, 7, 8};  // 2 layers x 4 experts

    g_context = "errors: bad loads";
    for (const double bad : {-1.0, -5e-324, nan, -nan, inf, -inf}) {
        for (const int t : {1, 3}) {
            Options o;
            o.num_threads = t;
            F64 w = good;
            w[6] = bad;  // row 1, column 2
            CHECK_THROWS_INVALID(reb(w, 2, 4, 8, 2, 1, 4, o), "weight");
            CHECK_THROWS_INVALID(
                fasteplb::balanced_packing(w.data(), 2, 4, 2, o, a.data(), b.data()), "weight");
            CHECK_THROWS_INVALID(
                fasteplb::replicate_experts(w.data(), 2, 4, 6, o, a.data(), b.data(), c.data()),
                "weight");
            CHECK_THROWS_INVALID(fasteplb::check_weights(w.data(), 2, 4, "load"), "load");
        }
    }
    CHECK_NO_THROW(fasteplb::check_weights(good.data(), 2, 4, "load"));
    g_context = "errors: row sum above 1e300";
    {
        const F64 w = {6e299, 6e299};
        CHECK_THROWS_INVALID(reb(w, 1, 2, 2, 1, 1, 1, opt), "1e300");
        const F64 huge = {1e308, 1e308};  // the sum overflows to inf
        CHECK_THROWS_INVALID(reb(huge, 1, 2, 2, 1, 1, 1, opt), "1e300");
    }

    g_context = "errors: sizes";
    CHECK_THROWS_INVALID(reb(good, 2, 4, 3, 1, 1, 1, opt), "num_replicas");  // P < E
    CHECK_THROWS_INVALID(reb(good, 2, 4, 6, 1, 1, 4, opt), "num_replicas");  // P % G
    CHECK_THROWS_INVALID(reb(good, 2, 4, 8, 2, 3, 4, opt), "num_gpus");      // G % N
    CHECK_THROWS_INVALID(reb(good, 2, 4, 8, 3, 1, 4, opt), "num_groups");    // E % K
    CHECK_THROWS_INVALID(reb(good, 2, 4, 8, 0, 1, 4, opt), nullptr);
    CHECK_THROWS_INVALID(reb(good, 2, 4, 8, 1, 0, 4, opt), nullptr);
    CHECK_THROWS_INVALID(reb(good, 2, 4, 8, 1, 1, 0, opt), nullptr);
    CHECK_THROWS_INVALID(reb(good, 2, 4, 0, 1, 1, 4, opt), nullptr);
    CHECK_THROWS_INVALID(reb(good, 2, 4, -8, 1, 1, 4, opt), nullptr);
    CHECK_THROWS_INVALID(reb(good, 2, 0, 8, 1, 1, 4, opt), nullptr);
    CHECK_THROWS_INVALID(reb(good, -1, 4, 8, 1, 1, 4, opt), nullptr);
    CHECK_THROWS_INVALID(fasteplb::balanced_packing(good.data(), 2, 4, 3, opt, a.data(), b.data()),
                         "divisible");
    CHECK_THROWS_INVALID(fasteplb::balanced_packing(good.data(), 2, 4, 0, opt, a.data(), b.data()),
                         "num_packs");
    CHECK_THROWS_INVALID(fasteplb::balanced_packing(good.data(), 2, 0, 1, opt, a.data(), b.data()),
                         nullptr);
    CHECK_THROWS_INVALID(
        fasteplb::replicate_experts(good.data(), 2, 4, 3, opt, a.data(), b.data(), c.data()),
        "num_phy");
    CHECK_THROWS_INVALID(
        fasteplb::replicate_experts(good.data(), 2, 0, 3, opt, a.data(), b.data(), c.data()),
        nullptr);

    g_context = "errors: swap_rounds < 0";
    for (const Refine refine : kRefines) {
        Options o;
        o.refine = refine;
        o.swap_rounds = -1;
        CHECK_THROWS_INVALID(reb(good, 2, 4, 8, 2, 1, 4, o), "swap_rounds");
        CHECK_THROWS_INVALID(
            fasteplb::balanced_packing(good.data(), 2, 4, 2, o, a.data(), b.data()), "swap_rounds");
        CHECK_THROWS_INVALID(
            fasteplb::replicate_experts(good.data(), 2, 4, 6, o, a.data(), b.data(), c.data()),
            "swap_rounds");
    }

    g_context = "errors: parse_refine";
    CHECK_THROWS_INVALID(fasteplb::parse_refine("bogus"), "bogus");
    CHECK_THROWS_INVALID(fasteplb::parse_refine(""), nullptr);
    CHECK_THROWS_INVALID(fasteplb::parse_refine("Local"), nullptr);
    CHECK_THROWS_INVALID(fasteplb::parse_refine("none "), nullptr);

    // A throwing allocator propagates out of rebalance_experts (sanitizers catch any leak or
    // use after free), and the library keeps working afterwards.
    std::mt19937_64 rng(12345);
    const Shape s{8, 24, 48, 4, 2, 8};
    const F64 w = make_loads(rng, kLogNormal, s.L * s.E);
    for (const Refine refine : kRefines) {
        for (const int t : {1, 2, 4, 8, 0}) {
            Options o;
            o.refine = refine;
            o.num_threads = t;
            g_context =
                fmt("errors: throwing allocator refine=%s threads=%d", refine_name(refine), t);
            I64 p2l(static_cast<size_t>(s.L * s.P)), rank(p2l), cnt(static_cast<size_t>(s.L * s.E));
            int calls = 0;
            CHECK_THROWS_INVALID(
                fasteplb::rebalance_experts(
                    w.data(), s.L, s.E, s.P, s.K, s.N, s.G, o, p2l.data(), rank.data(), cnt.data(),
                    [&calls](int64_t) -> int64_t* {
                        ++calls;
                        // Owns memory while it throws, as a binding does.
                        std::vector<int64_t> tmp(1000, 1);
                        throw std::invalid_argument("log2phy too large (test allocator)");
                    }),
                "test allocator");
            CHECK_MSG(calls == 1, fmt("allocator called %d times", calls));
            // Non-standard exceptions propagate too.
            bool got_int = false;
            try {
                fasteplb::rebalance_experts(w.data(), s.L, s.E, s.P, s.K, s.N, s.G, o, p2l.data(),
                                            rank.data(), cnt.data(),
                                            [](int64_t) -> int64_t* { throw 42; });
            } catch (int v) {
                got_int = v == 42;
            } catch (...) {
            }
            CHECK_MSG(got_int, "a non-std exception from the allocator propagates unchanged");
            // Still works afterwards.
            Plan p;
            CHECK_NO_THROW(p = rebalance(w, s, o, true));
            if (!p.phy2log.empty()) check_plan(s, p, true);
        }
    }
}

// ------------------------------------------------------------------------------------------
// CPU-specific kernels and threads

// Every entry point, in every refine mode, with and without an old placement, on both the
// AVX2 and the baseline kernels: bit-identical results (ties, blocks of more than 96 items that
// are merged, huge and subnormal loads, swap_refine's first_min). Leaves the kernels as found.
void test_simd_paths(int cases) {
    const std::string initial = fasteplb::detail::simd_kernels();
    g_context = "simd kernels";
    CHECK(initial == "avx2" || initial == "default");
    CHECK(!fasteplb::detail::set_simd_kernels("sse9"));
    CHECK(fasteplb::detail::simd_kernels() == initial);
    CHECK(fasteplb::detail::set_simd_kernels("default"));
    CHECK(std::string(fasteplb::detail::simd_kernels()) == "default");
    if (!fasteplb::detail::set_simd_kernels("avx2")) {
        std::printf("simd: no AVX2 kernels on this CPU or build; only the default ones run\n");
        fasteplb::detail::set_simd_kernels(initial.c_str());
        return;
    }
    CHECK(std::string(fasteplb::detail::simd_kernels()) == "avx2");
    auto both = [](auto compute) {
        fasteplb::detail::set_simd_kernels("avx2");
        auto a = compute();
        fasteplb::detail::set_simd_kernels("default");
        auto b = compute();
        return std::make_pair(a, b);
    };
    long compared = 0;
    for (int i = 0; i < cases; ++i) {
        const uint64_t seed = 5550000 + static_cast<uint64_t>(i);
        std::mt19937_64 rng(seed);
        const Shape s = random_shape(rng, 300);
        const int kind = static_cast<int>(rng() % kNumLoadKinds);
        const F64 w = make_loads(rng, kind, s.L * s.E);
        const int threads = 1 + i % 3;
        for (const Refine refine : kRefines) {
            Options opt;
            opt.refine = refine;
            opt.swap_rounds = std::vector<int>{1, 20, 100}[i % 3];
            opt.num_threads = threads;
            g_context = describe(s, kind, seed) + fmt(" simd avx2 vs default refine=%s threads=%d",
                                                      refine_name(refine), threads);
            try {
                const auto fresh = both([&] { return rebalance(w, s, opt, true); });
                CHECK_MSG(fresh.first == fresh.second, "rebalance_experts: same plan");
                if (refine != Refine::Swap && !fresh.first.phy2log.empty()) {
                    F64 drifted = w;
                    for (size_t j = 0; j < drifted.size(); ++j) {
                        drifted[j] =
                            std::min(drifted[j] * (0.5 + static_cast<double>(j % 7) / 6.0), 1e250);
                    }
                    for (const int64_t budget : {int64_t{-1}, int64_t{3}}) {
                        const auto moved = both([&] {
                            return migrate(drifted, s, opt, fresh.first.phy2log, budget, 0.0);
                        });
                        CHECK_MSG(moved.first == moved.second, "migration: same plan");
                    }
                }
            } catch (const std::exception& e) {
                CHECK_MSG(false, std::string("unexpected exception: ") + e.what());
            }
            ++compared;
        }
        // balanced_packing with up to 64 packs of up to 16 items (sorts of up to 1024 items).
        const int64_t rows = 1 + static_cast<int64_t>(rng() % 4);
        const int64_t m = 1 + static_cast<int64_t>(rng() % 64);
        const int64_t c = 1 + static_cast<int64_t>(rng() % 16);
        const F64 pw = make_loads(rng, kind, rows * m * c);
        for (const Refine refine : kRefines) {
            Options opt;
            opt.refine = refine;
            opt.swap_rounds = 100;
            opt.num_threads = threads;
            g_context =
                fmt("simd avx2 vs default: packing seed=%llu rows=%lld n=%lld packs=%lld "
                    "loads=%s refine=%s",
                    static_cast<unsigned long long>(seed), static_cast<long long>(rows),
                    static_cast<long long>(m * c), static_cast<long long>(m), load_name(kind),
                    refine_name(refine));
            const auto packed = both([&] {
                I64 pack(static_cast<size_t>(rows * m * c)), rank(pack.size());
                fasteplb::balanced_packing(pw.data(), rows, m * c, m, opt, pack.data(),
                                           rank.data());
                return std::make_pair(pack, rank);
            });
            CHECK_MSG(packed.first == packed.second, "balanced_packing: same packs");
            ++compared;
        }
    }
    fasteplb::detail::set_simd_kernels(initial.c_str());
    std::printf("simd: avx2 and default kernels compared on %ld configurations\n", compared);
}

// Threads inside a call (many layers, more threads than cores) and several calls at once from
// different threads, sharing inputs: each result equals the single-threaded one. This is what
// ThreadSanitizer checks for races (run_sanitizers.sh with SANITIZER=thread).
void test_threads(int rounds) {
    std::mt19937_64 rng(4242);
    const Shape shapes[] = {Shape{24, 64, 96, 8, 4, 16}, Shape{16, 30, 60, 5, 3, 6},
                            Shape{12, 48, 96, 1, 1, 8}, Shape{20, 16, 32, 4, 2, 16}};
    for (int round = 0; round < rounds; ++round) {
        for (const Shape& s : shapes) {
            const F64 w = make_loads(rng, static_cast<int>(rng() % kNumLoadKinds), s.L * s.E);
            for (const Refine refine : kRefines) {
                Options serial;
                serial.refine = refine;
                serial.num_threads = 1;
                g_context = fmt("threads round=%d L=%lld E=%lld P=%lld refine=%s", round,
                                static_cast<long long>(s.L), static_cast<long long>(s.E),
                                static_cast<long long>(s.P), refine_name(refine));
                const Plan want = rebalance(w, s, serial, true);
                if (!check_plan(s, want, true)) continue;
                F64 drifted = w;
                std::lognormal_distribution<double> noise(0.0, 0.4);
                for (double& x : drifted) x = std::min(x * noise(rng), 1e250);
                const bool migrates = refine != Refine::Swap;
                const Plan want_moved =
                    migrates ? migrate(drifted, s, serial, want.phy2log, 4, 0.0) : Plan{};
                for (const int t : {2, 5, 0}) {
                    Options o = serial;
                    o.num_threads = t;
                    CHECK_MSG(rebalance(w, s, o, true) == want,
                              fmt("num_threads=%d gives the serial plan", t));
                    if (migrates) {
                        CHECK_MSG(migrate(drifted, s, o, want.phy2log, 4, 0.0) == want_moved,
                                  fmt("num_threads=%d gives the serial migration", t));
                    }
                }
                // Three callers at once, each with two worker threads, on shared inputs.
                constexpr int kCallers = 3;
                std::vector<Plan> got(kCallers), got_moved(kCallers);
                std::vector<std::string> errors(kCallers);
                std::vector<std::thread> callers;
                for (int c = 0; c < kCallers; ++c) {
                    callers.emplace_back([&, c] {
                        try {
                            Options o = serial;
                            o.num_threads = 2;
                            got[c] = rebalance(w, s, o, true);
                            if (migrates)
                                got_moved[c] = migrate(drifted, s, o, want.phy2log, 4, 0.0);
                        } catch (const std::exception& e) {
                            errors[c] = e.what();
                        }
                    });
                }
                for (std::thread& t : callers) t.join();
                for (int c = 0; c < kCallers; ++c) {
                    CHECK_MSG(errors[c].empty(), "concurrent call threw: " + errors[c]);
                    CHECK_MSG(got[c] == want, fmt("concurrent caller %d gives the serial plan", c));
                    if (migrates) {
                        CHECK_MSG(got_moved[c] == want_moved,
                                  fmt("concurrent caller %d gives the serial migration", c));
                    }
                }
                // balanced_packing and replicate_experts over the same rows, threaded.
                const int64_t rows = s.L, n = s.E, packs = s.G;
                if (n % packs == 0) {
                    I64 p1(static_cast<size_t>(rows * n)), r1(p1.size()), p2(p1.size()),
                        r2(p1.size());
                    fasteplb::balanced_packing(w.data(), rows, n, packs, serial, p1.data(),
                                               r1.data());
                    Options o = serial;
                    o.num_threads = 4;
                    fasteplb::balanced_packing(w.data(), rows, n, packs, o, p2.data(), r2.data());
                    CHECK_MSG(p1 == p2 && r1 == r2, "threaded balanced_packing");
                }
                I64 a1(static_cast<size_t>(rows * s.P)), b1(a1.size()),
                    c1(static_cast<size_t>(rows * n)), a2(a1.size()), b2(a1.size()), c2(c1.size());
                fasteplb::replicate_experts(w.data(), rows, n, s.P, serial, a1.data(), b1.data(),
                                            c1.data());
                Options o = serial;
                o.num_threads = 4;
                fasteplb::replicate_experts(w.data(), rows, n, s.P, o, a2.data(), b2.data(),
                                            c2.data());
                CHECK_MSG(a1 == a2 && b1 == b2 && c1 == c2, "threaded replicate_experts");
            }
        }
    }
}

// ------------------------------------------------------------------------------------------

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    double scale = 1.0;
    uint64_t base_seed = 20240601;
    bool single = false;
    uint64_t single_seed = 0;
    const char* simd = nullptr;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--noop") return 0;
        if (arg == "--simd" && i + 1 < argc) {
            simd = argv[++i];
            continue;
        }
        if (arg == "--scale" && i + 1 < argc) {
            scale = std::atof(argv[++i]);
        } else if (arg == "--seed" && i + 1 < argc) {
            base_seed = std::strtoull(argv[++i], nullptr, 10);
        } else if (arg == "--case" && i + 1 < argc) {
            single = true;
            single_seed = std::strtoull(argv[++i], nullptr, 10);
        } else {
            std::fprintf(stderr,
                         "usage: %s [--scale X] [--seed S] [--case SEED] [--simd NAME] [--noop]\n",
                         argv[0]);
            return 2;
        }
    }
    // FASTEPLB_SIMD=default in the environment selects the baseline kernels (read by the
    // library on first use); --simd overrides it.
    const char* env = std::getenv("FASTEPLB_SIMD");
    if (env != nullptr && std::strcmp(env, "default") == 0) {
        g_context = "FASTEPLB_SIMD=default";
        CHECK(std::string(fasteplb::detail::simd_kernels()) == "default");
    }
    if (simd != nullptr && !fasteplb::detail::set_simd_kernels(simd)) {
        std::fprintf(stderr, "--simd %s: no such kernels on this CPU or build\n", simd);
        return 2;
    }
    std::printf("simd kernels: %s\n", fasteplb::detail::simd_kernels());
    const auto t0 = std::chrono::steady_clock::now();
    if (single) {
        rebalance_case(single_seed, true);
    } else {
        auto count = [scale](int n) { return std::max(1, static_cast<int>(n * scale)); };
        test_fixed_cases();
        std::printf("fixed cases: %.2fs\n", seconds_since(t0));
        test_errors();
        test_migration_errors();
        test_migration_budget_limits();
        std::printf("errors: %.2fs\n", seconds_since(t0));
        test_simd_paths(count(40));
        std::printf("simd kernels compared: %.2fs\n", seconds_since(t0));
        test_threads(count(2));
        std::printf("threads: %.2fs\n", seconds_since(t0));
        const int rebalance_cases = count(600);
        for (int i = 0; i < rebalance_cases; ++i) {
            // Every 4th case also checks determinism over thread counts and repeated calls.
            rebalance_case(base_seed + static_cast<uint64_t>(i), i % 4 == 0);
        }
        std::printf("rebalance_experts: %d random cases: %.2fs\n", rebalance_cases,
                    seconds_since(t0));
        std::printf(
            "  shapes: %ld hierarchical multi-node (%ld with <= 12 groups), %ld single "
            "node, %ld global; %ld at 2 slots/GPU, %ld without spare slots, "
            "%ld with >= 150 experts\n",
            g_cov.hierarchical_multi_node, g_cov.exact_split, g_cov.single_node, g_cov.global_multi,
            g_cov.two_per_gpu, g_cov.no_spare, g_cov.big);
        const int packing_cases = count(500);
        for (int i = 0; i < packing_cases; ++i) {
            packing_case(base_seed + 1000000 + static_cast<uint64_t>(i));
        }
        std::printf("balanced_packing: %d random cases: %.2fs\n", packing_cases, seconds_since(t0));
        const int replicate_cases = count(500);
        for (int i = 0; i < replicate_cases; ++i) {
            replicate_case(base_seed + 2000000 + static_cast<uint64_t>(i));
        }
        std::printf("replicate_experts: %d random cases: %.2fs\n", replicate_cases,
                    seconds_since(t0));
    }
    std::printf("%ld passed, %ld failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
