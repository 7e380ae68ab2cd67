"""Plan quality: per-GPU loads, balancedness, lower bounds on the max GPU load, co-location.

Vectorised numpy; torch in -> torch out.
"""

from __future__ import annotations

import functools
import itertools
import sys
from typing import Any, NamedTuple

import numpy as np

from . import _checks
from ._marshal import Weights

__all__ = [
    "balancedness",
    "colocated",
    "gpu_loads",
    "lower_bound",
    "moved_bytes",
    "moves",
    "report",
]


def _gpu_loads(phy2log: np.ndarray, weight: np.ndarray, num_gpus: int) -> np.ndarray:
    layers, experts = weight.shape
    if phy2log.ndim != 2 or phy2log.shape[0] != layers:
        raise ValueError(
            f"phy2log must be [layers={layers}, slots], got shape {tuple(phy2log.shape)}"
        )
    slots = phy2log.shape[1]
    if slots % num_gpus:
        raise ValueError(
            f"phy2log's slot count ({slots}) must be divisible by num_gpus ({num_gpus})"
        )
    if phy2log.size and (phy2log.min() < 0 or phy2log.max() >= experts):
        raise ValueError(f"phy2log entries must lie in [0, {experts})")
    flat = phy2log + experts * np.arange(layers, dtype=np.int64)[:, None]
    logcnt = np.bincount(flat.ravel(), minlength=layers * experts).reshape(layers, experts)
    if (logcnt == 0).any():
        raise ValueError("phy2log must hold every logical expert at least once in every layer")
    # Per (layer, GPU, expert): the replicas there, so that a GPU holding j of an expert's c
    # replicas carries w * (j / c) in one rounding (w / c per slot underflows for tiny w).
    gpu = np.arange(slots, dtype=np.int64) // (slots // num_gpus)
    key = (np.arange(layers, dtype=np.int64)[:, None] * num_gpus + gpu) * experts + phy2log
    pairs, held = np.unique(key.ravel(), return_counts=True)
    row, e = pairs // experts // num_gpus, pairs % experts
    share = weight[row, e] * (held / logcnt[row, e])
    return np.bincount(pairs // experts, weights=share, minlength=layers * num_gpus).reshape(
        layers, num_gpus
    )


def _slots(phy2log: Any, name: str = "phy2log") -> np.ndarray:
    """phy2log as int64 numpy; float entries must be whole numbers."""
    return _checks.expert_ids(phy2log, name).astype(np.int64)


def _inputs(phy2log: Any, weight: Any, num_gpus: Any) -> tuple[Weights, np.ndarray, int]:
    w = Weights(weight)
    _checks.shape(w.shape)
    if not (np.isfinite(w.array).all() and (w.array >= 0).all()):
        raise ValueError("weight must be finite and non-negative")
    return w, _slots(phy2log), _checks.count("num_gpus", num_gpus)


def gpu_loads(phy2log: Any, weight: Any, num_gpus: int) -> Any:
    """Load of every GPU under a plan; each expert's load is split evenly over its replicas.

    Parameters:
        phy2log: [layers, P], the logical expert held by each slot (GPU-major slots)
        weight: [layers, E], load per logical expert
        num_gpus: G

    Returns:
        [layers, G] float64, torch if `weight` is a torch tensor.
    """
    w, p, g = _inputs(phy2log, weight, num_gpus)
    loads = _gpu_loads(p, w.array, g)
    if w.device is None:
        return loads
    import torch

    return torch.from_numpy(loads).to(w.device)


def balancedness(phy2log: Any, weight: Any, num_gpus: int, *, per_layer: bool = False) -> Any:
    """Mean GPU load / max GPU load (1.0 is perfect).

    Aggregated over layers as sum of layer means / sum of layer maxima (how a step's time
    adds up over layers); ``per_layer=True`` returns [layers] ratios instead. A layer with no
    load at all counts as perfectly balanced.
    """
    w, p, g = _inputs(phy2log, weight, num_gpus)
    loads = _gpu_loads(p, w.array, g)
    mean, peak = loads.mean(axis=1), loads.max(axis=1)
    if per_layer:
        out = np.divide(mean, peak, out=np.ones_like(mean), where=peak > 0)
        if w.device is None:
            return out
        import torch

        return torch.from_numpy(out).to(w.device)
    total = float(peak.sum())
    return float(mean.sum()) / total if total > 0 else 1.0


