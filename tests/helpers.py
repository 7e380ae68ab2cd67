"""Shared strategies, load generators and plan-invariant checkers for the fasteplb tests."""

from __future__ import annotations

import pathlib
import textwrap
from typing import Any, NamedTuple

import fasteplb
import numpy as np
from fasteplb import reference
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Load shapes the generators know. "int" is small integers full of ties; "extreme" mixes
# subnormals with huge values (row sums stay far below the 1e300 limit).
LOAD_KINDS = ("float", "int", "tokens", "zeros", "equal", "sparse", "extreme")
TIE_KINDS = ("int", "zeros", "equal", "sparse")


def fuzz(max_examples: int = 100) -> settings:
    """Hypothesis settings shared by every property test."""
    return settings(
        deadline=None,
        max_examples=max_examples,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def make_load(kind: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A float64 load array of `shape` of the given kind, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    if kind == "float":
        return rng.lognormal(0.0, 1.5, shape)
    if kind == "int":
        return rng.integers(0, 4, shape).astype(np.float64)
    if kind == "tokens":
        return rng.integers(0, 1000, shape).astype(np.float64)
    if kind == "zeros":
        return np.zeros(shape)
    if kind == "equal":
        return np.full(shape, float(rng.integers(1, 100)))
    if kind == "sparse":
        return np.where(rng.random(shape) < 0.2, rng.integers(1, 50, shape), 0).astype(np.float64)
    if kind == "extreme":
        choices = np.array([0.0, 5e-324, 1e-310, 1e-5, 1.0, 3.0, 1e200, 7e250])
        return rng.choice(choices, shape)
    raise ValueError(kind)


class Config(NamedTuple):
    weight: np.ndarray
    num_replicas: int
    num_groups: int
    num_nodes: int
    num_gpus: int

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        return self.num_replicas, self.num_groups, self.num_nodes, self.num_gpus

    @property
    def hierarchical(self) -> bool:
        return self.num_groups % self.num_nodes == 0


@st.composite
def configs(
    draw: Any, kinds: tuple[str, ...] = LOAD_KINDS, max_layers: int = 4, policy: str = "any"
) -> Config:
    """A valid rebalance_experts configuration.

    Covers both policies (policy="any"), or only "hierarchical" / "global" / "flat" (global
    policy, or hierarchical with a single node: no node-level packing); 1..6 slots per GPU;
    groups == nodes; one node; one GPU per node; one expert per group.
    """
    if policy == "any":
        policy = draw(st.sampled_from(["hierarchical", "global"]))
    if policy == "flat":
        policy = draw(st.sampled_from(["single_node", "global"]))
    if policy == "single_node":
        nodes = 1
    elif policy == "global":
        nodes = draw(st.integers(2, 4))
    else:
        nodes = draw(st.integers(1, 4))
    gpus = nodes * draw(st.integers(1, 4))
    per_gpu = draw(st.integers(1, 6))
    replicas = gpus * per_gpu
    if policy == "global":
        options = [k for k in range(1, min(8, replicas) + 1) if k % nodes]
        groups = draw(st.sampled_from(options))
    else:
        groups = nodes * draw(st.integers(1, min(3, replicas // nodes)))
    group_size = draw(st.integers(1, min(6, replicas // groups)))
    layers = draw(st.integers(1, max_layers))
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**32 - 1))
    weight = make_load(kind, (layers, groups * group_size), seed)
    cfg = Config(weight, replicas, groups, nodes, gpus)
    assert cfg.hierarchical == (policy in ("hierarchical", "single_node"))
    return cfg


@st.composite
def packing_inputs(draw: Any, kinds: tuple[str, ...] = LOAD_KINDS) -> tuple[np.ndarray, int]:
    """(weight [rows, n], num_packs) with num_packs dividing n; n up to 320, so that both
    small and multi-block sorts (and their merges) are exercised."""
    packs = draw(st.integers(1, 8))
    per_pack = draw(st.one_of(st.integers(1, 8), st.integers(9, 40)))
    rows = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**32 - 1))
    return make_load(kind, (rows, packs * per_pack), seed), packs


@st.composite
def replication_inputs(draw: Any, kinds: tuple[str, ...] = LOAD_KINDS) -> tuple[np.ndarray, int]:
    """(weight [rows, n], num_phy) with num_phy >= n."""
    n = draw(st.one_of(st.integers(1, 24), st.integers(25, 160)))
    num_phy = n + draw(st.one_of(st.integers(0, 40), st.integers(41, 300)))
    rows = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**32 - 1))
    return make_load(kind, (rows, n), seed), num_phy


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    return x.detach().cpu().numpy()


def assert_same(got: tuple, want: tuple) -> None:
    """Outputs identical: same count, shapes, dtypes and values."""
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        a, b = to_numpy(a), to_numpy(b)
        assert a.dtype == b.dtype, (i, a.dtype, b.dtype)
        assert a.shape == b.shape, (i, a.shape, b.shape)
        assert np.array_equal(a, b), f"output {i} differs:\n{a}\nvs\n{b}"


def check_plan(
    weight: Any,
    phy2log: Any,
    log2phy: Any,
    logcnt: Any,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
) -> None:
    """Asserts every invariant of a rebalance_experts plan."""
    weight = np.asarray(to_numpy(weight), dtype=np.float64)
    phy2log, log2phy, logcnt = to_numpy(phy2log), to_numpy(log2phy), to_numpy(logcnt)
    layers, experts = weight.shape
    for name, arr in (("phy2log", phy2log), ("log2phy", log2phy), ("logcnt", logcnt)):
        assert arr.dtype == np.int64, (name, arr.dtype)
    assert phy2log.shape == (layers, num_replicas)
    assert logcnt.shape == (layers, experts)
    assert log2phy.ndim == 3 and log2phy.shape[:2] == (layers, experts)
    # Every slot holds a valid expert, every expert has a replica, counts match the slots.
    assert phy2log.min() >= 0 and phy2log.max() < experts
    for layer in range(layers):
        counts = np.bincount(phy2log[layer], minlength=experts)
        assert np.array_equal(counts, logcnt[layer]), layer
    assert logcnt.min() >= 1
    assert (logcnt.sum(axis=1) == num_replicas).all()
    assert log2phy.shape[2] == logcnt.max()
    # log2phy lists exactly each expert's slots, each once, then -1 padding.
    ranks = np.arange(log2phy.shape[2])
    for layer in range(layers):
        for e in range(experts):
            row, cnt = log2phy[layer, e], logcnt[layer, e]
            assert (row[cnt:] == -1).all(), (layer, e, row)
            slots = row[:cnt]
            assert (slots >= 0).all() and (slots < num_replicas).all(), (layer, e, row)
            assert np.array_equal(np.sort(slots), np.flatnonzero(phy2log[layer] == e))
        assert np.array_equal(ranks[None, :] < logcnt[layer][:, None], log2phy[layer] >= 0)
    # Hierarchical policy: each group's experts and all their replicas live on one node,
    # and every node holds num_groups / num_nodes whole groups.
    if num_groups % num_nodes == 0:
        group_size = experts // num_groups
        node_of_slot = np.arange(num_replicas) // (num_replicas // num_nodes)
        for layer in range(layers):
            group_nodes = [set() for _ in range(num_groups)]
            for slot, e in enumerate(phy2log[layer]):
                group_nodes[e // group_size].add(int(node_of_slot[slot]))
            assert all(len(s) == 1 for s in group_nodes), (layer, group_nodes)
            per_node = np.bincount([s.pop() for s in group_nodes], minlength=num_nodes)
            assert (per_node == num_groups // num_nodes).all(), (layer, per_node)


def check_packing(weight: Any, pack_index: Any, rank_in_pack: Any, num_packs: int) -> None:
    """Every pack holds exactly n / num_packs items, ranked 0..n/num_packs-1."""
    weight = to_numpy(weight)
    pack_index, rank_in_pack = to_numpy(pack_index), to_numpy(rank_in_pack)
    rows, n = weight.shape
    per_pack = n // num_packs
    assert pack_index.shape == rank_in_pack.shape == (rows, n)
    assert pack_index.dtype == rank_in_pack.dtype == np.int64
    for r in range(rows):
        for p in range(num_packs):
            members = pack_index[r] == p
            assert members.sum() == per_pack, (r, p)
            assert np.array_equal(np.sort(rank_in_pack[r][members]), np.arange(per_pack))


def check_replication(weight: Any, phy2log: Any, rank: Any, logcnt: Any, num_phy: int) -> None:
    """Slots 0..n-1 hold experts 0..n-1; ranks enumerate each expert's replicas in slot order;
    and the counts are the greedy (D'Hondt) optimum: removing any extra replica would leave
    that expert at a load per replica >= the plan's largest."""
    weight = np.asarray(to_numpy(weight), dtype=np.float64)
    phy2log, rank, logcnt = to_numpy(phy2log), to_numpy(rank), to_numpy(logcnt)
    rows, n = weight.shape
    assert phy2log.shape == rank.shape == (rows, num_phy)
    assert logcnt.shape == (rows, n)
    assert phy2log.dtype == rank.dtype == logcnt.dtype == np.int64
    for r in range(rows):
        assert np.array_equal(phy2log[r, :n], np.arange(n))
        assert (rank[r, :n] == 0).all()
        assert np.array_equal(np.bincount(phy2log[r], minlength=n), logcnt[r])
        for e in range(n):
            assert np.array_equal(rank[r][phy2log[r] == e], np.arange(logcnt[r, e]))
        peak = max(weight[r, e] / logcnt[r, e] for e in range(n))
        for e in range(n):
            if logcnt[r, e] > 1:
                assert weight[r, e] / (logcnt[r, e] - 1) >= peak, (r, e)


def node_loads(phy2log: Any, weight: Any, num_nodes: int) -> np.ndarray:
    """[layers, num_nodes]: the total load of the distinct experts each node holds."""
    phy2log, weight = to_numpy(phy2log), np.asarray(to_numpy(weight), dtype=np.float64)
    layers, slots = phy2log.shape
    out = np.zeros((layers, num_nodes))
    for layer in range(layers):
        for node, chunk in enumerate(np.split(phy2log[layer], num_nodes)):
            out[layer, node] = weight[layer, np.unique(chunk)].sum()
    return out


def pack_loads(weight: Any, pack_index: Any, num_packs: int) -> np.ndarray:
    """[rows, num_packs]: the summed weight of each pack."""
    weight, pack_index = to_numpy(weight), to_numpy(pack_index)
    return np.stack(
        [np.bincount(p, weights=w, minlength=num_packs) for w, p in zip(weight, pack_index)]
    )


def both(name: str) -> tuple[Any, Any]:
    """The native and the reference implementation of the public function `name`.

    The native default refine mode ("local") has no reference, so the native function is
    wrapped to default to the reference's default ("swap") for comparisons.
    """
    native = getattr(fasteplb, name)
    if name == "replicate_experts":
        return native, getattr(reference, name)

    def swap_by_default(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("refine", "swap")
        return native(*args, **kwargs)

    return swap_by_default, getattr(reference, name)


def write_tree(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    """Writes {"a/b.py": source} under root (sources dedented); returns root. Used for the
    engines' stand-in policy files."""
    for member, code in files.items():
        path = root.joinpath(*member.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(code).lstrip())
    return root
