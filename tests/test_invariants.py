"""Structural invariants of the plans, on many random configurations and load shapes."""

import fasteplb
import numpy as np
import pytest
from helpers import (
    TIE_KINDS,
    check_packing,
    check_plan,
    check_replication,
    configs,
    fuzz,
    make_load,
    packing_inputs,
    replication_inputs,
)
from hypothesis import given
from hypothesis import strategies as st

REFINES = ("local", "none", "swap")  # "local" is the default


@pytest.mark.parametrize("refine", REFINES)
@fuzz(150)
@given(cfg=configs())
def test_rebalance_invariants(cfg, refine):
    plan = fasteplb.rebalance_experts(cfg.weight, *cfg.sizes, refine=refine)
    check_plan(cfg.weight, *plan, *cfg.sizes)


@fuzz(100)
@given(
    cfg=configs(),
    seed=st.integers(0, 2**32 - 1),
    max_moves=st.sampled_from([None, 0, 1, 4, 2**63 - 1]),
    min_gain=st.sampled_from([None, 0.0, 0.01]),
)
def test_default_mode_invariants_with_and_without_old_placement(cfg, seed, max_moves, min_gain):
    # The default mode, not named: the same plan as refine="local", every invariant; then
    # planned from an old placement (the plan of other loads, or a random one): a valid plan
    # across all GPUs (an old layout that ignores the groups may be kept), within max_moves
    # copies per layer, the old placement itself for max_moves=0.
    plan = fasteplb.rebalance_experts(cfg.weight, *cfg.sizes)
    check_plan(cfg.weight, *plan, *cfg.sizes)
    local = fasteplb.rebalance_experts(cfg.weight, *cfg.sizes, refine="local")
    for a, b in zip(plan, local):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(seed)
    layers, experts = cfg.weight.shape
    P, _, _, G = cfg.sizes
    drifted = cfg.weight * rng.lognormal(0.0, 0.5, cfg.weight.shape)
    extra = rng.integers(0, experts, (layers, P - experts))
    random_old = rng.permuted(
        np.concatenate([np.tile(np.arange(experts), (layers, 1)), extra], axis=1), axis=1
    )
    for old in (plan[0], random_old):
        got = fasteplb.rebalance_experts(
            drifted, *cfg.sizes, old_phy2log=old, max_moves=max_moves, min_gain=min_gain
        )
        check_plan(drifted, *got, P, 1, 1, G)
        moves = fasteplb.moves(old, got[0], G)
        assert moves.shape == (layers,)
        if max_moves is not None:
            assert (moves <= max_moves).all(), (moves, max_moves)
        if max_moves == 0:
            np.testing.assert_array_equal(got[0], old)


@pytest.mark.parametrize("refine", REFINES)
@fuzz(80)
@given(cfg=configs(kinds=TIE_KINDS, max_layers=3))
def test_rebalance_invariants_with_ties(cfg, refine):
    plan = fasteplb.rebalance_experts(cfg.weight, *cfg.sizes, refine=refine, swap_rounds=7)
    check_plan(cfg.weight, *plan, *cfg.sizes)


SHAPES = [
    # (experts, num_replicas, num_groups, num_nodes, num_gpus)
    (256, 288, 8, 4, 32),  # DeepSeek-V3 prefill, hierarchical
    (256, 288, 4, 8, 32),  # groups % nodes != 0: global
    (12, 16, 4, 2, 8),  # DeepSeek README example
    (16, 16, 4, 4, 16),  # no redundancy, one slot per GPU, groups == nodes
    (8, 64, 1, 1, 1),  # one GPU holds everything
    (6, 36, 3, 3, 3),  # one GPU per node
    (64, 256, 8, 2, 16),  # many replicas per expert
]


