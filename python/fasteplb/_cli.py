"""``fasteplb plan`` and ``fasteplb report``: plan from a load file, score a plan (private).

Everything a user can get wrong (a missing or unreadable file, a bad shape, sizes that do
not divide, an unknown format, a bad number, an output path that cannot be written) is
checked before the long work starts and ends the command with one line on stderr and exit
status 2 (``UserError``); so do the ``ValueError`` / ``TypeError`` that fasteplb's own
functions raise for bad input. ``main`` in ``__main__`` turns them into that line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Callable, Optional

import numpy as np

from . import __version__
from ._checks import HISTORY_MODES as HISTORY_CHOICES
from ._checks import MAX_REPLICAS

__all__ = ["FORMATS", "Progress", "UserError", "add_commands", "read_plan", "run"]


class UserError(Exception):
    """A mistake in the command line or its files: reported as one line, exit status 2."""


# ----------------------------------------------------------------------------------------
# Output formats.
# ----------------------------------------------------------------------------------------

# format -> the file suffixes it can be written as (the --out suffix picks the file type).
FORMATS: dict[str, tuple[str, ...]] = {
    "json": (".json",),
    "deepseek": (".pt", ".npz"),
    "vllm": (".pt", ".npz", ".json"),
    "sglang": (".json", ".pt"),
    "trtllm": (".yaml", ".yml", ".npz"),
}

FORMAT_HELP = """\
output formats (--format; the file type follows the --out suffix):
  json      fasteplb's own plan file (.json): {"format": "fasteplb-plan", "phy2log" [L][P],
            "log2phy" [L][E][R] (-1 padded), "logcnt" [L][E], "num_layers", "num_experts",
            "num_replicas", "num_groups", "num_nodes", "num_gpus", "policy", "options"
            (the refine mode, --window, --max-moves, --min-gain, --load and --old used),
            "fasteplb_version"}; `report` reads the sizes back from it.
  deepseek  DeepSeek eplb.py's return value (phy2log, log2phy, logcnt), int64:
            .pt = torch.save of the 3-tuple of tensors; .npz = arrays "phy2log",
            "log2phy", "logcnt".
  vllm      vLLM's EplbState maps: "physical_to_logical_map" [L][P] (what a vLLM policy's
            rebalance_experts returns and takes back as old_global_expert_indices),
            "logical_to_physical_map" [L][E][R] (each expert's slots in ascending order,
            -1 padded, R = the largest replica count) and "logical_replica_count" [L][E],
            as vLLM's compute_logical_maps derives them; .pt = torch.save of a dict of
            int64 tensors, .npz = int64 arrays, .json = lists.
  sglang    what SGLang's --init-expert-location accepts: {"physical_to_logical_map"
            [L][P]} as .json or .pt (fasteplb.integrations.sglang.save_init_expert_location).
  trtllm    TensorRT-LLM. .yaml/.yml: a MoeLoadBalancerConfig file (num_slots,
            initial_global_assignments {model layer: [expert per slot]},
            layer_updates_per_iter: 0) for moe_config.load_balancer; MoE layer l is
            model layer --first-layer + l (DeepSeek-V3: 3, its first_k_dense_replace).
            .npz: the runtime's MoePlacementInfo CSR per layer: "expertReplicaCount" [L][E],
            "expertReplicaStartOffset" [L][E], "globalSlotIds" [L][P], with
            "initial_global_assignments" [L][P] and "layers" [L] (model layer indices).
  --old and --plan read any of these files back (and a bare [L][P] .npy array)."""


def _suffix(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _check_format(fmt: str, out: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    suffix = _suffix(out)
    if suffix not in FORMATS[fmt]:
        raise UserError(
            f"--format {fmt} is written as {' or '.join(FORMATS[fmt])}, but --out {out!r} "
            f"ends in {suffix or 'no suffix'}"
        )
    return suffix


def _need_torch(why: str) -> Any:
    try:
        import torch
    except ImportError:
        raise UserError(f"{why} needs torch (pip install torch)") from None
    return torch


def _integration(module: str, names: tuple[str, ...]) -> tuple[Callable[..., Any], ...]:
    """The named functions of fasteplb.integrations.<module>, or a UserError."""
    import importlib

    try:
        mod = importlib.import_module(f"fasteplb.integrations.{module}")
        return tuple(getattr(mod, name) for name in names)
    except (ImportError, AttributeError) as exc:
        raise UserError(
            f"this fasteplb has no usable fasteplb.integrations.{module} ({exc})"
        ) from None


# ----------------------------------------------------------------------------------------
# Checks before the work.
# ----------------------------------------------------------------------------------------


def _check_input(path: str, what: str, *, dump_dir: bool = False) -> None:
    """``path`` exists and can be read; ``dump_dir``: a directory of SGLang recorder dumps
    is accepted too."""
    if not os.path.exists(path):
        raise UserError(f"{what} {path!r}: no such file")
    if os.path.isdir(path):
        if not dump_dir:
            raise UserError(f"{what} {path!r} is a directory, not a file")
        _need_torch(f"reading SGLang recorder dumps from {what} {path!r}")
        _integration("sglang", ("load_recorder_dump",))
        return
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} {path!r} cannot be read (permission denied)")
    if _suffix(path) in (".pt", ".pth"):
        _need_torch(f"reading {what} {path!r} (.pt)")


def _check_output(path: str, what: str = "--out") -> None:
    if os.path.isdir(path):
        raise UserError(f"{what} {path!r} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{what} {path!r}: the directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path!r}: the directory {parent!r} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path!r} exists and is not writable")


def _divides(what: str, a: int, b_name: str, b: int) -> None:
    if a % b:
        raise UserError(f"{what} ({a}) must be divisible by {b_name} ({b})")


# The API's argument names in its messages -> the options that set them.
_OPTION_NAMES = {
    "num_replicas": "--replicas",
    "num_gpus": "--gpus",
    "num_nodes": "--nodes",
    "num_groups": "--groups",
    "old_phy2log": "--old",
    "max_moves": "--max-moves",
    "max_moves_total": "--max-moves-total",
    "min_gain": "--min-gain",
    "num_threads": "--threads",
    "weight": "--load",
}
_NAMES = re.compile(r"\b(" + "|".join(_OPTION_NAMES) + r")\b")


@contextmanager
def _library(what: str = "") -> Iterator[None]:
    """fasteplb's ValueError / TypeError for bad input -> one UserError line (``what``:
    where from; empty: the planner, whose argument names become the options' names)."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        if what:
            raise UserError(f"{what}: {exc}") from None
        raise UserError(_NAMES.sub(lambda m: _OPTION_NAMES[m.group(1)], str(exc))) from None


