"""Pure-Python reference implementation: the test oracle and the benchmark baseline.

Plain loops over Python lists, written for clarity, not speed. It implements exactly the
algorithms of the native core -- DeepSeek's greedy replication and LPT packing, plus the
seed's max/min swap refinement -- with the same tie-breaking and the same floating-point
operations in the same order, so both give bit-identical plans. Same signatures, checks and
error messages as the public API (without ``num_threads``).
"""

from __future__ import annotations

import math
from typing import Any

from . import _checks
from ._marshal import Weights

__all__ = ["balanced_packing", "rebalance_experts", "replicate_experts"]

# refine="local" is native only: the reference is the oracle for the greedy and the seed's swap.
_MODES = ("swap", "none")

# Keeps every pack load far from overflow (the native packer relies on it).
_MAX_ROW_TOTAL = 1e300


def _check_values(rows: list[list[float]]) -> None:
    for i, row in enumerate(rows):
        total = 0.0
        for j, x in enumerate(row):
            if not x >= 0.0 or math.isinf(x):
                raise ValueError(
                    f"weight must be finite and non-negative; found {x:g} at [{i}, {j}]"
                )
            total += x
        if not total <= _MAX_ROW_TOTAL:
            raise ValueError(f"weight's row sums must be <= 1e300; row {i} sums to {total:g}")


def _swap_refine(w: list[float], load: list[float], members: list[list[int]], rounds: int) -> None:
    """Up to `rounds` times: swap the item pair between the heaviest and the lightest pack whose
    difference is closest to half their gap (0 < w_u - w_v < gap); stop when none qualifies."""
    m = len(load)
    for _ in range(rounds):
        heavy = max(range(m), key=load.__getitem__)  # first of equal loads: lower index
        light = min(range(m), key=load.__getitem__)
        gap = load[heavy] - load[light]
        if not gap > 0.0:
            return
        half = gap / 2.0
        best = None
        best_dist = math.inf
        for ru, u in enumerate(members[heavy]):
            for rv, v in enumerate(members[light]):
                d = w[u] - w[v]
                if 0.0 < d < gap and load[light] + d < load[heavy]:
                    dist = abs(d - half)
                    if dist < best_dist:
                        best, best_dist = (ru, rv), dist
        if best is None:
            return
        ru, rv = best
        u, v = members[heavy][ru], members[light][rv]
        d = w[u] - w[v]
        members[heavy][ru], members[light][rv] = v, u
        load[heavy] -= d
        load[light] += d


def _pack(
    w: list[float], num_packs: int, refine: str, rounds: int
) -> tuple[list[int], list[int], float]:
    """LPT with cardinality: items by descending weight (ties: lower index), each to the
    lightest pack that still has room (ties: lower pack). One item per pack keeps item i in
    pack i, as DeepSeek does. Returns (pack_index, rank_in_pack, largest pack load)."""
    n = len(w)
    per_pack = n // num_packs
    if per_pack == 1:
        return list(range(n)), [0] * n, max(w)
    load = [0.0] * num_packs
    members: list[list[int]] = [[] for _ in range(num_packs)]
    for item in sorted(range(n), key=lambda i: (-w[i], i)):
        pack = min(
            (p for p in range(num_packs) if len(members[p]) < per_pack), key=load.__getitem__
        )
        members[pack].append(item)
        load[pack] += w[item]
    if refine == "swap" and num_packs > 1:
        _swap_refine(w, load, members, rounds)
    pack_index, rank_in_pack = [0] * n, [0] * n
    for pack, items in enumerate(members):
        for rank, item in enumerate(items):
            pack_index[item], rank_in_pack[item] = pack, rank
    return pack_index, rank_in_pack, max(load)


def _replicate(w: list[float], num_phy: int) -> tuple[list[int], list[int], list[int]]:
    """Each extra replica goes to the expert with the largest load per replica (ties: lower
    expert). Slots 0..n-1 hold experts 0..n-1; extra slots follow in pick order."""
    n = len(w)
    phy2log, rank, logcnt = list(range(n)), [0] * n, [1] * n
    for _ in range(n, num_phy):
        best = 0
        for e in range(1, n):
            if w[e] / logcnt[e] > w[best] / logcnt[best]:
                best = e
        phy2log.append(best)
        rank.append(logcnt[best])
        logcnt[best] += 1
    return phy2log, rank, logcnt


