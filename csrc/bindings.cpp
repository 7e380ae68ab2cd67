// pybind11 glue: numpy buffers in, numpy buffers out. No algorithm logic lives here.
//
// Every input is snapshotted (copied and converted once, with the GIL held) before the GIL is
// released, and only the snapshot is validated and planned on: a caller may go on writing
// into its tensor from another thread. While the core runs without the GIL, the calling
// thread polls for signals, so Ctrl-C stops a long call (KeyboardInterrupt) within a poll
// interval or two; the core's threads are joined before the exception reaches Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "fasteplb/eplb.hpp"
#include "fasteplb/input.hpp"
#include "fasteplb/interrupt.hpp"
#include "fasteplb/parallel.hpp"

namespace py = pybind11;

namespace {

using Ints = py::array_t<int64_t, py::array::c_style>;

// Largest output we allocate (elements); beyond this the caller gets a ValueError, not an OOM.
constexpr int64_t kMaxElements = int64_t{1} << 31;

fasteplb::DType dtype_of(const py::array& a, bool bfloat16, const char* name) {
    const py::dtype dt = a.dtype();
    const char kind = dt.kind();
    const auto size = dt.itemsize();
    const char order = dt.byteorder();
    const bool native = order == '=' || order == '|' ||
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
                        order == '>';
#else
                        order == '<';
#endif
    if (!native) throw py::type_error(std::string(name) + " must be in native byte order");
    if (bfloat16) {
        if ((kind == 'u' || kind == 'i') && size == 2) return fasteplb::DType::BF16;
    } else if (kind == 'f') {
        if (size == 8) return fasteplb::DType::F64;
        if (size == 4) return fasteplb::DType::F32;
        if (size == 2) return fasteplb::DType::F16;
    } else if (kind == 'i') {
        if (size == 1) return fasteplb::DType::I8;
        if (size == 2) return fasteplb::DType::I16;
        if (size == 4) return fasteplb::DType::I32;
        if (size == 8) return fasteplb::DType::I64;
    } else if (kind == 'u') {
        if (size == 1) return fasteplb::DType::U8;
        if (size == 2) return fasteplb::DType::U16;
        if (size == 4) return fasteplb::DType::U32;
        if (size == 8) return fasteplb::DType::U64;
    }
    throw py::type_error(std::string(name) +
                         " must have a real or integer dtype of 1 to 8 bytes, got " +
                         py::str(static_cast<py::object>(dt)).cast<std::string>());
}

// The caller's [rows, cols] array as a view the core can copy from.
fasteplb::StridedView view_of(const py::array& a, bool bfloat16, const char* name) {
    if (a.ndim() != 2) {
        throw std::invalid_argument(std::string(name) + " must be 2-D; got " +
                                    std::to_string(a.ndim()) + " dimensions");
    }
    return fasteplb::StridedView{
        a.data(), dtype_of(a, bfloat16, name), a.shape(0), a.shape(1), a.strides(0), a.strides(1)};
}

std::vector<double> snapshot_weights(const py::array& weight, bool bfloat16) {
    std::vector<double> copy;
    fasteplb::snapshot_weights(view_of(weight, bfloat16, "weight"), copy, "weight");
    return copy;
}

fasteplb::Options make_options(const std::string& refine, int swap_rounds, int num_threads) {
    fasteplb::Options opt;
    opt.refine = fasteplb::parse_refine(refine);
    opt.swap_rounds = swap_rounds;
    opt.num_threads = num_threads;
    return opt;
}

Ints new_ints(int64_t rows, int64_t cols) {
    if (rows < 0 || cols < 0 || (cols > 0 && rows > kMaxElements / cols)) {
        throw std::invalid_argument("output of " + std::to_string(rows) + " x " +
                                    std::to_string(cols) + " elements is too large");
    }
    return Ints({rows, cols});
}

// Runs plan() without the GIL, cancellable: the calling thread polls Python's signal handlers
// (at most every Interrupt::kPollInterval); a handler that raises (KeyboardInterrupt) stops
// the core, and its exception is raised here once every thread of the core has joined.
template <class Plan>
void run_without_gil(Plan&& plan) {
    fasteplb::Interrupt interrupt([] {
        py::gil_scoped_acquire gil;
        return PyErr_CheckSignals() != 0;
    });
    std::exception_ptr error;
    {
        py::gil_scoped_release release;
        fasteplb::InterruptScope scope(&interrupt);
        try {
            plan();
        } catch (const fasteplb::Interrupted&) {
            // The Python exception that asked for it is already set.
        } catch (...) {
            error = std::current_exception();
        }
    }
    if (PyErr_Occurred()) throw py::error_already_set();
    if (error) std::rethrow_exception(error);
}

py::tuple rebalance_experts(const py::array& weight, int64_t num_replicas, int64_t num_groups,
                            int64_t num_nodes, int64_t num_gpus, const std::string& refine,
                            int swap_rounds, int num_threads,
                            const std::optional<Ints>& old_phy2log, int64_t max_moves,
                            double min_gain, bool bfloat16, int64_t max_moves_total) {
    const fasteplb::Options opt = make_options(refine, swap_rounds, num_threads);
    const std::vector<double> w = snapshot_weights(weight, bfloat16);
    const int64_t layers = weight.shape(0), experts = weight.shape(1);
    fasteplb::Migration mig;
    std::vector<int64_t> old;
    if (old_phy2log) {
        if (old_phy2log->ndim() != 2 || old_phy2log->shape(0) != layers ||
            old_phy2log->shape(1) != num_replicas) {
            throw std::invalid_argument("old_phy2log must have shape [layers, num_replicas]");
        }
        fasteplb::snapshot_ids(view_of(*old_phy2log, false, "old_phy2log"), old);
        mig.old_phy2log = old.data();
        mig.max_moves = max_moves;
        mig.max_moves_total = max_moves_total;
        mig.min_gain = min_gain;
    }
    Ints phy2log = new_ints(layers, num_replicas);
    Ints logcnt = new_ints(layers, experts);
    std::vector<int64_t> phyrank(static_cast<size_t>(layers * num_replicas));
    // log2phy's size is known only once planned, inside the GIL-free block, so it is
    // allocated there in C++ and handed to numpy afterwards.
    std::unique_ptr<int64_t[]> log2phy;
    int64_t max_cnt = 0;
    int64_t* p2l = phy2log.mutable_data();
    int64_t* cnt = logcnt.mutable_data();
    run_without_gil([&] {
        fasteplb::rebalance_experts(
            w.data(), layers, experts, num_replicas, num_groups, num_nodes, num_gpus, opt, p2l,
            phyrank.data(), cnt,
            [&](int64_t r) {
                if (layers * experts > 0 && r > kMaxElements / (layers * experts)) {
                    throw std::invalid_argument("log2phy would need more than 2**31 elements");
                }
                max_cnt = r;
                log2phy.reset(
                    new int64_t[static_cast<size_t>(std::max<int64_t>(layers * experts * r, 1))]);
                return log2phy.get();
            },
            mig);
    });
    int64_t* raw = log2phy.release();
    py::capsule owner(raw, [](void* p) { delete[] static_cast<int64_t*>(p); });
    py::array_t<int64_t> l2p({layers, experts, max_cnt}, raw, owner);
    return py::make_tuple(phy2log, l2p, logcnt);
}

py::tuple balanced_packing(const py::array& weight, int64_t num_packs, const std::string& refine,
                           int swap_rounds, int num_threads, bool bfloat16) {
    const fasteplb::Options opt = make_options(refine, swap_rounds, num_threads);
    const std::vector<double> w = snapshot_weights(weight, bfloat16);
    const int64_t rows = weight.shape(0), n = weight.shape(1);
    Ints pack_index = new_ints(rows, n);
    Ints rank_in_pack = new_ints(rows, n);
    int64_t* pack = pack_index.mutable_data();
    int64_t* rank = rank_in_pack.mutable_data();
    run_without_gil(
        [&] { fasteplb::balanced_packing(w.data(), rows, n, num_packs, opt, pack, rank); });
    return py::make_tuple(pack_index, rank_in_pack);
}

py::tuple replicate_experts(const py::array& weight, int64_t num_phy, int num_threads,
                            bool bfloat16) {
    fasteplb::Options opt;
    opt.num_threads = num_threads;
    const std::vector<double> w = snapshot_weights(weight, bfloat16);
    const int64_t rows = weight.shape(0), num_log = weight.shape(1);
    Ints phy2log = new_ints(rows, num_phy);
    Ints rank = new_ints(rows, num_phy);
    Ints logcnt = new_ints(rows, num_log);
    int64_t* p2l = phy2log.mutable_data();
    int64_t* r = rank.mutable_data();
    int64_t* cnt = logcnt.mutable_data();
    run_without_gil(
        [&] { fasteplb::replicate_experts(w.data(), rows, num_log, num_phy, opt, p2l, r, cnt); });
    return py::make_tuple(phy2log, rank, logcnt);
}

const char* history_name(fasteplb::HistoryMode mode) {
    switch (mode) {
        case fasteplb::HistoryMode::Last:
            return "last";
        case fasteplb::HistoryMode::Ema:
            return "ema";
        case fasteplb::HistoryMode::Mean:
            return "mean";
        case fasteplb::HistoryMode::Robust:
            return "robust";
        case fasteplb::HistoryMode::Trend:
            return "trend";
        case fasteplb::HistoryMode::Auto:
            break;
    }
    return "auto";
}

// history: [windows, layers, experts], snapshotted window by window (any strides).
py::tuple forecast_load(const py::array& history, const std::string& mode, double alpha,
                        int64_t window, double z, int64_t replays, int num_threads, bool bfloat16) {
    if (history.ndim() != 3) {
        throw std::invalid_argument("weight must be 3-D [windows, layers, experts]; got " +
                                    std::to_string(history.ndim()) + " dimensions");
    }
    fasteplb::Forecast f;
    f.mode = fasteplb::parse_history(mode);
    f.alpha = alpha;
    f.window = window;
    f.z = z;
    f.replays = replays;
    const int64_t windows = history.shape(0), layers = history.shape(1), experts = history.shape(2);
    const fasteplb::DType dtype = dtype_of(history, bfloat16, "weight");
    std::vector<double> copy, part;
    copy.reserve(static_cast<size_t>(std::max<int64_t>(windows * layers * experts, 0)));
    for (int64_t t = 0; t < windows; ++t) {
        const fasteplb::StridedView view{
            static_cast<const char*>(history.data()) + t * history.strides(0),
            dtype,
            layers,
            experts,
            history.strides(1),
            history.strides(2)};
        fasteplb::snapshot_weights(view, part, "weight");
        copy.insert(copy.end(), part.begin(), part.end());
    }
    py::array_t<double> out({layers, experts});
    double* dst = out.mutable_data();
    int64_t chosen = -1;
    run_without_gil([&] {
        chosen =
            fasteplb::forecast_load(copy.data(), windows, layers, experts, f, num_threads, dst);
    });
    return py::make_tuple(out, chosen);
}

py::list history_candidates() {
    py::list out;
    for (const fasteplb::HistoryChoice& c : fasteplb::history_candidates()) {
        out.append(py::make_tuple(history_name(c.mode), c.alpha, c.window, c.z));
    }
    return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "fasteplb native core (private; use the fasteplb package API)";
    m.def("rebalance_experts", &rebalance_experts, py::arg("weight").noconvert(),
          py::arg("num_replicas"), py::arg("num_groups"), py::arg("num_nodes"), py::arg("num_gpus"),
          py::arg("refine") = "local", py::arg("swap_rounds") = 20, py::arg("num_threads") = 0,
          py::arg("old_phy2log").noconvert() = py::none(), py::arg("max_moves") = -1,
          py::arg("min_gain") = 0.0, py::arg("bfloat16") = false, py::arg("max_moves_total") = -1,
          "weight: [layers, experts] of any real or integer dtype (bfloat16: int16/uint16 bits "
          "with bfloat16=True), any strides -> (phy2log [layers, P], log2phy [layers, E, R], "
          "logcnt [layers, E]), all int64");
    m.def("balanced_packing", &balanced_packing, py::arg("weight").noconvert(),
          py::arg("num_packs"), py::arg("refine") = "local", py::arg("swap_rounds") = 20,
          py::arg("num_threads") = 0, py::arg("bfloat16") = false,
          "weight: [rows, n] -> (pack_index [rows, n], rank_in_pack [rows, n]), int64");
    m.def("replicate_experts", &replicate_experts, py::arg("weight").noconvert(),
          py::arg("num_phy"), py::arg("num_threads") = 0, py::arg("bfloat16") = false,
          "weight: [rows, n] -> (phy2log [rows, P], rank [rows, P], logcnt [rows, n]), int64");
    m.def("forecast_load", &forecast_load, py::arg("weight").noconvert(),
          py::arg("history") = "auto", py::arg("alpha") = 0.5, py::arg("window") = 8,
          py::arg("z") = 1.0, py::arg("replays") = 8, py::arg("num_threads") = 0,
          py::arg("bfloat16") = false,
          "weight: [windows, layers, experts], oldest first -> (forecast [layers, experts] "
          "float64, index of the auto candidate used or -1)");
    m.def("history_candidates", &history_candidates,
          "The candidates of history='auto', in tie order: (mode, alpha, window, z).");
    m.def(
        "_last_pool_size",
        [] { return fasteplb::last_pool_size().load(std::memory_order_relaxed); },
        "For tests: the threads the last planning call in this process ran on.");
}