# ----------------------------------------------------------------------------------------
# Progress.
# ----------------------------------------------------------------------------------------


class Progress:
    """A one-line progress indicator on ``stream`` (stderr), drawn only when the stream is
    a terminal and only once the work has taken ``delay`` seconds (quick work shows
    nothing). ``total`` None: a spinner with the elapsed time; else a bar of ``update``
    steps. Use as a context manager; the line is erased at the end."""

    WIDTH = 30

    def __init__(
        self,
        label: str,
        total: Optional[int] = None,
        *,
        unit: str = "",
        stream: Optional[IO[str]] = None,
        delay: float = 1.0,
        interval: float = 0.1,
        enabled: Optional[bool] = None,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled, self.delay, self.interval = enabled, delay, interval
        self.done = 0
        self.drawn = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._start = 0.0
        self._width = 0

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="fasteplb-progress")
            self._thread.daemon = True
            self._thread.start()
        return self

    def update(self, n: int = 1) -> None:
        self.done += n

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        if self.total:
            frac = min(1.0, self.done / self.total)
            full = int(frac * self.WIDTH)
            bar = "#" * full + "." * (self.WIDTH - full)
            unit = f" {self.unit}" if self.unit else ""
            return f"{self.label} [{bar}] {self.done}/{self.total}{unit} {elapsed:.1f} s"
        spin = "|/-\\"[int(elapsed / self.interval) % 4]
        return f"{self.label} {spin} {elapsed:.1f} s"

    def _draw(self) -> None:
        text = self.line()
        pad = max(0, self._width - len(text))
        self._width = len(text)
        try:
            self.stream.write("\r" + text + " " * pad)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: stop drawing
            self._stop.set()
        self.drawn = True

    def _run(self) -> None:
        if self._stop.wait(self.delay):
            return
        while not self._stop.is_set():
            self._draw()
            self._stop.wait(self.interval)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.drawn:
            try:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
            except (OSError, ValueError):
                pass


# ----------------------------------------------------------------------------------------
# Reading loads and plans.
# ----------------------------------------------------------------------------------------

_READ_ERRORS = (
    OSError,
    EOFError,
    RuntimeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    KeyError,
    IndexError,
    AttributeError,
)


def load_weight(path: str, window: Optional[int]) -> tuple[np.ndarray, int]:
    """[L, E] loads: the trace of ``path`` summed over its last ``window`` steps (all
    when None). Returns (weight, steps summed)."""
    with Progress(f"loading {os.path.basename(os.path.normpath(path))}"):
        trace = _read_trace(path)
        steps = trace.shape[0]
        if window is not None and window > steps:
            raise UserError(f"--window {window} exceeds the {steps} steps in --load {path!r}")
        used = steps if window is None else window
        weight = trace[steps - used :].sum(axis=0)
    return weight, used


