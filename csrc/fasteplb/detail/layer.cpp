#include "fasteplb/detail/layer.hpp"

#include <algorithm>
#include <limits>
#include <optional>

namespace fasteplb::detail {
namespace {

// One node's part of the layer's outputs.
struct NodeOut {
    int64_t* phy2log;  // [node slots]
    int64_t* phyrank;  // [node slots]
};

NodeOut node_out(const NodeGeometry& ng, int64_t node, int64_t* phy2log, int64_t* phyrank) {
    return NodeOut{phy2log + node * ng.slots, phyrank + node * ng.slots};
}

// Packs one node's replicas, as given by s.phy2mlog / s.phyrank and the node's counts, onto its
// GPUs and writes the node's slots.
PackResult pack_node(const NodeGeometry& ng, int64_t node, const LocalBaseline& base, Refine refine,
                     int rounds, LayerScratch& s, NodeOut out) {
    const int64_t* mlog2log = s.numbering.mlog2log.data() + node * ng.experts;
    const int64_t* mlogcnt = s.mlogcnt.data() + node * ng.experts;
    // The replicas in (load desc, slot asc) order, for the packer: experts that kept a single
    // replica stay in the order just computed (slot j holds expert j, load / 1 is exact); the
    // replicas of replicated experts are sorted apart and merged in.
    s.single.clear();
    for (const Item& it : s.experts) {
        if (mlogcnt[it.idx] == 1) s.single.push_back(it);
    }
    s.multi.clear();
    for (int64_t i = 0; i < ng.slots; ++i) {
        const int64_t j = s.phy2mlog[i];
        s.phy_load[i] = s.mlog_load[j] / static_cast<double>(mlogcnt[j]);
        if (mlogcnt[j] > 1) s.multi.push_back(Item{s.phy_load[i], i});
    }
    sort_items(s.multi, s.pack.sort);
    s.pack.order.resize(static_cast<size_t>(ng.slots));
    merge_items(s.single.data(), static_cast<int64_t>(s.single.size()), s.multi.data(),
                static_cast<int64_t>(s.multi.size()), s.pack.order.data());
    // refine="local" keeps replicas of one expert on different GPUs whenever the expert has no
    // more replicas than the node has GPUs.
    std::vector<int64_t>& label = s.pack.packing.label;
    label.clear();
    if (refine == Refine::Local) {
        label.resize(static_cast<size_t>(ng.slots));
        for (int64_t i = 0; i < ng.slots; ++i) {
            const int64_t cnt = mlogcnt[s.phy2mlog[i]];
            label[i] = cnt > 1 && cnt <= ng.gpus ? s.phy2mlog[i] : -1;
        }
    }
    const PackResult result = pack_sorted(ng.slots, ng.gpus, refine, rounds, s.pack,
                                          s.gpu_of_phy.data(), s.rank_on_gpu.data(), base);
    for (int64_t i = 0; i < ng.slots; ++i) {
        const int64_t slot = s.gpu_of_phy[i] * ng.slots_per_gpu + s.rank_on_gpu[i];
        out.phy2log[slot] = mlog2log[s.phy2mlog[i]];
        out.phyrank[slot] = s.phyrank[i];
    }
    return result;
}

// Two slots per GPU with tuned counts: pairing the i-th heaviest replica with the i-th
// lightest is the best packing of those counts (and LPT's), so it is written directly, unless
// it would pair two replicas of one expert that cannot be parted without exceeding its peak.
// Returns that peak, with the counts in s.trial_cnt and the node's slots written.
std::optional<double> try_sorted_pairing(const NodeGeometry& ng, int64_t node, LayerScratch& s,
                                         NodeOut out) {
    PairScratch& ps = s.pairs;
    const int64_t gpus = ng.gpus;
    const double peak = dealt_peak(ps.q.data(), s.trial_cnt.data(), ps.order, gpus, 2, ps).peak;
    int64_t* owner = ps.owner.data();
    const double* r = ps.replica.data();
    const int64_t last = 2 * gpus - 1;
    // Only the expert whose replicas straddle the middle can be paired with itself, in pairs
    // g0..G-1. Each such pair trades its second replica with the next pair outwards, whose
    // heavier replica then meets one of that expert's: kept when no sum exceeds the peak (then
    // the pairing is still the best).
    int64_t g0 = gpus;
    while (g0 > 0 && owner[g0 - 1] == owner[last - (g0 - 1)]) --g0;
    for (int64_t g = gpus - 1, alt = g0 - 1; g >= g0; --g, --alt) {
        const int64_t e = owner[g];
        if (alt < 0 || owner[alt] == e || owner[last - alt] == e ||
            !(r[alt] + r[last - g] <= peak)) {
            return std::nullopt;
        }
        std::swap(owner[last - g], owner[last - alt]);
    }
    const int64_t* mlog2log = s.numbering.mlog2log.data() + node * ng.experts;
    s.seen.assign(static_cast<size_t>(ng.experts), 0);
    for (int64_t g = 0; g < gpus; ++g) {
        for (int64_t j = 0; j < 2; ++j) {
            const int64_t e = owner[j == 0 ? g : last - g];
            out.phy2log[2 * g + j] = mlog2log[e];
            out.phyrank[2 * g + j] = s.seen[e]++;
        }
    }
    return peak;
}

// Plans one node: its experts' loads into s.mlog_load, Adams' counts (tuned by the count search
// where it applies) into s.mlogcnt, and its slots into `out`. With refine="local" its
// label-respecting plan may exceed that node's greedy maximum up to `limit`.
PackResult place_node(const double* w, const NodeGeometry& ng, int64_t node, double limit,
                      const Options& opt, LayerScratch& s, NodeOut out) {
    // 1. Loads and Adams' counts.
    const int64_t* mlog2log = s.numbering.mlog2log.data() + node * ng.experts;
    int64_t* mlogcnt = s.mlogcnt.data() + node * ng.experts;
    for (int64_t j = 0; j < ng.experts; ++j) {
        s.mlog_load[j] = w[mlog2log[j]];
        s.experts[j] = Item{s.mlog_load[j], j};
    }
    sort_items(s.experts, s.pack.sort);
    auto adams = [&] {
        replicate_sorted(s.mlog_load.data(), ng.experts, ng.slots, s.experts.data(), s.quotients,
                         s.phy2mlog.data(), s.phyrank.data(), mlogcnt);
    };
    adams();
    const int64_t k = ng.slots_per_gpu;
    if (opt.refine != Refine::Local || k > kCountSearchSlots || k < 2 || ng.gpus < 2) {
        return pack_node(ng, node, LocalBaseline{limit}, opt.refine, opt.swap_rounds, s, out);
    }
    // 2. The count search.
    s.trial_cnt.assign(mlogcnt, mlogcnt + ng.experts);
    const CountSearch search = improve_counts(s.mlog_load.data(), ng.experts, k, s.trial_cnt.data(),
                                              s.pairs, k > 2 ? &s.start_loads : nullptr);
    if (!search.improved) {
        return pack_node(ng, node, LocalBaseline{limit}, Refine::Local, opt.swap_rounds, s, out);
    }
    // 3. At two slots per GPU, the sorted pairing of the tuned counts.
    if (k == 2) {
        if (const std::optional<double> peak = try_sorted_pairing(ng, node, s, out)) {
            std::copy(s.trial_cnt.begin(), s.trial_cnt.end(), mlogcnt);
            return PackResult{*peak, search.start_peak};
        }
    }
    // 4. "Never worse than the greedy" refers to DeepSeek's plan, with Adams' counts: its
    // plain LPT maximum is the baseline. The tuned counts are packed and refined, and kept
    // when they come out strictly lighter; refining Adams' counts as well would double the
    // work for the rare layer where tuning does not pay. LPT's maximum depends only on the
    // sequence of loads it places: at two slots per GPU it is the search's evaluated start,
    // otherwise LPT over the start's replica loads.
    double greedy_peak = search.start_peak;
    if (k > 2) {
        s.pack.order.resize(s.start_loads.size());
        for (size_t i = 0; i < s.start_loads.size(); ++i) {
            s.pack.order[i] = Item{s.start_loads[i], static_cast<int64_t>(i)};
        }
        lpt(ng.slots, ng.gpus, s.pack, false);
        greedy_peak = max_load(s.pack.packing);
    }
    s.kept_cnt.assign(mlogcnt, mlogcnt + ng.experts);
    std::copy(s.trial_cnt.begin(), s.trial_cnt.end(), mlogcnt);
    layout_counts(ng.experts, mlogcnt, s.phy2mlog.data(), s.phyrank.data());
    const LocalBaseline tuned{std::max(limit, greedy_peak), true};
    const double trial = pack_node(ng, node, tuned, Refine::Local, opt.swap_rounds, s, out).peak;
    if (trial < greedy_peak) return PackResult{trial, greedy_peak};
    // 5. Adams' counts after all.
    std::copy(s.kept_cnt.begin(), s.kept_cnt.end(), mlogcnt);
    adams();
    return pack_node(ng, node, LocalBaseline{limit}, Refine::Local, opt.swap_rounds, s, out);
}

// Stages 2 and 3 for a given groups -> nodes split: replicate inside each node with budget
// P/N, then pack each node's replicas onto its GPUs. Returns the layer's largest GPU load.
double place_layer(const double* w, const Shape& sh, const Options& opt, LayerScratch& s,
                   const int64_t* group_pack, const int64_t* group_rank, int64_t* out_phy2log,
                   int64_t* out_phyrank, int64_t* out_logcnt) {
    const NodeGeometry ng(sh);
    number_node_major(sh, group_pack, group_rank, s.numbering);
    s.mlogcnt.resize(static_cast<size_t>(sh.experts));
    s.mlog_load.resize(static_cast<size_t>(ng.experts));
    s.experts.resize(static_cast<size_t>(ng.experts));
    s.phy_load.resize(static_cast<size_t>(ng.slots));
    s.phy2mlog.resize(static_cast<size_t>(ng.slots));
    s.phyrank.resize(static_cast<size_t>(ng.slots));
    s.gpu_of_phy.resize(static_cast<size_t>(ng.slots));
    s.rank_on_gpu.resize(static_cast<size_t>(ng.slots));
    const bool local = opt.refine == Refine::Local;
    const double inf = std::numeric_limits<double>::infinity();
    double peak = 0.0, greedy = 0.0;
    s.node_peak.resize(static_cast<size_t>(sh.nodes));
    for (int64_t node = 0; node < sh.nodes; ++node) {
        // Several nodes: keep every node's replicas apart first; a node only has to stay
        // within the layer's greedy maximum, known once all nodes are planned.
        const NodeOut out = node_out(ng, node, out_phy2log, out_phyrank);
        const PackResult r =
            place_node(w, ng, node, local && sh.nodes > 1 ? inf : 0.0, opt, s, out);
        s.node_peak[node] = r.peak;
        greedy = std::max(greedy, r.greedy_peak);
    }
    for (int64_t node = 0; node < sh.nodes; ++node) {
        if (local && sh.nodes > 1 && s.node_peak[node] > greedy) {
            const NodeOut out = node_out(ng, node, out_phy2log, out_phyrank);
            s.node_peak[node] = place_node(w, ng, node, greedy, opt, s, out).peak;
        }
        peak = std::max(peak, s.node_peak[node]);
    }
    for (int64_t e = 0; e < sh.experts; ++e) out_logcnt[e] = s.mlogcnt[s.numbering.log2mlog[e]];
    return peak;
}

}  // namespace

void plan_layer(const double* w, const Shape& sh, const Options& opt, LayerScratch& s,
                int64_t* phy2log, int64_t* phyrank, int64_t* logcnt) {
    // 1. Groups -> nodes, then stages 2 and 3 under that split.
    sum_groups(w, sh, s.split);
    s.group_pack.resize(static_cast<size_t>(sh.groups));
    s.group_rank.resize(static_cast<size_t>(sh.groups));
    choose_split(sh, opt, s.split, s.group_pack.data(), s.group_rank.data());
    const double peak = place_layer(w, sh, opt, s, s.group_pack.data(), s.group_rank.data(),
                                    phy2log, phyrank, logcnt);
    if (opt.refine == Refine::None || sh.nodes == 1) return;

    // 2. Evening out node loads changes what each node replicates, which can leave some GPU
    // busier than under the greedy split. Keep the greedy split in that case, so that
    // refinement never raises a layer's largest GPU load.
    s.greedy_pack.resize(static_cast<size_t>(sh.groups));
    s.greedy_rank.resize(static_cast<size_t>(sh.groups));
    greedy_split(sh, s.split, s.greedy_pack.data(), s.greedy_rank.data());
    if (s.greedy_pack == s.group_pack && s.greedy_rank == s.group_rank) return;
    // No GPU can carry less than its node's mean, so when the greedy split's busiest node
    // already averages at least `peak`, that split cannot win: skip planning it. The margin
    // covers rounding in the sums (relative error below n * 2^-53 for n < 2^20 terms).
    const int64_t gpus_per_node = sh.gpus / sh.nodes;
    const double busiest = busiest_node(sh, s.greedy_pack.data(), s.split);
    if (peak <= busiest / static_cast<double>(gpus_per_node) * (1.0 - 1e-9)) return;
    s.alt_phy2log.resize(static_cast<size_t>(sh.replicas));
    s.alt_phyrank.resize(static_cast<size_t>(sh.replicas));
    s.alt_logcnt.resize(static_cast<size_t>(sh.experts));
    const double greedy_peak =
        place_layer(w, sh, opt, s, s.greedy_pack.data(), s.greedy_rank.data(), s.alt_phy2log.data(),
                    s.alt_phyrank.data(), s.alt_logcnt.data());
    if (greedy_peak < peak) {
        std::copy(s.alt_phy2log.begin(), s.alt_phy2log.end(), phy2log);
        std::copy(s.alt_phyrank.begin(), s.alt_phyrank.end(), phyrank);
        std::copy(s.alt_logcnt.begin(), s.alt_logcnt.end(), logcnt);
    }
}

}  // namespace fasteplb::detail
