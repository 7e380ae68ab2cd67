"""Shared by the engine adapters: planning from whatever part of an engine's current placement
is usable, and converting the engines' tensors without importing torch."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Optional

import numpy as np

from .. import _api

# Options forwarded to fasteplb.rebalance_experts; MIGRATION_OPTIONS need an old placement.
HISTORY_OPTIONS = ("history", "alpha", "window", "z", "replays")
MIGRATION_OPTIONS = ("max_moves", "max_moves_total", "min_gain")
PLAN_OPTIONS = ("refine", "swap_rounds", "num_threads", *MIGRATION_OPTIONS, *HISTORY_OPTIONS)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """An on/off environment variable: 1/true/yes/on or 0/false/no/off/unset (any case)."""
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"environment variable {name} must be 1 (on) or 0 (off), got {os.environ[name]!r}"
    )


def is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def host_array(x: Any) -> np.ndarray:
    """A torch tensor (any device and dtype) or array-like as a numpy array on the host."""
    if is_tensor(x):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        try:
            return t.numpy()
        except (TypeError, RuntimeError):  # bfloat16 and friends: numpy has no such dtype
            return t.double().numpy()
    return np.asarray(x)


def check_options(options: dict[str, Any], where: str) -> dict[str, Any]:
    """Planner options, checked now (by planning a tiny example) rather than at the engine's
    first rebalance."""
    unknown = sorted(set(options) - set(PLAN_OPTIONS))
    if unknown:
        raise TypeError(
            f"{where}: unknown option(s) {', '.join(unknown)}; expected any of "
            f"{', '.join(PLAN_OPTIONS)}"
        )
    fresh = {k: v for k, v in options.items() if k not in MIGRATION_OPTIONS}
    _api.rebalance_experts(np.ones((1, 1, 2)), 2, 1, 1, 1, **fresh)
    if not migrates(options):
        given = sorted(set(options) & set(MIGRATION_OPTIONS))
        if given:
            raise ValueError(
                f"{where}: {', '.join(given)} need migration-aware planning, which "
                "refine='swap' does not do; use refine='local' or 'none'"
            )
    else:
        old = np.array([[0, 1]], dtype=np.int64)
        _api.rebalance_experts(np.ones((1, 2)), 2, 1, 1, 1, old_phy2log=old, **options)
    return dict(options)


def forecast(history: Any, options: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The next window's load [L, E] forecast from ``history`` [windows, L, E] with the history
    options among ``options`` (fasteplb.forecast_load), and the other options."""
    given = {k: v for k, v in options.items() if k in HISTORY_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in HISTORY_OPTIONS}
    mode = given.pop("history", None)
    load, _ = _api.forecast_load(
        host_array(history), "auto" if mode is None else mode, num_threads=rest.get("num_threads"),
        **given,
    )  # fmt: skip
    return load, rest


