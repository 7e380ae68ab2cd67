"""Argument validation shared by the native API and the pure-Python reference.

Both raise the same exception, with the same message, for the same bad argument.
"""

from __future__ import annotations

import math
import operator
import os
import sys
from typing import Any, Optional

import numpy as np

REFINE_MODES = ("local", "swap", "none")
HISTORY_MODES = ("auto", "last", "ema", "mean", "robust", "trend")
MAX_HISTORY_WINDOWS = 4096  # weight's windows [T, L, E], and `window`
MAX_REPLAYS = 1024

# Supported ranges: 10-1000x above real deployments (<= ~512 experts, ~1,024 slots, ~64 slots
# per GPU, ~64 nodes per layer), and small enough that every path plans a layer in well under
# a second (worst cases measured by bench/bench_limits.py, in README "Supported sizes").
# Larger arguments fail here, before anything is allocated. The C++ core's entry points
# (csrc/fasteplb/checks.hpp) check the same limits.
MAX_EXPERTS = 1 << 20  # weight's columns: experts per layer, or items per row
MAX_REPLICAS = 1 << 20  # num_replicas / num_phy
# experts * (num_replicas - experts + 1) <= this: one layer's log2phy, [experts, R], at the
# largest replica count R a layer can reach (one expert holding every extra slot).
MAX_LOG2PHY_LAYER = 1 << 24
MAX_ELEMENTS = 1 << 31  # any output, all layers
# refine="local" (the default) and old_phy2log: its search is quadratic in the slots.
LOCAL_MAX_SLOTS = 1 << 13  # num_replicas, or balanced_packing's items per row
LOCAL_MAX_PER_GPU = 1 << 8  # num_replicas // num_gpus, or items per pack
# refine="swap": each round scans the GPUs and compares every pair of two GPUs' slots.
SWAP_MAX_SLOTS = 1 << 16  # num_replicas, or balanced_packing's items per row
SWAP_MAX_PER_GPU = 1 << 8  # num_replicas // num_gpus, or items per pack
MAX_SWAP_ROUNDS = 1000  # swap_rounds with refine="swap" or "local" (its retries use them)
MIGRATION_MAX_NODES = 1 << 10  # num_nodes with old_phy2log
INT_MAX = (1 << 31) - 1