def _place_layer(
    w: list[float],
    group_pack: list[int],
    group_rank: list[int],
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    refine: str,
    rounds: int,
) -> tuple[list[int], list[int], list[int], float]:
    """Steps 2 and 3 for a given groups -> nodes partition. Returns (phy2log, phyrank,
    logcnt, largest GPU load)."""
    num_experts = len(w)
    group_size = num_experts // num_groups
    groups_per_node = num_groups // num_nodes
    experts_per_node = num_experts // num_nodes
    slots_per_node = num_replicas // num_nodes
    gpus_per_node = num_gpus // num_nodes
    slots_per_gpu = num_replicas // num_gpus

    # "mlog" numbers experts node-major: node n owns mlog ids [n * E/N, (n + 1) * E/N).
    log2mlog = [0] * num_experts
    mlog2log = [0] * num_experts
    for g in range(num_groups):
        base = (group_pack[g] * groups_per_node + group_rank[g]) * group_size
        for j in range(group_size):
            log2mlog[g * group_size + j] = base + j
            mlog2log[base + j] = g * group_size + j

    phy2log = [0] * num_replicas
    phyrank = [0] * num_replicas
    mlogcnt: list[int] = []
    peak = 0.0
    for node in range(num_nodes):
        node_experts = mlog2log[node * experts_per_node : (node + 1) * experts_per_node]
        node_load = [w[e] for e in node_experts]
        phy2mlog, rank, cnt = _replicate(node_load, slots_per_node)
        mlogcnt += cnt
        phy_load = [node_load[j] / cnt[j] for j in phy2mlog]
        gpu, rank_on_gpu, node_peak = _pack(phy_load, gpus_per_node, refine, rounds)
        peak = max(peak, node_peak)
        for i in range(slots_per_node):
            slot = node * slots_per_node + gpu[i] * slots_per_gpu + rank_on_gpu[i]
            phy2log[slot] = node_experts[phy2mlog[i]]
            phyrank[slot] = rank[i]
    logcnt = [mlogcnt[log2mlog[e]] for e in range(num_experts)]
    return phy2log, phyrank, logcnt, peak


def _rebalance_layer(
    w: list[float],
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    refine: str,
    rounds: int,
) -> tuple[list[int], list[int], list[int], float]:
    # Step 1: groups -> nodes (explicit sums: sum() may compensate rounding on newer Pythons).
    group_size = len(w) // num_groups
    group_load = []
    for g in range(num_groups):
        total = 0.0
        for x in w[g * group_size : (g + 1) * group_size]:
            total += x
        group_load.append(total)
    args = (num_replicas, num_groups, num_nodes, num_gpus, refine, rounds)
    group_pack, group_rank, _ = _pack(group_load, num_nodes, refine, rounds)
    plan = _place_layer(w, group_pack, group_rank, *args)
    if refine == "none" or num_nodes == 1:
        return plan
    # Evening out node loads changes what each node replicates, which can leave some GPU
    # busier than under the greedy partition: keep the greedy partition in that case.
    greedy_pack, greedy_rank, _ = _pack(group_load, num_nodes, "none", 0)
    if (greedy_pack, greedy_rank) == (group_pack, group_rank):
        return plan
    greedy_plan = _place_layer(w, greedy_pack, greedy_rank, *args)
    return greedy_plan if greedy_plan[3] < plan[3] else plan


