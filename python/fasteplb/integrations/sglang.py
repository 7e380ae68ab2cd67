"""fasteplb in SGLang: its EPLB algorithm contract, its recorder's files, its
``--init-expert-location`` files, and a plugin that routes its DeepSeek algorithms here.

Operators add (see the README)::

    pip install fasteplb
    export FASTEPLB_SGLANG=1      # in the environment of every SGLang process

fasteplb's ``sglang.srt.plugins`` entry point ``fasteplb`` (:func:`plugin`) runs in every
SGLang process; with ``FASTEPLB_SGLANG=1`` it routes SGLang's ``deepseek`` and
``deepseek_hierarchical`` EPLB algorithms (and ``auto``, which picks one of them) to
fasteplb (:func:`register`); the ``deepseek_vec`` and ``elasticity_aware`` algorithms stay
SGLang's. Where ``SGLANG_PLUGINS`` restricts the plugins, add ``fasteplb`` to it.

Contracts, as in SGLang 0.5.23 (``sglang/srt/eplb/``):

- ``eplb_algorithms.rebalance_experts(tokens_per_expert [T, L, E], num_physical_experts,
  num_local_physical_experts, num_groups, num_nodes, algorithm)`` -> (phy2log [L, P],
  log2phy [L, E, R] -1 padded, logcnt [L, E]); ``deepseek`` sums over T, plans with the
  global policy, ``deepseek_hierarchical`` with the hierarchical one (``enable_hierarchical``
  of SGLang's ``deepseek.rebalance_experts``). It is looked up on the module at every call
  (``expert_location.py``: ``ExpertLocationMetadata.init_by_eplb``), so replacing the
  module attribute routes both the start-up plan from ``--init-expert-location`` and every
  online rebalance (``eplb_manager.py``). SGLang passes no current placement; the routed
  algorithm reads the live one (``get_global_expert_location_metadata()``) and plans from
  it when it has the plan's shape (fresh otherwise, e.g. at start-up or after an elastic
  scale-up).
- ``--init-expert-location`` (``expert_location.py``:
  ``compute_initial_expert_location_metadata``): a ``.pt`` file (``torch.load``), a
  ``.json`` file or a JSON string holding a dict with exactly one of
  ``physical_to_logical_map`` ([L, P]; passed as keyword arguments to ``init_by_mapping``,
  so no other key is allowed) or ``logical_count`` ([L, E] or [T, L, E]: planned at start-up).
- The expert-distribution recorder (``expert_distribution.py``): see
  :func:`load_recorder_dump`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from . import _common

__all__ = [
    "ENV",
    "load_recorder_dump",
    "plugin",
    "rebalance_experts",
    "register",
    "save_init_expert_location",
    "unregister",
]

ENV = "FASTEPLB_SGLANG"
ROUTED = ("deepseek", "deepseek_hierarchical")  # SGLang algorithms fasteplb plans

_ALGORITHMS = "sglang.srt.eplb.eplb_algorithms"
_log = logging.getLogger("fasteplb")
_PathLike = Union[str, "os.PathLike[str]"]


def rebalance_experts(
    tokens_per_expert: Any,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: Optional[int],
    num_nodes: int,
    *,
    enable_hierarchical: Optional[bool] = None,
    old_phy2log: Any = None,
    history_window: Optional[int] = None,
    **options: Any,
) -> tuple[Any, Any, Any]:
    """SGLang's EPLB algorithm contract, planned by fasteplb.

    Args:
        tokens_per_expert: [T, L, E] load window (summed over T) or [L, E]; torch tensor on
            any device, or array-like
        num_physical_experts: physical expert slots P
        num_local_physical_experts: slots per GPU; ``P / num_local_physical_experts`` GPUs
        num_groups: expert groups (None, as SGLang passes for models without groups: 1)
        num_nodes: server nodes
        enable_hierarchical: True: hierarchical policy (``deepseek_hierarchical``), False:
            global (``deepseek``), None: hierarchical when ``num_groups % num_nodes == 0``
            (``auto``)
        old_phy2log: the current placement [L, P] to plan from (migration-aware); a map of
            another shape is ignored, rows that are not a complete placement are planned
            fresh
        history_window: with ``history`` among the options and a [T, L, E] input, the steps
            of one window (default: T // 16, at least 1): the last windows of that many steps
            are the history the next window's load is forecast from
            (:func:`fasteplb.forecast_load`) instead of summing all T steps
        **options: fasteplb.rebalance_experts options (``refine``, ``swap_rounds``,
            ``num_threads``, ``max_moves``, ``max_moves_total``, ``min_gain``, ``history``,
            ``alpha``, ``window``, ``z``, ``replays``)

    Returns:
        (phy2log [L, P], log2phy [L, E, R] -1 padded, logcnt [L, E]), int64: torch tensors on
        the input's device for torch input, numpy otherwise
    """
    num_physical_experts = _int("num_physical_experts", num_physical_experts)
    local = _int("num_local_physical_experts", num_local_physical_experts)
    if num_physical_experts % local:
        raise ValueError(
            f"num_physical_experts ({num_physical_experts}) must be divisible by "
            f"num_local_physical_experts ({local})"
        )
    weight = tokens_per_expert
    shape = tuple(weight.shape) if hasattr(weight, "shape") else np.shape(weight)
    if len(shape) == 3 and options.get("history") is not None:
        steps = int(shape[0])
        size = (
            max(1, steps // 16)
            if history_window is None
            else _int("history_window", history_window)
        )
        if size > steps:
            raise ValueError(f"history_window ({size}) exceeds the {steps} steps given")
        count = steps // size
        tail = _common.host_array(weight)[steps - count * size :]
        weight, options = _common.forecast(
            tail.reshape(count, size, *shape[1:]).sum(axis=1), options
        )
    elif len(shape) == 3:
        weight = weight.sum(0) if _common.is_tensor(weight) else np.asarray(weight).sum(0)
    elif len(shape) != 2:
        raise ValueError(
            "tokens_per_expert must be [T, layers, experts] or [layers, experts], got shape "
            f"{shape}"
        )
    out = _common.plan(
        weight, num_physical_experts, 1 if num_groups is None else num_groups, num_nodes,
        num_physical_experts // local, old_phy2log, enable_hierarchical=enable_hierarchical,
        **options,
    )  # fmt: skip
    if not _common.is_tensor(tokens_per_expert):
        return out
    import torch

    device = tokens_per_expert.device
    return tuple(torch.from_numpy(x).to(device) for x in out)  # type: ignore[return-value]


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


# --------------------------------------------------------------------------- the plugin


def _live_placement() -> Any:
    """SGLang's current physical_to_logical_map, or None where it cannot be read."""
    try:
        from sglang.srt.eplb.expert_location import get_global_expert_location_metadata

        metadata = get_global_expert_location_metadata()
    except Exception:  # no SGLang runtime context (e.g. offline), or an older layout
        return None
    if metadata is None:
        return None
    cpu = getattr(metadata, "physical_to_logical_map_cpu", None)
    return cpu if cpu is not None else getattr(metadata, "physical_to_logical_map", None)


def _routed(original: Any, options: dict[str, Any], migration: bool) -> Any:
    def rebalance_experts_routed(
        tokens_per_expert: Any,
        num_physical_experts: int,
        num_local_physical_experts: int,
        num_groups: Optional[int],
        num_nodes: int,
        algorithm: Any,
    ) -> Any:
        name = getattr(algorithm, "name", algorithm)
        if name not in ROUTED:
            return original(
                tokens_per_expert=tokens_per_expert,
                num_physical_experts=num_physical_experts,
                num_local_physical_experts=num_local_physical_experts,
                num_groups=num_groups,
                num_nodes=num_nodes,
                algorithm=algorithm,
            )
        return rebalance_experts(
            tokens_per_expert, num_physical_experts, num_local_physical_experts, num_groups,
            num_nodes, enable_hierarchical=name == "deepseek_hierarchical",
            old_phy2log=_live_placement() if migration else None, **options,
        )  # fmt: skip

    rebalance_experts_routed.__doc__ = (
        "SGLang's eplb_algorithms.rebalance_experts with deepseek / deepseek_hierarchical "
        "planned by fasteplb (fasteplb.integrations.sglang.register)."
    )
    rebalance_experts_routed.__wrapped__ = original  # type: ignore[attr-defined]
    rebalance_experts_routed._fasteplb = True  # type: ignore[attr-defined]
    return rebalance_experts_routed


def register(*, migration: bool = True, **options: Any) -> None:
    """Route SGLang's ``deepseek`` / ``deepseek_hierarchical`` EPLB algorithms (and ``auto``)
    to fasteplb, by replacing ``sglang.srt.eplb.eplb_algorithms.rebalance_experts`` (the
    others are passed through to SGLang's own function).

    Args:
        migration: plan from SGLang's live placement when it has the plan's shape
        **options: fasteplb.rebalance_experts options (checked now)

    Idempotent (a second call replaces the options); :func:`unregister` restores SGLang's.

    Raises:
        ImportError: SGLang's eplb_algorithms module cannot be imported
        TypeError, ValueError: a bad option
    """
    import importlib

    options = _common.check_options(options, "fasteplb.integrations.sglang.register")
    module = importlib.import_module(_ALGORITHMS)
    current = module.rebalance_experts
    original = current.__wrapped__ if getattr(current, "_fasteplb", False) else current
    module.rebalance_experts = _routed(original, options, migration)
    _log.info("fasteplb: SGLang's %s EPLB algorithms are planned by fasteplb", "/".join(ROUTED))


def unregister() -> None:
    """Put SGLang's own ``eplb_algorithms.rebalance_experts`` back (if SGLang is loaded)."""
    import sys

    module = sys.modules.get(_ALGORITHMS)
    current = getattr(module, "rebalance_experts", None)
    if getattr(current, "_fasteplb", False):
        module.rebalance_experts = current.__wrapped__  # type: ignore[union-attr]


def plugin() -> None:
    """The ``sglang.srt.plugins`` entry point (``fasteplb.integrations.sglang:plugin``).

    With ``FASTEPLB_SGLANG=1`` (or true/yes/on) calls :func:`register`; unset or 0 does
    nothing, so installing fasteplb alone never changes SGLang. Idempotent.

    Raises:
        ValueError: FASTEPLB_SGLANG has another value
    """
    if _common.env_flag(ENV):
        register()


# --------------------------------------------------------------------------- files

_DUMP_GLOB = "expert_distribution_recorder_*.pt"


def _numpy(obj: Any) -> Any:
    """Tensors (also inside dicts, lists and tuples) as numpy arrays."""
    if _common.is_tensor(obj):
        return _common.host_array(obj)
    if isinstance(obj, dict):
        return {k: _numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_numpy(v) for v in obj)
    return obj


def _int_array(x: Any, what: str, ndim: int) -> np.ndarray:
    arr = np.asarray(_common.host_array(x))
    if arr.ndim != ndim or arr.dtype.kind not in "iuf" or 0 in arr.shape:
        raise ValueError(f"{what} must be a non-empty {ndim}-D array of counts, got {arr.shape}")
    if arr.dtype.kind == "f":
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(f"{what} must hold whole numbers")
    if (arr < 0).any():
        raise ValueError(f"{what} must be >= 0")
    return arr.astype(np.int64)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(path.glob(_DUMP_GLOB))
        if not found:
            raise FileNotFoundError(f"{path}: no {_DUMP_GLOB} files in this directory")
        return found
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return [path]


def _read(path: Path) -> dict[str, Any]:
    import torch

    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # torch raises several types for a file it cannot unpickle
        raise ValueError(f"{path}: not a torch.save file SGLang's recorder wrote ({exc})") from None
    if not isinstance(doc, dict) or not ({"logical_count", "records"} & set(doc)):
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(
            f"{path}: not an SGLang recorder dump (expected logical_count or records, got {keys})"
        )
    return doc


def _rank_of(path: Path, doc: dict[str, Any]) -> int:
    records = doc.get("records") or []
    if records and isinstance(records[0], dict) and "rank" in records[0]:
        return int(records[0]["rank"])
    m = re.search(r"_(\d+)\.pt$", path.name)  # expert_distribution_recorder_{time}_{rank}.pt
    return int(m.group(1)) if m else 0


def load_recorder_dump(path: _PathLike) -> dict[str, Any]:
    """Read the files SGLang's expert-distribution recorder dumps (``torch.save``; needs torch).

    ``path`` is one dump file, or a directory: its ``expert_distribution_recorder_*.pt``
    files (detail modes write one per rank, merged here).

    Stat modes (``--expert-distribution-recorder-mode stat`` / ``stat_approx``: rank 0 writes
    ``{"rank", "logical_count": [T, L, E], "average_utilization_rate_over_window"}``, the
    counts already summed over ranks) return::

        {"mode": "stat", "logical_count": int64 [T, L, E], "rank": int,
         "average_utilization_rate_over_window": float or None}

    plus ``"physical_to_logical_map"`` (int64 [L, P]) if the file holds
    ``last_physical_to_logical_map``.

    Detail modes (``per_pass`` / ``per_token``: every rank writes ``{"records": [...],
    "last_physical_to_logical_map": [L, P]}``, each record a dict ``forward_pass_id``,
    ``rank``, ``gatherer_key`` and its gatherer's data, always ``global_physical_count``
    [L, P]: that rank's tokens per physical slot in that forward pass) return::

        {"mode": "detail",
         "records": {rank: [record, ...]},      # as SGLang wrote them, tensors as numpy
         "physical_to_logical_map": int64 [L, P],  # the last one (the same on every rank)
         "forward_pass_ids": int64 [T],          # the distinct ids, ascending
         "physical_count": int64 [T, L, P],      # global_physical_count summed over ranks
         "logical_count": int64 [T, L, E]}       # physical_count per logical expert

    ``logical_count`` maps slots to experts through the last map, as SGLang's stat mode does
    with its current one (exact unless the placement changed while recording); ``E`` is the
    map's largest expert id + 1 (a placement holds every expert). ``logical_count`` is what
    :func:`rebalance_experts` and ``fasteplb plan`` take.

    Raises:
        FileNotFoundError: no such file, or no dump files in the directory
        ValueError: not a recorder dump; several stat dumps, or stat and detail dumps, in one
            directory; ranks whose maps or shapes disagree
    """
    p = Path(path)
    files = _files(p)
    docs = [(f, _read(f)) for f in files]
    stats = [(f, d) for f, d in docs if "logical_count" in d]
    if stats:
        if len(docs) > 1:
            what = "stat dumps" if len(stats) == len(docs) else "stat and detail dumps"
            raise ValueError(
                f"{p}: holds {len(docs)} {what}; pass one stat dump file (each already "
                "sums every rank)"
            )
        f, doc = stats[0]
        rate = doc.get("average_utilization_rate_over_window")
        out: dict[str, Any] = {
            "mode": "stat",
            "logical_count": _int_array(_squeeze3(doc["logical_count"]), f"{f}: logical_count", 3),
            "rank": int(doc.get("rank", 0)),
            "average_utilization_rate_over_window": None if rate is None else float(rate),
        }
        if doc.get("last_physical_to_logical_map") is not None:
            out["physical_to_logical_map"] = _int_array(
                doc["last_physical_to_logical_map"], f"{f}: last_physical_to_logical_map", 2
            )
        return out
    return _merge_detail(p, docs)


def _squeeze3(x: Any) -> Any:
    """[L, E] counts as one step [1, L, E] (SGLang's init_by_eplb accepts both)."""
    arr = _common.host_array(x)
    return arr[None] if arr.ndim == 2 else arr


def _merge_detail(p: Path, docs: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    records: dict[int, list[dict[str, Any]]] = {}
    phy2log: Optional[np.ndarray] = None
    counts: dict[int, np.ndarray] = {}
    for f, doc in docs:
        if doc.get("last_physical_to_logical_map") is None:
            raise ValueError(f"{f}: a detail dump must hold last_physical_to_logical_map")
        m = _int_array(doc["last_physical_to_logical_map"], f"{f}: last_physical_to_logical_map", 2)
        if phy2log is None:
            phy2log = m
        elif m.shape != phy2log.shape or not np.array_equal(m, phy2log):
            raise ValueError(f"{f}: last_physical_to_logical_map differs from the other ranks'")
        rank = _rank_of(f, doc)
        if rank in records:
            raise ValueError(f"{f}: a second dump of rank {rank} in {p}")
        recs = [_numpy(r) for r in doc["records"]]
        recs.sort(key=lambda r: r.get("forward_pass_id", 0))
        records[rank] = recs
        for r in recs:
            if "global_physical_count" not in r:
                raise ValueError(f"{f}: a record without global_physical_count")
            c = _int_array(r["global_physical_count"], f"{f}: global_physical_count", 2)
            if c.shape != phy2log.shape:
                raise ValueError(
                    f"{f}: global_physical_count has shape {c.shape}, the map {phy2log.shape}"
                )
            key = int(r.get("forward_pass_id", 0))
            counts[key] = counts[key] + c if key in counts else c
    assert phy2log is not None
    ids = np.array(sorted(counts), dtype=np.int64)
    layers, slots = phy2log.shape
    experts = int(phy2log.max()) + 1
    physical = (
        np.stack([counts[int(i)] for i in ids])
        if ids.size
        else np.zeros((0, layers, slots), dtype=np.int64)
    )
    logical = np.zeros((len(ids), layers, experts), dtype=np.int64)
    for layer in range(layers):  # scatter-add over slots, as SGLang's stat mode does
        np.add.at(logical[:, layer], (slice(None), phy2log[layer]), physical[:, layer])
    return {
        "mode": "detail",
        "records": dict(sorted(records.items())),
        "physical_to_logical_map": phy2log,
        "forward_pass_ids": ids,
        "physical_count": physical,
        "logical_count": logical,
    }


def save_init_expert_location(path: _PathLike, phy2log: Any) -> None:
    """Write ``phy2log`` [L, P] as a file SGLang's ``--init-expert-location`` reads:
    ``{"physical_to_logical_map": [[...], ...]}`` as JSON (``.json``) or as ``torch.save``
    of an int64 tensor (``.pt``, needs torch). SGLang tells the two apart by the suffix,
    exactly ``.json`` / ``.pt``; the dict holds no other key, since SGLang passes its keys to
    ``ExpertLocationMetadata.init_by_mapping`` as keyword arguments.

    Raises:
        ValueError: another suffix, or phy2log not a non-empty [L, P] array of expert ids
            (integers >= 0)
        TypeError: phy2log does not hold integers
    """
    p = Path(path)
    suffix = "".join(p.suffixes[-1:])
    if suffix not in (".json", ".pt"):
        raise ValueError(
            f"path must end in .json or .pt (SGLang's --init-expert-location reads those by "
            f"suffix), got {str(p)!r}"
        )
    arr = np.asarray(_common.host_array(phy2log))
    if arr.dtype.kind not in "iu":
        raise TypeError(f"phy2log must hold integers, got dtype {arr.dtype}")
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"phy2log must be a non-empty [layers, slots] array, got {arr.shape}")
    if (arr < 0).any():
        raise ValueError("phy2log must hold expert ids >= 0")
    arr = arr.astype(np.int64)
    if suffix == ".json":
        text = json.dumps({"physical_to_logical_map": arr.tolist()}, separators=(",", ":"))
        p.write_text(text + "\n", encoding="utf-8")
        return
    import torch

    torch.save({"physical_to_logical_map": torch.from_numpy(np.ascontiguousarray(arr))}, p)
