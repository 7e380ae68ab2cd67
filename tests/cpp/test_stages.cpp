// Tests of each algorithm stage through its detail/ header (csrc/fasteplb/detail/), against
// naive versions of the same rule or the invariants the stage promises. Run under ASan/UBSan
// with test_core (tests/cpp/run_sanitizers.sh).
//
// Usage: test_stages [--scale X] [--noop]

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "check.hpp"
#include "fasteplb/detail/budget.hpp"
#include "fasteplb/detail/history.hpp"
#include "fasteplb/detail/layer.hpp"
#include "fasteplb/detail/local_search.hpp"
#include "fasteplb/detail/migrate.hpp"
#include "fasteplb/detail/pack.hpp"
#include "fasteplb/detail/replicate.hpp"
#include "fasteplb/detail/sort.hpp"
#include "fasteplb/detail/split.hpp"

namespace {

using namespace fasteplb::detail;
using fasteplb::Options;
using fasteplb::Refine;
using I64 = std::vector<int64_t>;
using F64 = std::vector<double>;
using Rng = std::mt19937_64;

int64_t pick(Rng& rng, int64_t lo, int64_t hi) {  // uniform in [lo, hi]
    return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
}

// Loads with the cases the tie rules exist for: integers (many ties), equal blocks, zeros,
// and a wide range of magnitudes.
F64 loads(Rng& rng, int64_t n) {
    F64 w(static_cast<size_t>(n));
    const int kind = static_cast<int>(rng() % 4);
    std::lognormal_distribution<double> logn(0.0, 1.2);
    for (int64_t i = 0; i < n; ++i) {
        double x = logn(rng) * 100.0;
        if (kind == 1) x = std::floor(x / 40.0);
        if (kind == 3) x = std::ldexp(logn(rng), static_cast<int>(pick(rng, -60, 60)));
        w[i] = x;
    }
    if (kind == 2) {
        for (int64_t i = 0; i < n / 3; ++i) w[i] = w[0];
    }
    return w;
}

std::vector<Item> sorted_items(const F64& w) {
    std::vector<Item> items(w.size());
    for (size_t i = 0; i < w.size(); ++i) items[i] = Item{w[i], static_cast<int64_t>(i)};
    std::stable_sort(items.begin(), items.end(),
                     [](const Item& a, const Item& b) { return heavier_first(a, b); });
    return items;
}

bool same_items(const std::vector<Item>& a, const std::vector<Item>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
        if (a[i].idx != b[i].idx || !(a[i].w == b[i].w)) return false;
    }
    return true;
}

// ---- sort ---------------------------------------------------------------------------------

void test_sort(int cases) {
    Rng rng(11);
    SortScratch scratch;
    for (int t = 0; t < cases; ++t) {
        const int64_t n = t % 5 == 0 ? pick(rng, 97, 900) : pick(rng, 1, 96);
        const F64 w = loads(rng, n);
        std::vector<Item> items(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) items[i] = Item{w[i], i};
        sort_items(items, scratch);
        g_context = fmt("sort_items n=%lld case %d", static_cast<long long>(n), t);
        CHECK(same_items(items, sorted_items(w)));
        // merge_items: two sorted runs of interleaved indices.
        std::vector<Item> a, b;
        for (int64_t i = 0; i < n; ++i) (rng() % 2 ? a : b).push_back(Item{w[i], i});
        auto by_order = [](const Item& x, const Item& y) { return heavier_first(x, y); };
        std::sort(a.begin(), a.end(), by_order);
        std::sort(b.begin(), b.end(), by_order);
        std::vector<Item> merged(static_cast<size_t>(n));
        merge_items(a.data(), static_cast<int64_t>(a.size()), b.data(),
                    static_cast<int64_t>(b.size()), merged.data());
        g_context = fmt("merge_items n=%lld case %d", static_cast<long long>(n), t);
        CHECK(same_items(merged, sorted_items(w)));
    }
}

// ---- stage 2: replicate ---------------------------------------------------------------------