def rebalance_experts(
    weight: Any,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    *,
    refine: str = "swap",
    swap_rounds: int = 20,
    enable_hierarchical: Any = None,
    history: Any = None,
    alpha: float = 0.5,
    window: int = 8,
    z: float = 1.0,
    replays: int = 8,
) -> tuple[Any, Any, Any]:
    """Reference for :func:`fasteplb.rebalance_experts` (same arguments and results)."""
    import numpy as np

    refine, swap_rounds = _checks.options(refine, swap_rounds, _MODES)
    forecast = _checks.history(history, alpha, window, z, replays)
    wt = Weights(weight)
    if len(wt.shape) != 2:  # a history [windows, layers, experts]
        _checks.history_shape(wt.shape)
        mode, alpha, window, z, replays = forecast
        load, _ = forecast_load(wt.array, mode, alpha=alpha, window=window, z=z, replays=replays)
        plan = rebalance_experts(
            load, num_replicas, num_groups, num_nodes, num_gpus, refine=refine,
            swap_rounds=swap_rounds, enable_hierarchical=enable_hierarchical,
        )  # fmt: skip
        return wt.wrap(*plan)
    layers, experts = _checks.shape(wt.shape)
    if enable_hierarchical is not None:  # SGLang's switch, as in fasteplb.rebalance_experts
        if not isinstance(enable_hierarchical, bool):
            raise TypeError(
                "enable_hierarchical must be a bool or None, got "
                f"{type(enable_hierarchical).__name__}"
            )
        if not enable_hierarchical:
            num_groups, num_nodes = 1, 1
    num_replicas, num_groups, num_nodes, num_gpus = _checks.plan(
        layers, experts, num_replicas, num_groups, num_nodes, num_gpus, refine, swap_rounds
    )
    if enable_hierarchical and num_groups % num_nodes:
        raise ValueError(
            f"enable_hierarchical=True needs num_groups ({num_groups}) divisible by num_nodes "
            f"({num_nodes})"
        )
    rows = wt.array.tolist()
    _check_values(rows)
    if num_groups % num_nodes:
        num_groups = num_nodes = 1  # global policy
    plans = [
        _rebalance_layer(w, num_replicas, num_groups, num_nodes, num_gpus, refine, swap_rounds)
        for w in rows
    ]
    max_cnt = max(max(plan[2]) for plan in plans)
    log2phy = [[[-1] * max_cnt for _ in range(experts)] for _ in range(layers)]
    for layer, (phy2log, phyrank, *_) in enumerate(plans):
        for slot, (e, r) in enumerate(zip(phy2log, phyrank)):
            log2phy[layer][e][r] = slot
    as_array = lambda x: np.array(x, dtype=np.int64)  # noqa: E731
    return wt.wrap(
        as_array([p[0] for p in plans]), as_array(log2phy), as_array([p[2] for p in plans])
    )


def balanced_packing(
    weight: Any, num_packs: int, *, refine: str = "swap", swap_rounds: int = 20
) -> tuple[Any, Any]:
    """Reference for :func:`fasteplb.balanced_packing`."""
    import numpy as np

    refine, swap_rounds = _checks.options(refine, swap_rounds, _MODES)
    wt = Weights(weight)
    rows, n = _checks.shape(wt.shape)
    num_packs = _checks.packing(rows, n, num_packs, refine, swap_rounds)
    values = wt.array.tolist()
    _check_values(values)
    packs = [_pack(w, num_packs, refine, swap_rounds)[:2] for w in values]
    return wt.wrap(*(np.array(x, dtype=np.int64) for x in zip(*packs)))


def replicate_experts(weight: Any, num_phy: int) -> tuple[Any, Any, Any]:
    """Reference for :func:`fasteplb.replicate_experts`."""
    import numpy as np

    wt = Weights(weight)
    rows, n = _checks.shape(wt.shape)
    num_phy = _checks.replication(rows, n, num_phy)
    values = wt.array.tolist()
    _check_values(values)
    plans = [_replicate(w, num_phy) for w in values]
    return wt.wrap(*(np.array(x, dtype=np.int64) for x in zip(*plans)))


# ----------------------------------------------------------------------------------------
# Forecasting from a load history (the same arithmetic, in the same order, as
# csrc/fasteplb/detail/history.cpp, so results are bit-identical).
# ----------------------------------------------------------------------------------------

_ALPHAS = (0.2, 0.4, 0.6, 0.8)
_CANDIDATES = (
    [("last", 0.0, 0, 0.0)]
    + [("ema", a, 0, 0.0) for a in _ALPHAS]
    + [("mean", 0.0, w, 0.0) for w in (2, 4, 8, 16, 32)]
    + [("robust", 0.0, w, z) for w, z in ((8, 0.5), (8, 1.0), (16, 0.5), (16, 1.0), (32, 1.0))]
    + [("trend", 0.0, 0, 0.0)]
)


