"""Argument validation shared by the native API and the pure-Python reference.

Both raise the same exception, with the same message, for the same bad argument.
"""

from __future__ import annotations

import operator
import sys
from typing import Any

import numpy as np

REFINE_MODES = ("local", "swap", "none")

# Supported ranges: far above any real deployment, far below what would exhaust memory, so
# absurd arguments fail here instead of in an allocation.
MAX_EXPERTS = 1 << 20
MAX_REPLICAS = 1 << 22
MAX_ELEMENTS = 1 << 31
INT_MAX = (1 << 31) - 1


def count(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int >= minimum, else TypeError/ValueError naming `name`."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def options(
    refine: Any, swap_rounds: Any, modes: tuple[str, ...] = REFINE_MODES
) -> tuple[str, int]:
    if not isinstance(refine, str):
        raise TypeError(f"refine must be a str, got {type(refine).__name__}")
    if refine not in modes:
        raise ValueError(f"refine must be one of {modes}, got {refine!r}")
    # Every swap strictly lowers the sum of squared pack loads, so refinement stops long
    # before 2**31 - 1 rounds: capping there (the core's int) changes no result.
    return refine, min(count("swap_rounds", swap_rounds, minimum=0), INT_MAX)


def threads(num_threads: Any) -> int:
    """0 means the default (hardware concurrency); the core caps any value by the row count."""
    return 0 if num_threads is None else min(count("num_threads", num_threads), INT_MAX)


def shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"weight must be 2-D [layers, experts], got shape {tuple(shape)}")
    rows, cols = int(shape[0]), int(shape[1])
    if rows == 0 or cols == 0:
        raise ValueError(f"weight must not be empty, got shape {(rows, cols)}")
    if cols > MAX_EXPERTS:
        raise ValueError(f"weight has {cols} experts; at most {MAX_EXPERTS} are supported")
    _elements("weight", rows, cols)
    return rows, cols


def _elements(name: str, rows: int, cols: int) -> None:
    if rows * cols > MAX_ELEMENTS:
        raise ValueError(
            f"{name} of {rows} x {cols} would exceed {MAX_ELEMENTS} elements; split the call"
        )


def plan(
    rows: int, experts: int, num_replicas: Any, num_groups: Any, num_nodes: Any, num_gpus: Any
) -> tuple[int, int, int, int]:
    """Checks rebalance_experts' sizes; returns them as ints."""
    num_replicas = count("num_replicas", num_replicas)
    num_groups = count("num_groups", num_groups)
    num_nodes = count("num_nodes", num_nodes)
    num_gpus = count("num_gpus", num_gpus)
    if num_replicas > MAX_REPLICAS:
        raise ValueError(f"num_replicas must be <= {MAX_REPLICAS}, got {num_replicas}")
    if num_replicas < experts:
        raise ValueError(
            f"num_replicas must be >= the number of experts ({experts}), got {num_replicas}"
        )
    if num_replicas % num_gpus:
        raise ValueError(
            f"num_replicas ({num_replicas}) must be divisible by num_gpus ({num_gpus})"
        )
    if num_gpus % num_nodes:
        raise ValueError(f"num_gpus ({num_gpus}) must be divisible by num_nodes ({num_nodes})")
    if experts % num_groups:
        raise ValueError(
            f"the number of experts ({experts}) must be divisible by num_groups ({num_groups})"
        )
    _elements("phy2log", rows, num_replicas)
    return num_replicas, num_groups, num_nodes, num_gpus


def packing(rows: int, n: int, num_packs: Any) -> int:
    num_packs = count("num_packs", num_packs)
    if n % num_packs:
        raise ValueError(f"the number of items ({n}) must be divisible by num_packs ({num_packs})")
    return num_packs


def replication(rows: int, n: int, num_phy: Any) -> int:
    num_phy = count("num_phy", num_phy)
    if num_phy > MAX_REPLICAS:
        raise ValueError(f"num_phy must be <= {MAX_REPLICAS}, got {num_phy}")
    if num_phy < n:
        raise ValueError(f"num_phy must be >= the number of experts ({n}), got {num_phy}")
    _elements("phy2log", rows, num_phy)
    return num_phy


INT64_MAX = (1 << 63) - 1


def to_numpy(x: Any) -> Any:
    """A torch tensor as numpy (on the host); anything else as it is."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x


def expert_ids(x: Any, name: str) -> np.ndarray:
    """`x` as a numpy array of expert ids, not yet converted (so that a huge view of the wrong
    shape can be refused before it is copied): integers, or floats holding whole numbers."""
    arr = np.asarray(to_numpy(x))
    if arr.dtype.kind == "f":
        if arr.size and (not np.isfinite(arr).all() or (arr != np.round(arr)).any()):
            raise ValueError(f"{name} must hold integer expert ids")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > INT64_MAX:
        raise ValueError(f"{name} holds expert ids beyond int64")
    return arr


def migration(
    old_phy2log: Any, max_moves: Any, min_gain: Any, layers: int, num_replicas: int
) -> tuple[Any, int, float]:
    """Checks rebalance_experts' migration options; returns (old [layers, P] int64 C-contiguous
    numpy or None, max_moves (-1: no cap), min_gain). Expert ids are checked by the core."""
    if old_phy2log is None:
        for name, value in (("max_moves", max_moves), ("min_gain", min_gain)):
            if value is not None:
                raise ValueError(f"{name} needs old_phy2log (the current placement)")
        return None, -1, 0.0
    old = expert_ids(old_phy2log, "old_phy2log")
    if old.shape != (layers, num_replicas):
        raise ValueError(
            f"old_phy2log must have shape [layers={layers}, num_replicas={num_replicas}], "
            f"got {list(old.shape)}"
        )
    old = np.ascontiguousarray(old, dtype=np.int64)
    moves = -1 if max_moves is None else min(count("max_moves", max_moves, minimum=0), INT64_MAX)
    if min_gain is None:
        gain = 0.0
    else:
        if isinstance(min_gain, bool) or not isinstance(min_gain, (int, float, np.floating, np.integer)):
            raise TypeError(f"min_gain must be a number, got {type(min_gain).__name__}")
        gain = float(min_gain)
        if not 0.0 <= gain < 1.0:
            raise ValueError(f"min_gain must be in [0, 1), got {min_gain}")
    return old, moves, gain
