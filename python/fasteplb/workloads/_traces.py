"""Traces: windows of a trace, and reading and writing them (the public trace JSON, the
real-matrix JSON, SGLang's recorder dumps, ``.npy``); torch only for ``.pt`` files."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ._profiles import _int


def windows(trace: Any, size: int) -> np.ndarray:
    """Sums of consecutive ``size`` steps: trace [T, L, E] -> [T // size, L, E].

    The incomplete tail (T % size steps) is dropped.
    """
    arr = np.asarray(trace)
    if arr.ndim != 3:
        raise ValueError(f"trace must be [steps, layers, experts], got shape {arr.shape}")
    size = _int("size", size)
    if arr.shape[0] < size:
        raise ValueError(f"size ({size}) must be <= the trace's steps ({arr.shape[0]})")
    count = arr.shape[0] // size
    return arr[: count * size].reshape(count, size, *arr.shape[1:]).sum(axis=1)


# ----------------------------------------------------------------------------------------
# Trace I/O.
# ----------------------------------------------------------------------------------------

_PathLike = Union[str, "os.PathLike[str]"]


def _as_trace(arr: Any, what: str, matrix_ok: bool = True) -> np.ndarray:
    """[T, L, E] (or, if matrix_ok, [L, E]) numbers -> [T, L, E], int64 if all are whole."""
    try:
        out = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: loads must be a rectangular array of numbers ({exc})") from None
    if out.ndim == 2 and matrix_ok:
        out = out[None]
    if out.ndim != 3 or 0 in out.shape:
        expected = (
            "[steps, layers, experts] or [layers, experts]"
            if matrix_ok
            else ("[steps, layers, experts] (each step [layers, experts])")
        )
        raise ValueError(f"{what}: loads must be {expected}, got shape {out.shape}")
    if not (np.isfinite(out).all() and (out >= 0).all()):
        raise ValueError(f"{what}: loads must be finite and >= 0")
    if (out == np.round(out)).all() and out.max() < 2.0**63:
        return out.astype(np.int64)
    return out


def _from_json(doc: Any, what: str) -> np.ndarray:
    if isinstance(doc, dict) and "load_history" in doc:
        hist = doc["load_history"]
        if not isinstance(hist, list) or not hist:
            raise ValueError(f"{what}: load_history must be a non-empty list")
        try:
            steps = [entry["logical_expert_load"] for entry in hist]
        except (TypeError, KeyError):
            raise ValueError(
                f"{what}: every load_history entry must hold logical_expert_load"
            ) from None
        return _as_trace(steps, what, matrix_ok=False)
    if isinstance(doc, dict) and "counts" in doc:
        return _as_trace(doc["counts"], what)
    if isinstance(doc, dict) and "logical_count" in doc:
        return _as_trace(doc["logical_count"], what)
    raise ValueError(
        f"{what}: unknown JSON trace; expected load_history (public trace), counts (real "
        "matrix) or logical_count (SGLang)"
    )


def _torch(why: str) -> Any:
    """torch, for a ``.pt`` file; without it, an ImportError that says what needed it."""
    try:
        import torch
    except ImportError as exc:
        raise ModuleNotFoundError(f"{why} needs torch (pip install torch)", name="torch") from exc
    return torch


def _from_torch(obj: Any, what: str) -> np.ndarray:
    import torch

    if isinstance(obj, dict):
        if "logical_count" not in obj:
            raise ValueError(f"{what}: a .pt dict must hold logical_count (SGLang dump)")
        obj = obj["logical_count"]
    if isinstance(obj, torch.Tensor):
        return _as_trace(obj.detach().cpu().double().numpy(), what)
    raise ValueError(f"{what}: .pt file must hold a tensor or an SGLang dict")


def _format(path: Path, head: bytes) -> str:
    ext = path.suffix.lower()
    if ext == ".json":
        return "json"
    if ext == ".npy":
        return "npy"
    if ext in (".pt", ".pth"):
        return "pt"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return "pt"  # torch's zip format, or its legacy pickle
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    raise ValueError(f"unknown trace format of {str(path)!r}: use .json, .npy or .pt")


def load_trace(path: _PathLike) -> np.ndarray:
    """Read a load trace: [T, L, E] (an [L, E] matrix comes back as [1, L, E]).

    Formats, by extension, else by content: the public trace JSON (``load_history``), the
    real-matrix JSON (``counts``), SGLang's JSON or ``torch.save`` dump (``logical_count``,
    or a plain tensor), ``.npy``. int64 when every value is whole, float64 otherwise.
    """
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(16)
    kind = _format(p, head)
    what = str(p)
    if kind == "json":
        with open(p, encoding="utf-8") as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{what}: not valid JSON ({exc})") from None
        return _from_json(doc, what)
    if kind == "npy":
        return _as_trace(np.load(p, allow_pickle=False), what)
    torch = _torch(f"reading the .pt trace {what!r}")
    return _from_torch(torch.load(p, map_location="cpu", weights_only=True), what)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def save_trace(path: _PathLike, trace: Any, meta: Optional[Mapping[str, Any]] = None) -> None:
    """Write a trace [T, L, E] (or [L, E]) in the format named by the extension.

    ``.json``: the public trace format ``{"load_history": [{"logical_expert_load": ...}]}``
    with ``meta`` as a top-level "meta" block; ``.pt``/``.pth``: SGLang's recorder dump
    ``{"rank": 0, "logical_count": tensor [T, L, E], ...}`` (plus "meta"); ``.npy``: the
    array (no room for meta). numpy arrays inside meta are written as lists.
    """
    p = Path(path)
    arr = _as_trace(trace, "trace")
    ext = p.suffix.lower()
    if meta is not None and not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a mapping, got {type(meta).__name__}")
    if ext == ".json":
        doc: dict[str, Any] = {
            "load_history": [{"logical_expert_load": step.tolist()} for step in arr]
        }
        if meta is not None:
            doc["meta"] = _jsonable(meta)
        with open(p, "w", encoding="utf-8") as f:
            json.dump(doc, f, separators=(",", ":"))
    elif ext == ".npy":
        if meta is not None:
            raise ValueError("meta cannot be stored in a .npy file; use .json or .pt")
        np.save(p, arr, allow_pickle=False)
    elif ext in (".pt", ".pth"):
        torch = _torch(f"writing the .pt trace {str(p)!r}")
        doc = {
            "rank": 0,
            "logical_count": torch.from_numpy(np.ascontiguousarray(arr)),
            "average_utilization_rate_over_window": None,
        }
        if meta is not None:
            doc["meta"] = _jsonable(meta)
        torch.save(doc, p)
    else:
        raise ValueError(f"unknown trace format {ext!r} of {str(p)!r}: use .json, .npy or .pt")