class WindowHistory:
    """The load windows an engine hands its policy, one per rebalance, kept (the last
    ``keep``, per [layers, experts] shape) so that each plan can be made for the next window
    from a history (for engines whose policy sees only the current window). Thread-safe."""

    def __init__(self, keep: int = 40) -> None:
        self.keep = keep
        self._windows: dict[tuple[int, ...], list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def forecast(self, weight: Any, options: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """Adds ``weight`` [L, E] as the newest window; returns :func:`forecast` over the kept
        windows."""
        window = np.array(host_array(weight), dtype=np.float64)
        if window.ndim != 2:
            raise ValueError(f"weight must be 2-D [layers, experts], got shape {window.shape}")
        with self._lock:
            kept = self._windows.setdefault(window.shape, [])
            kept.append(window)
            del kept[: max(0, len(kept) - self.keep)]
            history = np.stack(kept)
        return forecast(history, options)

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()


def migrates(options: dict[str, Any]) -> bool:
    """Whether these options plan from the old placement (refine="swap" cannot)."""
    return options.get("refine", "local") != "swap"


def usable_layers(old: Any, layers: int, num_replicas: int, experts: int) -> Optional[np.ndarray]:
    """Which rows of an engine's current placement fasteplb can plan from: None when the map
    has another shape (e.g. after an elastic scale-up or scale-down: every layer is then planned
    fresh), else a bool [layers] mask of the rows holding only expert ids in [0, experts) with
    every expert at least once (rows padded with -1 for new slots are not)."""
    if old is None:
        return None
    arr = host_array(old)
    if arr.ndim != 2 or arr.shape != (layers, num_replicas) or arr.dtype.kind not in "iu":
        return None
    arr = arr.astype(np.int64, copy=False)
    in_range = ((arr >= 0) & (arr < experts)).all(axis=1)
    ok = np.zeros(layers, dtype=bool)
    for layer in np.flatnonzero(in_range):
        ok[layer] = np.bincount(arr[layer], minlength=experts).min() > 0
    return ok


def keep_slots(new: np.ndarray, old: np.ndarray, num_gpus: int) -> np.ndarray:
    """``new`` with each GPU's experts reordered so that those the GPU held in ``old`` stay in
    their old slots (the others fill the remaining slots in ``new``'s order). Only the order
    within a GPU changes, so loads and copies are those of ``new``; entries of ``old`` that are
    no expert (-1) simply match nothing. [L, P] each."""
    out = new.copy()
    layers, slots = new.shape
    per_gpu = slots // num_gpus
    for layer in range(layers):
        for g in range(num_gpus):
            lo, hi = g * per_gpu, (g + 1) * per_gpu
            pending = list(new[layer, lo:hi])
            placed: list[Optional[int]] = [None] * per_gpu
            for j, expert in enumerate(old[layer, lo:hi].tolist()):
                if expert in pending:
                    pending.remove(expert)
                    placed[j] = expert
            rest = iter(pending)
            out[layer, lo:hi] = [e if e is not None else next(rest) for e in placed]
    return out


def logical_maps(phy2log: np.ndarray, experts: int) -> tuple[np.ndarray, np.ndarray]:
    """(log2phy [L, E, R] -1 padded, replica ranks in slot order; logcnt [L, E]) of phy2log."""
    layers, slots = phy2log.shape
    logcnt = np.stack([np.bincount(row, minlength=experts) for row in phy2log])
    log2phy = np.full((layers, experts, int(logcnt.max())), -1, dtype=np.int64)
    for layer in range(layers):
        order = np.argsort(phy2log[layer], kind="stable")  # slots grouped by expert
        starts = np.concatenate(([0], np.cumsum(logcnt[layer])[:-1]))
        ranks = np.arange(slots) - np.repeat(starts, logcnt[layer])
        log2phy[layer, phy2log[layer, order], ranks] = order
    return log2phy, logcnt.astype(np.int64)


def plan(
    weight: Any,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    old: Any = None,
    *,
    enable_hierarchical: Optional[bool] = None,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``fasteplb.rebalance_experts`` for an engine's state: each layer is planned from ``old``
    (migration-aware) where its row is a usable placement (``usable_layers``), otherwise
    fresh; a fresh layer of an old map of the same width keeps experts that stay on a GPU in
    their old slot (``keep_slots``). With ``refine="swap"`` (which cannot plan from an old
    placement) every layer is fresh. Returns numpy int64 (phy2log, log2phy, logcnt)."""
    w = host_array(weight)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D [layers, experts], got shape {tuple(w.shape)}")
    layers, experts = w.shape
    ok = usable_layers(old, layers, num_replicas, experts)
    fresh_options = {k: v for k, v in options.items() if k not in MIGRATION_OPTIONS}
    common = dict(enable_hierarchical=enable_hierarchical)
    migrate = np.flatnonzero(ok) if ok is not None else np.empty(0, dtype=np.int64)
    if not migrates(options):
        migrate = migrate[:0]
    if migrate.size == layers:
        out = _api.rebalance_experts(
            w, num_replicas, num_groups, num_nodes, num_gpus,
            old_phy2log=host_array(old), **common, **options,
        )  # fmt: skip
        return tuple(np.asarray(x) for x in out)  # type: ignore[return-value]
    sizes = (num_replicas, num_groups, num_nodes, num_gpus)
    phy2log = np.empty((layers, num_replicas), dtype=np.int64)
    planned = []  # (layer indices, log2phy, logcnt)
    if migrate.size:
        old_rows = host_array(old)[migrate].astype(np.int64)
        p, l2p, cnt = _api.rebalance_experts(
            w[migrate], *sizes, old_phy2log=old_rows, **common, **options
        )
        phy2log[migrate] = p
        planned.append((migrate, l2p, cnt))
    fresh = np.setdiff1d(np.arange(layers), migrate)
    p, l2p, cnt = _api.rebalance_experts(w[fresh], *sizes, **common, **fresh_options)
    if ok is not None:  # the old map has this width: keep the slots that stay
        p = keep_slots(p, host_array(old)[fresh].astype(np.int64), num_gpus)
        l2p, cnt = logical_maps(p, experts)
    phy2log[fresh] = p
    planned.append((fresh, l2p, cnt))
    width = max(l2p.shape[2] for _, l2p, _ in planned)
    log2phy = np.full((layers, experts, width), -1, dtype=np.int64)
    logcnt = np.empty((layers, experts), dtype=np.int64)
    for rows, l2p, cnt in planned:
        log2phy[rows, :, : l2p.shape[2]] = l2p
        logcnt[rows] = cnt
    return phy2log, log2phy, logcnt
