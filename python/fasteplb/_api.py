"""Public planning API: DeepSeek eplb.py signatures, native core underneath."""

from __future__ import annotations

from typing import Any, Optional

from . import _checks, _core
from ._marshal import Weights


def rebalance_experts(
    weight: Any,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    *,
    refine: str = "local",
    swap_rounds: int = 20,
    num_threads: Optional[int] = None,
    old_phy2log: Any = None,
    max_moves: Optional[int] = None,
    min_gain: Optional[float] = None,
    enable_hierarchical: Optional[bool] = None,
    max_moves_total: Optional[int] = None,
    history: Optional[str] = None,
    alpha: float = 0.5,
    window: int = 8,
    z: float = 1.0,
    replays: int = 8,
) -> tuple[Any, Any, Any]:
    """Plan replica counts and GPU placement for every MoE layer.

    Hierarchical policy (groups -> nodes, replicate within each node, replicas -> GPUs) when
    ``num_groups % num_nodes == 0``, global policy otherwise, exactly as DeepSeek's eplb.py.

    Parameters:
        weight: [layers, num_logical_experts] load per expert (torch tensor on any device, or
            array-like; any real or integer dtype; finite and >= 0), or a history of such
            windows [windows, layers, num_logical_experts], oldest first: the plan is then
            made for the next window's load as ``history`` forecasts it
            (:func:`forecast_load`)
        num_replicas: physical expert slots P, a multiple of ``num_gpus`` and >= experts
        num_groups: expert groups K (the number of experts must be a multiple of it)
        num_nodes: server nodes N (``num_gpus`` must be a multiple of it)
        num_gpus: GPUs G; each holds ``P // G`` slots, GPU g owns slots [g*k, (g+1)*k)
        refine: ``"local"`` (default: greedy, then swaps of the heaviest GPU with the
            lightest GPU that can relieve it, never two replicas of one expert on a GPU while
            avoidable),
            ``"swap"`` (greedy, then the seed's max/min pair swaps) or ``"none"`` (DeepSeek's
            greedy exactly)
        swap_rounds: most swaps per packing call with ``refine="swap"``
        num_threads: worker threads over layers (default: the hardware concurrency, fewer
            for small inputs, where starting a thread costs more than it saves)
        old_phy2log: [layers, num_replicas], the current placement (e.g. the previous call's
            phy2log). When given, each layer is re-planned *from* it so that experts stay on
            their GPUs unless moving them pays off: the old groups -> nodes split is kept
            unless another is clearly better, replica counts are repaired (surplus replicas
            freed on the busiest GPUs, new ones placed in the freed slots), then the local
            search runs; experts that stay on a GPU keep their slot. Replica ranks follow
            slot order. ``refine="none"`` only repairs the counts; ``"swap"`` is not
            supported here.
        max_moves: most weight copies per layer (a copy: an expert new to a GPU); 0 keeps
            the old placement. None: no cap, but the fewest copies for the balance reached.
        max_moves_total: most weight copies over all layers together (engines move weights in
            bulk, per rebalance). Spent where each copy removes the most load from a layer's
            busiest GPU: every layer is re-planned at per-layer budgets 0, 1, 2, 4, 8, 12, 16,
            24, ... (within ``max_moves``), and the budget goes greedily to the steps that lower
            the sum of the layers' largest loads most per copy, so each further copy buys no
            more than the one before. Costs about 10-12 re-plans per layer. 0 keeps the old
            placement, as ``max_moves=0`` does. None: no cap.
        min_gain: keep a layer's old placement unless re-planning lowers its largest GPU
            load by more than this fraction, in [0, 1) (None: 0, keep it unless it improves)
        enable_hierarchical: the policy switch of SGLang's copy of DeepSeek's planner
            (``deepseek.rebalance_experts(..., enable_hierarchical)``): ``False`` plans with
            the global policy, as one group on one node (``num_groups`` and ``num_nodes``
            are then ignored, as SGLang does); ``True`` the hierarchical policy, which needs
            ``num_groups % num_nodes == 0`` (ValueError otherwise, where SGLang asserts);
            ``None`` (default) DeepSeek's rule above
        history, alpha, window, z, replays: how a 3-D ``weight`` is forecast; see
            :func:`forecast_load` (``history=None``: ``"auto"``). With one window, or a 2-D
            ``weight``, every mode plans on that window.

    Returns:
        phy2log: [layers, num_replicas], the logical expert held by each slot
        log2phy: [layers, num_logical_experts, R], each expert's slots by replica rank,
            padded with -1 (R = the largest replica count)
        logcnt: [layers, num_logical_experts], replicas per expert

    All int64; torch in -> torch out on the input's device, otherwise numpy.
    """
    refine, swap_rounds = _checks.options(refine, swap_rounds)
    threads = _checks.threads(num_threads)
    forecast = _checks.history(history, alpha, window, z, replays)
    w = Weights(weight)
    is_history = len(w.shape) != 2  # [windows, layers, experts]
    if is_history:
        _checks.history_shape(w.shape)
        layers, experts = int(w.shape[1]), int(w.shape[2])
    else:
        layers, experts = _checks.shape(w.shape)
    if enable_hierarchical is not None:  # SGLang's switch; None: DeepSeek's divisibility rule
        if not isinstance(enable_hierarchical, bool):
            raise TypeError(
                "enable_hierarchical must be a bool or None, got "
                f"{type(enable_hierarchical).__name__}"
            )
        if not enable_hierarchical:
            num_groups, num_nodes = 1, 1  # the global policy, as SGLang's deepseek.py
    migrate = old_phy2log is not None
    sizes = _checks.plan(
        layers, experts, num_replicas, num_groups, num_nodes, num_gpus, refine, swap_rounds, migrate
    )
    nodes = sizes[2] if migrate else 0
    _checks.memory("rebalance_experts", layers, experts, sizes[0], threads, True, nodes)
    if enable_hierarchical and sizes[1] % sizes[2]:
        raise ValueError(
            f"enable_hierarchical=True needs num_groups ({sizes[1]}) divisible by num_nodes "
            f"({sizes[2]})"
        )
    old, moves, gain, total = _checks.migration(
        old_phy2log, max_moves, min_gain, layers, sizes[0], experts, max_moves_total
    )
    if old is not None and refine == "swap":
        raise ValueError("old_phy2log works with refine='local' or 'none', not 'swap'")
    view, bfloat16 = w.native
    if is_history:
        view, _ = _core.forecast_load(view, *forecast, threads, bfloat16)
        bfloat16 = False
    return w.wrap(
        *_core.rebalance_experts(
            view, *sizes, refine, swap_rounds, threads, old, moves, gain, bfloat16, total
        )
    )


