// Validation: of weights and placements (public, also re-exported by eplb.hpp), and of the
// options and supported sizes (the entry points' own).
#pragma once

#include <cstdint>

#include "fasteplb/options.hpp"

namespace fasteplb {

// Throws std::invalid_argument unless every entry of weight[rows, cols] is finite and >= 0.
void check_weights(const double* weight, int64_t rows, int64_t cols, const char* name);

// Throws std::invalid_argument unless every row of phy2log[rows, num_replicas] holds expert
// ids in [0, experts) and names every expert at least once.
void check_placement(const int64_t* phy2log, int64_t rows, int64_t experts, int64_t num_replicas,
                     const char* name);

}  // namespace fasteplb

namespace fasteplb::detail {

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

// Row sums above this are refused, which keeps every pack load (a partial sum in any order)
// far from overflow and lets the packer use +inf as its "pack full" mark.
constexpr double kMaxRowTotal = 1e300;

void check_options(const Options& opt);

// The limits of opt.refine on n slots (items) per row in packs of per_pack.
void check_mode_limits(const Options& opt, int64_t n, int64_t per_pack);

// Windows of load history a forecast reads at most, and the replays "auto" scores at most.
constexpr int64_t kMaxHistoryWindows = 4096;
constexpr int64_t kMaxReplays = 1024;

void check_forecast(const Forecast& f, int64_t windows);

}  // namespace fasteplb::detail