def count(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int >= minimum, else TypeError/ValueError naming `name`."""
    if type(value) is int:  # the common case (a bool's type is bool)
        n = value
    else:
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


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


_HISTORY_DEFAULTS = (0.5, 8, 1.0, 8)  # rebalance_experts' alpha, window, z, replays


def history(
    mode: Any, alpha: Any, window: Any, z: Any, replays: Any
) -> tuple[str, float, int, float, int]:
    """Checks the history options (as the core does); mode None means "auto"."""
    if (
        mode is None
        and type(alpha) is float
        and type(window) is int
        and type(z) is float
        and type(replays) is int
        and (alpha, window, z, replays) == _HISTORY_DEFAULTS
    ):
        return ("auto", *_HISTORY_DEFAULTS)  # the defaults, which every call passes unless told
    if mode is None:
        mode = "auto"
    if not isinstance(mode, str):
        raise TypeError(f"history must be a str or None, got {type(mode).__name__}")
    if mode not in HISTORY_MODES:
        raise ValueError(f"history must be one of {HISTORY_MODES}, got {mode!r}")
    alpha = _real("alpha", alpha)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    window = count("window", window)
    if window > MAX_HISTORY_WINDOWS:
        raise ValueError(f"window must be <= {MAX_HISTORY_WINDOWS}, got {window}")
    z = _real("z", z)
    if not (z >= 0.0 and math.isfinite(z)):
        raise ValueError(f"z must be finite and >= 0, got {z}")
    replays = count("replays", replays)
    if replays > MAX_REPLAYS:
        raise ValueError(f"replays must be <= {MAX_REPLAYS}, got {replays}")
    return mode, alpha, window, z, replays


def history_shape(dims: tuple[int, ...]) -> tuple[int, int, int]:
    """[windows, layers, experts] of a load history."""
    if len(dims) != 3:
        raise ValueError(
            f"weight must be 2-D [layers, experts] or 3-D [windows, layers, experts], got shape "
            f"{tuple(dims)}"
        )
    windows = int(dims[0])
    if windows == 0:
        raise ValueError(f"weight must hold at least one window, got shape {tuple(dims)}")
    if windows > MAX_HISTORY_WINDOWS:
        raise ValueError(
            f"weight holds {windows} windows; at most {MAX_HISTORY_WINDOWS} are supported"
        )
    layers, experts = shape(tuple(dims[1:]))
    _elements("weight", windows * layers, experts)
    # The history's copies and the forecast's per-thread prefix sums, as [T * L, E] loads.
    memory("the forecast", windows * layers, experts, experts)
    return windows, layers, experts


def threads(num_threads: Any) -> int:
    """0 means the default (the usable CPUs); the core caps any value by the CPUs this
    process may run on (its affinity mask) and by the work (layers)."""
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
    rows: int,
    experts: int,
    num_replicas: Any,
    num_groups: Any,
    num_nodes: Any,
    num_gpus: Any,
    refine: Optional[str] = None,
    swap_rounds: int = 0,
    migrate: bool = False,
) -> tuple[int, int, int, int]:
    """Checks rebalance_experts' sizes; returns them as ints. With `refine` (a checked mode)
    also the limits of that mode, of `swap_rounds`, and with `migrate` those of old_phy2log."""
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
    spread = experts * (num_replicas - experts + 1)
    if spread > MAX_LOG2PHY_LAYER:
        raise ValueError(
            f"experts x (num_replicas - experts + 1) must be <= {MAX_LOG2PHY_LAYER} (the "
            f"largest log2phy a layer can need), got {experts} x "
            f"{num_replicas - experts + 1} = {spread}"
        )
    _elements("phy2log", rows, num_replicas)
    if refine is not None:
        if migrate:
            _slots("num_replicas", num_replicas, "with old_phy2log", LOCAL_MAX_SLOTS)
            if num_nodes > MIGRATION_MAX_NODES:
                raise ValueError(
                    f"num_nodes must be <= {MIGRATION_MAX_NODES} with old_phy2log, got {num_nodes}"
                )
        per_gpu = num_replicas // num_gpus
        _mode(
            refine,
            swap_rounds,
            "num_replicas",
            num_replicas,
            "num_replicas // num_gpus (slots per GPU)",
            per_gpu,
        )
    return num_replicas, num_groups, num_nodes, num_gpus


def _slots(name: str, n: int, where: str, limit: int) -> None:
    if n > limit:
        raise ValueError(f"{name} must be <= {limit} {where}, got {n}")


def _mode(refine: str, swap_rounds: int, total: str, n: int, ratio: str, per_pack: int) -> None:
    """The limits of `refine` on n slots (items; described by `total`) with per_pack of them
    per GPU (pack; described by `ratio`), and on swap_rounds."""
    if refine == "local":
        _slots(total, n, "with refine='local'", LOCAL_MAX_SLOTS)
        _slots(ratio, per_pack, "with refine='local'", LOCAL_MAX_PER_GPU)
    elif refine == "swap":
        _slots(total, n, "with refine='swap'", SWAP_MAX_SLOTS)
        _slots(ratio, per_pack, "with refine='swap'", SWAP_MAX_PER_GPU)
    if refine != "none" and swap_rounds > MAX_SWAP_ROUNDS:
        raise ValueError(
            f"swap_rounds must be <= {MAX_SWAP_ROUNDS} with refine={refine!r}, got {swap_rounds}"
        )


def packing(
    rows: int, n: int, num_packs: Any, refine: Optional[str] = None, swap_rounds: int = 0
) -> int:
    """Checks balanced_packing's sizes; with `refine` (a checked mode) also its limits."""
    num_packs = count("num_packs", num_packs)
    if n % num_packs:
        raise ValueError(f"the number of items ({n}) must be divisible by num_packs ({num_packs})")
    if refine is not None:
        _mode(
            refine,
            swap_rounds,
            "weight's items per row",
            n,
            "items per row // num_packs (items per pack)",
            n // num_packs,
        )
    return num_packs


def replication(rows: int, n: int, num_phy: Any) -> int:
    num_phy = count("num_phy", num_phy)
    if num_phy > MAX_REPLICAS:
        raise ValueError(f"num_phy must be <= {MAX_REPLICAS}, got {num_phy}")
    if num_phy < n:
        raise ValueError(f"num_phy must be >= the number of experts ({n}), got {num_phy}")
    _elements("phy2log", rows, num_phy)
    return num_phy


# Memory check (memory()): calls whose estimate stays below this pay nothing.
MEMORY_CHECK_BYTES = 256 << 20
# Per-thread scratch of the planner, in bytes per slot (num_replicas, num_phy or items) and per
# expert, and migration's per-node tables (num_nodes^2), from measured peaks (a 2x margin over
# bench/bench_limits.py's worst cases).
SCRATCH_PER_SLOT = 256
SCRATCH_PER_NODE_PAIR = 48


def memory_estimate(
    rows: int,
    cols: int,
    slots: int,
    threads: int = 0,
    log2phy: bool = False,
    nodes: int = 0,
    copies: int = 2,
) -> int:
    """Bytes a call on `rows` x `cols` loads with `slots` slots per row (the outputs' width)
    may need at its peak: `copies` float64 copies of the loads (conversion, snapshot), the
    int64 outputs (two [rows, slots] and one [rows, cols], and with `log2phy` [rows, cols, R]
    at its largest R = slots - cols + 1, capped at MAX_ELEMENTS, beyond which the core
    refuses it), the planner's scratch per thread (threads as num_threads, 0 for the
    default), and with an old placement on `nodes` >= 1 nodes (0: none) its int64 copies
    ([rows, slots], as given and converted) and migration's per-node tables."""
    workers = max(1, min(threads or _cpus(), rows))
    need = 8 * (copies * rows * cols + 2 * rows * slots + rows * cols)
    if log2phy:
        need += 8 * min(rows * cols * (slots - cols + 1), MAX_ELEMENTS)
    if nodes:
        need += 8 * 2 * rows * slots
    need += workers * (SCRATCH_PER_SLOT * (slots + cols) + SCRATCH_PER_NODE_PAIR * nodes * nodes)
    return need


def memory(
    call: str,
    rows: int,
    cols: int,
    slots: int,
    threads: int = 0,
    log2phy: bool = False,
    nodes: int = 0,
) -> None:
    """Raises ValueError naming `call` when its memory_estimate exceeds the memory available
    (checked before anything is allocated; where the system does not say, not checked). Only
    an estimate above MEMORY_CHECK_BYTES reads the system's figures, once."""
    # The estimate grows with the workers, at most one per row: when even that many stay
    # below the threshold, the CPU count (a system call) is not needed.
    if memory_estimate(rows, cols, slots, max(1, rows), log2phy, nodes) <= MEMORY_CHECK_BYTES:
        return
    need = memory_estimate(rows, cols, slots, threads, log2phy, nodes)
    if need <= MEMORY_CHECK_BYTES:
        return
    free = _available_bytes()
    if free is not None and need > free:
        gib = 1 << 30
        raise ValueError(
            f"{call} needs about {need / gib:.2f} GiB but only {free / gib:.2f} GiB is "
            f"available ({rows} layers x {cols} experts, {slots} slots per layer); plan fewer "
            "layers per call"
        )


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read_int(path: str) -> Optional[int]:
    """The integer in a one-value file (None: absent, unreadable or "max")."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _available_bytes() -> Optional[int]:
    """Bytes this process can still allocate: the smaller of /proc/meminfo's MemAvailable and
    the cgroup's limit minus its usage (v2: memory.max / memory.current, v1:
    memory.limit_in_bytes / memory.usage_in_bytes). None where unknown (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    figures = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    figures.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        limit = _read_int(limit_file)
        if limit is not None and limit < 1 << 60:  # v1 spells "no limit" as a huge number
            usage = _read_int(usage_file) or 0
            figures.append(max(0, limit - usage))
            break
    return min(figures) if figures else None


INT64_MAX = (1 << 63) - 1


def to_numpy(x: Any, name: str = "argument") -> Any:
    """A torch tensor as numpy (on the host); anything else as it is. Tensors without plain
    dense values, and masked arrays, raise TypeError naming `name`."""
    from ._marshal import check_not_masked, check_tensor

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        check_tensor(x, name)
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.to(torch.float64)  # exact; numpy has no bfloat16
        return x.numpy()
    check_not_masked(x, name)
    return x


def expert_ids(x: Any, name: str) -> np.ndarray:
    """`x` as a numpy array of expert ids, not yet converted (so that a huge view of the wrong
    shape can be refused before it is copied): integers, or floats holding whole numbers."""
    arr = np.asarray(to_numpy(x, name))
    if arr.dtype.kind == "f":
        if arr.size and (not np.isfinite(arr).all() or (arr != np.round(arr)).any()):
            raise ValueError(f"{name} must hold integer expert ids")
    elif arr.dtype.kind == "b":
        raise TypeError(f"{name} must hold integers, got dtype bool")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > INT64_MAX:
        raise ValueError(f"{name} holds expert ids beyond int64")
    return arr


def id_range(arr: np.ndarray, experts: int, name: str) -> None:
    """The core's range check, for float ids that would not survive a cast to int64."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    bad = (arr < 0) | (arr >= experts)
    if bad.any():
        at = np.unravel_index(int(np.argmax(bad)), arr.shape)
        raise ValueError(
            f"{name} must hold expert ids in [0, {experts}); found {arr[at]:g} at "
            f"[{', '.join(str(int(i)) for i in at)}]"
        )


def migration(
    old_phy2log: Any,
    max_moves: Any,
    min_gain: Any,
    layers: int,
    num_replicas: int,
    experts: Optional[int] = None,
    max_moves_total: Any = None,
) -> tuple[Any, int, float, int]:
    """Checks rebalance_experts' migration options; returns (old [layers, P] int64 C-contiguous
    numpy or None, max_moves (-1: no cap), min_gain, max_moves_total (-1: no cap)). Expert ids
    are checked by the core."""
    if old_phy2log is None:
        options = (("max_moves", max_moves), ("max_moves_total", max_moves_total))
        for name, value in (*options, ("min_gain", min_gain)):
            if value is not None:
                raise ValueError(f"{name} needs old_phy2log (the current placement)")
        return None, -1, 0.0, -1
    old = expert_ids(old_phy2log, "old_phy2log")
    if old.shape != (layers, num_replicas):
        raise ValueError(
            f"old_phy2log must have shape [layers={layers}, num_replicas={num_replicas}], "
            f"got {list(old.shape)}"
        )
    if experts is not None:
        id_range(old, experts, "old_phy2log")
    old = np.ascontiguousarray(old, dtype=np.int64)
    moves = -1 if max_moves is None else min(count("max_moves", max_moves, minimum=0), INT64_MAX)
    total = (
        -1
        if max_moves_total is None
        else min(count("max_moves_total", max_moves_total, minimum=0), INT64_MAX)
    )
    if min_gain is None:
        gain = 0.0
    else:
        if isinstance(min_gain, bool) or not isinstance(
            min_gain, (int, float, np.floating, np.integer)
        ):
            raise TypeError(f"min_gain must be a number, got {type(min_gain).__name__}")
        gain = float(min_gain)
        if not 0.0 <= gain < 1.0:
            raise ValueError(f"min_gain must be in [0, 1), got {min_gain}")
    return old, moves, gain, total