# ----------------------------------------------------------------------------------------
# Lower bounds on the max GPU load, co-location, and a one-call quality report.
# ----------------------------------------------------------------------------------------

#: Names of the lower-bound terms, in the order ``binding`` breaks ties (first wins).
BOUND_TERMS = ("mean", "replica", "hot", "node")

# The node term is exact (over every balanced partition of the groups onto the nodes) up to
# this many groups; above it, a closed-form bound is used instead. 12 groups onto 4 nodes
# have 15400 partitions, which the subset recursion below covers in ~6000 max/min steps.
_EXACT_PARTITION_MAX_GROUPS = 12
# Cap on the [layers, states, choices] scratch of the exact node term (elements).
_PARTITION_SCRATCH = 1 << 22


def _device(x: Any) -> Any:
    """The torch device of `x`, or None when it is not a torch tensor."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.device
    return None


def _out(arr: np.ndarray, device: Any) -> Any:
    """numpy as is, or a torch tensor on `device`."""
    if device is None:
        return arr
    import torch

    return torch.from_numpy(arr).to(device)


def _plan_weights(
    weight: Any, num_replicas: Any, num_groups: Any, num_nodes: Any, num_gpus: Any
) -> tuple[Weights, tuple[int, int, int, int]]:
    """The weight and sizes, checked with rebalance_experts' rules."""
    w = Weights(weight)
    layers, experts = _checks.shape(w.shape)
    sizes = _checks.plan(layers, experts, num_replicas, num_groups, num_nodes, num_gpus)
    if not (np.isfinite(w.array).all() and (w.array >= 0).all()):
        raise ValueError("weight must be finite and non-negative")
    return w, sizes


class _PartitionTables(NamedTuple):
    """Index tables of the min-max recursion over balanced partitions (see below)."""

    blocks: np.ndarray  # [B, m] int64: the items of each block (every m-subset)
    base: np.ndarray  # [S_1] int64: the block of each smallest state
    levels: tuple[tuple[np.ndarray, np.ndarray], ...]  # bottom-up (block [S_j, C], rest)


@functools.lru_cache(maxsize=32)
def _partition_tables(num_items: int, num_blocks: int) -> _PartitionTables:
    """Tables for best(S) = min over balanced partitions of item set S of the max block load.

    A block is a set of m = num_items / num_blocks items. For a state S (a set of j*m items)
    best(S) = min over blocks B holding S's smallest item, B inside S, of
    max(load(B), best(S - B)); best(S) = load(S) for a single block. Each partition is
    reached exactly once. States are those reachable from the full set; level j lists, for
    each of its states, the block and the (level j-1) rest of every choice.
    """
    size = num_items // num_blocks
    blocks = list(itertools.combinations(range(num_items), size))
    block_index = {sum(1 << i for i in b): n for n, b in enumerate(blocks)}
    states = [(1 << num_items) - 1]
    top_down = []
    for _ in range(num_blocks - 1):
        rests: dict[int, int] = {}
        block_rows, rest_rows = [], []
        for state in states:
            items = [i for i in range(num_items) if state >> i & 1]
            head = 1 << items[0]
            row_b, row_r = [], []
            for mates in itertools.combinations(items[1:], size - 1):
                mask = head | sum(1 << i for i in mates)
                row_b.append(block_index[mask])
                row_r.append(rests.setdefault(state & ~mask, len(rests)))
            block_rows.append(row_b)
            rest_rows.append(row_r)
        top_down.append(
            (np.asarray(block_rows, dtype=np.int64), np.asarray(rest_rows, dtype=np.int64))
        )
        states = list(rests)
    base = np.asarray([block_index[s] for s in states], dtype=np.int64)
    return _PartitionTables(
        np.asarray(blocks, dtype=np.int64).reshape(len(blocks), size),
        base,
        tuple(reversed(top_down)),
    )