@pytest.mark.parametrize("refine", REFINES)
@pytest.mark.parametrize("kind", ["float", "int", "zeros", "equal", "sparse", "extreme"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rebalance_invariants_fixed_shapes(shape, kind, refine):
    experts, *sizes = shape
    weight = make_load(kind, (3, experts), seed=experts + sum(sizes))
    plan = fasteplb.rebalance_experts(weight, *sizes, refine=refine)
    check_plan(weight, *plan, *sizes)


def test_rebalance_one_hot_load_gets_all_spare_replicas():
    weight = np.zeros((1, 8))
    weight[0, 5] = 1.0
    phy2log, log2phy, logcnt = fasteplb.rebalance_experts(weight, 16, 1, 1, 4)
    check_plan(weight, phy2log, log2phy, logcnt, 16, 1, 1, 4)
    assert logcnt[0, 5] == 9
    assert log2phy.shape == (1, 8, 9)


@pytest.mark.parametrize("refine", REFINES)
def test_global_policy_is_one_group_on_one_node(refine):
    # num_groups % num_nodes != 0 must plan exactly as num_groups = num_nodes = 1.
    weight = make_load("tokens", (5, 24), seed=3)
    got = fasteplb.rebalance_experts(weight, 32, 3, 2, 8, refine=refine)
    want = fasteplb.rebalance_experts(weight, 32, 1, 1, 8, refine=refine)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
    check_plan(weight, *got, 32, 3, 2, 8)


def test_hierarchical_policy_differs_from_global():
    # Guards the test above: the policies are not accidentally the same plan.
    weight = make_load("float", (4, 24), seed=4)
    hier = fasteplb.rebalance_experts(weight, 32, 4, 2, 8)[0]
    flat = fasteplb.rebalance_experts(weight, 32, 1, 1, 8)[0]
    assert not np.array_equal(hier, flat)


def test_check_plan_rejects_broken_plans():
    # The checker itself must catch each kind of violation.
    weight = make_load("float", (2, 12), seed=5)
    sizes = (16, 4, 2, 8)
    phy2log, log2phy, logcnt = fasteplb.rebalance_experts(weight, *sizes)
    check_plan(weight, phy2log, log2phy, logcnt, *sizes)

    bad = phy2log.copy()
    bad[0, 0] = 12  # out of range
    with pytest.raises(AssertionError):
        check_plan(weight, bad, log2phy, logcnt, *sizes)
    with pytest.raises(AssertionError):  # logcnt off by one
        bad_cnt = logcnt.copy()
        bad_cnt[1, 0] += 1
        check_plan(weight, phy2log, log2phy, bad_cnt, *sizes)
    bad_l2p = log2phy.copy()
    bad_l2p[0, 0, 0] = int(np.flatnonzero(phy2log[0] != 0)[0])  # a slot of another expert
    with pytest.raises(AssertionError):
        check_plan(weight, phy2log, bad_l2p, logcnt, *sizes)
    bad_pad = log2phy.copy()
    bad_pad[1, int(np.argmin(logcnt[1])), -1] = 3  # padding that is not -1
    with pytest.raises(AssertionError):
        check_plan(weight, phy2log, bad_pad, logcnt, *sizes)
    # Swapping two whole slots across nodes keeps counts but splits a group over nodes.
    moved = phy2log.copy()
    moved[0, [0, 15]] = moved[0, [15, 0]]
    moved_l2p = log2phy.copy()
    moved_l2p[0][log2phy[0] == 0] = 15
    moved_l2p[0][log2phy[0] == 15] = 0
    with pytest.raises(AssertionError):
        check_plan(weight, moved, moved_l2p, logcnt, *sizes)
    check_plan(weight, moved, moved_l2p, logcnt, 16, 1, 1, 8)  # fine for the global policy


@pytest.mark.parametrize("refine", REFINES)
@fuzz(120)
@given(inp=packing_inputs())
def test_balanced_packing_invariants(inp, refine):
    weight, packs = inp
    pack_index, rank_in_pack = fasteplb.balanced_packing(weight, packs, refine=refine)
    check_packing(weight, pack_index, rank_in_pack, packs)


def test_balanced_packing_one_item_per_pack_is_identity():
    weight = make_load("float", (3, 7), seed=6)
    pack_index, rank_in_pack = fasteplb.balanced_packing(weight, 7)
    assert np.array_equal(pack_index, np.tile(np.arange(7), (3, 1)))
    assert (rank_in_pack == 0).all()


def test_balanced_packing_lpt_on_known_input():
    # LPT by hand: 9 -> pack 0, 8 -> pack 1, 3 -> pack 1 (lighter), 2 -> pack 0 (only room).
    weight = np.array([[3.0, 9.0, 2.0, 8.0]])
    pack_index, rank_in_pack = fasteplb.balanced_packing(weight, 2, refine="none")
    assert pack_index.tolist() == [[1, 0, 0, 1]]
    assert rank_in_pack.tolist() == [[1, 0, 1, 0]]


@fuzz(120)
@given(inp=replication_inputs())
def test_replicate_experts_invariants(inp):
    weight, num_phy = inp
    out = fasteplb.replicate_experts(weight, num_phy)
    check_replication(weight, *out, num_phy)


def test_replicate_experts_heap_path():
    # Many extra replicas over many candidates takes the heap code path.
    weight = make_load("tokens", (2, 64), seed=7)
    out = fasteplb.replicate_experts(weight, 512)
    check_replication(weight, *out, 512)


def test_check_replication_rejects_non_greedy_counts():
    weight = np.array([[10.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    phy2log, rank, logcnt = fasteplb.replicate_experts(weight, 9)
    check_replication(weight, phy2log, rank, logcnt, 9)
    assert logcnt.tolist() == [[4, 1, 1, 1, 1, 1]]
    # Give expert 0's last replica to expert 1 instead: a valid layout, but not greedy.
    p, r, c = phy2log.copy(), rank.copy(), logcnt.copy()
    p[0, 8], r[0, 8] = 1, 1
    c[0, :2] = [3, 2]
    with pytest.raises(AssertionError):
        check_replication(weight, p, r, c, 9)
