// The entry points: validation, then the layers (rows) planned on a pool of threads, each with
// its own scratch. The algorithm itself lives in detail/, one file per stage.
#include "fasteplb/eplb.hpp"

#include <algorithm>
#include <vector>

#include "fasteplb/checks.hpp"
#include "fasteplb/detail/budget.hpp"
#include "fasteplb/detail/history.hpp"
#include "fasteplb/detail/layer.hpp"
#include "fasteplb/detail/migrate.hpp"
#include "fasteplb/detail/pack.hpp"
#include "fasteplb/detail/replicate.hpp"
#include "fasteplb/detail/sort.hpp"
#include "fasteplb/fpenv.hpp"
#include "fasteplb/parallel.hpp"

namespace fasteplb {
namespace {

using detail::require;

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

struct ReplicateScratch {
    std::vector<detail::Item> experts;
    detail::SortScratch sort;
    std::vector<detail::Quotient> quotients;
};

// Plans every layer with `plan(scratch, layer)`, then fills log2phy when `alloc` is set:
// log2phy's last dimension is the largest count over all layers, so it is allocated between
// the planning pass and the filling pass, on the same threads.
template <class Scratch, class Plan>
void plan_layers(int64_t layers, int64_t experts, int64_t num_replicas, int threads, Plan plan,
                 const int64_t* phy2log, const int64_t* phyrank, const int64_t* logcnt,
                 const Log2PhyAlloc& alloc) {
    if (!alloc) {
        parallel_rows(layers, threads, [] { return Scratch{}; }, plan);
        return;
    }
    int64_t* log2phy = nullptr;
    int64_t max_cnt = 0;
    parallel_two_pass(
        layers, threads, [] { return Scratch{}; }, plan,
        [&] {
            max_cnt = layers > 0 ? *std::max_element(logcnt, logcnt + layers * experts) : 0;
            log2phy = alloc(max_cnt);
        },
        [&](Scratch&, int64_t l) {
            int64_t* out = log2phy + l * experts * max_cnt;
            std::fill(out, out + experts * max_cnt, int64_t{-1});
            for (int64_t p = 0; p < num_replicas; ++p) {
                const int64_t e = phy2log[l * num_replicas + p];
                out[e * max_cnt + phyrank[l * num_replicas + p]] = p;
            }
        });
}

// A model-wide copy budget: each layer re-planned at the per-layer budgets of budget_grid,
// the total shared out over the layers by allocate_moves, then each layer re-planned at its
// share, which reproduces that point's plan (the planner is deterministic).
void migrate_within_total(const double* weight, int64_t layers, int64_t experts,
                          const detail::Shape& sh, const Options& opt, const Migration& mig,
                          int threads, int64_t* phy2log, int64_t* phyrank, int64_t* logcnt,
                          const Log2PhyAlloc& alloc) {
    const int64_t P = sh.replicas;
    std::vector<std::vector<detail::BudgetPoint>> points(static_cast<size_t>(layers));
    struct Scratch {
        detail::MigrateScratch migrate;
        std::vector<int64_t> budgets;
    };
    auto plan = [&](detail::MigrateScratch& s, int64_t l, int64_t budget) {
        Migration m = mig;
        m.max_moves = budget;
        return detail::migrate_layer(weight + l * experts, mig.old_phy2log + l * P, sh, opt, m, s,
                                     phy2log + l * P, phyrank + l * P, logcnt + l * experts);
    };
    // A re-plan at `budget` as a point: its copies counted against the old placement.
    auto point = [&](detail::MigrateScratch& s, int64_t l, int64_t budget) {
        const double peak = plan(s, l, budget);
        const int64_t moves = detail::count_moves(mig.old_phy2log + l * P, phy2log + l * P, sh.gpus,
                                                  P / sh.gpus, s.node.stamp, experts);
        return detail::BudgetPoint{budget, moves, peak};
    };
    parallel_rows(
        layers, threads, [] { return Scratch{}; },
        [&](Scratch& s, int64_t l) {
            const detail::BudgetPoint full = point(s.migrate, l, mig.max_moves);
            detail::budget_grid(full.moves, s.budgets);
            std::vector<detail::BudgetPoint>& pts = points[l];
            for (const int64_t b : s.budgets) {
                if (b == full.moves) {
                    pts.push_back(full);
                    break;
                }
                pts.push_back(point(s.migrate, l, b));
            }
        });
    const std::vector<int64_t> chosen = detail::allocate_moves(points, mig.max_moves_total);
    plan_layers<detail::MigrateScratch>(
        layers, experts, P, threads,
        [&](detail::MigrateScratch& s, int64_t l) { plan(s, l, points[l][chosen[l]].budget); },
        phy2log, phyrank, logcnt, alloc);
}

}  // namespace

void balanced_packing(const double* weight, int64_t rows, int64_t n, int64_t num_packs,
                      const Options& opt, int64_t* pack_index, int64_t* rank_in_pack) {
    IeeeFloatGuard ieee;
    detail::check_options(opt);
    require(rows >= 0 && n >= 1, "weight must have at least one item per row");
    require(num_packs >= 1, "num_packs must be >= 1");
    require(n % num_packs == 0, "the number of items must be divisible by num_packs");
    require(n <= detail::kMaxExperts, "weight must have at most 2**20 items per row");
    detail::check_mode_limits(opt, n, n / num_packs);
    check_weights(weight, rows, n, "weight");
    parallel_rows(
        rows, threads_for(opt, rows, n), [] { return detail::PackScratch{}; },
        [&](detail::PackScratch& s, int64_t r) {
            detail::pack_one(weight + r * n, n, num_packs, opt.refine, opt.swap_rounds, s,
                             pack_index + r * n, rank_in_pack + r * n);
        });
}

void replicate_experts(const double* weight, int64_t rows, int64_t num_log, int64_t num_phy,
                       const Options& opt, int64_t* phy2log, int64_t* rank, int64_t* logcnt) {
    IeeeFloatGuard ieee;
    detail::check_options(opt);
    require(rows >= 0 && num_log >= 1, "weight must have at least one expert per row");
    require(num_phy >= num_log, "num_phy must be >= the number of experts");
    require(num_log <= detail::kMaxExperts, "weight must have at most 2**20 experts per row");
    require(num_phy <= detail::kMaxReplicas, "num_phy must be <= 2**20");
    check_weights(weight, rows, num_log, "weight");
    parallel_rows(
        rows, threads_for(opt, rows, num_phy), [] { return ReplicateScratch{}; },
        [&](ReplicateScratch& s, int64_t r) {
            const double* w = weight + r * num_log;
            s.experts.resize(static_cast<size_t>(num_log));
            for (int64_t e = 0; e < num_log; ++e) s.experts[e] = detail::Item{w[e], e};
            detail::sort_items(s.experts, s.sort);
            detail::replicate_sorted(w, num_log, num_phy, s.experts.data(), s.quotients,
                                     phy2log + r * num_phy, rank + r * num_phy,
                                     logcnt + r * num_log);
        });
}

void rebalance_experts(const double* weight, int64_t layers, int64_t experts, int64_t num_replicas,
                       int64_t num_groups, int64_t num_nodes, int64_t num_gpus, const Options& opt,
                       int64_t* phy2log, int64_t* phyrank, int64_t* logcnt,
                       const Log2PhyAlloc& alloc, const Migration& mig) {
    IeeeFloatGuard ieee;
    detail::check_options(opt);
    require(layers >= 0 && experts >= 1, "weight must have at least one expert per layer");
    require(num_replicas >= 1 && num_groups >= 1 && num_nodes >= 1 && num_gpus >= 1,
            "num_replicas, num_groups, num_nodes and num_gpus must be >= 1");
    require(num_replicas >= experts, "num_replicas must be >= the number of experts");
    require(num_replicas % num_gpus == 0, "num_replicas must be divisible by num_gpus");
    require(num_gpus % num_nodes == 0, "num_gpus must be divisible by num_nodes");
    require(experts % num_groups == 0, "the number of experts must be divisible by num_groups");
    require(experts <= detail::kMaxExperts, "weight must have at most 2**20 experts per layer");
    require(num_replicas <= detail::kMaxReplicas, "num_replicas must be <= 2**20");
    require(experts * (num_replicas - experts + 1) <= detail::kMaxLog2PhyLayer,
            "experts * (num_replicas - experts + 1) must be <= 2**24");
    detail::check_mode_limits(opt, num_replicas, num_replicas / num_gpus);
    if (mig.old_phy2log != nullptr) {
        require(num_replicas <= detail::kLocalMaxSlots,
                "old_phy2log supports at most 8192 slots per layer");
        require(num_nodes <= detail::kMigrationMaxNodes, "old_phy2log supports at most 1024 nodes");
    }
    check_weights(weight, layers, experts, "weight");
    if (mig.old_phy2log != nullptr) {
        require(mig.min_gain >= 0.0 && mig.min_gain < 1.0, "min_gain must be in [0, 1)");
        check_placement(mig.old_phy2log, layers, experts, num_replicas, "old_phy2log");
    }
    detail::Shape sh{experts, num_replicas, num_groups, num_nodes, num_gpus};
    if (num_groups % num_nodes != 0) sh.groups = sh.nodes = 1;  // global policy
    const int threads = threads_for(opt, layers, num_replicas);
    if (mig.old_phy2log != nullptr && mig.max_moves_total > 0) {
        migrate_within_total(weight, layers, experts, sh, opt, mig, threads, phy2log, phyrank,
                             logcnt, alloc);
        return;
    }
    if (mig.old_phy2log != nullptr) {
        // A model-wide budget of 0 keeps every layer's old placement, as max_moves = 0 does
        // (not only its copies: a re-plan can also rearrange a GPU's slots without one).
        Migration layer_mig = mig;
        if (mig.max_moves_total == 0) layer_mig.max_moves = 0;
        plan_layers<detail::MigrateScratch>(
            layers, experts, num_replicas, threads,
            [&](detail::MigrateScratch& s, int64_t l) {
                detail::migrate_layer(weight + l * experts, mig.old_phy2log + l * num_replicas, sh,
                                      opt, layer_mig, s, phy2log + l * num_replicas,
                                      phyrank + l * num_replicas, logcnt + l * experts);
            },
            phy2log, phyrank, logcnt, alloc);
        return;
    }
    plan_layers<detail::LayerScratch>(
        layers, experts, num_replicas, threads,
        [&](detail::LayerScratch& s, int64_t l) {
            detail::plan_layer(weight + l * experts, sh, opt, s, phy2log + l * num_replicas,
                               phyrank + l * num_replicas, logcnt + l * experts);
        },
        phy2log, phyrank, logcnt, alloc);
}

int64_t forecast_load(const double* history, int64_t windows, int64_t layers, int64_t experts,
                      const Forecast& f, int num_threads, double* out) {
    IeeeFloatGuard ieee;
    detail::check_forecast(f, windows);
    require(layers >= 0 && experts >= 1, "weight must have at least one expert per layer");
    check_weights(history, windows * layers, experts, "weight");
    const int64_t stride = layers * experts;  // from one window of a layer to the next
    Options opt;
    opt.num_threads = num_threads;
    const int threads = threads_for(opt, layers, windows * experts / 8);
    const std::vector<detail::HistoryCandidate>& cands = detail::auto_candidates();
    detail::HistoryCandidate fixed{f.mode, f.alpha, f.window, f.z};
    if (f.mode != HistoryMode::Auto || windows < 2) {
        if (f.mode == HistoryMode::Auto) fixed = cands[0];  // "last"
        parallel_rows(
            layers, threads, [] { return detail::HistoryScratch{}; },
            [&](detail::HistoryScratch& s, int64_t l) {
                detail::forecast_layer(history + l * experts, stride, experts, windows, fixed, s,
                                       out + l * experts);
            });
        return f.mode == HistoryMode::Auto ? 0 : -1;
    }
    // Per-layer errors first, then one choice for the model (summed in layer order, so any
    // thread count chooses the same), then its forecast.
    const int64_t count = static_cast<int64_t>(cands.size());
    std::vector<double> errors(static_cast<size_t>(layers * count));
    int64_t chosen = 0;
    parallel_two_pass(
        layers, threads, [] { return detail::HistoryScratch{}; },
        [&](detail::HistoryScratch& s, int64_t l) {
            detail::replay_errors(history + l * experts, stride, experts, windows, f.replays, s,
                                  errors.data() + l * count);
        },
        [&] {
            std::vector<double> total(static_cast<size_t>(count), 0.0);
            for (int64_t l = 0; l < layers; ++l) {
                for (int64_t c = 0; c < count; ++c) total[c] += errors[l * count + c];
            }
            for (int64_t c = 1; c < count; ++c) {
                if (total[c] < total[chosen]) chosen = c;
            }
        },
        [&](detail::HistoryScratch& s, int64_t l) {
            detail::forecast_layer(history + l * experts, stride, experts, windows, cands[chosen],
                                   s, out + l * experts);
        });
    return chosen;
}

std::vector<HistoryChoice> history_candidates() {
    std::vector<HistoryChoice> out;
    for (const detail::HistoryCandidate& c : detail::auto_candidates()) {
        out.push_back(HistoryChoice{c.mode, c.alpha, c.window, c.z});
    }
    return out;
}

}  // namespace fasteplb
