// Stage 1 of the hierarchical policy: groups of experts onto nodes, and the node-major
// numbering of experts that the later stages plan each node in.
#pragma once

#include <cstdint>
#include <vector>

#include "fasteplb/detail/common.hpp"
#include "fasteplb/detail/pack.hpp"
#include "fasteplb/options.hpp"

namespace fasteplb::detail {

// Up to this many groups, refine="local" splits groups over nodes optimally.
constexpr int64_t kExactGroups = 12;

struct PartitionScratch {
    std::vector<int64_t> order, node, best_node, count;
    std::vector<double> load;
};

struct SplitScratch {
    std::vector<double> group_load;  // [groups], from sum_groups
    std::vector<double> node_load;   // [nodes]
    PackScratch pack;
    PartitionScratch partition;
};

// s.group_load: each group's load. Explicit sequential sums keep the reference bit-identical.
void sum_groups(const double* w, const Shape& sh, SplitScratch& s);

// The groups -> nodes split the fresh planner uses (greedy, refined by opt.refine; exact for
// refine="local" and few groups) into pack / rank [groups]. Needs s.group_load.
void choose_split(const Shape& sh, const Options& opt, SplitScratch& s, int64_t* pack,
                  int64_t* rank);

// DeepSeek's greedy split (LPT, no refinement) into pack / rank [groups].
void greedy_split(const Shape& sh, SplitScratch& s, int64_t* pack, int64_t* rank);

// The largest node load under the split `pack` [groups]. Needs s.group_load.
double busiest_node(const Shape& sh, const int64_t* pack, SplitScratch& s);

// "mlog" numbers experts node-major for a split (pack, rank): node n owns mlog ids
// [n * E/N, (n + 1) * E/N).
struct NodeNumbering {
    std::vector<int64_t> log2mlog, mlog2log;  // [experts]
};
void number_node_major(const Shape& sh, const int64_t* group_pack, const int64_t* group_rank,
                       NodeNumbering& num);

}  // namespace fasteplb::detail
