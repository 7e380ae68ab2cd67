// Types and orders every stage shares. Ties are always broken the same way (the larger load
// first, then the lower index), which is what makes plans reproducible on every rank and
// bit-identical to the pure-Python reference.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <utility>

namespace fasteplb::detail {

inline void require(bool ok, const char* message) {
    if (!ok) throw std::invalid_argument(message);
}

// An item to pack or an expert to replicate: its load and its index.
struct Item {
    double w;
    int64_t idx;
};

// The tie order of items: the larger load first, then the lower index.
inline bool heavier_first(const Item& a, const Item& b) {
    return a.w > b.w || (a.w == b.w && a.idx < b.idx);
}

// A pack (GPU) in a heap or tree: its key (load) and index.
struct PackNode {
    double key;
    int64_t idx;
};

// (load per replica, expert): `before` orders by larger load, ties to the lower expert.
struct Quotient {
    double q;
    int64_t e;
};
inline bool before(const Quotient& a, const Quotient& b) {
    return (a.q > b.q) | ((a.q == b.q) & (a.e < b.e));
}
struct SmallerQuotient {  // heap order: the top is the first by `before`
    bool operator()(const Quotient& a, const Quotient& b) const { return before(b, a); }
};

// Moves a[at], whose key just changed, to its place in the otherwise sorted a[0..n) (by
// `less`), by adjacent swaps: the element usually moves only a few places.
template <class T, class Less>
void sift_into_place(T* a, int64_t n, int64_t at, Less less) {
    while (at > 0 && less(a[at], a[at - 1])) {
        std::swap(a[at], a[at - 1]);
        --at;
    }
    while (at + 1 < n && less(a[at + 1], a[at])) {
        std::swap(a[at], a[at + 1]);
        ++at;
    }
}

// The sizes of one layer's plan: the global policy is groups = nodes = 1.
struct Shape {
    int64_t experts, replicas, groups, nodes, gpus;
};

// What each node of a Shape holds: its experts, slots and GPUs, and each GPU's slots.
struct NodeGeometry {
    int64_t experts, slots, gpus, slots_per_gpu;
    explicit NodeGeometry(const Shape& sh)
        : experts(sh.experts / sh.nodes),
          slots(sh.replicas / sh.nodes),
          gpus(sh.gpus / sh.nodes),
          slots_per_gpu(sh.replicas / sh.gpus) {}
};

}  // namespace fasteplb::detail
