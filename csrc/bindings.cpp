// pybind11 glue: numpy buffers in, numpy buffers out. No algorithm logic lives here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "fasteplb/eplb.hpp"

namespace py = pybind11;

namespace {

using Weights = py::array_t<double, py::array::c_style>;
using Ints = py::array_t<int64_t, py::array::c_style>;

// Largest output we allocate (elements); beyond this the caller gets a ValueError, not an OOM.
constexpr int64_t kMaxElements = int64_t{1} << 31;

void require_2d(const Weights& weight) {
    if (weight.ndim() != 2) {
        throw std::invalid_argument("weight must be 2-D [layers, experts]; got " +
                                    std::to_string(weight.ndim()) + " dimensions");
    }
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

py::tuple rebalance_experts(const Weights& weight, int64_t num_replicas, int64_t num_groups,
                            int64_t num_nodes, int64_t num_gpus, const std::string& refine,
                            int swap_rounds, int num_threads,
                            const std::optional<Ints>& old_phy2log, int64_t max_moves,
                            double min_gain) {
    require_2d(weight);
    const fasteplb::Options opt = make_options(refine, swap_rounds, num_threads);
    const int64_t layers = weight.shape(0), experts = weight.shape(1);
    fasteplb::Migration mig;
    if (old_phy2log) {
        if (old_phy2log->ndim() != 2 || old_phy2log->shape(0) != layers ||
            old_phy2log->shape(1) != num_replicas) {
            throw std::invalid_argument("old_phy2log must have shape [layers, num_replicas]");
        }
        mig.old_phy2log = old_phy2log->data();
        mig.max_moves = max_moves;
        mig.min_gain = min_gain;
    }
    Ints phy2log = new_ints(layers, num_replicas);
    Ints logcnt = new_ints(layers, experts);
    std::vector<int64_t> phyrank(static_cast<size_t>(layers * num_replicas));
    // log2phy's size is known only once planned, inside the GIL-free block, so it is
    // allocated there in C++ and handed to numpy afterwards.
    std::unique_ptr<int64_t[]> log2phy;
    int64_t max_cnt = 0;
    const double* w = weight.data();
    int64_t* p2l = phy2log.mutable_data();
    int64_t* cnt = logcnt.mutable_data();
    {
        py::gil_scoped_release release;
        fasteplb::rebalance_experts(
            w, layers, experts, num_replicas, num_groups, num_nodes, num_gpus, opt, p2l,
            phyrank.data(), cnt, [&](int64_t r) {
                if (layers * experts > 0 && r > kMaxElements / (layers * experts)) {
                    throw std::invalid_argument("log2phy would need more than 2**31 elements");
                }
                max_cnt = r;
                log2phy.reset(new int64_t[static_cast<size_t>(std::max<int64_t>(
                    layers * experts * r, 1))]);
                return log2phy.get();
            },
            mig);
    }
    int64_t* raw = log2phy.release();
    py::capsule owner(raw, [](void* p) { delete[] static_cast<int64_t*>(p); });
    py::array_t<int64_t> l2p({layers, experts, max_cnt}, raw, owner);
    return py::make_tuple(phy2log, l2p, logcnt);
}

py::tuple balanced_packing(const Weights& weight, int64_t num_packs, const std::string& refine,
                           int swap_rounds, int num_threads) {
    require_2d(weight);
    const fasteplb::Options opt = make_options(refine, swap_rounds, num_threads);
    const int64_t rows = weight.shape(0), n = weight.shape(1);
    Ints pack_index = new_ints(rows, n);
    Ints rank_in_pack = new_ints(rows, n);
    const double* w = weight.data();
    int64_t* pack = pack_index.mutable_data();
    int64_t* rank = rank_in_pack.mutable_data();
    {
        py::gil_scoped_release release;
        fasteplb::balanced_packing(w, rows, n, num_packs, opt, pack, rank);
    }
    return py::make_tuple(pack_index, rank_in_pack);
}

py::tuple replicate_experts(const Weights& weight, int64_t num_phy, int num_threads) {
    require_2d(weight);
    fasteplb::Options opt;
    opt.num_threads = num_threads;
    const int64_t rows = weight.shape(0), num_log = weight.shape(1);
    Ints phy2log = new_ints(rows, num_phy);
    Ints rank = new_ints(rows, num_phy);
    Ints logcnt = new_ints(rows, num_log);
    const double* w = weight.data();
    int64_t* p2l = phy2log.mutable_data();
    int64_t* r = rank.mutable_data();
    int64_t* cnt = logcnt.mutable_data();
    {
        py::gil_scoped_release release;
        fasteplb::replicate_experts(w, rows, num_log, num_phy, opt, p2l, r, cnt);
    }
    return py::make_tuple(phy2log, rank, logcnt);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "fasteplb native core (private; use the fasteplb package API)";
    m.def("rebalance_experts", &rebalance_experts, py::arg("weight").noconvert(),
          py::arg("num_replicas"), py::arg("num_groups"), py::arg("num_nodes"),
          py::arg("num_gpus"), py::arg("refine") = "local", py::arg("swap_rounds") = 20,
          py::arg("num_threads") = 0, py::arg("old_phy2log").noconvert() = py::none(),
          py::arg("max_moves") = -1, py::arg("min_gain") = 0.0,
          "weight: float64 [layers, experts] -> (phy2log [layers, P], log2phy [layers, E, R], "
          "logcnt [layers, E]), all int64");
    m.def("balanced_packing", &balanced_packing, py::arg("weight").noconvert(),
          py::arg("num_packs"), py::arg("refine") = "local", py::arg("swap_rounds") = 20,
          py::arg("num_threads") = 0,
          "weight: float64 [rows, n] -> (pack_index [rows, n], rank_in_pack [rows, n]), int64");
    m.def("replicate_experts", &replicate_experts, py::arg("weight").noconvert(),
          py::arg("num_phy"), py::arg("num_threads") = 0,
          "weight: float64 [rows, n] -> (phy2log [rows, P], rank [rows, P], logcnt [rows, n]), "
          "int64");
}
