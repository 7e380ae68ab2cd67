"""lower_bound, colocated and report: validity against brute force, structure, errors."""

from __future__ import annotations

import functools
import itertools
import math

import fasteplb
import numpy as np
import pytest
from fasteplb import metrics
from fasteplb._checks import REFINE_MODES
from helpers import configs, fuzz, make_load, node_loads
from hypothesis import given
from hypothesis import strategies as st

try:
    import torch
except ImportError:  # the wheels' test run has numpy only: the torch cases skip
    torch = None

TERMS = ("mean", "replica", "hot", "node")
TOL = 1e-9


# ---------------------------------------------------------------------------------------
# Brute force (independent of the code under test)
# ---------------------------------------------------------------------------------------


@functools.cache
def _assignments(num_items: int, num_gpus: int) -> np.ndarray:
    """[A, num_items, num_gpus] one-hot: every assignment of the items to GPUs with exactly
    num_items / num_gpus items per GPU (labelled GPUs; duplicates are harmless)."""
    per_gpu = num_items // num_gpus
    grid = np.array(list(itertools.product(range(num_gpus), repeat=num_items)), dtype=np.int64)
    counts = np.stack([(grid == g).sum(axis=1) for g in range(num_gpus)], axis=1)
    grid = grid[(counts == per_gpu).all(axis=1)]
    return (grid[:, :, None] == np.arange(num_gpus)).astype(np.float64)


@functools.cache
def _replica_counts(num_slots: int, experts: int) -> np.ndarray:
    """[C, experts]: every r with r_e >= 1 and sum r_e = num_slots."""
    rows = []
    for cuts in itertools.combinations(range(1, num_slots), experts - 1):
        edges = (0, *cuts, num_slots)
        rows.append([b - a for a, b in zip(edges[:-1], edges[1:])])
    return np.array(rows, dtype=np.int64)


def brute_optimum(w: np.ndarray, num_slots: int, num_gpus: int) -> float:
    """Smallest max GPU load over all replica counts and all placements (one layer, one
    node: the global policy's whole search space)."""
    w = np.asarray(w, dtype=np.float64)
    counts = _replica_counts(num_slots, len(w))  # [C, E]
    # Items of each count vector: expert e repeated r_e times, each carrying w_e / r_e.
    items = np.stack([np.repeat(w / r, r) for r in counts])  # [C, P]
    onehot = _assignments(num_slots, num_gpus)  # [A, P, G]
    loads = np.einsum("apg,cp->cag", onehot, items)
    return float(loads.max(axis=2).min())


