"""A stateful planner: each rebalance planned from a rolling history of load windows."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np

from . import _api, _checks
from ._marshal import Weights


class Planner:
    """Plans every rebalance for the next window, from the last ``keep`` windows of load.

    A plan is made from past loads and served on future ones. Feed :meth:`plan` the load of
    each new window (the per-expert counts since the previous rebalance, [layers, experts]);
    it keeps the last ``keep`` windows and plans with
    ``rebalance_experts(history, ..., history=mode)``: by default ``"auto"``, which picks
    per call the forecast (last window, moving averages, means of 2-32 windows, mean + std,
    trend) that would have predicted the recent windows best. With ``migrate=True`` each plan
    after the first starts from the previous one (``old_phy2log``, ``max_moves``,
    ``max_moves_total``, ``min_gain``).

    Not thread-safe: call it from one thread at a time (a concurrent call raises
    RuntimeError instead of mixing two histories). :func:`fasteplb.rebalance_experts`
    itself stays stateless.

    Parameters:
        num_replicas, num_groups, num_nodes, num_gpus: as rebalance_experts
        history, alpha, window, z, replays: the forecast (see :func:`fasteplb.forecast_load`)
        keep: windows kept (default 40: the longest candidate, 32 windows, replayed 8 times)
        migrate, max_moves, max_moves_total, min_gain: plan from the previous plan (see
            rebalance_experts)
        refine, swap_rounds, num_threads, enable_hierarchical: as rebalance_experts
    """

    def __init__(
        self,
        num_replicas: int,
        num_groups: int,
        num_nodes: int,
        num_gpus: int,
        *,
        history: str = "auto",
        alpha: float = 0.5,
        window: int = 8,
        z: float = 1.0,
        replays: int = 8,
        keep: int = 40,
        migrate: bool = False,
        max_moves: Optional[int] = None,
        min_gain: Optional[float] = None,
        max_moves_total: Optional[int] = None,
        refine: str = "local",
        swap_rounds: int = 20,
        num_threads: Optional[int] = None,
        enable_hierarchical: Optional[bool] = None,
    ) -> None:
        self._forecast = _checks.history(history, alpha, window, z, replays)
        self._keep = _checks.count("keep", keep)
        if self._keep > _checks.MAX_HISTORY_WINDOWS:
            raise ValueError(f"keep must be <= {_checks.MAX_HISTORY_WINDOWS}, got {keep}")
        if not isinstance(migrate, bool):
            raise TypeError(f"migrate must be a bool, got {type(migrate).__name__}")
        budgets = (max_moves, min_gain, max_moves_total)
        if not migrate and any(b is not None for b in budgets):
            raise ValueError("max_moves, max_moves_total and min_gain need migrate=True")
        _checks.options(refine, swap_rounds)
        self._sizes = (num_replicas, num_groups, num_nodes, num_gpus)
        self._options = {
            "refine": refine,
            "swap_rounds": swap_rounds,
            "num_threads": num_threads,
            "enable_hierarchical": enable_hierarchical,
        }
        self._migrate = (migrate, max_moves, min_gain, max_moves_total)
        # [2 * keep, layers, experts] float64; the history is _buffer[_end - _count : _end].
        # Twice the room, so that the windows move to the front once every `keep` calls
        # instead of shifting on every call.
        self._buffer: Optional[np.ndarray] = None
        self._count = self._end = 0
        self._phy2log: Optional[np.ndarray] = None
        self._used = ""
        self._lock = threading.Lock()

    @property
    def windows(self) -> int:
        """How many windows of history the next plan reads."""
        return self._count

    @property
    def last_forecast(self) -> str:
        """The forecast the last plan used, e.g. ``"mean(window=8)"`` ("" before any)."""
        return self._used

    def reset(self) -> None:
        """Forget the history and the previous plan."""
        with self._guard():
            self._buffer, self._phy2log, self._used = None, None, ""
            self._count = self._end = 0

    def plan(self, load: Any) -> tuple[Any, Any, Any]:
        """Add one window's load [layers, experts] and plan for the next window.

        Returns (phy2log, log2phy, logcnt) as rebalance_experts does (torch in, torch out).
        """
        with self._guard():
            w = Weights(load)
            layers, experts = _checks.shape(w.shape)
            window = w.array
            if self._buffer is None or self._buffer.shape[1:] != (layers, experts):
                if self._buffer is not None:
                    raise ValueError(
                        f"load must have shape {list(self._buffer.shape[1:])} like the "
                        f"windows before it, got {[layers, experts]}"
                    )
                self._buffer = np.empty((2 * self._keep, layers, experts))
            bad = ~(np.isfinite(window) & (window >= 0))
            if bad.any():
                layer, expert = (int(i) for i in np.argwhere(bad)[0])
                raise ValueError(
                    f"load must be finite and non-negative; found {window[layer, expert]:g} at "
                    f"[{layer}, {expert}]"
                )
            if self._end == len(self._buffer):  # full: the newest keep - 1 to the front
                kept = self._keep - 1
                self._buffer[:kept] = self._buffer[self._end - kept : self._end]
                self._end, self._count = kept, min(self._count, kept)
            self._buffer[self._end] = window
            self._end += 1
            self._count = min(self._count + 1, self._keep)
            history = self._buffer[self._end - self._count : self._end]
            mode, alpha, win, z, replays = self._forecast
            forecast, self._used = _api.forecast_load(
                history,
                mode,
                alpha=alpha,
                window=win,
                z=z,
                replays=replays,
                num_threads=self._options["num_threads"],
            )
            migrate, max_moves, min_gain, total = self._migrate
            old = self._phy2log if migrate else None
            extra = (
                {"max_moves": max_moves, "min_gain": min_gain, "max_moves_total": total}
                if old is not None
                else {}
            )
            plan = _api.rebalance_experts(
                forecast, *self._sizes, old_phy2log=old, **self._options, **extra
            )
            self._phy2log = plan[0]
            return w.wrap(*plan)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(
                "Planner is not thread-safe: it was called while another call was running; "
                "use one Planner per thread or serialise the calls"
            )
        try:
            yield
        finally:
            self._lock.release()