def _prefix(x: list[list[float]], upto: int) -> tuple[list[list[float]], list[list[float]]]:
    experts = len(x[0])
    s1, s2 = [[0.0] * experts], [[0.0] * experts]
    for t in range(upto):
        a1, a2, row = s1[-1], s2[-1], x[t]
        s1.append([a1[e] + row[e] for e in range(experts)])
        s2.append([a2[e] + row[e] * row[e] for e in range(experts)])
    return s1, s2


def _window(s1: Any, s2: Any, upto: int, window: int, z: float) -> list[float]:
    n = min(window, upto)
    hi1, lo1, hi2, lo2 = s1[upto], s1[upto - n], s2[upto], s2[upto - n]
    out = []
    for e in range(len(hi1)):
        m = (hi1[e] - lo1[e]) / float(n)
        if z < 0.0:
            out.append(m)
            continue
        v = (hi2[e] - lo2[e]) / float(n) - m * m
        out.append(m + z * math.sqrt(max(v, 0.0)))
    return out


def _forecast(x: list[list[float]], upto: int, cand: tuple, sums: Any = None) -> list[float]:
    mode, alpha, window, z = cand
    if mode == "ema":
        out = list(x[0])
        keep = 1.0 - alpha
        for t in range(1, upto):
            out = [alpha * v + keep * o for v, o in zip(x[t], out)]
        return out
    if mode in ("mean", "robust"):
        s1, s2 = sums if sums is not None else _prefix(x, upto)
        return _window(s1, s2, upto, window, -1.0 if mode == "mean" else z)
    if mode == "trend" and upto >= 2:
        now, before = x[upto - 1], x[upto - 2]
        return [max(0.0, n + 0.5 * (n - b)) for n, b in zip(now, before)]
    return list(x[upto - 1])


def _share_error(f: list[float], x: list[float]) -> float:
    """sum_e (f_e / F - x_e / X)^2 expanded as FF / F^2 - 2 FX / (F X) + XX / X^2, in the
    core's order; a forecast without load counts as uniform shares."""
    total = squares = 0.0
    for b in x:
        total += b
        squares += b * b
    if not total > 0.0:
        return 0.0
    sf = sff = sfx = 0.0
    for a, b in zip(f, x):
        sf += a
        sff += a * a
        sfx += a * b
    inv_x = 1.0 / total
    if not sf > 0.0:
        return max(0.0, squares * inv_x * inv_x - 1.0 / float(len(x)))
    inv_f = 1.0 / sf
    return max(0.0, sff * inv_f * inv_f - 2.0 * sfx * inv_f * inv_x + squares * inv_x * inv_x)


def forecast_load(
    weight: Any,
    history: str = "auto",
    *,
    alpha: float = 0.5,
    window: int = 8,
    z: float = 1.0,
    replays: int = 8,
) -> tuple[Any, str]:
    """Reference for :func:`fasteplb.forecast_load` (same arguments and results)."""
    import numpy as np

    from ._api import describe_forecast

    mode, alpha, window, z, replays = _checks.history(history, alpha, window, z, replays)
    wt = Weights(weight)
    windows, layers, _ = _checks.history_shape(wt.shape)
    values = wt.array.tolist()  # [windows][layers][experts]
    _check_values([row for win in values for row in win])
    per_layer = [[values[t][layer] for t in range(windows)] for layer in range(layers)]
    cand = (mode, alpha, window, z)
    if mode == "auto":
        cand = _CANDIDATES[0]
        if windows >= 2:
            total = [0.0] * len(_CANDIDATES)
            first = max(1, windows - replays)
            for x in per_layer:
                sums = _prefix(x, windows)
                errs = [0.0] * len(_CANDIDATES)
                for u in range(first, windows):
                    for c, candidate in enumerate(_CANDIDATES):
                        errs[c] += _share_error(_forecast(x, u, candidate, sums), x[u])
                total = [a + b for a, b in zip(total, errs)]
            best = 0
            for c in range(1, len(_CANDIDATES)):
                if total[c] < total[best]:
                    best = c
            cand = _CANDIDATES[best]
    out = np.array([_forecast(x, windows, cand) for x in per_layer], dtype=np.float64)
    return wt.wrap_float(out), describe_forecast(*cand)