def brute_hierarchical(
    w: np.ndarray, num_slots: int, groups: int, nodes: int, num_gpus: int
) -> tuple[float, float]:
    """(best hierarchical max GPU load, best partition's max node load) for one layer."""
    experts = len(w)
    group_size, per_node = experts // groups, groups // nodes
    best, best_node = np.inf, np.inf
    node_opt: dict[tuple[int, ...], float] = {}
    for labels in itertools.product(range(nodes), repeat=groups):
        if any(labels.count(n) != per_node for n in range(nodes)):
            continue
        worst, worst_node = 0.0, 0.0
        for n in range(nodes):
            members = tuple(e for e in range(experts) if labels[e // group_size] == n)
            if members not in node_opt:
                node_opt[members] = brute_optimum(
                    w[list(members)], num_slots // nodes, num_gpus // nodes
                )
            worst = max(worst, node_opt[members])
            worst_node = max(worst_node, float(w[list(members)].sum()))
        best, best_node = min(best, worst), min(best_node, worst_node)
    return best, best_node


def _global_cases():
    for experts in range(2, 6):
        for gpus in range(1, 4):
            for per_gpu in range(1, 4):
                if gpus * per_gpu >= experts:
                    yield experts, gpus, per_gpu


@pytest.mark.parametrize("experts,gpus,per_gpu", list(_global_cases()))
def test_bound_below_global_brute_force_optimum(experts, gpus, per_gpu):
    rng = np.random.default_rng(1000 * experts + 10 * gpus + per_gpu)
    slots = gpus * per_gpu
    weight = np.vstack(
        [
            rng.integers(0, 10, (4, experts)),
            rng.integers(0, 3, (2, experts)),
            np.eye(1, experts) * 7,
        ]
    ).astype(np.float64)
    bound, terms = fasteplb.lower_bound(weight, slots, 1, 1, gpus, return_terms=True)
    plan = fasteplb.rebalance_experts(weight, slots, 1, 1, gpus)[0]
    achieved = fasteplb.gpu_loads(plan, weight, gpus).max(axis=1)
    for layer, w in enumerate(weight):
        optimum = brute_optimum(w, slots, gpus)
        assert achieved[layer] >= optimum - TOL  # the enumeration really is exhaustive
        assert bound[layer] <= optimum + TOL, (layer, w, bound[layer], optimum)
        for name in TERMS:
            assert terms[name][layer] <= optimum + TOL, (name, layer, w, optimum)
        if per_gpu == 1:
            # One slot per GPU: the max GPU load is the max replica load, so T* is exact.
            assert terms["replica"][layer] == pytest.approx(optimum, rel=1e-12)
    # The global policy proper (num_groups % num_nodes != 0) has the same bound.
    if experts % 2 and gpus % 2 == 0:
        np.testing.assert_array_equal(fasteplb.lower_bound(weight, slots, experts, 2, gpus), bound)


HIER_CASES = [
    # experts, groups, nodes, gpus, slots
    (4, 4, 2, 2, 4),
    (4, 4, 2, 2, 6),
    (4, 4, 2, 4, 4),
    (4, 4, 2, 4, 8),
    (8, 4, 2, 2, 8),
    (8, 4, 2, 4, 8),
    (6, 6, 2, 2, 6),
    (6, 6, 3, 3, 6),
    (6, 6, 3, 3, 9),
    (6, 3, 3, 3, 6),
]


@pytest.mark.parametrize("experts,groups,nodes,gpus,slots", HIER_CASES)
def test_bound_below_hierarchical_brute_force_optimum(experts, groups, nodes, gpus, slots):
    rng = np.random.default_rng(7 * experts + 11 * groups + 13 * nodes + gpus + slots)
    weight = np.vstack(
        [rng.integers(0, 10, (4, experts)), rng.integers(0, 2, (2, experts))]
    ).astype(np.float64)
    bound, terms = fasteplb.lower_bound(weight, slots, groups, nodes, gpus, return_terms=True)
    plan = fasteplb.rebalance_experts(weight, slots, groups, nodes, gpus)[0]
    achieved = fasteplb.gpu_loads(plan, weight, gpus).max(axis=1)
    for layer, w in enumerate(weight):
        optimum, best_node = brute_hierarchical(w, slots, groups, nodes, gpus)
        assert achieved[layer] >= optimum - TOL
        assert bound[layer] <= optimum + TOL, (layer, w, bound[layer], optimum)
        for name in TERMS:
            assert terms[name][layer] <= optimum + TOL, (name, layer, w, optimum)
        # K <= 12: the node term is the exact best partition, spread over G/N GPUs.
        assert terms["node"][layer] == pytest.approx(best_node / (gpus // nodes), rel=1e-12)


@given(configs())
@fuzz(150)
def test_rebalance_never_beats_the_bound(cfg):
    bound, terms = fasteplb.lower_bound(cfg.weight, *cfg.sizes, return_terms=True)
    assert bound.shape == (cfg.weight.shape[0],) and bound.dtype == np.float64
    assert (bound >= 0).all()
    # "hot" is dominated: w_max / G <= W / G and w_max / (R + 1) <= T*.
    assert (terms["hot"] <= np.maximum(terms["mean"], terms["replica"])).all()
    slack = 1e-12 * bound + 1e-300
    for refine in REFINE_MODES:  # every packing refinement the API offers
        phy2log = fasteplb.rebalance_experts(cfg.weight, *cfg.sizes, refine=refine)[0]
        peak = fasteplb.gpu_loads(phy2log, cfg.weight, cfg.num_gpus).max(axis=1)
        assert (peak >= bound - slack).all(), (refine, peak, bound, terms)
        if cfg.hierarchical and cfg.num_nodes > 1:
            busiest = node_loads(phy2log, cfg.weight, cfg.num_nodes).max(axis=1)
            per_node = cfg.num_gpus // cfg.num_nodes
            assert (busiest / per_node >= terms["node"] - slack).all()
    if not (cfg.hierarchical and cfg.num_nodes > 1):
        assert (terms["node"] == 0).all()


@pytest.mark.parametrize("groups,nodes", [(16, 4), (16, 2), (32, 8), (24, 24)])
def test_many_groups_use_a_valid_closed_form(groups, nodes):
    weight = np.vstack(
        [
            make_load(kind, (3, groups * 2), seed=groups + nodes)
            for kind in ("float", "tokens", "sparse", "int")
        ]
    )
    sizes = (groups * 4, groups, nodes, nodes * 4)
    bound, terms = fasteplb.lower_bound(weight, *sizes, return_terms=True)
    phy2log = fasteplb.rebalance_experts(weight, *sizes)[0]
    peak = fasteplb.gpu_loads(phy2log, weight, sizes[3]).max(axis=1)
    assert (peak >= bound * (1 - 1e-12)).all()
    busiest = node_loads(phy2log, weight, nodes).max(axis=1)
    assert (busiest / 4 >= terms["node"] * (1 - 1e-12)).all()
    assert (terms["node"] >= terms["mean"] * (1 - 1e-12)).all()


@given(
    st.integers(1, 4).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, 12 // n))),
    st.sampled_from(["float", "int", "sparse", "tokens"]),
    st.integers(0, 2**32 - 1),
)
@fuzz(60)
def test_closed_form_partition_bound_below_exact(nodes_and_per_node, kind, seed):
    nodes, per_node = nodes_and_per_node
    groups = nodes * per_node
    group_load = make_load(kind, (3, groups), seed)
    exact = metrics._best_partition_exact(group_load, nodes)
    closed = metrics._best_partition_bound(group_load, nodes)
    assert (closed <= exact * (1 + 1e-12) + 1e-300).all()
    assert (exact >= group_load.max(axis=1) * (1 - 1e-12)).all()
    if nodes > 1 and groups <= 8:
        # Exact against plain enumeration of labelled assignments.
        best = np.full(3, np.inf)
        for labels in itertools.product(range(nodes), repeat=groups):
            lab = np.array(labels)
            if (np.bincount(lab, minlength=nodes) != per_node).any():
                continue
            node = np.stack([group_load[:, lab == n].sum(axis=1) for n in range(nodes)])
            best = np.minimum(best, node.max(axis=0))
        np.testing.assert_allclose(exact, best, rtol=1e-12)


def _partitions(items: tuple[int, ...], per_block: int):
    """Every partition of `items` into blocks of `per_block` (each listed once)."""
    if not items:
        yield []
        return
    head, tail = items[0], items[1:]
    for mates in itertools.combinations(tail, per_block - 1):
        rest = tuple(i for i in tail if i not in mates)
        for blocks in _partitions(rest, per_block):
            yield [(head, *mates), *blocks]


@pytest.mark.parametrize(
    "groups,nodes,count",
    [
        (4, 2, 3),
        (8, 4, 105),
        (8, 2, 35),
        (12, 4, 15400),
        (12, 6, 10395),
        (12, 3, 5775),
        (12, 2, 462),
        (6, 6, 1),
        (5, 1, 1),
    ],
)
def test_exact_partition_recursion_matches_full_enumeration(groups, nodes, count):
    parts = np.array(list(_partitions(tuple(range(groups)), groups // nodes)))
    assert parts.shape == (count, nodes, groups // nodes)
    # The recursion visits each partition once: the product of its choice counts.
    tables = metrics._partition_tables(groups, nodes)
    assert np.prod([block.shape[1] for block, _ in tables.levels], dtype=np.int64) == count
    group_load = np.vstack(
        [
            make_load(kind, (2, groups), seed=groups * nodes)
            for kind in ("float", "int", "sparse", "tokens")
        ]
    )
    node = group_load[:, parts].sum(axis=3)  # [L, Q, N]
    want = node.max(axis=2).min(axis=1)
    np.testing.assert_allclose(metrics._best_partition_exact(group_load, nodes), want, rtol=1e-13)


def test_exact_partition_layer_blocks(monkeypatch):
    # Many layers go through in blocks; the result does not depend on the block size.
    group_load = make_load("float", (50, 12), seed=5)
    want = metrics._best_partition_exact(group_load, 4)
    monkeypatch.setattr(metrics, "_PARTITION_SCRATCH", 1000)
    np.testing.assert_array_equal(metrics._best_partition_exact(group_load, 4), want)


# ---------------------------------------------------------------------------------------
# Structure, torch, errors
# ---------------------------------------------------------------------------------------


def test_return_terms_structure_and_values():
    weight = np.array(
        [[8.0, 1.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [9.0, 0.0, 0.0, 1.0]]
    )
    bound, terms = fasteplb.lower_bound(weight, 8, 2, 2, 4, return_terms=True)
    assert set(terms) == {*TERMS, "binding"}
    for name in TERMS:
        assert terms[name].shape == (4,) and terms[name].dtype == np.float64
    np.testing.assert_array_equal(bound, np.max([terms[n] for n in TERMS], axis=0))
    np.testing.assert_array_equal(terms["mean"], weight.sum(axis=1) / 4)
    np.testing.assert_array_equal(terms["hot"], weight.max(axis=1) / 4)  # min(G=4, R+1=5)
    # Layer 0: 4 redundant slots; expert 0 at 4 replicas and expert 3 at 1 both carry 2
    # -> T* = 2; groups {0,1} vs {2,3} -> node loads 9 and 3, over 2 GPUs per node -> 4.5.
    np.testing.assert_array_equal(terms["replica"], [2.0, 0.5, 0.0, 1.8])
    np.testing.assert_allclose(terms["node"], [4.5, 1.0, 0.0, 4.5])
    assert terms["binding"].dtype.kind == "U"
    # Ties go to the earlier name: layer 1 has mean == node == 1.
    assert list(terms["binding"]) == ["node", "mean", "mean", "node"]
    assert np.array_equal(fasteplb.lower_bound(weight, 8, 2, 2, 4), bound)
    # Global policy (3 groups is not a multiple of 2 nodes): no node term.
    weight3 = np.array([[8.0, 1.0, 1.0], [3.0, 3.0, 3.0]])
    _, terms3 = fasteplb.lower_bound(weight3, 4, 3, 2, 2, return_terms=True)
    np.testing.assert_array_equal(terms3["node"], [0.0, 0.0])
    np.testing.assert_allclose(terms3["replica"], [4.0, 3.0])


@pytest.mark.skipif(torch is None, reason="needs torch")
def test_torch_in_torch_out():
    weight = make_load("tokens", (3, 16), seed=3)
    want, want_terms = fasteplb.lower_bound(weight, 24, 4, 2, 8, return_terms=True)
    got = fasteplb.lower_bound(torch.from_numpy(weight).to(torch.float32), 24, 4, 2, 8)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), want)  # integer loads: float32 is exact
    got, terms = fasteplb.lower_bound(torch.from_numpy(weight), 24, 4, 2, 8, return_terms=True)
    assert isinstance(got, torch.Tensor)
    for name in TERMS:
        assert isinstance(terms[name], torch.Tensor)
        np.testing.assert_array_equal(terms[name].numpy(), want_terms[name])
    assert isinstance(terms["binding"], np.ndarray)
    np.testing.assert_array_equal(terms["binding"], want_terms["binding"])
    phy2log = torch.from_numpy(fasteplb.rebalance_experts(weight, 24, 4, 2, 8)[0])
    coloc = fasteplb.colocated(phy2log, 8)
    assert isinstance(coloc, torch.Tensor) and coloc.dtype == torch.int64


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((np.ones(4), 8, 2, 2, 4), ValueError, "weight must be 2-D"),
        ((np.ones((2, 4, 1)), 8, 2, 2, 4), ValueError, "weight must be 2-D"),
        ((np.ones((0, 4)), 8, 2, 2, 4), ValueError, "weight must not be empty"),
        ((-np.ones((2, 4)), 8, 2, 2, 4), ValueError, "weight must be finite and non-negative"),
        ((np.full((2, 4), np.nan), 8, 2, 2, 4), ValueError, "weight must be finite"),
        ((np.full((2, 4), np.inf), 8, 2, 2, 4), ValueError, "weight must be finite"),
        (
            (np.ones((2, 4)), 3, 1, 1, 1),
            ValueError,
            "num_replicas must be >= the number of experts",
        ),
        ((np.ones((2, 4)), 9, 2, 2, 4), ValueError, r"num_replicas \(9\) must be divisible"),
        (
            (np.ones((2, 4)), 8, 2, 3, 4),
            ValueError,
            r"num_gpus \(4\) must be divisible by num_nodes",
        ),
        ((np.ones((2, 4)), 8, 3, 1, 4), ValueError, "must be divisible by num_groups"),
        ((np.ones((2, 4)), 8, 2, 2, 0), ValueError, "num_gpus must be >= 1"),
        ((np.ones((2, 4)), 8, 2, 2, True), TypeError, "num_gpus must be an integer"),
        ((np.ones((2, 4)), 8.0, 2, 2, 4), TypeError, "num_replicas must be an integer"),
        ((np.array([["a", "b"]]), 2, 1, 1, 1), TypeError, "weight must have a real or integer"),
    ],
)
def test_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        fasteplb.lower_bound(*args)
    phy2log = np.zeros((2, 8), dtype=np.int64)
    with pytest.raises(exc, match=match):
        fasteplb.report(phy2log, *args)


def test_same_errors_as_rebalance_experts():
    for args in [
        (np.ones(4), 8, 2, 2, 4),
        (-np.ones((2, 4)), 8, 2, 2, 4),
        (np.ones((2, 4)), 3, 1, 1, 1),
        (np.ones((2, 4)), 9, 2, 2, 4),
        (np.ones((2, 4)), 8, 3, 1, 4),
        (np.full((1, 2), 7e299), 2, 1, 1, 1),
    ]:
        with pytest.raises(ValueError) as want:
            fasteplb.rebalance_experts(*args)
        with pytest.raises(ValueError) as got:
            fasteplb.lower_bound(*args)
        # Same rule: the argument named by rebalance_experts is named here too.
        assert str(want.value).split()[0] == str(got.value).split()[0], (want, got)


# ---------------------------------------------------------------------------------------
# colocated
# ---------------------------------------------------------------------------------------


def test_colocated_hand_made():
    # 3 GPUs of 2 slots. Layer 0: GPU 0 holds expert 3 twice -> 1.
    # Layer 1: GPU 0 holds expert 0 twice and GPU 2 expert 1 twice -> 2.
    # Layer 2: spread out -> 0.
    phy2log = np.array([[3, 3, 0, 1, 2, 3], [0, 0, 2, 1, 1, 1], [0, 1, 1, 0, 2, 0]])
    np.testing.assert_array_equal(fasteplb.colocated(phy2log, 3), [1, 2, 0])
    out = fasteplb.colocated(phy2log, 3)
    assert out.dtype == np.int64 and out.shape == (3,)
    # One GPU of six slots: every repeat counts (3 has 3 copies -> 2; 1 has 3 -> 2 ...).
    np.testing.assert_array_equal(fasteplb.colocated(phy2log, 1), [2, 3, 3])
    # Six GPUs of one slot: nothing can share.
    np.testing.assert_array_equal(fasteplb.colocated(phy2log, 6), [0, 0, 0])
    # Three copies on one GPU count 2.
    np.testing.assert_array_equal(fasteplb.colocated(np.array([[5, 5, 5, 0]]), 1), [2])


def test_colocated_avoidable_only_respects_gpus_per_node():
    phy2log = np.array([[3, 3, 0, 1, 2, 3], [0, 0, 2, 1, 1, 1]])
    # One node of 3 GPUs: expert 3 (3 replicas) and experts 0 (2) / 1 (3) fit -> all count.
    np.testing.assert_array_equal(fasteplb.colocated(phy2log, 3, avoidable_only=True), [1, 2])
    # Three nodes of one GPU: every expert with >= 2 replicas must share -> nothing counts.
    np.testing.assert_array_equal(
        fasteplb.colocated(phy2log, 3, avoidable_only=True, num_nodes=3), [0, 0]
    )
    # 6 GPUs of one slot in 3 nodes of 2 GPUs: nothing shares a GPU at all.
    np.testing.assert_array_equal(
        fasteplb.colocated(phy2log, 6, avoidable_only=True, num_nodes=3), [0, 0]
    )
    # 2 GPUs of 3 slots, 2 nodes of 1 GPU: expert 3 has 3 replicas > 1 -> unavoidable;
    # layer 1: expert 0 has 2 > 1 and expert 1 has 3 > 1 -> unavoidable.
    np.testing.assert_array_equal(fasteplb.colocated(phy2log, 2), [1, 3])
    np.testing.assert_array_equal(
        fasteplb.colocated(phy2log, 2, avoidable_only=True, num_nodes=2), [0, 0]
    )
    # Mixed: expert 7 has 2 replicas (avoidable on 2 GPUs), expert 9 has 3 (not).
    mixed = np.array([[7, 7, 9, 9, 9, 1]])
    np.testing.assert_array_equal(fasteplb.colocated(mixed, 2), [2])  # 7,7,9 | 9,9,1
    np.testing.assert_array_equal(fasteplb.colocated(mixed, 2, avoidable_only=True), [1])


@given(configs())
@fuzz(40)
def test_colocated_matches_a_loop(cfg):
    phy2log = fasteplb.rebalance_experts(cfg.weight, *cfg.sizes)[0]
    g = cfg.num_gpus
    per_node = g // cfg.num_nodes
    want, want_avoid = [], []
    for row in phy2log:
        counts = np.bincount(row)
        total = avoid = 0
        for chunk in np.split(row, g):
            for e, m in zip(*np.unique(chunk, return_counts=True)):
                total += m - 1
                avoid += (m - 1) if counts[e] <= per_node else 0
        want.append(total)
        want_avoid.append(avoid)
    np.testing.assert_array_equal(fasteplb.colocated(phy2log, g), want)
    np.testing.assert_array_equal(
        fasteplb.colocated(phy2log, g, avoidable_only=True, num_nodes=cfg.num_nodes), want_avoid
    )


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((np.zeros(4, dtype=np.int64), 2), {}, ValueError, "phy2log must be 2-D"),
        ((np.zeros((2, 5), dtype=np.int64), 2), {}, ValueError, "divisible by num_gpus"),
        (
            (np.zeros((2, 4), dtype=np.int64), 4),
            {"num_nodes": 3},
            ValueError,
            "divisible by num_nodes",
        ),
        ((-np.ones((2, 4), dtype=np.int64), 2), {}, ValueError, "phy2log entries must be >= 0"),
        ((np.full((2, 4), 0.5), 2), {}, ValueError, "phy2log must hold integer"),
        ((np.zeros((2, 4), dtype=np.int64), 0), {}, ValueError, "num_gpus must be >= 1"),
        ((np.zeros((2, 4), dtype=np.int64), 2), {"num_nodes": 0}, ValueError, "num_nodes"),
        ((np.zeros((2, 4), dtype=np.int64), 2.0), {}, TypeError, "num_gpus must be an integer"),
    ],
)
def test_colocated_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fasteplb.colocated(*args, **kwargs)


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------

REPORT_KEYS = {
    "balancedness",
    "balancedness_per_layer",
    "max_load",
    "lower_bound",
    "gap",
    "mean_gap",
    "colocated",
    "colocated_avoidable",
    "colocated_total",
    "colocated_avoidable_total",
}


def _report_by_loops(
    phy2log: np.ndarray, weight: np.ndarray, num_gpus: int, policy_nodes: int
) -> dict:
    """What report() should say about a plan, from phy2log and weight by plain Python loops
    (none of fasteplb's functions): per layer, each GPU's load (each slot carries its expert's
    load / its replica count, summed with math.fsum), their mean and maximum, and the extra
    same-expert copies per GPU (avoidable: experts with at most G / nodes replicas)."""
    layers, slots = phy2log.shape
    k = slots // num_gpus
    out: dict = {"mean": [], "max": [], "colocated": [], "avoidable": []}
    for layer in range(layers):
        row = [int(e) for e in phy2log[layer]]
        count: dict = {}
        for e in row:
            count[e] = count.get(e, 0) + 1
        loads, extra, avoidable = [], 0, 0
        for gpu in range(num_gpus):
            chunk = row[gpu * k : (gpu + 1) * k]
            loads.append(math.fsum(float(weight[layer, e]) / count[e] for e in chunk))
            for e in set(chunk):
                copies = chunk.count(e) - 1
                extra += copies
                avoidable += copies if count[e] <= num_gpus // policy_nodes else 0
        out["mean"].append(math.fsum(loads) / num_gpus)
        out["max"].append(max(loads))
        out["colocated"].append(extra)
        out["avoidable"].append(avoidable)
    return {key: np.array(value) for key, value in out.items()}


@given(
    configs(),
    st.booleans() if torch is not None else st.just(False),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
@fuzz(40)
def test_report_is_consistent(cfg, as_torch, shuffled, seed):
    phy2log = fasteplb.rebalance_experts(cfg.weight, *cfg.sizes)[0]
    if shuffled:  # any placement of the same slots: worse loads, co-located replicas
        phy2log = np.random.default_rng(seed).permuted(phy2log, axis=1)
    weight = torch.from_numpy(cfg.weight) if as_torch else cfg.weight
    rep = fasteplb.report(torch.from_numpy(phy2log) if as_torch else phy2log, weight, *cfg.sizes)
    assert set(rep) == REPORT_KEYS
    layers, g = cfg.weight.shape[0], cfg.num_gpus
    for key in (
        "balancedness_per_layer",
        "max_load",
        "lower_bound",
        "gap",
        "colocated",
        "colocated_avoidable",
    ):
        assert isinstance(rep[key], np.ndarray) and rep[key].shape == (layers,)
    assert isinstance(rep["balancedness"], float) and isinstance(rep["mean_gap"], float)
    assert isinstance(rep["colocated_total"], int)
    assert isinstance(rep["colocated_avoidable_total"], int)
    want = _report_by_loops(phy2log, cfg.weight, g, cfg.num_nodes if cfg.hierarchical else 1)
    peak, mean = want["max"], want["mean"]
    np.testing.assert_allclose(rep["max_load"], peak, rtol=1e-12, atol=0)
    per_layer = np.array([m / p if p > 0 else 1.0 for m, p in zip(mean, peak)])
    np.testing.assert_allclose(rep["balancedness_per_layer"], per_layer, rtol=1e-12, atol=0)
    # Sum of layer means / sum of layer maxima (1.0 without load), not a mean of ratios.
    total = math.fsum(peak)
    assert rep["balancedness"] == pytest.approx(
        math.fsum(mean) / total if total > 0 else 1.0, rel=1e-12, abs=0
    )
    # The bound is lower_bound() of the same arguments (checked against brute force above):
    # at least the mean GPU load, and no plan of the policy beats it.
    bound = rep["lower_bound"]
    np.testing.assert_array_equal(bound, fasteplb.lower_bound(cfg.weight, *cfg.sizes))
    assert (bound >= mean * (1 - TOL)).all()
    if not shuffled:
        assert (bound <= peak * (1 + TOL)).all()
    for layer in range(layers):
        b, p, gap = float(bound[layer]), float(peak[layer]), float(rep["gap"][layer])
        if b > 0:
            assert gap + 1.0 == pytest.approx(p / b, rel=1e-12, abs=0)
        else:
            assert gap == (0.0 if p == 0 else math.inf)
    bound_sum = math.fsum(bound)
    if bound_sum > 0:
        assert rep["mean_gap"] + 1.0 == pytest.approx(total / bound_sum, rel=1e-12, abs=0)
    else:
        assert rep["mean_gap"] == (0.0 if total == 0 else math.inf)
    np.testing.assert_array_equal(rep["colocated"], want["colocated"])
    np.testing.assert_array_equal(rep["colocated_avoidable"], want["avoidable"])
    assert rep["colocated_total"] == int(want["colocated"].sum())
    assert rep["colocated_avoidable_total"] == int(want["avoidable"].sum())


def test_report_hand_computed():
    weight = np.array([[4.0, 2.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    phy2log = np.array([[0, 1, 0, 2, 3, 3], [0, 1, 2, 3, 3, 3]])  # 3 GPUs of 2, global
    rep = fasteplb.report(phy2log, weight, 6, 1, 1, 3)
    # Layer 0: GPU loads 2+2, 2+2, 0 -> max 4; bound: mean 8/3, replica T* = 2 -> 8/3.
    np.testing.assert_allclose(rep["max_load"], [4.0, 0.0])
    np.testing.assert_allclose(rep["lower_bound"], [8 / 3, 0.0])
    np.testing.assert_allclose(rep["gap"], [0.5, 0.0])
    assert rep["mean_gap"] == pytest.approx(0.5)
    np.testing.assert_array_equal(rep["colocated"], [1, 1])  # expert 3 twice on GPU 2
    assert rep["colocated_total"] == 2
    assert rep["balancedness"] == pytest.approx((8 / 3) / 4)


def test_report_rejects_a_plan_of_the_wrong_shape():
    weight = np.ones((2, 4))
    with pytest.raises(ValueError, match="phy2log must be"):
        fasteplb.report(np.zeros((2, 4), dtype=np.int64), weight, 8, 2, 2, 4)
    with pytest.raises(ValueError, match="phy2log must be"):
        fasteplb.report(np.zeros((3, 8), dtype=np.int64), weight, 8, 2, 2, 4)
