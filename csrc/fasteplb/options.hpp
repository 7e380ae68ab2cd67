// fasteplb's planning options: the refinement, its limits, threading, and re-planning from a
// current placement. Plain data; the entry points (eplb.hpp) validate them.
#pragma once

#include <cstdint>
#include <string>

namespace fasteplb {

enum class Refine {
    None,   // DeepSeek's greedy (LPT with cardinality) only
    Swap,   // greedy, then max/min pair swaps (the seed's refinement)
    Local,  // greedy, then swaps of the heaviest pack with the lightest that helps, no
            // co-located replicas
};

struct Options {
    Refine refine = Refine::Local;  // the Python API's default too
    int swap_rounds = 20;           // upper bound on swaps per packing call (Refine::Swap)
    int num_threads = 0;            // <= 0: hardware concurrency, capped by the row count
};

// Parses "local" / "swap" / "none"; throws std::invalid_argument naming `refine` otherwise.
Refine parse_refine(const std::string& name);

// Re-planning around the current placement. A move is one (GPU, expert) pair present in the
// new plan and absent from the old one: one copy of the expert's weights onto that GPU.
struct Migration {
    const int64_t* old_phy2log = nullptr;  // [layers, num_replicas]; nullptr: plan afresh
    int64_t max_moves = -1;                // most moves per layer; < 0: no cap
    int64_t max_moves_total = -1;          // most moves over all layers; < 0: no cap
    double min_gain = 0.0;  // keep a layer's old placement unless its largest GPU load drops
                            // by more than this fraction (0: unless it drops at all)
};

// Planning from a history of load windows: how the next window's load is forecast.
enum class HistoryMode {
    Last,    // the newest window
    Ema,     // exponential moving average, weight `alpha` on the newest window
    Mean,    // mean of the last `window` windows
    Robust,  // that mean + `z` standard deviations (more replicas for volatile experts)
    Trend,   // newest + 0.5 * (newest - the one before), at least 0
    Auto,    // the candidate (history_candidates()) whose forecasts of the last `replays`
             // windows, each from the windows before it, erred least (shares, squared)
};

struct Forecast {
    HistoryMode mode = HistoryMode::Auto;
    double alpha = 0.5;   // Ema: in (0, 1]
    int64_t window = 8;   // Mean, Robust: >= 1 (fewer when the history is shorter)
    double z = 1.0;       // Robust: >= 0
    int64_t replays = 8;  // Auto: >= 1
};

// Parses "last" / "ema" / "mean" / "robust" / "trend" / "auto"; throws std::invalid_argument
// naming `history` otherwise.
HistoryMode parse_history(const std::string& name);

}  // namespace fasteplb
