#include "fasteplb/checks.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <vector>

#include "fasteplb/detail/common.hpp"
#include "fasteplb/fpenv.hpp"

namespace fasteplb {

Refine parse_refine(const std::string& name) {
    if (name == "none") return Refine::None;
    if (name == "swap") return Refine::Swap;
    if (name == "local") return Refine::Local;
    throw std::invalid_argument("refine must be one of 'local', 'swap', 'none'; got '" + name +
                                "'");
}

HistoryMode parse_history(const std::string& name) {
    if (name == "last") return HistoryMode::Last;
    if (name == "ema") return HistoryMode::Ema;
    if (name == "mean") return HistoryMode::Mean;
    if (name == "robust") return HistoryMode::Robust;
    if (name == "trend") return HistoryMode::Trend;
    if (name == "auto") return HistoryMode::Auto;
    throw std::invalid_argument(
        "history must be one of 'auto', 'last', 'ema', 'mean', 'robust', 'trend'; got '" + name +
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
                              "%s must be finite and non-negative; found %s at [%lld, %lld]", name,
                              value, static_cast<long long>(r), static_cast<long long>(j));
                throw std::invalid_argument(buf);
            }
            total += x;
        }
        if (!(total <= detail::kMaxRowTotal)) {
            char buf[256];
            std::snprintf(buf, sizeof buf, "%s's row sums must be <= 1e300; row %lld sums to %g",
                          name, static_cast<long long>(r), total);
            throw std::invalid_argument(buf);
        }
    }
}

void check_placement(const int64_t* phy2log, int64_t rows, int64_t experts, int64_t num_replicas,
                     const char* name) {
    std::vector<char> seen;
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t* row = phy2log + r * num_replicas;
        seen.assign(static_cast<size_t>(experts), 0);
        for (int64_t p = 0; p < num_replicas; ++p) {
            if (row[p] < 0 || row[p] >= experts) {
                char buf[256];
                std::snprintf(buf, sizeof buf,
                              "%s must hold expert ids in [0, %lld); found %lld at [%lld, %lld]",
                              name, static_cast<long long>(experts), static_cast<long long>(row[p]),
                              static_cast<long long>(r), static_cast<long long>(p));
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

namespace detail {

void check_options(const Options& opt) {
    require(opt.swap_rounds >= 0, "swap_rounds must be >= 0");
}

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

void check_forecast(const Forecast& f, int64_t windows) {
    require(windows >= 1, "weight must hold at least one window of load history");
    require(windows <= kMaxHistoryWindows, "weight must hold at most 4096 windows of history");
    require(f.alpha > 0.0 && f.alpha <= 1.0, "alpha must be in (0, 1]");
    require(f.window >= 1 && f.window <= kMaxHistoryWindows, "window must be in 1..4096");
    require(f.z >= 0.0 && std::isfinite(f.z), "z must be finite and >= 0");
    require(f.replays >= 1 && f.replays <= kMaxReplays, "replays must be in 1..1024");
}

}  // namespace detail
}  // namespace fasteplb