void test_replicate(int cases) {
    Rng rng(22);
    std::vector<Quotient> cand;
    PairScratch ps;
    for (int t = 0; t < cases; ++t) {
        const int64_t n = pick(rng, 1, 80), num_phy = n + pick(rng, 0, 2 * n + 3);
        const F64 w = loads(rng, n);
        const std::vector<Item> order = sorted_items(w);
        I64 phy2log(num_phy), rank(num_phy), cnt(n);
        replicate_sorted(w.data(), n, num_phy, order.data(), cand, phy2log.data(), rank.data(),
                         cnt.data());
        // Naive Adams: each extra slot to the largest load per replica, ties lower expert.
        I64 want(n, 1);
        g_context = fmt("replicate_sorted n=%lld phy=%lld case %d", static_cast<long long>(n),
                        static_cast<long long>(num_phy), t);
        bool same = true;
        for (int64_t i = n; i < num_phy; ++i) {
            int64_t best = 0;
            for (int64_t e = 1; e < n; ++e) {
                const double qe = w[e] / static_cast<double>(want[e]);
                const double qb = w[best] / static_cast<double>(want[best]);
                if (qe > qb) best = e;
            }
            same &= phy2log[i] == best && rank[i] == want[best];
            ++want[best];
        }
        CHECK(same);
        CHECK(cnt == want);

        // The count search at 2 and 3 slots per GPU.
        const int64_t c = pick(rng, 2, 3), gpus = pick(rng, 2, 24);
        const int64_t slots = gpus * c;
        if (slots < n) continue;
        I64 adams(n), slot_expert(slots), slot_rank(slots);
        replicate_sorted(w.data(), n, slots, order.data(), cand, slot_expert.data(),
                         slot_rank.data(), adams.data());
        I64 tuned = adams;
        std::vector<double> start_loads;
        const CountSearch r = improve_counts(w.data(), n, c, tuned.data(), ps, &start_loads);
        g_context = fmt("improve_counts n=%lld gpus=%lld c=%lld case %d", static_cast<long long>(n),
                        static_cast<long long>(gpus), static_cast<long long>(c), t);
        int64_t total = 0;
        bool positive = true;
        for (int64_t e = 0; e < n; ++e) {
            total += tuned[e];
            positive &= tuned[e] >= 1;
        }
        CHECK(total == slots);
        CHECK(positive);
        CHECK(static_cast<int64_t>(start_loads.size()) == slots);
        // The start's replica loads are Adams' replicas, heaviest first.
        F64 replicas;
        for (int64_t e = 0; e < n; ++e) {
            for (int64_t k = 0; k < adams[e]; ++k) {
                replicas.push_back(w[e] / static_cast<double>(adams[e]));
            }
        }
        std::sort(replicas.rbegin(), replicas.rend());
        CHECK(replicas == start_loads);
        // At two slots per GPU, the evaluated start is the sorted pairing's maximum.
        if (c == 2) {
            double pair_max = 0.0;
            for (int64_t g = 0; g < gpus; ++g) {
                pair_max = std::max(pair_max, replicas[g] + replicas[2 * gpus - 1 - g]);
            }
            CHECK(r.start_peak == pair_max);
        }
        // The result, dealt again, is what the search reports.
        const Deal now = dealt_peak(ps.q.data(), tuned.data(), ps.order, gpus, c, ps);
        CHECK(r.improved == (now.peak < r.start_peak));
        CHECK(now.peak <= r.start_peak);
    }
}