def describe_forecast(mode: str, alpha: float, window: int, z: float) -> str:
    """A forecast as a short name: "last", "ema(alpha=0.4)", "robust(window=16, z=1)"."""
    if mode == "ema":
        return f"ema(alpha={alpha:g})"
    if mode == "mean":
        return f"mean(window={window})"
    if mode == "robust":
        return f"robust(window={window}, z={z:g})"
    return mode


def forecast_load(
    weight: Any,
    history: str = "auto",
    *,
    alpha: float = 0.5,
    window: int = 8,
    z: float = 1.0,
    replays: int = 8,
    num_threads: Optional[int] = None,
) -> tuple[Any, str]:
    """Forecast the next window's load per expert from a history of windows.

    Parameters:
        weight: [windows, layers, experts] load per window, oldest first (torch or
            array-like, any real or integer dtype; finite and >= 0)
        history: ``"last"`` (the newest window), ``"ema"`` (exponential moving average,
            weight ``alpha`` in (0, 1] on the newest window), ``"mean"`` (of the last
            ``window`` windows), ``"robust"`` (that mean + ``z`` standard deviations: more
            replicas for volatile experts), ``"trend"`` (newest + 0.5 x its change, at least
            0), or ``"auto"`` (default): the candidate of :func:`history_candidates` whose
            forecasts of each of the last ``replays`` windows, made from the windows before
            it, were closest to what came (squared error of the per-layer load shares,
            summed over layers: one choice for the model; ties to the earlier candidate,
            "last" first). With one window every mode is "last".
        num_threads: worker threads over layers (default: as rebalance_experts)

    Returns:
        forecast: [layers, experts] float64 (torch in -> torch out on the input's device)
        used: the forecast used, e.g. ``"mean(window=8)"`` (for "auto": the one chosen)
    """
    threads = _checks.threads(num_threads)
    mode, alpha, window, z, replays = _checks.history(history, alpha, window, z, replays)
    w = Weights(weight)
    _checks.history_shape(w.shape)
    view, bfloat16 = w.native
    out, chosen = _core.forecast_load(view, mode, alpha, window, z, replays, threads, bfloat16)
    if chosen >= 0:
        used = describe_forecast(*_core.history_candidates()[chosen])
    else:
        used = describe_forecast(mode, alpha, window, z)
    return w.wrap_float(out), used


def history_candidates() -> list[str]:
    """The forecasts ``history="auto"`` chooses from, in tie order."""
    return [describe_forecast(*c) for c in _core.history_candidates()]


def balanced_packing(
    weight: Any,
    num_packs: int,
    *,
    refine: str = "local",
    swap_rounds: int = 20,
    num_threads: Optional[int] = None,
) -> tuple[Any, Any]:
    """Pack each row's n items into ``num_packs`` packs of exactly n / num_packs items.

    Parameters:
        weight: [X, n], the weight of each item
        num_packs: number of packs (must divide n)

    Returns:
        pack_index: [X, n], the pack of each item
        rank_in_pack: [X, n], the item's position inside its pack
    """
    refine, swap_rounds = _checks.options(refine, swap_rounds)
    threads = _checks.threads(num_threads)
    w = Weights(weight)
    rows, n = _checks.shape(w.shape)
    num_packs = _checks.packing(rows, n, num_packs, refine, swap_rounds)
    _checks.memory("balanced_packing", rows, n, n, threads)
    view, bfloat16 = w.native
    return w.wrap(*_core.balanced_packing(view, num_packs, refine, swap_rounds, threads, bfloat16))


def replicate_experts(
    weight: Any, num_phy: int, *, num_threads: Optional[int] = None
) -> tuple[Any, Any, Any]:
    """Replicate each row's experts into ``num_phy`` slots, minimising the max load per replica.

    Parameters:
        weight: [X, num_log]
        num_phy: total replicas after replication (>= num_log)

    Returns:
        phy2log: [X, num_phy], the logical expert of each replica
        rank: [X, num_phy], the replica's rank among its expert's replicas
        logcnt: [X, num_log], replicas per logical expert
    """
    threads = _checks.threads(num_threads)
    w = Weights(weight)
    rows, n = _checks.shape(w.shape)
    num_phy = _checks.replication(rows, n, num_phy)
    _checks.memory("replicate_experts", rows, n, num_phy, threads)
    view, bfloat16 = w.native
    return w.wrap(*_core.replicate_experts(view, num_phy, threads, bfloat16))
