#include "fasteplb/detail/split.hpp"

#include <algorithm>

#include "fasteplb/interrupt.hpp"

namespace fasteplb::detail {
namespace {

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
void exact_partition(const double* w, int64_t k, int64_t nodes, double upper, PartitionScratch& s,
                     int64_t* pack, int64_t* rank) {
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

}  // namespace

void sum_groups(const double* w, const Shape& sh, SplitScratch& s) {
    const int64_t group_size = sh.experts / sh.groups;
    s.group_load.resize(static_cast<size_t>(sh.groups));
    for (int64_t g = 0; g < sh.groups; ++g) {
        double sum = 0.0;
        for (int64_t j = 0; j < group_size; ++j) sum += w[g * group_size + j];
        s.group_load[g] = sum;
    }
}

void choose_split(const Shape& sh, const Options& opt, SplitScratch& s, int64_t* pack,
                  int64_t* rank) {
    const bool exact = opt.refine == Refine::Local && sh.groups <= kExactGroups &&
                       sh.groups > sh.nodes && sh.nodes > 1;
    // The exact split needs only the greedy's maximum as its starting bound.
    const double greedy_nodes =
        pack_one(s.group_load.data(), sh.groups, sh.nodes, exact ? Refine::None : opt.refine,
                 opt.swap_rounds, s.pack, pack, rank);
    if (exact) {
        exact_partition(s.group_load.data(), sh.groups, sh.nodes, greedy_nodes, s.partition, pack,
                        rank);
    }
}

void greedy_split(const Shape& sh, SplitScratch& s, int64_t* pack, int64_t* rank) {
    pack_one(s.group_load.data(), sh.groups, sh.nodes, Refine::None, 0, s.pack, pack, rank);
}

double busiest_node(const Shape& sh, const int64_t* pack, SplitScratch& s) {
    s.node_load.assign(static_cast<size_t>(sh.nodes), 0.0);
    for (int64_t g = 0; g < sh.groups; ++g) s.node_load[pack[g]] += s.group_load[g];
    return *std::max_element(s.node_load.begin(), s.node_load.end());
}

void number_node_major(const Shape& sh, const int64_t* group_pack, const int64_t* group_rank,
                       NodeNumbering& num) {
    const int64_t E = sh.experts, group_size = E / sh.groups;
    const int64_t groups_per_node = sh.groups / sh.nodes;
    num.log2mlog.resize(static_cast<size_t>(E));
    num.mlog2log.resize(static_cast<size_t>(E));
    for (int64_t g = 0; g < sh.groups; ++g) {
        const int64_t base = (group_pack[g] * groups_per_node + group_rank[g]) * group_size;
        for (int64_t j = 0; j < group_size; ++j) {
            num.log2mlog[g * group_size + j] = base + j;
            num.mlog2log[base + j] = g * group_size + j;
        }
    }
}

}  // namespace fasteplb::detail