// The count search written plainly (each trial re-sorts the experts and deals every replica
// again): improve_counts, with its partial re-deals and copies, must return the same counts.
I64 plain_count_search(const F64& w, int64_t c, I64 cnt) {
    const int64_t n = static_cast<int64_t>(w.size());
    int64_t slots = 0;
    for (const int64_t x : cnt) slots += x;
    const int64_t gpus = slots / c;
    struct Eval {
        double peak;
        int64_t ties, top, bottom;
        F64 sums;
        I64 owner;
    };
    auto evaluate = [&](const I64& k) {
        I64 order(static_cast<size_t>(n));
        for (int64_t e = 0; e < n; ++e) order[e] = e;
        auto q = [&](int64_t e) { return w[e] / static_cast<double>(k[e]); };
        std::sort(order.begin(), order.end(),
                  [&](int64_t x, int64_t y) { return q(x) > q(y) || (q(x) == q(y) && x < y); });
        F64 r;
        I64 owner;
        for (const int64_t e : order) {
            for (int64_t t = 0; t < k[e]; ++t) {
                r.push_back(q(e));
                owner.push_back(e);
            }
        }
        F64 sums(static_cast<size_t>(gpus));
        for (int64_t g = 0; g < gpus; ++g) {
            double x = r[g];
            for (int64_t j = 1; j < c; ++j) x += r[j * gpus + (j % 2 == 1 ? gpus - 1 - g : g)];
            sums[g] = x;
        }
        const double peak = *std::max_element(sums.begin(), sums.end());
        const int64_t g_peak = std::find(sums.begin(), sums.end(), peak) - sums.begin();
        const int64_t ties = std::count(sums.begin(), sums.end(), peak);
        return Eval{peak, ties, owner[g_peak], owner[2 * gpus - 1 - g_peak], sums, owner};
    };
    Eval deal = evaluate(cnt);
    for (int64_t iter = 0; iter < n + 8; ++iter) {
        // Donors: up to 4 experts with >= 2 replicas, the most room (peak - their heaviest
        // GPU - the growth of their replicas) first, ties to the lower expert.
        F64 worst(static_cast<size_t>(n), 0.0);
        for (int64_t slot = 0; slot < slots; ++slot) {
            const int64_t round = slot / gpus, at = slot % gpus;
            const int64_t g = round % 2 == 0 ? at : gpus - 1 - at;
            worst[deal.owner[slot]] = std::max(worst[deal.owner[slot]], deal.sums[g]);
        }
        std::vector<std::pair<double, int64_t>> room;
        for (int64_t e = 0; e < n; ++e) {
            if (cnt[e] < 2) continue;
            const double growth =
                w[e] / static_cast<double>(cnt[e] - 1) - w[e] / static_cast<double>(cnt[e]);
            room.emplace_back(deal.peak - worst[e] - growth, e);
        }
        std::stable_sort(room.begin(), room.end(),
                         [](const auto& x, const auto& y) { return x.first > y.first; });
        if (room.size() > 4) room.resize(4);
        bool moved = false;
        const int64_t takers[2] = {deal.top, deal.bottom};
        for (int t = 0; t < 2 && !moved; ++t) {
            const int64_t b = takers[t];
            if (t == 1 && b == deal.top) break;
            for (const auto& donor : room) {
                const int64_t a = donor.second;
                if (a == b) continue;
                I64 trial_cnt = cnt;
                --trial_cnt[a];
                ++trial_cnt[b];
                Eval trial = evaluate(trial_cnt);
                if (trial.peak < deal.peak || (trial.peak == deal.peak && trial.ties < deal.ties)) {
                    cnt = trial_cnt;
                    deal = std::move(trial);
                    moved = true;
                    break;
                }
            }
        }
        if (!moved) break;
    }
    return cnt;
}

void test_count_search(int cases) {
    Rng rng(15);
    std::vector<Quotient> cand;
    PairScratch ps;
    for (int t = 0; t < cases; ++t) {
        // Both evaluations: small deals (fewer than 64 slots) and partial re-deals.
        const int64_t c = pick(rng, 2, 3), gpus = pick(rng, 2, 48);
        const int64_t slots = gpus * c;
        const int64_t n = pick(rng, std::max<int64_t>(1, slots / 3), slots);
        const F64 w = loads(rng, n);
        const std::vector<Item> order = sorted_items(w);
        I64 adams(n), slot_expert(slots), slot_rank(slots);
        replicate_sorted(w.data(), n, slots, order.data(), cand, slot_expert.data(),
                         slot_rank.data(), adams.data());
        I64 tuned = adams;
        improve_counts(w.data(), n, c, tuned.data(), ps, nullptr);
        g_context = fmt("count search n=%lld gpus=%lld c=%lld case %d", static_cast<long long>(n),
                        static_cast<long long>(gpus), static_cast<long long>(c), t);
        CHECK(tuned == plain_count_search(w, c, adams));
    }
}

// ---- stage 3: pack --------------------------------------------------------------------------

// Naive LPT with cardinality: each item, in order, to the lightest pack with room.
void naive_lpt(const std::vector<Item>& order, int64_t m, int64_t c, I64& slot, F64& load) {
    slot.assign(static_cast<size_t>(m * c), -1);
    load.assign(static_cast<size_t>(m), 0.0);
    I64 count(m, 0);
    for (const Item& it : order) {
        int64_t best = -1;
        for (int64_t q = 0; q < m; ++q) {
            if (count[q] < c && (best < 0 || load[q] < load[best])) best = q;
        }
        slot[best * c + count[best]++] = it.idx;
        load[best] += it.w;
    }
}

// Recomputed pack loads, and whether slot is a permutation of the items.
bool valid_packing(const Packing& p, const F64& w, int64_t m, int64_t c) {
    std::vector<char> seen(static_cast<size_t>(m * c), 0);
    for (int64_t i = 0; i < m * c; ++i) {
        const int64_t item = p.slot[i];
        if (item < 0 || item >= m * c || seen[item]) return false;
        seen[item] = 1;
    }
    for (int64_t q = 0; q < m; ++q) {
        double sum = 0.0;
        for (int64_t r = 0; r < c; ++r) sum += w[p.slot[q * c + r]];
        if (std::fabs(sum - p.load[q]) > 1e-9 * std::max(1.0, sum)) return false;
    }
    return true;
}