def _best_partition_exact(group_load: np.ndarray, num_nodes: int) -> np.ndarray:
    """min over balanced partitions of the groups onto nodes of the max node load.

    group_load: [L, K], K <= _EXACT_PARTITION_MAX_GROUPS, N >= 1 dividing K. Returns [L].
    """
    layers, groups = group_load.shape
    tables = _partition_tables(groups, num_nodes)
    widest = max([tables.blocks.size, tables.base.size] + [b.size for b, _ in tables.levels])
    # Layers go in blocks only to cap the scratch; each block is a handful (N) of
    # vectorised steps, one per recursion level.
    step = max(1, _PARTITION_SCRATCH // widest)
    best = np.empty(layers)
    for start in range(0, layers, step):
        # A gather and a short sum (not a matmul): the same bits whatever the block size.
        block_load = group_load[start : start + step, tables.blocks].sum(axis=2)  # [l, B]
        level = block_load[:, tables.base]
        for block, rest in tables.levels:
            level = np.maximum(block_load[:, block], level[:, rest]).min(axis=2)
        best[start : start + step] = level[:, 0]
    return best


def _best_partition_bound(group_load: np.ndarray, num_nodes: int) -> np.ndarray:
    """A lower bound on min over balanced partitions of the max node load, any K. [L, K] -> [L].

    With m = K/N groups per node and group loads g_1 >= ... >= g_K, every partition has a
    node carrying at least each of:
      * W / N (the mean node load);
      * g_1 + (the m-1 smallest groups): the node holding group 1 holds m-1 others;
      * g_N + g_{N+1} + (the m-2 smallest groups), when m >= 2: by pigeonhole two of the N+1
        largest groups share a node, and that node holds m-2 further groups.
    """
    layers, groups = group_load.shape
    per_node = groups // num_nodes
    asc = np.sort(group_load, axis=1)
    smallest = np.zeros((layers, groups + 1))
    np.cumsum(asc, axis=1, out=smallest[:, 1:])  # smallest[:, i]: the i smallest, summed
    bound = np.maximum(group_load.sum(axis=1) / num_nodes, asc[:, -1] + smallest[:, per_node - 1])
    if per_node >= 2:
        # Descending ranks N and N+1 (1-based) are ascending columns K-N and K-N-1.
        pair = asc[:, groups - num_nodes] + asc[:, groups - num_nodes - 1]
        bound = np.maximum(bound, pair + smallest[:, per_node - 2])
    return bound


def _bound_terms(weight: np.ndarray, sizes: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    """The lower-bound terms of every layer, each [L] float64 (see lower_bound)."""
    from ._api import replicate_experts

    num_replicas, num_groups, num_nodes, num_gpus = sizes
    layers, experts = weight.shape
    total = weight.sum(axis=1)
    w_max = weight.max(axis=1)
    # Adams / D'Hondt counts (DeepSeek's greedy) minimise max_e w_e / r_e over all counts
    # with r_e >= 1 and sum r_e = P; every plan's counts are such counts, in both policies.
    logcnt = replicate_experts(weight, num_replicas)[2]
    terms = {
        "mean": total / num_gpus,
        "replica": (weight / logcnt).max(axis=1),
        "hot": w_max / min(num_gpus, num_replicas - experts + 1),
        "node": np.zeros(layers),
    }
    if num_groups % num_nodes == 0 and num_nodes > 1:
        group_load = weight.reshape(layers, num_groups, experts // num_groups).sum(axis=2)
        if num_groups <= _EXACT_PARTITION_MAX_GROUPS:
            best = _best_partition_exact(group_load, num_nodes)
        else:
            best = _best_partition_bound(group_load, num_nodes)
        terms["node"] = best / (num_gpus // num_nodes)
    return terms


def _bound_of(terms: dict[str, np.ndarray]) -> np.ndarray:
    return np.max(np.stack([terms[name] for name in BOUND_TERMS]), axis=0)


def lower_bound(
    weight: Any,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    *,
    return_terms: bool = False,
) -> Any:
    """A lower bound, per layer, on the max GPU load of any plan rebalance_experts may return.

    The policy is rebalance_experts': hierarchical when ``num_groups % num_nodes == 0``,
    global otherwise. Every plan of that policy (any replica counts, any placement, any
    group-to-node partition) has a max GPU load >= the bound, which is the largest of these
    terms, each a bound on its own (W: the layer's total load, w_max: its largest expert
    load, R = P - E: the redundant slots):

    * ``"mean"``: W / G.
    * ``"replica"``: T* = min over replica counts (r_e >= 1, sum r_e = P) of
      max_e w_e / r_e, from the Adams / D'Hondt counts of `replicate_experts`: some GPU holds
      a replica of the expert attaining the maximum. The hierarchical policy replicates per
      node, which can only raise this maximum, so T* bounds it too.
    * ``"hot"``: w_max / min(G, R + 1): the hottest expert has at most R + 1 replicas on at
      most G GPUs. (Never exceeds max("mean", "replica"); kept for reporting.)
    * ``"node"``: hierarchical policy with N > 1 only, else 0: (min over balanced partitions
      of the K groups onto the N nodes of the max node load) / (G / N), since the busiest
      node's load is spread over its G / N GPUs. Exact over all partitions for K <= 12;
      above that a closed-form lower bound on that minimum (see _best_partition_bound).

    Valid up to floating-point rounding (relative error of order 1e-15).

    Parameters:
        weight: [L, E] load per logical expert (torch tensor or array-like; finite, >= 0)
        num_replicas, num_groups, num_nodes, num_gpus: as for rebalance_experts (same checks,
            same errors)
        return_terms: also return the terms

    Returns:
        bound: [L] float64, torch on the weight's device if `weight` is a torch tensor.
        With ``return_terms=True``, ``(bound, terms)``: `terms` maps each of "mean",
        "replica", "hot", "node" to its [L] float64 values (torch for torch input) and
        "binding" to a [L] numpy array of str, the name of the largest term of each layer
        (ties go to the earlier name in that order, so an all-zero layer reports "mean").
    """
    w, sizes = _plan_weights(weight, num_replicas, num_groups, num_nodes, num_gpus)
    terms = _bound_terms(w.array, sizes)
    bound = _bound_of(terms)
    if not return_terms:
        return _out(bound, w.device)
    stacked = np.stack([terms[name] for name in BOUND_TERMS])
    out: dict[str, Any] = {name: _out(terms[name], w.device) for name in BOUND_TERMS}
    out["binding"] = np.asarray(BOUND_TERMS)[np.argmax(stacked, axis=0)]
    return _out(bound, w.device), out


def _colocated(
    phy2log: np.ndarray, num_gpus: int, avoidable_only: bool, num_nodes: int
) -> np.ndarray:
    """[L, P] slots -> [L] extra same-expert copies per GPU (see colocated)."""
    layers, slots = phy2log.shape
    per_gpu = phy2log.reshape(layers, num_gpus, slots // num_gpus)
    order = np.argsort(per_gpu, axis=2, kind="stable")
    ids = np.take_along_axis(per_gpu, order, axis=2)
    # A run of m equal ids on one GPU has m - 1 equal neighbours: exactly the extra copies.
    extra = ids[:, :, 1:] == ids[:, :, :-1]
    if avoidable_only:
        # Replica count of every slot's expert in its layer, from one sort of each row.
        row_order = np.argsort(phy2log, axis=1, kind="stable")
        row = np.take_along_axis(phy2log, row_order, axis=1)
        starts = np.ones((layers, slots), dtype=bool)
        starts[:, 1:] = row[:, 1:] != row[:, :-1]
        run = np.cumsum(starts.ravel()) - 1
        count_sorted = np.bincount(run)[run].reshape(layers, slots)
        count = np.empty_like(count_sorted)
        np.put_along_axis(count, row_order, count_sorted, axis=1)
        count = np.take_along_axis(count.reshape(per_gpu.shape), order, axis=2)
        extra &= count[:, :, 1:] <= num_gpus // num_nodes
    return extra.sum(axis=(1, 2), dtype=np.int64)


def colocated(
    phy2log: Any, num_gpus: int, *, avoidable_only: bool = False, num_nodes: int = 1
) -> Any:
    """Extra replicas sharing a GPU with another replica of the same expert, per layer.

    Each (layer, GPU, expert) whose expert sits m >= 2 times on that GPU counts m - 1.
    With ``avoidable_only=True`` only experts with at most G / num_nodes replicas in that
    layer count: an expert with more replicas than its node has GPUs must share one (with
    the hierarchical policy an expert's replicas stay on one node; pass num_nodes=1 for the
    global policy).

    Parameters:
        phy2log: [L, P] logical expert of each slot, GPU-major (integer ids >= 0)
        num_gpus: G, dividing P
        avoidable_only: count only co-location that a placement could avoid
        num_nodes: N, dividing G; only used with avoidable_only

    Returns:
        [L] int64, torch on phy2log's device if phy2log is a torch tensor.
    """
    device = _device(phy2log)
    p = _slots(phy2log)
    g = _checks.count("num_gpus", num_gpus)
    n = _checks.count("num_nodes", num_nodes)
    if p.ndim != 2:
        raise ValueError(f"phy2log must be 2-D [layers, slots], got shape {tuple(p.shape)}")
    if p.shape[1] % g:
        raise ValueError(f"phy2log's slot count ({p.shape[1]}) must be divisible by num_gpus ({g})")
    if g % n:
        raise ValueError(f"num_gpus ({g}) must be divisible by num_nodes ({n})")
    if p.size and p.min() < 0:
        raise ValueError("phy2log entries must be >= 0")
    return _out(_colocated(p, g, bool(avoidable_only), n), device)


def report(
    phy2log: Any,
    weight: Any,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
) -> dict[str, Any]:
    """Quality of a plan against its lower bound, in one call.

    Parameters:
        phy2log: [L, P] the plan (e.g. rebalance_experts' first output)
        weight: [L, E] load per logical expert
        num_replicas, num_groups, num_nodes, num_gpus: the plan's sizes (rebalance_experts'
            checks; phy2log must have P = num_replicas slots)

    Returns a dict; arrays are numpy (also for torch input), [L] per layer:
        "balancedness": float, sum of layer mean GPU loads / sum of layer maxima
        "balancedness_per_layer": [L] float64 mean / max (1.0 for a layer without load)
        "max_load": [L] float64 max GPU load
        "lower_bound": [L] float64, lower_bound() of the same arguments
        "gap": [L] float64 max_load / lower_bound - 1 (0 where both are 0, inf where only
            the bound is 0)
        "mean_gap": float, sum of max_load / sum of lower_bound - 1 (same 0 / inf rules)
        "colocated": [L] int64, colocated(phy2log, G)
        "colocated_avoidable": [L] int64, colocated(..., avoidable_only=True) with the
            policy's nodes (num_nodes for the hierarchical policy, 1 for the global one)
        "colocated_total", "colocated_avoidable_total": int, their sums over layers
    """
    w, sizes = _plan_weights(weight, num_replicas, num_groups, num_nodes, num_gpus)
    p = _slots(phy2log)
    layers = w.array.shape[0]
    if p.shape != (layers, sizes[0]):
        raise ValueError(
            f"phy2log must be [layers={layers}, num_replicas={sizes[0]}], "
            f"got shape {tuple(p.shape)}"
        )
    g = sizes[3]
    loads = _gpu_loads(p, w.array, g)
    mean, peak = loads.mean(axis=1), loads.max(axis=1)
    bound = _bound_of(_bound_terms(w.array, sizes))
    gap = np.divide(peak, bound, out=np.full(layers, np.inf), where=bound > 0) - 1.0
    gap[(bound <= 0) & (peak <= 0)] = 0.0
    peak_sum, bound_sum = float(peak.sum()), float(bound.sum())
    if bound_sum > 0:
        mean_gap = peak_sum / bound_sum - 1.0
    else:
        mean_gap = 0.0 if peak_sum <= 0 else float("inf")
    policy_nodes = sizes[2] if sizes[1] % sizes[2] == 0 else 1
    coloc = _colocated(p, g, False, 1)
    avoidable = _colocated(p, g, True, policy_nodes)
    return {
        "balancedness": float(mean.sum()) / peak_sum if peak_sum > 0 else 1.0,
        "balancedness_per_layer": np.divide(mean, peak, out=np.ones_like(mean), where=peak > 0),
        "max_load": peak,
        "lower_bound": bound,
        "gap": gap,
        "mean_gap": mean_gap,
        "colocated": coloc,
        "colocated_avoidable": avoidable,
        "colocated_total": int(coloc.sum()),
        "colocated_avoidable_total": int(avoidable.sum()),
    }


def _moves(old: np.ndarray, new: np.ndarray, num_gpus: int) -> np.ndarray:
    if old.ndim != 2 or old.shape != new.shape:
        raise ValueError(
            "old_phy2log and new_phy2log must both be [layers, slots] of one shape; got "
            f"{tuple(old.shape)} and {tuple(new.shape)}"
        )
    layers, slots = new.shape
    if slots % num_gpus:
        raise ValueError(f"the slot count ({slots}) must be divisible by num_gpus ({num_gpus})")
    if new.size == 0:
        return np.zeros(layers, dtype=np.int64)
    if min(old.min(), new.min()) < 0:
        raise ValueError("phy2log entries must be expert ids >= 0")
    experts = int(max(old.max(), new.max())) + 1
    # One key per (layer, GPU, expert) pair; a move is a pair of the new plan absent from the old.
    gpu = np.arange(slots, dtype=np.int64) // (slots // num_gpus)
    row = (np.arange(layers, dtype=np.int64)[:, None] * num_gpus + gpu) * experts
    new_keys = np.unique(row + new)
    fresh = new_keys[~np.isin(new_keys, row + old)]
    return np.bincount(fresh // (num_gpus * experts), minlength=layers).astype(np.int64)


def moves(old_phy2log: Any, new_phy2log: Any, num_gpus: int) -> Any:
    """Weight copies a re-plan needs, per layer.

    A move is one (GPU, expert) pair present in the new plan and absent from the old one: the
    expert's weights must be copied onto that GPU. Slot order within a GPU does not matter.

    Parameters:
        old_phy2log: [layers, P], the current placement
        new_phy2log: [layers, P], the planned placement
        num_gpus: G (GPU g owns slots [g*P/G, (g+1)*P/G))

    Returns:
        [layers] int64, torch if `new_phy2log` is a torch tensor.
    """
    g = _checks.count("num_gpus", num_gpus)
    out = _moves(_slots(old_phy2log, "old_phy2log"), _slots(new_phy2log, "new_phy2log"), g)
    return _out(out, _device(new_phy2log))


def moved_bytes(old_phy2log: Any, new_phy2log: Any, num_gpus: int, bytes_per_expert: Any) -> Any:
    """Bytes a re-plan copies per layer: ``moves(...) * bytes_per_expert``.

    Parameters:
        old_phy2log, new_phy2log, num_gpus: as for `moves`
        bytes_per_expert: size of one expert's weights in bytes, a number or one per layer [layers]

    Returns:
        [layers] float64, torch if `new_phy2log` is a torch tensor.
    """
    g = _checks.count("num_gpus", num_gpus)
    counts = _moves(_slots(old_phy2log, "old_phy2log"), _slots(new_phy2log, "new_phy2log"), g)
    size = np.asarray(_checks.to_numpy(bytes_per_expert), dtype=np.float64)
    if size.ndim > 1 or (size.ndim == 1 and size.shape != counts.shape):
        raise ValueError(f"bytes_per_expert must be a number or [layers={counts.size}] values")
    if not (np.isfinite(size).all() and (size >= 0).all()):
        raise ValueError("bytes_per_expert must be finite and >= 0")
    return _out(counts * size, _device(new_phy2log))