def load_forecast(
    path: str, window: Optional[int], windows: int, mode: str
) -> tuple[np.ndarray, int, str]:
    """[L, E]: the next window's load, forecast (``mode``) from the trace's last ``windows``
    windows of ``window`` steps. Returns (forecast, windows used, the forecast used)."""
    from . import forecast_load

    if window is None:
        raise UserError("--history needs --window W: the steps of one window")
    with Progress(f"loading {os.path.basename(os.path.normpath(path))}"):
        trace = _read_trace(path)
    steps = trace.shape[0]
    if window > steps:
        raise UserError(f"--window {window} exceeds the {steps} steps in --load {path!r}")
    used = min(windows, steps // window)
    tail = trace[steps - used * window :]
    past = tail.reshape(used, window, *trace.shape[1:]).sum(axis=1)
    with _library():
        forecast, name = forecast_load(past, mode)
    return np.asarray(forecast), used, name


def _read_trace(path: str) -> np.ndarray:
    from . import workloads

    if os.path.isdir(path):
        (load,) = _integration("sglang", ("load_recorder_dump",))
        try:
            dump = load(path)
        except (ValueError, TypeError, *_READ_ERRORS) as exc:
            raise UserError(f"--load: {exc}") from None
        return _counts(dump["logical_count"], path)
    try:
        return workloads.load_trace(path)
    except (ValueError, TypeError) as exc:
        trace = _recorder_dump(path)
        if trace is None:
            named = str(path) in str(exc)  # load_trace's own messages name the file
            raise UserError(f"--load{'' if named else f' {path!r}'}: {exc}") from None
        return trace
    except _READ_ERRORS as exc:
        raise UserError(f"--load {path!r} cannot be read: {exc}") from None


def _counts(count: Any, path: str) -> np.ndarray:
    arr = np.asarray(count.detach().cpu().numpy() if hasattr(count, "detach") else count)
    if arr.ndim != 3 or 0 in arr.shape:
        raise UserError(f"--load {path!r}: logical_count must be [T, L, E], got {arr.shape}")
    return arr


def _recorder_dump(path: str) -> Optional[np.ndarray]:
    """SGLang's detail-mode recorder dumps, through fasteplb.integrations.sglang, when
    load_trace does not read ``path``; None when that does not read it either."""
    if _suffix(path) not in (".pt", ".pth"):
        return None
    try:
        from .integrations.sglang import load_recorder_dump
    except ImportError:
        return None
    try:
        return _counts(load_recorder_dump(path)["logical_count"], path)
    except (UserError, ValueError, TypeError, *_READ_ERRORS):
        return None


def _as_plan(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{what}: phy2log is not a rectangular array ({exc})") from None
    if arr.ndim != 2 or 0 in arr.shape:
        raise UserError(f"{what}: phy2log must be [layers, slots], got shape {arr.shape}")
    if arr.dtype.kind not in "iu" and not (
        arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all()
    ):
        raise UserError(f"{what}: phy2log must hold integer expert ids, got {arr.dtype}")
    return arr.astype(np.int64)


def _assignments(table: Any, what: str) -> np.ndarray:
    """TensorRT-LLM's {layer: [expert per slot]} -> rows in layer order."""
    if not isinstance(table, dict) or not table:
        raise UserError(f"{what}: initial_global_assignments must be a non-empty mapping")
    try:
        keys = sorted(table, key=int)
    except (TypeError, ValueError):
        raise UserError(f"{what}: initial_global_assignments keys must be layer numbers") from None
    return _as_plan([table[k] for k in keys], what)


def _yaml(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        import yaml
    except ImportError:
        return _own_yaml(text, path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path!r} is not valid YAML ({str(exc).splitlines()[0]})") from None


def _own_yaml(text: str, path: str) -> dict[str, Any]:
    """Reads back the TensorRT-LLM YAML that ``plan --format trtllm`` writes, without PyYAML
    (top-level ``key: value`` lines, and ``initial_global_assignments:`` with indented
    ``layer: [ids]`` lines)."""
    doc: dict[str, Any] = {}
    current: Optional[dict[Any, Any]] = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        key, sep, value = line.strip().partition(":")
        try:
            parsed = json.loads(value) if value.strip() else None
        except json.JSONDecodeError:
            parsed = value.strip()
        if not sep:
            raise UserError(f"{path!r}: cannot read this YAML without PyYAML (pip install pyyaml)")
        if raw[:1] in (" ", "\t"):
            if current is None:
                raise UserError(f"{path!r}: cannot read this YAML without PyYAML")
            current[int(key) if key.isdigit() else key] = parsed
        elif value.strip():
            doc[key] = parsed
            current = None
        else:
            current = doc[key] = {}
    return doc


def read_plan(path: str, what: str = "--plan") -> tuple[np.ndarray, dict[str, Any]]:
    """phy2log [L, P] from any file ``plan`` writes (or a bare .npy), and the sizes the file
    records (only fasteplb's own json: num_gpus, num_nodes, num_groups)."""
    _check_input(path, what)
    suffix = _suffix(path)
    where = f"{what} {path!r}"
    meta: dict[str, Any] = {}
    try:
        if suffix in (".yaml", ".yml"):
            doc = _yaml(path)
            if not isinstance(doc, dict) or "initial_global_assignments" not in doc:
                raise UserError(f"{where}: a YAML plan must hold initial_global_assignments")
            return _assignments(doc["initial_global_assignments"], where), meta
        if suffix == ".json":
            with open(path, encoding="utf-8") as f:
                try:
                    doc = json.load(f)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{where} is not valid JSON ({exc})") from None
            if not isinstance(doc, dict):
                raise UserError(f"{where}: expected a JSON object holding a plan")
            if "phy2log" in doc:
                meta = {k: doc[k] for k in ("num_gpus", "num_nodes", "num_groups") if k in doc}
                return _as_plan(doc["phy2log"], where), meta
            if "physical_to_logical_map" in doc:
                return _as_plan(doc["physical_to_logical_map"], where), meta
            if "initial_global_assignments" in doc:
                return _assignments(doc["initial_global_assignments"], where), meta
            raise UserError(
                f"{where}: no plan in it (expected phy2log, physical_to_logical_map or "
                "initial_global_assignments)"
            )
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                for key in ("phy2log", "physical_to_logical_map", "initial_global_assignments"):
                    if key in z.files:
                        return _as_plan(z[key], where), meta
            raise UserError(
                f"{where}: no plan in it (expected an array phy2log, physical_to_logical_map "
                "or initial_global_assignments)"
            )
        if suffix == ".npy":
            return _as_plan(np.load(path, allow_pickle=False), where), meta
        if suffix in (".pt", ".pth"):
            torch = _need_torch(f"reading {where}")
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, (tuple, list)) and obj:
                return _as_plan(obj[0], where), meta  # DeepSeek's 3-tuple
            if isinstance(obj, dict) and "physical_to_logical_map" in obj:
                return _as_plan(obj["physical_to_logical_map"], where), meta
            if isinstance(obj, torch.Tensor):
                return _as_plan(obj, where), meta
            raise UserError(
                f"{where}: expected DeepSeek's (phy2log, log2phy, logcnt), a dict with "
                "physical_to_logical_map, or a tensor [layers, slots]"
            )
    except UserError:
        raise
    except (ValueError, TypeError, *_READ_ERRORS) as exc:
        raise UserError(f"{where} cannot be read: {exc}") from None
    raise UserError(
        f"{where}: unknown plan file type {suffix or '(no suffix)'}; expected .json, .pt, "
        ".npz, .npy, .yaml or .yml"
    )


# ----------------------------------------------------------------------------------------
# Writing plans.
# ----------------------------------------------------------------------------------------


@contextmanager
def _atomic(path: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file next to ``path`` that replaces it only when the block succeeds."""
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fasteplb-", suffix=_suffix(path), dir=parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


@contextmanager
def _suppress() -> Iterator[None]:
    try:
        yield
    except OSError:
        pass


def _via_temp(path: str, write: Callable[[str], None], what: str) -> None:
    """``write(tmp)`` into a temporary file of ``path``'s suffix (the engines pick their
    reader by suffix) beside ``path``, then moved over it."""
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fasteplb-", suffix=_suffix(path), dir=parent)
    os.close(fd)
    try:
        with _library(what):
            write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


def vllm_maps(phy2log: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """(logical_to_physical_map [L, E, R], logical_replica_count [L, E]) as vLLM's
    compute_logical_maps derives them: each expert's slots in ascending slot order, -1
    padded, R the largest replica count."""
    layers, slots = phy2log.shape
    count = np.zeros((layers, num_experts), dtype=np.int64)
    for layer in range(layers):
        count[layer] = np.bincount(phy2log[layer], minlength=num_experts)
    width = int(count.max()) if count.size else 0
    out = np.full((layers, num_experts, width), -1, dtype=np.int64)
    order = np.argsort(phy2log, axis=1, kind="stable")  # slots grouped by expert, ascending
    ids = np.take_along_axis(phy2log, order, axis=1)
    start = np.cumsum(count, axis=1) - count  # first sorted position of each expert
    rank = np.arange(slots)[None, :] - np.take_along_axis(start, ids, axis=1)
    rows = np.repeat(np.arange(layers), slots)
    out[rows, ids.ravel(), rank.ravel()] = order.ravel()
    return out, count


def write_plan(
    path: str,
    fmt: str,
    plan: tuple[np.ndarray, np.ndarray, np.ndarray],
    meta: dict[str, Any],
    first_layer: int = 0,
) -> None:
    """Writes ``plan`` (phy2log, log2phy, logcnt as numpy int64) in ``fmt`` (see FORMATS)."""
    phy2log, log2phy, logcnt = plan
    suffix = _suffix(path)
    experts = logcnt.shape[1]
    if fmt == "json":
        doc = {"format": "fasteplb-plan", "fasteplb_version": __version__, **meta}
        doc.update(phy2log=phy2log.tolist(), log2phy=log2phy.tolist(), logcnt=logcnt.tolist())
        with _atomic(path, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
    elif fmt == "deepseek":
        if suffix == ".npz":
            with _atomic(path) as f:
                np.savez(f, phy2log=phy2log, log2phy=log2phy, logcnt=logcnt)
        else:
            torch = _need_torch("--format deepseek as .pt")
            with _atomic(path) as f:
                torch.save(tuple(torch.from_numpy(a) for a in plan), f)
    elif fmt == "vllm":
        l2p, count = vllm_maps(phy2log, experts)
        arrays = {
            "physical_to_logical_map": phy2log,
            "logical_to_physical_map": l2p,
            "logical_replica_count": count,
        }
        if suffix == ".npz":
            with _atomic(path) as f:
                np.savez(f, **arrays)
        elif suffix == ".json":
            with _atomic(path, "w") as f:
                json.dump({k: v.tolist() for k, v in arrays.items()}, f, separators=(",", ":"))
                f.write("\n")
        else:
            torch = _need_torch("--format vllm as .pt")
            with _atomic(path) as f:
                torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, f)
    elif fmt == "sglang":
        (save,) = _integration("sglang", ("save_init_expert_location",))
        _via_temp(path, lambda tmp: save(tmp, phy2log), "--format sglang")
    elif fmt == "trtllm":
        if suffix == ".npz":
            to_csr, initial = _integration("trtllm", ("to_csr", "initial_global_assignments"))
            with _library("--format trtllm"):
                names = ("expertReplicaCount", "expertReplicaStartOffset", "globalSlotIds")
                arrays = dict(
                    zip(names, (np.asarray(a, np.int64) for a in to_csr(phy2log, experts)))
                )
                assignments = initial(phy2log, first_layer=first_layer)
            keys = sorted(assignments)
            arrays["initial_global_assignments"] = np.asarray(
                [assignments[k] for k in keys], np.int64
            )
            arrays["layers"] = np.asarray(keys, dtype=np.int64)
            with _atomic(path) as f:
                np.savez(f, **arrays)
        else:
            config, save = _integration(
                "trtllm", ("load_balancer_config", "save_load_balancer_config")
            )
            with _library("--format trtllm"):
                cfg = config(phy2log, first_layer=first_layer)
            _via_temp(path, lambda tmp: save(tmp, cfg), "--format trtllm")
    else:  # pragma: no cover - _check_format rejects it first
        raise UserError(f"unknown format {fmt!r}")


# ----------------------------------------------------------------------------------------
# Planning.
# ----------------------------------------------------------------------------------------

# Layers are planned independently (bit-identical for any split), so big inputs are planned
# in chunks of about this many slots to drive the progress bar.
CHUNK_SLOTS = 1 << 20


def plan_layers(
    weight: np.ndarray, sizes: tuple[int, int, int, int], options: dict[str, Any], old: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rebalance_experts over all layers, in chunks of layers when the input is big (not with
    a model-wide copy budget, which is shared out over all layers in one call)."""
    from . import rebalance_experts

    layers = weight.shape[0]
    per_chunk = max(1, CHUNK_SLOTS // sizes[0])
    if layers <= per_chunk or "max_moves_total" in options:
        with _library():
            return rebalance_experts(weight, *sizes, old_phy2log=old, **options)
    parts = []
    with Progress("planning", layers, unit="layers") as bar:
        for start in range(0, layers, per_chunk):
            stop = min(layers, start + per_chunk)
            chunk_old = None if old is None else old[start:stop]
            with _library():
                parts.append(
                    rebalance_experts(weight[start:stop], *sizes, old_phy2log=chunk_old, **options)
                )
            bar.update(stop - start)
    width = max(p[1].shape[2] for p in parts)
    log2phy = np.full((layers, weight.shape[1], width), -1, dtype=np.int64)
    row = 0
    for p in parts:
        log2phy[row : row + p[1].shape[0], :, : p[1].shape[2]] = p[1]
        row += p[1].shape[0]
    return (
        np.concatenate([p[0] for p in parts]),
        log2phy,
        np.concatenate([p[2] for p in parts]),
    )


def _check_sizes(weight: np.ndarray, replicas: int, groups: int) -> None:
    experts = weight.shape[1]
    if replicas < experts:
        raise UserError(f"--replicas ({replicas}) must be >= the {experts} experts in --load")
    _divides("--load's expert count", experts, "--groups", groups)


def _policy(groups: int, nodes: int) -> str:
    """The policy's name as reported: hierarchical when there are several nodes and the
    groups divide over them (DeepSeek's rule), else global (one node has no node-level
    packing)."""
    return "hierarchical" if nodes > 1 and groups % nodes == 0 else "global"


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def cmd_plan(args: argparse.Namespace) -> int:
    from . import balancedness, lower_bound, moves

    # Everything checkable without reading the load file.
    suffix = _check_format(args.format, args.out)
    P, G, N, K = args.replicas, args.gpus, args.nodes, args.groups
    if P > MAX_REPLICAS:
        raise UserError(f"--replicas ({P}) must be <= {MAX_REPLICAS} (slots per layer)")
    _divides("--replicas", P, "--gpus", G)
    _divides("--gpus", G, "--nodes", N)
    if args.refine == "swap" and args.old is not None:
        raise UserError("--old works with --refine local or none, not swap")
    budgets = (args.max_moves, args.max_moves_total, args.min_gain)
    if args.old is None and any(b is not None for b in budgets):
        raise UserError(
            "--max-moves, --max-moves-total and --min-gain need --old (the current placement)"
        )
    if args.min_gain is not None and not 0.0 <= args.min_gain < 1.0:
        raise UserError(f"--min-gain must be in [0, 1), got {args.min_gain:g}")
    _check_input(args.load, "--load", dump_dir=True)
    if args.old is not None:
        _check_input(args.old, "--old")
    _check_output(args.out)
    if suffix == ".pt":
        _need_torch(f"--format {args.format} as .pt")
    if args.format == "sglang":
        _integration("sglang", ("save_init_expert_location",))
    if args.format == "trtllm":
        _integration("trtllm", ("to_csr", "initial_global_assignments"))
        _integration("trtllm", ("load_balancer_config", "save_load_balancer_config"))

    forecast = None
    if args.history is not None:
        weight, used, forecast = load_forecast(
            args.load, args.window, args.history_windows or 40, args.history
        )
        steps = used * args.window
    else:
        if args.history_windows is not None:
            raise UserError("--history-windows needs --history")
        weight, steps = load_weight(args.load, args.window)
    _check_sizes(weight, P, K)
    old = None
    if args.old is not None:
        old, _ = read_plan(args.old, "--old")
        if old.shape != (weight.shape[0], P):
            raise UserError(
                f"--old {args.old!r} is [{old.shape[0]} layers, {old.shape[1]} slots]; this "
                f"plan is [{weight.shape[0]} layers, {P} slots] (--load's layers, --replicas)"
            )
    options: dict[str, Any] = {"refine": args.refine, "num_threads": args.threads}
    if args.max_moves is not None:
        options["max_moves"] = args.max_moves
    if args.max_moves_total is not None:
        options["max_moves_total"] = args.max_moves_total
    if args.min_gain is not None:
        options["min_gain"] = args.min_gain
    plan = plan_layers(weight, (P, K, N, G), options, old)
    plan = tuple(np.asarray(a, dtype=np.int64) for a in plan)
    layers, experts = weight.shape
    meta = {
        "num_layers": layers,
        "num_experts": experts,
        "num_replicas": P,
        "num_groups": K,
        "num_nodes": N,
        "num_gpus": G,
        "policy": _policy(K, N),
        "options": {
            "refine": args.refine,
            "window": steps if forecast is None else args.window,
            "history": args.history,
            "forecast": forecast,
            "max_moves": args.max_moves,
            "max_moves_total": args.max_moves_total,
            "min_gain": args.min_gain,
            "load": os.path.abspath(args.load),
            "old": None if args.old is None else os.path.abspath(args.old),
        },
    }
    write_plan(args.out, args.format, plan, meta, first_layer=args.first_layer)  # type: ignore[arg-type]
    bal = balancedness(plan[0], weight, G)
    bound = np.asarray(lower_bound(weight, P, K, N, G), dtype=np.float64).sum()
    best = float(weight.sum() / G / bound) if bound > 0 else 1.0
    summary = (
        f"wrote {args.out} ({args.format}): {layers} layers x {experts} experts -> {P} slots "
        f"on {G} GPUs ({_n(N, 'node')}, {_n(K, 'group')}, {_policy(K, N)} policy); load: "
        f"{_n(steps, 'step')}; "
        f"balancedness {bal:.4f} (bound {best:.4f})"
    )
    if forecast is not None:
        summary += (
            f" on the forecast {forecast} from {_n(steps // args.window, 'window')} of "
            f"{_n(args.window, 'step')}"
        )
    if old is not None:
        copies = int(np.asarray(moves(old, plan[0], G)).sum())
        summary += f"; {copies} expert copies from --old"
    print(summary)
    return 0


# ----------------------------------------------------------------------------------------
# Reporting.
# ----------------------------------------------------------------------------------------


def _fmt_load(x: float) -> str:
    return f"{x:.6g}"


def cmd_report(args: argparse.Namespace) -> int:
    from . import moves, report

    if args.png is not None:
        if _suffix(args.png) != ".png":
            raise UserError(f"--png {args.png!r} must end in .png")
        _check_output(args.png, "--png")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("--png needs matplotlib (pip install matplotlib)") from None
    _check_input(args.load, "--load", dump_dir=True)
    phy2log, meta = read_plan(args.plan, "--plan")
    G = args.gpus if args.gpus is not None else meta.get("num_gpus")
    if G is None:
        raise UserError(f"--plan {args.plan!r} does not record the GPU count; pass --gpus")
    N = args.nodes if args.nodes is not None else meta.get("num_nodes", 1)
    K = args.groups if args.groups is not None else meta.get("num_groups", 1)
    layers, P = phy2log.shape
    _divides("the plan's slot count", P, "--gpus", G)
    _divides("--gpus", G, "--nodes", N)
    old = None
    if args.old is not None:
        old, _ = read_plan(args.old, "--old")
        if old.shape != phy2log.shape:
            raise UserError(
                f"--old {args.old!r} is [{old.shape[0]}, {old.shape[1]}]; --plan is "
                f"[{layers}, {P}] (layers, slots)"
            )

    weight, steps = load_weight(args.load, args.window)
    if weight.shape[0] != layers:
        raise UserError(f"--load has {weight.shape[0]} layers, --plan {args.plan!r} has {layers}")
    experts = weight.shape[1]
    if phy2log.min() < 0 or phy2log.max() >= experts:
        raise UserError(
            f"--plan holds expert ids {phy2log.min()}..{phy2log.max()}, but --load has "
            f"{experts} experts"
        )
    _check_sizes(weight, P, K)
    with _library("report"):
        rep = report(phy2log, weight, P, K, N, G)
        copies = None if old is None else np.asarray(moves(old, phy2log, G))
    bound_bal = np.divide(
        weight.sum(axis=1) / G,
        rep["lower_bound"],
        out=np.ones(layers),
        where=rep["lower_bound"] > 0,
    )
    out = sys.stdout
    out.write(
        f"plan {args.plan}: {layers} layers x {experts} experts, {P} slots on {G} GPUs "
        f"({_n(N, 'node')}, {_n(K, 'group')}, {_policy(K, N)} policy); load {args.load}: "
        f"{_n(steps, 'step')}\n"
    )
    head = (
        f"{'layer':>5}  {'balancedness':>12}  {'bound':>7}  {'max GPU load':>12}  "
        f"{'lower bound':>12}  {'gap %':>7}  {'co-located':>10}  {'avoidable':>9}"
        + (f"  {'copies':>7}" if copies is not None else "")
    )
    out.write(head + "\n")
    for i in range(layers):
        line = (
            f"{i:>5}  {rep['balancedness_per_layer'][i]:>12.4f}  {bound_bal[i]:>7.4f}  "
            f"{_fmt_load(rep['max_load'][i]):>12}  {_fmt_load(rep['lower_bound'][i]):>12}  "
            f"{100 * rep['gap'][i]:>7.2f}  {rep['colocated'][i]:>10}  "
            f"{rep['colocated_avoidable'][i]:>9}"
            + (f"  {copies[i]:>7}" if copies is not None else "")
        )
        out.write(line + "\n")
    total_bound = float(rep["lower_bound"].sum())
    bound_total = float(weight.sum() / G / total_bound) if total_bound > 0 else 1.0
    out.write(
        f"total  balancedness {rep['balancedness']:.4f} (bound {bound_total:.4f}), gap to "
        f"the bound {100 * rep['mean_gap']:.2f}%, co-located replicas "
        f"{rep['colocated_total']} ({rep['colocated_avoidable_total']} avoidable)"
        + (f", expert copies from --old {int(copies.sum())}" if copies is not None else "")
        + "\n"
    )
    out.flush()
    if args.png is not None:
        plot_report(args.png, phy2log, weight, G, rep, bound_bal, args.plan, old)
        print(f"wrote {args.png}")
    return 0


def plot_report(
    path: str,
    phy2log: np.ndarray,
    weight: np.ndarray,
    num_gpus: int,
    rep: dict[str, Any],
    bound_bal: np.ndarray,
    title: str,
    old: Optional[np.ndarray] = None,
) -> None:
    """Per-GPU load / layer mean as a heat map, and balancedness per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import balancedness, gpu_loads

    loads = np.asarray(gpu_loads(phy2log, weight, num_gpus), dtype=np.float64)
    mean = loads.mean(axis=1, keepdims=True)
    rel = np.divide(loads, mean, out=np.ones_like(loads), where=mean > 0)
    layers = loads.shape[0]
    fig, (ax0, ax1) = plt.subplots(
        1, 2, figsize=(12, max(4.0, min(10.0, 2.5 + 0.08 * layers))),
        gridspec_kw={"width_ratios": [1.25, 1]}, layout="constrained",
    )  # fmt: skip
    # Diverging colours centred on an even split (1.0), so small imbalances stay visible.
    norm = matplotlib.colors.TwoSlopeNorm(
        vcenter=1.0, vmin=min(float(rel.min()), 0.999), vmax=max(float(rel.max()), 1.001)
    )
    im = ax0.imshow(rel, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
    ax0.set_xlabel("GPU")
    ax0.set_ylabel("MoE layer")
    ax0.set_title(f"per-GPU load / layer mean (busiest GPU: {rel.max(axis=1).mean():.3f} x the "
                  "mean, layer average)", fontsize=10)  # fmt: skip
    fig.colorbar(im, ax=ax0, label="GPU load / layer mean (1 = even)")
    x = np.arange(layers)
    ax1.plot(x, rep["balancedness_per_layer"], color="#d62728", marker=".", linewidth=1,
             label=f"plan (total {rep['balancedness']:.4f})")  # fmt: skip
    if old is not None:
        ob = np.asarray(balancedness(old, weight, num_gpus, per_layer=True))
        total = float(balancedness(old, weight, num_gpus))
        ax1.plot(x, ob, color="#1f77b4", marker=".", linewidth=1, alpha=0.8,
                 label=f"--old (total {total:.4f})")  # fmt: skip
    ax1.plot(x, bound_bal, color="black", linestyle="--", linewidth=1,
             label="lower bound (best possible)")  # fmt: skip
    ax1.set_xlabel("MoE layer")
    ax1.set_ylabel("balancedness (mean / max GPU load)")
    ax1.set_title("balancedness per layer")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{os.path.basename(title)}: {layers} layers, {phy2log.shape[1]} slots, "
                 f"{num_gpus} GPUs", fontsize=11)  # fmt: skip
    with _atomic(path) as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# Argument parsing.
# ----------------------------------------------------------------------------------------


def _positive(name: str, minimum: int = 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = name
    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


PLAN_EXAMPLES = """\
examples:
  # DeepSeek-V3 on 4 nodes x 8 GPUs, 32 redundant slots, from an SGLang recorder dump
  # (mode stat) to a file for SGLang's --init-expert-location:
  fasteplb plan --load expert_distribution_recorder.pt --replicas 288 --gpus 32 \\
      --nodes 4 --groups 8 --format sglang --out init_expert_location.json
  # the last 1000 steps of a trace, fasteplb's own plan file:
  fasteplb plan --load trace.json --window 1000 --replicas 288 --gpus 32 --out plan.json
  # plan for the next 100 steps from the last 40 windows of 100 steps (forecast chosen by
  # replaying the recent windows):
  fasteplb plan --load trace.json --window 100 --history auto --replicas 288 --gpus 32 \\
      --out plan.json
  # re-plan from the current placement, at most 16 expert copies per layer:
  fasteplb plan --load new_window.npy --replicas 288 --gpus 32 --old plan.json \\
      --max-moves 16 --out plan2.json
  # TensorRT-LLM (MoE layers from model layer 3), vLLM, DeepSeek's 3-tuple:
  fasteplb plan --load loads.npy --replicas 288 --gpus 32 --format trtllm \\
      --first-layer 3 --out eplb.yaml
  fasteplb plan --load loads.npy --replicas 288 --gpus 32 --format vllm --out maps.pt
  fasteplb plan --load loads.npy --replicas 288 --gpus 32 --format deepseek --out plan.npz

--load reads what fasteplb.workloads.load_trace reads: the public trace JSON
({"load_history": [{"logical_expert_load": [L][E]}, ...]}), a real-matrix JSON ("counts"),
SGLang's expert-distribution recorder dump (.pt or .json with "logical_count" [T][L][E];
detail-mode dumps through fasteplb.integrations.sglang), a .npy or .pt array [T][L][E] or
[L][E]. A [T][L][E] trace is summed over its last --window steps (default: all); with
--history, its last --history-windows windows of --window steps are a history, and the plan
is made for the next window's forecast load.

"""

REPORT_EXAMPLES = """\
examples:
  fasteplb report --load trace.json --plan plan.json
  fasteplb report --load next_window.npy --plan eplb.yaml --gpus 32 --png report.png
  fasteplb report --load trace.json --plan plan2.json --old plan.json

Per layer: balancedness (mean / max GPU load), the best balancedness any plan of the policy
reaches (bound), the largest GPU load and its lower bound (fasteplb.lower_bound), the gap
between them, co-located replicas (extra copies of one expert on one GPU; avoidable: of
experts with no more replicas than their node has GPUs) and, with --old, the expert copies
(fasteplb.moves) from --old to --plan; then the totals. --png: per-GPU loads per layer (heat
map) and balancedness per layer, needs matplotlib. --gpus, --nodes and --groups default to
what a fasteplb json plan records (nodes and groups: else 1).
"""


def add_commands(sub: Any) -> None:
    """Adds the ``plan`` and ``report`` subcommands to ``sub`` (argparse subparsers)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "plan",
        help="plan a placement from a load file (trace, recorder dump, array)",
        description="Plan replica counts and GPU placement for every MoE layer from a load\n"
        "file, and write it in an engine's format.",
        epilog=PLAN_EXAMPLES + FORMAT_HELP,
        formatter_class=fmt,
    )
    p.add_argument("--load", required=True, metavar="FILE", help="load file (see below)")
    p.add_argument("--replicas", required=True, type=_positive("replicas"), metavar="P",
                   help="physical expert slots in all (experts + redundant ones)")  # fmt: skip
    p.add_argument("--gpus", required=True, type=_positive("gpus"), metavar="G",
                   help="GPUs (EP size); each holds P / G slots")  # fmt: skip
    p.add_argument("--nodes", type=_positive("nodes"), default=1, metavar="N",
                   help="nodes (default 1)")  # fmt: skip
    p.add_argument("--groups", type=_positive("groups"), default=1, metavar="K",
                   help="expert groups (default 1); hierarchical policy when N divides K, "
                   "as DeepSeek")  # fmt: skip
    p.add_argument("--old", metavar="PLAN",
                   help="current placement (any file `plan` writes): plan from it, so that "
                   "experts stay on their GPUs unless moving them pays off")  # fmt: skip
    p.add_argument("--max-moves", type=_positive("max_moves", 0), metavar="M",
                   help="with --old: most expert copies per layer")  # fmt: skip
    p.add_argument("--max-moves-total", type=_positive("max_moves_total", 0), metavar="M",
                   help="with --old: most expert copies over all layers, spent where they "
                   "lower the busiest GPUs most")  # fmt: skip
    p.add_argument("--min-gain", type=_fraction, metavar="F",
                   help="with --old: keep a layer unless its largest GPU load drops by more "
                   "than this fraction")  # fmt: skip
    p.add_argument("--refine", choices=("local", "swap", "none"), default="local",
                   help='refinement (default local; none = DeepSeek\'s greedy)')  # fmt: skip
    p.add_argument("--window", type=_positive("window"), metavar="W",
                   help="sum the last W steps of a [T, L, E] trace (default: all)")  # fmt: skip
    p.add_argument("--history", choices=HISTORY_CHOICES, metavar="MODE",
                   help="plan for the next window: split the trace into windows of --window "
                   "steps and forecast from the last --history-windows of them (auto, last, "
                   "ema, mean, robust, trend; see fasteplb.forecast_load)")  # fmt: skip
    p.add_argument("--history-windows", type=_positive("history_windows"), metavar="N",
                   help="with --history: windows of history (default 40)")  # fmt: skip
    p.add_argument("--threads", type=_positive("threads"), metavar="T",
                   help="planner threads (default: the hardware's)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="FILE", help="plan file to write")
    p.add_argument("--format", default="json", metavar="FORMAT",
                   help=f"one of {', '.join(FORMATS)} (default json; see below)")  # fmt: skip
    p.add_argument("--first-layer", type=_positive("first_layer", 0), default=0, metavar="I",
                   help="trtllm: model layer index of the first MoE layer (default 0)")  # fmt: skip
    p.set_defaults(run=cmd_plan)

    r = sub.add_parser(
        "report",
        help="score a plan on a load file: balancedness, gap to the bound, co-location, copies",
        description="Score a plan on a load file, per layer and in total.",
        epilog=REPORT_EXAMPLES,
        formatter_class=fmt,
    )
    r.add_argument("--load", required=True, metavar="FILE",
                   help="load file (as for plan)")  # fmt: skip
    r.add_argument("--plan", required=True, metavar="FILE",
                   help="plan file (any format plan writes, or a .npy [L, P])")  # fmt: skip
    r.add_argument("--gpus", type=_positive("gpus"), metavar="G",
                   help="GPUs (default: from a fasteplb json plan)")  # fmt: skip
    r.add_argument("--nodes", type=_positive("nodes"), metavar="N",
                   help="nodes, for the bound (default: from the plan, else 1)")  # fmt: skip
    r.add_argument("--groups", type=_positive("groups"), metavar="K",
                   help="expert groups, for the bound (default: from the plan, else 1)")  # fmt: skip
    r.add_argument("--old", metavar="PLAN", help="count the expert copies from this plan")
    r.add_argument("--window", type=_positive("window"), metavar="W",
                   help="sum the last W steps of a [T, L, E] trace (default: all)")  # fmt: skip
    r.add_argument("--png", metavar="OUT.png",
                   help="write a heat map of per-GPU loads and balancedness per layer")  # fmt: skip
    r.set_defaults(run=cmd_report)


def run(args: argparse.Namespace) -> int:
    return int(args.run(args))