// Pairs of items in one pack that share a label.
int64_t colocated(const Packing& p, int64_t m, int64_t c) {
    int64_t pairs = 0;
    for (int64_t q = 0; q < m; ++q) {
        for (int64_t a = 0; a < c; ++a) {
            for (int64_t b = a + 1; b < c; ++b) {
                const int64_t la = p.label[p.slot[q * c + a]], lb = p.label[p.slot[q * c + b]];
                pairs += la >= 0 && la == lb;
            }
        }
    }
    return pairs;
}

// Distinct (pack, expert) pairs of `slot` that `old` does not hold on that pack: the copies.
int64_t copies_over(const I64& old, const I64& slot, const I64& expert_of, int64_t m, int64_t c) {
    int64_t copies = 0;
    for (int64_t q = 0; q < m; ++q) {
        std::set<int64_t> before, now;
        for (int64_t r = 0; r < c; ++r) {
            if (old[q * c + r] >= 0) before.insert(old[q * c + r]);
            now.insert(expert_of[slot[q * c + r]]);
        }
        for (const int64_t e : now) copies += before.count(e) == 0;
    }
    return copies;
}

void test_pack(int cases) {
    Rng rng(33);
    PackScratch s;
    for (int t = 0; t < cases; ++t) {
        const int64_t m = pick(rng, 1, 24), c = pick(rng, 1, 9), n = m * c;
        const F64 w = loads(rng, n);
        s.order = sorted_items(w);
        s.packing.label.clear();
        g_context = fmt("lpt m=%lld c=%lld case %d", static_cast<long long>(m),
                        static_cast<long long>(c), t);
        CHECK(!lpt(n, m, s, true));  // nothing to divert without labels
        I64 slot;
        F64 load;
        naive_lpt(s.order, m, c, slot, load);
        CHECK(s.packing.slot == slot);
        CHECK(s.packing.load == load);
        const double greedy = max_load(s.packing);

        // The seed's swaps and the local search never raise the maximum.
        swap_refine(w.data(), m, c, static_cast<int>(pick(rng, 0, 30)), s);
        g_context = fmt("swap_refine m=%lld c=%lld case %d", static_cast<long long>(m),
                        static_cast<long long>(c), t);
        CHECK(valid_packing(s.packing, w, m, c));
        CHECK(max_load(s.packing) <= greedy);
        lpt(n, m, s, false);
        const double bound = fixed_item_bound(s.order.data(), n, m, c);
        CHECK(bound <= greedy * (1.0 + 1e-12));
        SearchLimits limits{bound};
        limits.tolerance = 0.0;
        local_search(w.data(), m, c, s.packing, limits, s.search, nullptr);
        g_context = fmt("local_search m=%lld c=%lld case %d", static_cast<long long>(m),
                        static_cast<long long>(c), t);
        CHECK(valid_packing(s.packing, w, m, c));
        CHECK(max_load(s.packing) <= greedy);
        CHECK(max_load(s.packing) >= bound * (1.0 - 1e-12));
        // A bound already met: nothing moves.
        lpt(n, m, s, false);
        const I64 untouched = s.packing.slot;
        const SearchLimits met{greedy};
        local_search(w.data(), m, c, s.packing, met, s.search, nullptr);
        CHECK(s.packing.slot == untouched);

        // Labels: replicas of few experts; the search never co-locates more of them.
        s.packing.label.assign(static_cast<size_t>(n), -1);
        const int64_t experts = std::max<int64_t>(1, n / 3);
        for (int64_t i = 0; i < n; ++i) {
            if (rng() % 2) s.packing.label[i] = pick(rng, 0, experts - 1);
        }
        lpt(n, m, s, true);
        const int64_t before = colocated(s.packing, m, c);
        const double labelled_greedy = max_load(s.packing);
        separate_replicas(w.data(), m, c, s.packing, labelled_greedy, nullptr);
        g_context = fmt("separate_replicas m=%lld c=%lld case %d", static_cast<long long>(m),
                        static_cast<long long>(c), t);
        CHECK(valid_packing(s.packing, w, m, c));
        CHECK(colocated(s.packing, m, c) <= before);
        CHECK(max_load(s.packing) <= labelled_greedy);
        // The search separates replicas first (at any cost), then never raises the maximum.
        separate_replicas(w.data(), m, c, s.packing, std::numeric_limits<double>::infinity(),
                          nullptr);
        const int64_t separated = colocated(s.packing, m, c);
        const double separated_peak = max_load(s.packing);
        local_search(w.data(), m, c, s.packing, limits, s.search, nullptr);
        CHECK(valid_packing(s.packing, w, m, c));
        CHECK(colocated(s.packing, m, c) <= separated);
        if (separated == 0) CHECK(max_load(s.packing) <= separated_peak);

        // A copy budget: the moves counted are the copies made, and within the budget.
        if (m < 2 || c < 2) continue;
        I64 expert_of(n), old(n, -1);
        for (int64_t i = 0; i < n; ++i) expert_of[i] = pick(rng, 0, experts - 1);
        for (int64_t i = 0; i < n; ++i) {
            if (rng() % 3 == 0) old[i] = pick(rng, 0, experts - 1);
        }
        s.packing.label.clear();
        lpt(n, m, s, false);
        const I64 start = s.packing.slot;
        const double start_peak = max_load(s.packing);
        const int64_t budget = pick(rng, -1, 6);
        CopyBudget copies{old.data(), expert_of.data(), budget};
        SearchLimits mig{bound};
        mig.tolerance = kMigrationTolerance;
        local_search(w.data(), m, c, s.packing, mig, s.search, &copies);
        g_context =
            fmt("local_search budget=%lld m=%lld c=%lld case %d", static_cast<long long>(budget),
                static_cast<long long>(m), static_cast<long long>(c), t);
        CHECK(valid_packing(s.packing, w, m, c));
        CHECK(max_load(s.packing) <= start_peak);
        CHECK(budget < 0 || copies.moves <= budget);
        CHECK(copies.moves == copies_over(old, s.packing.slot, expert_of, m, c) -
                                  copies_over(old, start, expert_of, m, c));
    }
}

