"""The statistics of WORKLOADS.md's target table (:func:`statistics`), the same code for real
matrices and synthetic traces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from ._profiles import _int
from ._traces import windows

# ----------------------------------------------------------------------------------------
# Statistics.
# ----------------------------------------------------------------------------------------


def _avg_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties get their average rank (Spearman's convention)."""
    shape = x.shape
    n = shape[-1]
    flat = x.reshape(-1, n)
    order = np.argsort(flat, axis=1, kind="stable")
    sorted_x = np.take_along_axis(flat, order, axis=1)
    start = np.ones(sorted_x.shape, dtype=bool)
    start[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    starts = np.flatnonzero(start.ravel())
    lengths = np.diff(np.append(starts, start.size))
    avg = (starts % n) + (lengths - 1) / 2.0
    ranks_sorted = np.repeat(avg, lengths).reshape(flat.shape)
    out = np.empty(flat.shape)
    np.put_along_axis(out, order, ranks_sorted, axis=1)
    return out.reshape(shape)


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation along the last axis (nan where a side is constant)."""
    ra, rb = _avg_ranks(a), _avg_ranks(b)
    ra -= ra.mean(axis=-1, keepdims=True)
    rb -= rb.mean(axis=-1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=-1) * (rb * rb).sum(axis=-1))
    num = (ra * rb).sum(axis=-1)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def _ratio(peak: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return np.divide(peak, mean, out=np.ones_like(peak), where=mean > 0)


def _gpu_ratio(loads: np.ndarray) -> float:
    """GPU loads [M, L, G] -> median over matrices of sum_l max_g / sum_l mean_g."""
    return float(np.median(_ratio(loads.max(axis=2).sum(axis=1), loads.mean(axis=2).sum(axis=1))))


def _eplb_next(arr: np.ndarray, wins: np.ndarray, window: Optional[int], g: int) -> float:
    """Plan on each corr window, score every `window`-step matrix of the next corr window.

    arr: [T, L, E] per step; wins: [K, L, E] sums of cw = T // K steps.
    """
    from .. import _api, metrics

    k, layers, experts = wins.shape
    cw = arr.shape[0] // k
    w = cw if window is None or window > cw else window
    sub = cw // w
    scored = arr[: k * cw].reshape(k, cw, layers, experts)[1:, : sub * w]
    scored = scored.reshape(k - 1, sub, w, layers, experts).sum(axis=2)
    plans = _api.rebalance_experts(
        wins[:-1].reshape(-1, experts), experts + g, 1, 1, g, refine="none"
    )[0]
    slots = plans.shape[1]
    plans = np.broadcast_to(plans.reshape(k - 1, 1, layers, slots), (k - 1, sub, layers, slots))
    loads = metrics.gpu_loads(plans.reshape(-1, slots), scored.reshape(-1, experts), g)
    return _gpu_ratio(loads.reshape((k - 1) * sub, layers, g))


def _nanmedian(x: np.ndarray) -> Optional[float]:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmedian(x)) if x.size and np.isfinite(x).any() else None


def statistics(
    trace: Any,
    *,
    window: Optional[int] = None,
    num_gpus_list: Sequence[int] = (8, 16, 32),
    corr_window: int = 100,
    regime: Any = None,
    domain_popularity: Any = None,
    top_fraction: float = 0.1,
    cold_fraction: float = 0.1,
) -> dict:
    """The statistics of WORKLOADS.md's target table, for a real matrix or a trace.

    Parameters:
        trace: [T, L, E] per-step loads, or one [L, E] matrix (a single window)
        window: steps per load matrix (1: per step; default: the whole trace, one matrix).
            Load statistics are computed on every matrix, then the median over matrices
            is reported.
        num_gpus_list: EP sizes G for the placement statistics (those not dividing E give
            None)
        corr_window: steps per window of the consecutive-window rank correlation
        regime: [T] regime id per step (generate's meta); if given, only pairs of windows
            inside one regime count for the rank correlation
        domain_popularity: [D, L, E] (generate's meta) for the cross-domain correlation
        top_fraction: share of experts for "top_share" (floor(top_fraction * E) of them)
        cold_fraction: "cold" experts carry less than this times the layer mean

    Returns a dict of floats (None where not computable):
        "matrices": how many load matrices were evaluated
        "expert_max_mean": max/mean expert load, median over layers
        "expert_max_mean_p10", "expert_max_mean_p90": its 10th / 90th percentile over layers
        "expert_max_mean_worst": its largest layer value
        "top_share": share of the load on the top floor(top_fraction * E) experts, median
            over layers
        "cold_fraction": fraction of experts below cold_fraction x mean, median over layers
        "identity": {G: sum_l max_g / sum_l mean_g} with E/G contiguous experts per GPU
            (1 / fasteplb.balancedness)
        "identity_layers": {G: (p10, p90) of the per-layer max/mean}
        "eplb": {G: the same after rebalance_experts(num_replicas=E+G, 1 group, 1 node,
            refine="none"), planned and scored on the same matrix (in-sample)}
        "eplb_next": {G: the same plan made on each corr_window-step window and scored on
            every matrix of the next one (out of sample, as a serving engine sees it)}
        "rank_corr_consecutive": Spearman correlation of expert loads between consecutive
            corr_window-step windows, median over layers and pairs
        "rank_corr_consecutive_skewed": the same over the more skewed half of the layers
            (expert max/mean of the whole trace at or above its median)
        "cross_domain_rank_corr": Spearman correlation between domains' popularity, mean
            over domain pairs, median over layers
    """
    from .. import _api, metrics

    arr = np.asarray(trace, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(
            f"trace must be [steps, layers, experts] or [layers, experts], got shape {arr.shape}"
        )
    if not (np.isfinite(arr).all() and (arr >= 0).all()):
        raise ValueError("trace must be finite and >= 0")
    steps, layers, experts = arr.shape
    if window is None:
        mats = arr.sum(axis=0, keepdims=True)
    else:
        mats = windows(arr, _int("window", window))
    n_mats = mats.shape[0]

    mean = mats.mean(axis=2)  # [M, L]
    ratio = _ratio(mats.max(axis=2), mean)
    k = max(1, int(top_fraction * experts))
    top = -np.partition(-mats, k - 1, axis=2)[:, :, :k].sum(axis=2)
    total = mats.sum(axis=2)
    share = np.divide(top, total, out=np.full(top.shape, np.nan), where=total > 0)
    cold = (mats < cold_fraction * mean[:, :, None]).mean(axis=2)

    out: dict[str, Any] = {
        "matrices": n_mats,
        "expert_max_mean": float(np.median(np.median(ratio, axis=1))),
        "expert_max_mean_p10": float(np.median(np.percentile(ratio, 10, axis=1))),
        "expert_max_mean_p90": float(np.median(np.percentile(ratio, 90, axis=1))),
        "expert_max_mean_worst": float(np.median(ratio.max(axis=1))),
        "top_share": _nanmedian(np.nanmedian(share, axis=1)),
        "cold_fraction": float(np.median(np.median(cold, axis=1))),
        "identity": {},
        "identity_layers": {},
        "eplb": {},
        "eplb_next": {},
    }
    gpus = [_int("num_gpus", g) for g in num_gpus_list]
    cw = _int("corr_window", corr_window)
    reg = None
    if regime is not None:
        reg = np.asarray(regime)
        if reg.shape != (steps,):
            raise ValueError(f"regime must be [steps={steps}], got shape {reg.shape}")
    wins = windows(arr, cw) if steps >= 2 * cw else None
    flat = mats.reshape(n_mats * layers, experts)
    for g in gpus:
        if experts % g:
            for key in ("identity", "identity_layers", "eplb", "eplb_next"):
                out[key][g] = None
            continue
        loads = mats.reshape(n_mats, layers, g, experts // g).sum(axis=3)
        out["identity"][g] = _gpu_ratio(loads)
        lay = _ratio(loads.max(axis=2), loads.mean(axis=2))
        out["identity_layers"][g] = (
            float(np.median(np.percentile(lay, 10, axis=1))),
            float(np.median(np.percentile(lay, 90, axis=1))),
        )
        phy2log = _api.rebalance_experts(flat, experts + g, 1, 1, g, refine="none")[0]
        loads = metrics.gpu_loads(phy2log, flat, g).reshape(n_mats, layers, g)
        out["eplb"][g] = _gpu_ratio(loads)
        out["eplb_next"][g] = None
        if wins is not None:
            out["eplb_next"][g] = _eplb_next(arr, wins, window, g)

    out["rank_corr_consecutive"] = out["rank_corr_consecutive_skewed"] = None
    if wins is not None:
        corr = _spearman(wins[:-1], wins[1:])  # [pairs, L]
        if reg is not None:
            blocks = reg[: wins.shape[0] * cw].reshape(-1, cw)
            same = (blocks == blocks[:, :1]).all(axis=1)
            same = same[:-1] & same[1:] & (blocks[:-1, 0] == blocks[1:, 0])
            corr = corr[same]
        if corr.size:
            agg = arr.sum(axis=0)
            skew = _ratio(agg.max(axis=1), agg.mean(axis=1))
            skewed = skew >= np.median(skew)
            out["rank_corr_consecutive"] = _nanmedian(corr)
            out["rank_corr_consecutive_skewed"] = _nanmedian(corr[:, skewed])

    out["cross_domain_rank_corr"] = None
    if domain_popularity is not None:
        dom = np.asarray(domain_popularity, dtype=np.float64)
        if dom.ndim != 3 or dom.shape[1:] != (layers, experts):
            raise ValueError(
                f"domain_popularity must be [domains, layers={layers}, experts={experts}], "
                f"got shape {dom.shape}"
            )
        d = dom.shape[0]
        if d >= 2:
            i, j = np.triu_indices(d, 1)
            corr = _spearman(dom[i], dom[j])  # [pairs, L]
            out["cross_domain_rank_corr"] = _nanmedian(np.nanmean(corr, axis=0))
    return out
