"""Plan quality: per-GPU loads and balancedness (vectorised numpy; torch in -> torch out)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import _checks
from ._marshal import Weights

__all__ = ["balancedness", "gpu_loads"]


def _gpu_loads(phy2log: np.ndarray, weight: np.ndarray, num_gpus: int) -> np.ndarray:
    layers, experts = weight.shape
    if phy2log.ndim != 2 or phy2log.shape[0] != layers:
        raise ValueError(
            f"phy2log must be [layers={layers}, slots], got shape {tuple(phy2log.shape)}"
        )
    slots = phy2log.shape[1]
    if slots % num_gpus:
        raise ValueError(f"phy2log's slot count ({slots}) must be divisible by num_gpus ({num_gpus})")
    if phy2log.size and (phy2log.min() < 0 or phy2log.max() >= experts):
        raise ValueError(f"phy2log entries must lie in [0, {experts})")
    flat = phy2log + experts * np.arange(layers, dtype=np.int64)[:, None]
    logcnt = np.bincount(flat.ravel(), minlength=layers * experts).reshape(layers, experts)
    if (logcnt == 0).any():
        raise ValueError("phy2log must hold every logical expert at least once in every layer")
    per_replica = weight / logcnt
    slot_load = np.take_along_axis(per_replica, phy2log, axis=1)
    return slot_load.reshape(layers, num_gpus, slots // num_gpus).sum(axis=2)


def _slots(phy2log: Any) -> np.ndarray:
    """phy2log as int64 numpy; float entries must be whole numbers."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(phy2log, torch.Tensor):
        phy2log = phy2log.detach().cpu().numpy()
    arr = np.asarray(phy2log)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise ValueError("phy2log must hold integer expert ids")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"phy2log must be an integer tensor, got {arr.dtype}")
    return arr.astype(np.int64)


def _inputs(phy2log: Any, weight: Any, num_gpus: Any) -> tuple[Weights, np.ndarray, int]:
    w = Weights(weight)
    _checks.shape(w.array.shape)
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