// The public packing entry: refined plans are never above the greedy.
void test_pack_sorted(int cases) {
    Rng rng(44);
    PackScratch s;
    for (int t = 0; t < cases; ++t) {
        const int64_t m = pick(rng, 1, 16), c = pick(rng, 1, 8), n = m * c;
        const F64 w = loads(rng, n);
        I64 pack(n), rank(n);
        const double greedy =
            pack_one(w.data(), n, m, Refine::None, 0, s, pack.data(), rank.data());
        for (const Refine refine : {Refine::Swap, Refine::Local}) {
            const double peak = pack_one(w.data(), n, m, refine, 20, s, pack.data(), rank.data());
            g_context = fmt("pack_one refine=%d m=%lld c=%lld case %d", static_cast<int>(refine),
                            static_cast<long long>(m), static_cast<long long>(c), t);
            CHECK(peak <= greedy);
            I64 per_pack(m, 0);
            std::set<std::pair<int64_t, int64_t>> places;
            for (int64_t i = 0; i < n; ++i) {
                ++per_pack[pack[i]];
                places.insert({pack[i], rank[i]});
            }
            CHECK(std::all_of(per_pack.begin(), per_pack.end(), [c](int64_t k) { return k == c; }));
            CHECK(static_cast<int64_t>(places.size()) == n);
        }
    }
}

// ---- stage 1: split -------------------------------------------------------------------------

// The smallest maximum node load over all splits of `g` groups into `nodes` equal parts.
double best_split(const F64& load, int64_t nodes) {
    const int64_t g = static_cast<int64_t>(load.size()), cap = g / nodes;
    double best = std::numeric_limits<double>::infinity();
    I64 node(g, 0), count(nodes, 0);
    auto rec = [&](auto&& self, int64_t i) -> void {
        if (i == g) {
            F64 sum(nodes, 0.0);  // summed afresh, in group order, as busiest_node does
            for (int64_t j = 0; j < g; ++j) sum[node[j]] += load[j];
            best = std::min(best, *std::max_element(sum.begin(), sum.end()));
            return;
        }
        for (int64_t nd = 0; nd < nodes; ++nd) {
            if (count[nd] == cap) continue;
            ++count[nd];
            node[i] = nd;
            self(self, i + 1);
            --count[nd];
        }
    };
    rec(rec, 0);
    return best;
}

