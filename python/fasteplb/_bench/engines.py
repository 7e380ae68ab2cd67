"""Side-by-side benchmark: fasteplb against the serving engines' own EPLB planners.

``python -m fasteplb bench [--quick]`` (and ``bench/bench_engines.py``, which writes
``bench/RESULTS.md``, ``bench/README_compare.md`` and ``bench/plots/``) plans realistic
synthetic workloads (:mod:`fasteplb.workloads`) with every planner on the same input and
scores the plans.

Planners (``IMPLS``): ``fasteplb`` (the default, ``refine="local"``, a fresh plan per window),
``fasteplb:none`` (DeepSeek's greedy), ``fasteplb:swap``, ``reference`` (the pure-Python
DeepSeek greedy, ``fasteplb.reference`` with ``refine="none"``), and the engines' planners
loaded from their wheels by :mod:`fasteplb._bench.peers`: ``vllm``, ``sglang``, ``sglang-vec``. A
peer that cannot be obtained is skipped with a message. An extra, ``fasteplb:migrate``
(``MIGRATE``), re-plans each window from its own previous plan (``old_phy2log``); its rows
carry ``extra=True``.

Method, per configuration and workload profile (a *case*):

* a seeded trace of ``windows * window_steps`` steps, summed into windows of
  ``window_steps`` (100) steps, the public EPLB benchmarks' protocol;
* every planner plans every window from the same torch tensor [L, E] (``sglang-vec`` gets
  the window's per-step loads [T, L, E], its native time-resolved input); the planners run
  interleaved, in an order rotated per window; fast planners repeat their call up to
  ``inner`` times per window; the time is the median over all calls (ms);
* ``balancedness_in``: plan on window i, score on window i; ``balancedness_next``: plan on
  window i, score on window i + 1 (what a serving engine gets); both
  ``fasteplb.balancedness`` (sum of layer mean GPU loads / sum of layer maxima) averaged
  over windows;
* ``moves``: ``fasteplb.moves`` between the plans of consecutive windows (weight copies an
  expert-to-GPU change costs), summed over layers, averaged over rebalances;
* ``bound_balancedness``: sum of layer means / sum of ``fasteplb.lower_bound``, the best any
  plan of the policy can reach in-sample; ``gap_pct``: sum of layer maxima / sum of bounds
  - 1, in %; ``balancedness_identity``: no EPLB (expert e on GPU e // (E / G)).

This module holds the configurations, the settings and the run; ``tables`` the markdown
report and the README sections, ``plots`` the figures, ``cli`` the command lines.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TextIO

import numpy as np

from .. import balancedness, lower_bound, moves, rebalance_experts
from .. import reference as _reference
from .. import workloads as wl
from . import peers as _peers

__all__ = [
    "CONFIGS",
    "ENGINES",
    "FULL",
    "IMPLS",
    "MIGRATE",
    "QUICK",
    "Config",
    "Result",
    "Settings",
    "load_peers",
    "run",
    "run_case",
    "select",
]

ENGINES = ("vllm", "sglang", "sglang-vec")
IMPLS = ("fasteplb", "fasteplb:none", "fasteplb:swap", "reference", *ENGINES)
MIGRATE = "fasteplb:migrate"
SPEEDUP_TARGET = 20.0

# What a first run downloads (``pip download --no-deps``, once, into the peers cache): the
# engines' wheels, of which only the EPLB policy files are read. Sizes of the wheels pip
# picked on x86_64 Linux (vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl,
# sglang-0.5.23-cp311-cp311-manylinux_2_34_x86_64.whl), measured 2026-12-02; other platforms'
# wheels differ by a few percent.
WHEEL_BYTES = {"vllm": 336_361_138, "sglang": 39_063_923}

_LABELS = {
    "fasteplb": 'fasteplb (default, refine="local")',
    "fasteplb:none": 'fasteplb refine="none" (DeepSeek greedy)',
    "fasteplb:swap": 'fasteplb refine="swap"',
    "reference": 'fasteplb.reference refine="none" (pure-Python DeepSeek greedy)',
    MIGRATE: "fasteplb default with old_phy2log = its previous plan",
}


@dataclass(frozen=True)
class Config:
    """A deployment: a model of ``workloads.MODELS`` planned onto ``num_replicas`` slots."""

    name: str
    model: str
    num_replicas: int
    num_groups: int
    num_nodes: int
    num_gpus: int
    profiles: tuple[str, ...]  # workload profiles run by default
    full_profiles: tuple[str, ...] = ()  # more profiles in the full run
    quick: bool = False  # part of the --quick run (with its first profile only)

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        return (self.num_replicas, self.num_groups, self.num_nodes, self.num_gpus)

    @property
    def shape(self) -> wl.ModelShape:
        return wl.MODELS[self.model]


_ALL = tuple(wl.PROFILES)
_DS, _QWEN = ("deepseek-v3-like",), ("qwen3-like",)
_REST = tuple(p for p in _ALL if p not in ("deepseek-v3-like", "qwen3-like", "stress"))

CONFIGS: tuple[Config, ...] = (
    Config("DeepSeek-V3 EP32 hierarchical", "deepseek-v3", 288, 8, 4, 32, (*_DS, "stress"),
           (*_QWEN, *_REST), quick=True),
    Config("DeepSeek-V3 EP32 global", "deepseek-v3", 288, 1, 1, 32, (*_DS, "stress"),
           quick=True),
    Config("DeepSeek-V3 EP64", "deepseek-v3", 320, 1, 1, 64, _DS),
    Config("DeepSeek-V3 EP144", "deepseek-v3", 288, 1, 1, 144, _DS),
    Config("Qwen3-235B EP16", "qwen3-235b", 144, 1, 1, 16, _QWEN, quick=True),
    Config("Qwen3-235B EP32", "qwen3-235b", 160, 1, 1, 32, (*_QWEN, "stress"),
           ("deepseek-v3-like", *_REST), quick=True),
    Config("Qwen3-235B EP64", "qwen3-235b", 192, 1, 1, 64, _QWEN),
    Config("Qwen3-235B EP128", "qwen3-235b", 256, 1, 1, 128, _QWEN),
    Config("Kimi-K2 EP64", "kimi-k2", 448, 1, 1, 64, (*_DS, "stress"),
           (*_QWEN, *_REST), quick=True),
    Config("Mixtral-8x7B EP4", "mixtral-8x7b", 12, 1, 1, 4,
           ("aux-loss-balanced", "near-uniform"), quick=True),
)  # fmt: skip

# The configuration and profile of the per-layer and heat-map plots.
PLOT_CASE = ("DeepSeek-V3 EP32 hierarchical", "deepseek-v3-like")


@dataclass(frozen=True)
class Settings:
    """How much to run: ``windows`` windows of ``window_steps`` steps per case; fast planners
    repeat their call up to ``inner`` times per window (within ``repeat_budget_s``);
    ``full_profiles`` adds the configurations' extra profiles; ``quick`` keeps the
    configurations marked quick, with their first profile only."""

    windows: int
    inner: int
    full_profiles: bool
    quick: bool = False
    window_steps: int = 100
    repeat_budget_s: float = 0.1
    seed: int = 0


QUICK = Settings(windows=3, inner=10, full_profiles=False, quick=True)
FULL = Settings(windows=8, inner=20, full_profiles=True)


@dataclass
class Result:
    """Rows (one per planner, configuration and profile; ``extra`` marks fasteplb:migrate),
    the peers that ran and those skipped (with the reason), and what the plots need."""

    rows: list[dict[str, Any]]
    settings: Settings
    peers: dict[str, Any] = field(default_factory=dict)  # name -> _peers.Peer
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    load: tuple[float, float] = (float("nan"), float("nan"))  # 1-min load average, start/end
    detail: dict[str, Any] = field(default_factory=dict)  # plans and loads of PLOT_CASE


# ----------------------------------------------------------------------------------------
# Running.
# ----------------------------------------------------------------------------------------


def load_peers(
    names: Sequence[str] = ENGINES,
    cache_dir: Optional[str] = None,
    *,
    download: bool = True,
    root: Optional[str] = None,
    log: Optional[TextIO] = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """({name: Peer} that loaded, {name: reason} of those skipped); prints each skip."""
    loaded, skipped = {}, {}
    for name in names:
        try:
            loaded[name] = _peers.load(name, cache_dir, download=download, root=root)
        except _peers.PeerUnavailable as exc:
            skipped[name] = str(exc)
            print(f"skipping peer {name}: {exc}", file=log or sys.stdout, flush=True)
    return loaded, skipped


def pending_downloads(cache_dir: Optional[str] = None) -> list[tuple[str, str, int]]:
    """(dist, version, approximate bytes) of each engine wheel a run would download: those
    whose policy files are neither extracted in the cache nor in a cached wheel."""
    cache = _peers._cache(cache_dir)
    pending = []
    for name, size in WHEEL_BYTES.items():
        dist = _peers._DISTS[name]
        if _peers._extracted(dist, os.path.join(cache, f"{dist.name}-{dist.version}")):
            continue
        if _peers._wheel(dist, os.path.join(cache, "wheels")) is not None:
            continue
        pending.append((dist.name, dist.version, size))
    return pending


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def announce_downloads(cache_dir: Optional[str], *, offline: bool, download: bool) -> None:
    """Before any download: says which wheels, how big and where (stderr); with ``offline``,
    a missing wheel ends the run (SystemExit with a one-line message)."""
    pending = pending_downloads(cache_dir)
    if not pending:
        return
    cache = _peers._cache(cache_dir)
    what = " and ".join(f"{d} {v} (about {_mb(b)})" for d, v, b in pending)
    total = _mb(sum(b for _, _, b in pending))
    if offline:
        raise SystemExit(
            f"--offline: {what} not in the cache {cache}; run `fasteplb bench` once with "
            f"network access (downloads {total}), or pass --no-download to run without them"
        )
    if download:
        print(
            f"bench: downloading the wheels of {what}, {total} in all, with `pip download "
            f"--no-deps` into {os.path.join(cache, 'wheels')} (once; later runs read the "
            "cache); only their EPLB policy files are read, the engines are not installed. "
            "--no-download skips them.",
            file=sys.stderr,
            flush=True,
        )


def select(
    configs: Sequence[Config], settings: Settings, profiles: Optional[Sequence[str]] = None
) -> list[tuple[Config, str]]:
    """The (configuration, profile) cases a run covers (``settings.quick`` keeps the quick
    configurations, when there are any among ``configs``, and their first profile)."""
    if settings.quick and any(c.quick for c in configs):
        configs = [c for c in configs if c.quick]
    cases = []
    for c in configs:
        if profiles:
            chosen = tuple(profiles)
        elif settings.quick:
            chosen = c.profiles[:1]
        else:
            chosen = c.profiles + (c.full_profiles if settings.full_profiles else ())
        cases.extend((c, p) for p in chosen)
    return cases


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a test dependency
        return None
    return torch


def _numpy(plan: Any) -> np.ndarray:
    if hasattr(plan, "detach"):
        plan = plan.detach().cpu().numpy()
    return np.asarray(plan, dtype=np.int64)


def _identity(experts: int, num_gpus: int) -> Optional[np.ndarray]:
    return np.arange(experts, dtype=np.int64) if experts % num_gpus == 0 else None


def _planners(
    config: Config, peers: dict[str, Any], migrate: bool
) -> dict[str, Callable[[Any, Any, Any], Any]]:
    """name -> f(window [L, E], steps [T, L, E], previous plan of this planner)."""
    s = config.sizes
    out: dict[str, Callable[[Any, Any, Any], Any]] = {
        "fasteplb": lambda w, t, old: rebalance_experts(w, *s)[0],
        "fasteplb:none": lambda w, t, old: rebalance_experts(w, *s, refine="none")[0],
        "fasteplb:swap": lambda w, t, old: rebalance_experts(w, *s, refine="swap")[0],
        "reference": lambda w, t, old: _reference.rebalance_experts(w, *s, refine="none")[0],
    }
    for name in ENGINES:
        if name in peers:
            peer = peers[name]
            if name == "sglang-vec":
                out[name] = lambda w, t, old, p=peer: p(t, *s)
            else:
                out[name] = lambda w, t, old, p=peer: p(w, *s)
    if migrate:
        out[MIGRATE] = lambda w, t, old: (
            rebalance_experts(w, *s)[0] if old is None else
            rebalance_experts(w, *s, old_phy2log=old)[0]
        )  # fmt: skip
    return out


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        return float("nan")


def _mean(values: list[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def run_case(
    config: Config,
    profile: str,
    peers: dict[str, Any],
    settings: Settings,
    *,
    keep: bool = False,
) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """Rows of one case, failure messages, and (``keep``) the plans and loads of window 0/1."""
    torch = _torch()
    g = config.num_gpus
    steps = settings.windows * settings.window_steps
    trace = wl.generate(profile, config.model, steps, seed=settings.seed)
    wins = wl.windows(trace, settings.window_steps)  # [W, L, E] int64
    as_input = torch.from_numpy if torch is not None else (lambda a: a)
    planners = _planners(config, peers if torch is not None else {}, migrate=True)
    names = list(planners)
    samples: dict[str, list[float]] = {n: [] for n in names}
    plans: dict[str, list[np.ndarray]] = {n: [] for n in names}
    failed: set[str] = set()
    messages: list[str] = []
    for i in range(len(wins)):
        w = as_input(wins[i])
        t = as_input(trace[i * settings.window_steps : (i + 1) * settings.window_steps])
        k = i % len(names)
        for name in names[k:] + names[:k]:
            if name in failed:
                continue
            fn = planners[name]
            old_in = as_input(plans[name][-1]) if name == MIGRATE and plans[name] else None
            try:
                start = time.perf_counter()
                out = fn(w, t, old_in)
                took = time.perf_counter() - start
            except Exception as exc:  # a peer may reject a configuration
                failed.add(name)
                messages.append(f"{name} on {config.name} / {profile}: {exc!r}")
                continue
            samples[name].append(took)
            plans[name].append(_numpy(out))
            extra = min(settings.inner - 1, int(settings.repeat_budget_s / max(took, 1e-6)))
            for _ in range(max(0, extra)):
                start = time.perf_counter()
                fn(w, t, old_in)
                samples[name].append(time.perf_counter() - start)

    # Window-level scores shared by every planner.
    layer_mean = wins.sum(axis=2) / g  # [W, L]
    bound_bal = []
    for i in range(len(wins)):
        bound = np.asarray(lower_bound(wins[i], *config.sizes), dtype=np.float64)
        bound_bal.append(float(layer_mean[i].sum() / bound.sum()) if bound.sum() > 0 else 1.0)
    ident = _identity(config.shape.experts, g)
    ident_bal = (
        _mean([balancedness(np.tile(ident, (w.shape[0], 1)), w, g) for w in wins])
        if ident is not None
        else None
    )
    base = dict(
        config=config.name,
        profile=profile,
        model=config.model,
        layers=config.shape.layers,
        experts=config.shape.experts,
        num_replicas=config.num_replicas,
        num_groups=config.num_groups,
        num_nodes=config.num_nodes,
        num_gpus=g,
        windows=len(wins),
        window_steps=settings.window_steps,
        seed=settings.seed,
        bound_balancedness=_mean(bound_bal),
        balancedness_identity=ident_bal,
    )
    rows = []
    for name in names:
        if name in failed or not plans[name]:
            continue
        ps = plans[name]
        bal_in = [balancedness(p, wins[i], g) for i, p in enumerate(ps)]
        bal_next = [balancedness(p, wins[i + 1], g) for i, p in enumerate(ps[:-1])]
        gap = [100.0 * (bound_bal[i] / b - 1.0) for i, b in enumerate(bal_in)]
        mv = [int(moves(ps[i - 1], ps[i], g).sum()) for i in range(1, len(ps))]
        peer = peers.get(name)
        rows.append(
            dict(
                impl=name,
                **base,
                time_ms=statistics.median(samples[name]) * 1e3,
                balancedness_in=_mean(bal_in),
                balancedness_next=_mean(bal_next),
                moves=_mean([float(m) for m in mv]),
                gap_pct=_mean(gap),
                timing_samples=len(samples[name]),
                label=peer.label if peer is not None else _LABELS[name],
                extra=name == MIGRATE,
            )
        )
    engine_ms = [r["time_ms"] for r in rows if r["impl"] in ENGINES]
    fastest = min(engine_ms) if engine_ms else None
    for r in rows:
        r["speedup_vs_fastest_engine"] = fastest / r["time_ms"] if fastest else None
    detail: dict[str, Any] = {}
    if keep:
        detail = dict(
            config=config,
            profile=profile,
            loads=wins[:2].copy(),
            plans={n: ps[:2] for n, ps in plans.items() if n not in failed and ps},
            bound=np.asarray(lower_bound(wins[0], *config.sizes), dtype=np.float64),
        )
    return rows, messages, detail


def run(
    configs: Sequence[Config] = CONFIGS,
    settings: Settings = FULL,
    *,
    profiles: Optional[Sequence[str]] = None,
    peers: Optional[dict[str, Any]] = None,
    skipped: Optional[dict[str, str]] = None,
    log: Optional[TextIO] = None,
) -> Result:
    """Run every case; ``peers`` from ``load_peers`` (None: load them from the cache, with
    download). Progress goes to ``log`` (stderr by default)."""
    log = log or sys.stderr
    if peers is None:
        peers, skipped = load_peers(log=log)
    result = Result(rows=[], settings=settings, peers=dict(peers), skipped=dict(skipped or {}))
    cases = select(configs, settings, profiles)
    names = [(c.name, p) for c, p in cases]
    plot_case = PLOT_CASE if PLOT_CASE in names else (names[0] if names else None)
    load_start = _loadavg()
    start = time.perf_counter()
    for config, profile in cases:
        t0 = time.perf_counter()
        keep = (config.name, profile) == plot_case
        rows, messages, detail = run_case(config, profile, peers, settings, keep=keep)
        result.rows.extend(rows)
        result.failures.extend(messages)
        for m in messages:
            print(f"failed: {m}", file=log, flush=True)
        if keep:
            result.detail = detail
        main = next((r for r in rows if r["impl"] == "fasteplb"), None)
        ratio = main and main["speedup_vs_fastest_engine"]
        print(
            f"[{time.perf_counter() - start:6.1f} s] {config.name} / {profile}: "
            f"{time.perf_counter() - t0:.1f} s"
            + (f"; fasteplb {main['time_ms']:.2f} ms" if main else "")
            + (f", {ratio:.1f}x the fastest engine" if ratio else ""),
            file=log,
            flush=True,
        )
    result.wall_s = time.perf_counter() - start
    result.load = (load_start, _loadavg())
    return result


def _by_case(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    out: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["config"], r["profile"]), {})[r["impl"]] = r
    return out