void test_split(int cases) {
    Rng rng(55);
    SplitScratch s;
    NodeNumbering num;
    for (int t = 0; t < cases; ++t) {
        const int64_t nodes = pick(rng, 2, 4), groups = nodes * pick(rng, 1, 12 / nodes);
        const int64_t group_size = pick(rng, 1, 4);
        const Shape sh{groups * group_size, groups * group_size, groups, nodes, nodes};
        const F64 w = loads(rng, sh.experts);
        sum_groups(w.data(), sh, s);
        I64 pack(groups), rank(groups), gpack(groups), grank(groups);
        Options opt;
        choose_split(sh, opt, s, pack.data(), rank.data());
        greedy_split(sh, s, gpack.data(), grank.data());
        g_context = fmt("choose_split groups=%lld nodes=%lld case %d",
                        static_cast<long long>(groups), static_cast<long long>(nodes), t);
        const double chosen = busiest_node(sh, pack.data(), s);
        CHECK(chosen <= busiest_node(sh, gpack.data(), s));
        // (Sums in another order: equal up to rounding.)
        const double best = best_split(s.group_load, nodes);
        if (groups > nodes)
            CHECK_MSG(chosen <= best * (1.0 + 1e-12), fmt("%.17g > %.17g", chosen, best));
        // Node-major numbering: inverse permutations, each node's groups contiguous.
        number_node_major(sh, pack.data(), rank.data(), num);
        bool inverse = true, on_node = true;
        for (int64_t e = 0; e < sh.experts; ++e) {
            inverse &= num.mlog2log[num.log2mlog[e]] == e;
            on_node &= num.log2mlog[e] / (sh.experts / nodes) == pack[e / group_size];
        }
        CHECK(inverse);
        CHECK(on_node);
    }
}

// ---- one layer, fresh and re-planned --------------------------------------------------------

struct LayerPlan {
    I64 phy2log, phyrank, logcnt;
};

double gpu_peak(const F64& w, const LayerPlan& p, const Shape& sh) {
    const int64_t k = sh.replicas / sh.gpus;
    double peak = 0.0;
    for (int64_t g = 0; g < sh.gpus; ++g) {
        double load = 0.0;
        for (int64_t r = 0; r < k; ++r) {
            const int64_t e = p.phy2log[g * k + r];
            load += w[e] / static_cast<double>(p.logcnt[e]);
        }
        peak = std::max(peak, load);
    }
    return peak;
}

bool valid_layer(const LayerPlan& p, const Shape& sh) {
    I64 cnt(sh.experts, 0);
    std::set<std::pair<int64_t, int64_t>> ranks;
    for (int64_t i = 0; i < sh.replicas; ++i) {
        const int64_t e = p.phy2log[i];
        if (e < 0 || e >= sh.experts) return false;
        ++cnt[e];
        ranks.insert({e, p.phyrank[i]});
    }
    for (int64_t e = 0; e < sh.experts; ++e) {
        if (cnt[e] < 1 || cnt[e] != p.logcnt[e]) return false;
    }
    for (const auto& [e, r] : ranks) {
        if (r < 0 || r >= cnt[e]) return false;
    }
    return static_cast<int64_t>(ranks.size()) == sh.replicas;
}

void test_layers(int cases) {
    Rng rng(66);
    LayerScratch ls;
    MigrateScratch ms;
    for (int t = 0; t < cases; ++t) {
        const int64_t nodes = pick(rng, 1, 4), gpus = nodes * pick(rng, 1, 6);
        const int64_t k = pick(rng, 1, 5), replicas = gpus * k;
        const int64_t groups = nodes * pick(rng, 1, 3);
        const int64_t experts = groups * std::max<int64_t>(1, pick(rng, 1, replicas) / groups);
        if (experts > replicas) continue;
        const Shape sh{experts, replicas, groups, nodes, gpus};
        const F64 w = loads(rng, experts);
        g_context = fmt("plan_layer E=%lld P=%lld G=%lld N=%lld gpus=%lld case %d",
                        static_cast<long long>(experts), static_cast<long long>(replicas),
                        static_cast<long long>(groups), static_cast<long long>(nodes),
                        static_cast<long long>(gpus), t);
        LayerPlan none{I64(replicas), I64(replicas), I64(experts)};
        LayerPlan local = none;
        Options greedy_opt;
        greedy_opt.refine = Refine::None;
        plan_layer(w.data(), sh, greedy_opt, ls, none.phy2log.data(), none.phyrank.data(),
                   none.logcnt.data());
        plan_layer(w.data(), sh, Options{}, ls, local.phy2log.data(), local.phyrank.data(),
                   local.logcnt.data());
        CHECK(valid_layer(none, sh));
        CHECK(valid_layer(local, sh));
        CHECK(gpu_peak(w, local, sh) <= gpu_peak(w, none, sh));

        // Unchanged loads: the re-plan keeps every expert where it is (zero copies) unless its
        // search finds a lower peak than the fresh plan's.
        LayerPlan again = none;
        fasteplb::Migration unlimited;
        migrate_layer(w.data(), local.phy2log.data(), sh, Options{}, unlimited, ms,
                      again.phy2log.data(), again.phyrank.data(), again.logcnt.data());
        g_context += " (unchanged loads)";
        CHECK(valid_layer(again, sh));
        CHECK(again.phy2log == local.phy2log || gpu_peak(w, again, sh) < gpu_peak(w, local, sh));

        // New loads within a budget: at most that many copies, never above the old peak.
        const F64 w2 = loads(rng, experts);
        fasteplb::Migration capped;
        capped.max_moves = pick(rng, 0, 8);
        LayerPlan moved = none;
        migrate_layer(w2.data(), local.phy2log.data(), sh, Options{}, capped, ms,
                      moved.phy2log.data(), moved.phyrank.data(), moved.logcnt.data());
        I64 stamp;
        const int64_t copies =
            count_moves(local.phy2log.data(), moved.phy2log.data(), gpus, k, stamp, experts);
        g_context = fmt("migrate_layer max_moves=%lld E=%lld P=%lld N=%lld case %d",
                        static_cast<long long>(capped.max_moves), static_cast<long long>(experts),
                        static_cast<long long>(replicas), static_cast<long long>(nodes), t);
        CHECK(valid_layer(moved, sh));
        CHECK(copies <= capped.max_moves);
        LayerPlan old_plan = local;
        old_plan.logcnt.assign(experts, 0);
        for (const int64_t e : local.phy2log) ++old_plan.logcnt[e];
        CHECK(gpu_peak(w2, moved, sh) <= gpu_peak(w2, old_plan, sh));
        // count_moves against a naive count.
        int64_t naive = 0;
        for (int64_t g = 0; g < gpus; ++g) {
            std::set<int64_t> was(local.phy2log.begin() + g * k,
                                  local.phy2log.begin() + (g + 1) * k);
            std::set<int64_t> now(moved.phy2log.begin() + g * k,
                                  moved.phy2log.begin() + (g + 1) * k);
            for (const int64_t e : now) naive += was.count(e) == 0;
        }
        CHECK(copies == naive);
    }
}

// ---- forecasting from a history -------------------------------------------------------------

void test_history(int cases) {
    Rng rng(77);
    HistoryScratch s;
    const std::vector<HistoryCandidate>& cands = auto_candidates();
    for (int t = 0; t < cases; ++t) {
        const int64_t windows = pick(rng, 1, 12), layers = pick(rng, 1, 3),
                      experts = pick(rng, 1, 20);
        F64 x(static_cast<size_t>(windows * layers * experts));
        for (double& v : x) v = static_cast<double>(pick(rng, 0, 50));
        const int64_t stride = layers * experts;
        const int64_t layer = pick(rng, 0, layers - 1);
        const double* base = x.data() + layer * experts;
        auto at = [&](int64_t w, int64_t e) { return base[w * stride + e]; };
        F64 out(static_cast<size_t>(experts));
        g_context = fmt("history windows=%lld experts=%lld case %d",
                        static_cast<long long>(windows), static_cast<long long>(experts), t);
        for (const HistoryCandidate& c : cands) {
            forecast_layer(base, stride, experts, windows, c, s, out.data());
            bool ok = true;
            for (int64_t e = 0; e < experts; ++e) {
                double want = at(windows - 1, e);
                if (c.mode == fasteplb::HistoryMode::Ema) {
                    want = at(0, e);
                    for (int64_t w = 1; w < windows; ++w)
                        want = c.alpha * at(w, e) + (1 - c.alpha) * want;
                } else if (c.mode == fasteplb::HistoryMode::Mean ||
                           c.mode == fasteplb::HistoryMode::Robust) {
                    const int64_t n = std::min(c.window, windows);
                    double sum = 0.0, sq = 0.0;
                    for (int64_t w = windows - n; w < windows; ++w) sum += at(w, e);
                    const double m = sum / static_cast<double>(n);
                    for (int64_t w = windows - n; w < windows; ++w)
                        sq += (at(w, e) - m) * (at(w, e) - m);
                    want = m;
                    if (c.mode == fasteplb::HistoryMode::Robust)
                        want += c.z * std::sqrt(sq / static_cast<double>(n));
                } else if (c.mode == fasteplb::HistoryMode::Trend && windows >= 2) {
                    want = std::max(
                        0.0, at(windows - 1, e) + 0.5 * (at(windows - 1, e) - at(windows - 2, e)));
                }
                ok &= std::fabs(out[e] - want) <= 1e-9 * std::max(1.0, std::fabs(want));
            }
            CHECK_MSG(ok, fmt("candidate mode %d window %lld", static_cast<int>(c.mode),
                              static_cast<long long>(c.window)));
        }
        // Replay errors: none without a window to replay; zero for every candidate when all
        // windows are equal (up to the rounding of the one-pass expansion of the squared error).
        F64 err(cands.size());
        replay_errors(base, stride, experts, windows, pick(rng, 1, 10), s, err.data());
        if (windows == 1)
            CHECK(std::all_of(err.begin(), err.end(), [](double v) { return v == 0.0; }));
        CHECK(std::all_of(err.begin(), err.end(), [](double v) { return v >= 0.0; }));
        F64 same(static_cast<size_t>(windows * experts));
        for (int64_t w = 0; w < windows; ++w) {
            for (int64_t e = 0; e < experts; ++e)
                same[w * experts + e] = static_cast<double>(e + 1);
        }
        replay_errors(same.data(), experts, experts, windows, 8, s, err.data());
        CHECK(std::all_of(err.begin(), err.end(), [](double v) { return v < 1e-12; }));
    }
}

void test_budget_shares() {
    g_context = "node_move_budget";
    constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
    for (int64_t pool = 0; pool < 5; ++pool) {
        for (int64_t spare = 0; spare < 40; ++spare) {
            for (int64_t parts = 1; parts < 7; ++parts) {
                CHECK(node_move_budget(pool, spare, parts) == pool + (spare + parts - 1) / parts);
            }
        }
    }
    CHECK(node_move_budget(0, kMax, 1) == kMax);
    CHECK(node_move_budget(3, kMax, 1) == kMax);
    CHECK(node_move_budget(0, kMax, 2) == kMax / 2 + 1);
    CHECK(node_move_budget(0, kMax - 1, 3) == (kMax - 1) / 3 + ((kMax - 1) % 3 != 0));
    g_context = "Options defaults";
    CHECK(Options{}.refine == Refine::Local);
    CHECK(Options{}.swap_rounds == 20);
}

// ---- model-wide copy budget --------------------------------------------------------------

void test_allocate(int cases) {
    Rng rng(31);
    g_context = "budget_grid";
    I64 grid;
    budget_grid(0, grid);
    CHECK(grid == I64{0});
    budget_grid(5, grid);
    CHECK((grid == I64{0, 1, 2, 4, 5}));
    budget_grid(8, grid);
    CHECK((grid == I64{0, 1, 2, 4, 8}));
    budget_grid(40, grid);
    CHECK((grid == I64{0, 1, 2, 4, 8, 12, 16, 24, 32, 40}));
    g_context = "allocate_moves";
    for (int t = 0; t < cases; ++t) {
        const int64_t layers = pick(rng, 1, 5);
        std::vector<std::vector<BudgetPoint>> points(static_cast<size_t>(layers));
        int64_t most = 0;
        for (auto& pts : points) {
            const double start = static_cast<double>(pick(rng, 50, 100));
            pts.push_back(BudgetPoint{0, 0, start});
            const int64_t n = pick(rng, 0, 6);
            int64_t top = 0;
            for (int64_t i = 0; i < n; ++i) {
                const int64_t moves = pick(rng, 0, 12);
                // Some points copy without gaining, as capped re-plans can.
                const double peak = start - static_cast<double>(pick(rng, 0, 40));
                pts.push_back(BudgetPoint{i + 1, moves, peak});
                top = std::max(top, moves);
            }
            most += top;
        }
        for (const int64_t total : {int64_t{0}, pick(rng, 0, most), most}) {
            const I64 chosen = allocate_moves(points, total);
            CHECK(static_cast<int64_t>(chosen.size()) == layers);
            int64_t spent = 0;
            for (int64_t l = 0; l < layers; ++l) {
                CHECK(chosen[l] >= 0 && chosen[l] < static_cast<int64_t>(points[l].size()));
                const BudgetPoint& c = points[l][chosen[l]];
                spent += c.moves;
                // A chosen point never has a higher peak than the old placement.
                CHECK(c.peak <= points[l][0].peak);
                if (total == most) {  // everything fits: each layer's lowest peak
                    double low = points[l][0].peak;
                    for (const BudgetPoint& p : points[l]) low = std::min(low, p.peak);
                    CHECK(c.peak == low);
                }
            }
            CHECK(spent <= total);
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    double scale = 1.0;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--noop") return 0;
        if (arg == "--scale" && i + 1 < argc) {
            scale = std::atof(argv[++i]);
        } else {
            std::fprintf(stderr, "usage: %s [--scale X] [--noop]\n", argv[0]);
            return 2;
        }
    }
    auto count = [scale](int n) { return std::max(1, static_cast<int>(n * scale)); };
    test_sort(count(300));
    test_replicate(count(300));
    test_count_search(count(300));
    test_pack(count(300));
    test_pack_sorted(count(200));
    test_split(count(150));
    test_layers(count(200));
    test_history(count(200));
    test_budget_shares();
    test_allocate(count(300));
    std::printf("%ld passed, %ld failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
