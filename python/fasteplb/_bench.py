"""Side-by-side benchmark: fasteplb against the serving engines' own EPLB planners.

``python -m fasteplb bench [--quick]`` (and ``bench/bench_engines.py``, which writes
``bench/RESULTS.md``, ``bench/README_compare.md`` and ``bench/plots/``) plans realistic
synthetic workloads (:mod:`fasteplb.workloads`) with every planner on the same input and
scores the plans.

Planners (``IMPLS``): ``fasteplb`` (the default, ``refine="local"``, a fresh plan per window),
``fasteplb:none`` (DeepSeek's greedy), ``fasteplb:swap``, ``reference`` (the pure-Python
DeepSeek greedy, ``fasteplb.reference`` with ``refine="none"``), and the engines' planners
loaded from their wheels by :mod:`fasteplb._peers`: ``vllm``, ``sglang``, ``sglang-vec``. A
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
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, TextIO

import numpy as np

from . import __version__, balancedness, gpu_loads, lower_bound, moves, rebalance_experts
from . import reference as _reference
from . import workloads as wl
from ._timing import machine

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
    "headline",
    "load_peers",
    "markdown",
    "plot",
    "run",
    "write_section",
]

ENGINES = ("vllm", "sglang", "sglang-vec")
IMPLS = ("fasteplb", "fasteplb:none", "fasteplb:swap", "reference", *ENGINES)
MIGRATE = "fasteplb:migrate"
SPEEDUP_TARGET = 20.0

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
    from . import _peers

    loaded, skipped = {}, {}
    for name in names:
        try:
            loaded[name] = _peers.load(name, cache_dir, download=download, root=root)
        except _peers.PeerUnavailable as exc:
            skipped[name] = str(exc)
            print(f"skipping peer {name}: {exc}", file=log or sys.stdout, flush=True)
    return loaded, skipped


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


# ----------------------------------------------------------------------------------------
# Reporting.
# ----------------------------------------------------------------------------------------


def _f(x: Optional[float], digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ms(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def _cases(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for r in rows:
        seen[(r["config"], r["profile"])] = None
    return list(seen)


def _by_case(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    out: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["config"], r["profile"]), {})[r["impl"]] = r
    return out


def targets(result: Result) -> list[dict[str, Any]]:
    """Per case: fasteplb's default mode against the engines (speed-up, balancedness)."""
    out = []
    for (config, profile), impls in _by_case(result.rows).items():
        main = impls.get("fasteplb")
        engines = [impls[n] for n in ENGINES if n in impls]
        if main is None or not engines:
            continue
        fastest = min(engines, key=lambda r: r["time_ms"])
        best_in = max(engines, key=lambda r: r["balancedness_in"])
        best_next = max(
            engines,
            key=lambda r: -1.0 if r["balancedness_next"] is None else r["balancedness_next"],
        )
        ratio = fastest["time_ms"] / main["time_ms"]
        none = impls.get("fasteplb:none")
        out.append(
            dict(
                config=config,
                profile=profile,
                fasteplb_ms=main["time_ms"],
                fastest_engine=fastest["impl"],
                fastest_engine_ms=fastest["time_ms"],
                speedup=ratio,
                speed_ok=ratio >= SPEEDUP_TARGET,
                speedup_none=fastest["time_ms"] / none["time_ms"] if none else None,
                balancedness_in=main["balancedness_in"],
                best_engine_in=best_in["balancedness_in"],
                best_engine_in_name=best_in["impl"],
                balance_ok=main["balancedness_in"] >= best_in["balancedness_in"] - 1e-12,
                balancedness_next=main["balancedness_next"],
                best_engine_next=best_next["balancedness_next"],
                best_engine_next_name=best_next["impl"],
                bound=main["bound_balancedness"],
                identity=main["balancedness_identity"],
            )
        )
    return out


def versions(result: Result) -> str:
    torch = _torch()
    parts = [f"fasteplb {__version__}", f"numpy {np.__version__}"]
    if torch is not None:
        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    for name in ENGINES:
        peer = result.peers.get(name)
        if peer is not None:
            check = "pinned files verified" if peer.verified else "unverified files"
            parts.append(f"{name}: {peer.label} ({check})")
        else:
            parts.append(f"{name}: skipped")
    return "; ".join(parts)


def markdown(result: Result, *, plots_dir: Optional[str] = None) -> str:
    """The report: set-up, target table, all-planner table, skips, plots (``plots_dir``
    relative to where the markdown lives)."""
    s = result.settings
    lines = [
        f"Machine: {machine()}; {datetime.date.today().isoformat()}.",
        "",
        f"Versions: {versions(result)}.",
        "",
        f"Workloads: `fasteplb.workloads.generate(profile, model, {s.windows * s.window_steps}, "
        f"seed={s.seed})`, summed into {s.windows} windows of {s.window_steps} steps. Every "
        "planner plans every window from the same torch tensor (sglang-vec: the window's "
        "per-step loads [T, L, E], its native input); the planners run interleaved in an "
        "order rotated per window, fast ones repeat up to "
        f"{s.inner} calls per window; *ms* is the median call. *bal. in*: plan and score on "
        "window i; *bal. next*: plan on window i, score on window i+1; both "
        "`fasteplb.balancedness` (sum of layer mean GPU loads / sum of layer maxima), "
        "averaged over windows. *moves*: `fasteplb.moves` between consecutive windows' plans "
        "(expert copies onto a GPU), summed over layers, per rebalance. *bound*: the in-sample "
        "balancedness of `fasteplb.lower_bound`; *gap*: sum of max GPU loads / sum of bounds "
        "- 1. *no EPLB*: expert e on GPU e // (E/G), no redundant slots. This run: "
        f"{result.wall_s:.0f} s wall; 1-minute load average {result.load[0]:.2f} at the start, "
        f"{result.load[1]:.2f} at the end (other processes share the machine: the ratios, "
        "measured interleaved, are the figures to compare).",
        "",
        "`fasteplb:none`, `reference`, `vllm` and `sglang` all compute DeepSeek's greedy plan "
        "(same balancedness); `sglang-vec` replicates and packs for the per-step loads of the "
        "window ([T, L, E]), a different objective, and is scored here like the others on the "
        "window's sum. `vllm` is called without `old_global_expert_indices`, which only "
        "reorders slots within a GPU and so changes no (GPU, expert) copy counted in *moves*.",
        "",
    ]
    if result.skipped:
        for name, why in result.skipped.items():
            lines.append(f"- skipped {name}: {why.splitlines()[0]}")
        lines.append("")
    if result.failures:
        for m in result.failures:
            lines.append(f"- failed: {m}")
        lines.append("")
    tg = targets(result)
    if tg:
        fast_ok = sum(t["speed_ok"] for t in tg)
        bal_ok = sum(t["balance_ok"] for t in tg)
        ratios = [t["speedup"] for t in tg]
        lines += [
            "### fasteplb (default) against the fastest engine planner",
            "",
            f"Targets: at least {SPEEDUP_TARGET:.0f}x faster than the fastest engine planner "
            f"(met in {fast_ok} of {len(tg)} cases; speed-ups {min(ratios):.1f}x to "
            f"{max(ratios):.1f}x, median {statistics.median(ratios):.1f}x) and in-sample "
            f"balancedness never below any engine's (met in {bal_ok} of {len(tg)}).",
            "",
            "*speed-up*: the fastest engine planner's median time / fasteplb's default mode's "
            '(*none*: / `refine="none"`\'s, the greedy plan the engines compute). *best engine*: '
            "the engine planner with the highest balancedness, in-sample or next-window.",
            "",
            "| configuration | profile | fasteplb ms | fastest engine | its ms | speed-up "
            "| speed-up none | bal. in fasteplb | best engine | bal. next fasteplb | best engine "
            "| bound | no EPLB |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for t in tg:
            mark = "" if t["speed_ok"] else " ✗"
            bmark = "" if t["balance_ok"] else " ✗"
            lines.append(
                f"| {t['config']} | {t['profile']} | {_ms(t['fasteplb_ms'])} "
                f"| {t['fastest_engine']} | {_ms(t['fastest_engine_ms'])} "
                f"| {t['speedup']:.1f}x{mark} | {_f(t['speedup_none'], 1)}x "
                f"| {_f(t['balancedness_in'])}{bmark} "
                f"| {_f(t['best_engine_in'])} ({t['best_engine_in_name']}) "
                f"| {_f(t['balancedness_next'])} "
                f"| {_f(t['best_engine_next'])} ({t['best_engine_next_name']}) "
                f"| {_f(t['bound'])} | {_f(t['identity'])} |"
            )
        lines += ["", "✗: target missed.", ""]
    lines += [
        "### Every planner",
        "",
        f"*x fasteplb*: time / the default fasteplb's. `{MIGRATE}` (extra): the default mode "
        "given its own previous plan as `old_phy2log`, so that experts stay put unless moving "
        "pays off.",
        "",
        "| configuration | profile | planner | ms | x fasteplb | bal. in | bal. next "
        "| gap (%) | moves |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    order = {n: i for i, n in enumerate((*IMPLS[:3], MIGRATE, *IMPLS[3:]))}
    for case, impls in _by_case(result.rows).items():
        main = impls.get("fasteplb")
        for name in sorted(impls, key=lambda n: order.get(n, 99)):
            r = impls[name]
            rel = f"{r['time_ms'] / main['time_ms']:.1f}" if main else "-"
            lines.append(
                f"| {case[0]} | {case[1]} | {name} | {_ms(r['time_ms'])} | {rel} "
                f"| {_f(r['balancedness_in'])} | {_f(r['balancedness_next'])} "
                f"| {_f(r['gap_pct'], 2)} | {_f(r['moves'], 0)} |"
            )
    if plots_dir is not None:
        d = plots_dir.rstrip("/")
        lines += [
            "",
            "### Plots",
            "",
            f"![planning time against problem size]({d}/{PLOT_FILES[0]})",
            "",
            f"![per-layer balancedness]({d}/{PLOT_FILES[1]})",
            "",
            f"![per-GPU load before and after planning]({d}/{PLOT_FILES[2]})",
        ]
    return "\n".join(lines) + "\n"


HEADLINE_CONFIGS = (
    "DeepSeek-V3 EP32 hierarchical",
    "DeepSeek-V3 EP32 global",
    "Qwen3-235B EP32",
    "Qwen3-235B EP128",
    "Kimi-K2 EP64",
    "Mixtral-8x7B EP4",
)


def headline(result: Result, *, plot_path: str = "bench/plots/time_vs_size.png") -> str:
    """The README's "How it compares" section (default profile of the headline configs)."""
    by = _by_case(result.rows)
    first: dict[str, tuple[str, str]] = {}
    for case in by:
        first.setdefault(case[0], case)
    wanted = [c for c in HEADLINE_CONFIGS if c in first] or list(first)[:6]
    cols = [
        n for n in ("fasteplb", "vllm", "sglang", "reference") if any(n in v for v in by.values())
    ]
    names = {"fasteplb": "fasteplb", "vllm": "vLLM", "sglang": "SGLang", "reference": "reference"}
    vers = {n: result.peers[n].version for n in ("vllm", "sglang") if n in result.peers}
    head = (
        "| configuration | profile | "
        + " | ".join(f"ms {names[c]}" for c in cols)
        + " | speed-up | "
        + " | ".join(f"bal. {names[c]}" for c in cols if c != "reference")
        + " | bal. next fasteplb / best engine | copies per rebalance: fasteplb / migrate "
        "/ engines |"
    )
    lines = [
        "## How it compares",
        "",
        "The serving engines' own EPLB planners"
        + (
            " (" + ", ".join(f"{names[n]} {v}" for n, v in vers.items()) + ", loaded from their "
            "published wheels by `fasteplb._peers`)"
            if vers
            else ""
        )
        + ", the pure-Python DeepSeek greedy (`reference`) and fasteplb's default mode, on "
        "the same realistic synthetic loads (`fasteplb.workloads`, 100-step windows): median "
        "planning time, and balancedness (mean / max GPU load summed over layers) in-sample "
        "and on the next window. *speed-up*: the fastest engine planner's time / fasteplb's. "
        "*copies*: experts copied onto a GPU per rebalance (`fasteplb.moves`), for fresh plans "
        "and for fasteplb planning from its previous plan (`old_phy2log`), against the "
        "engine planner that copies least. "
        f"Machine: {machine()}.",
        "",
        head,
        "|---|---|"
        + "---:|" * (len(cols) + 1 + len([c for c in cols if c != "reference"]))
        + "---:|---:|",
    ]
    for name in wanted:
        impls = by[first[name]]
        engines = [impls[n] for n in ENGINES if n in impls]
        main = impls.get("fasteplb")
        speed = (
            f"{min(e['time_ms'] for e in engines) / main['time_ms']:.0f}x"
            if engines and main
            else "-"
        )
        nxt = "-"
        if main and engines:
            best = max(e["balancedness_next"] or 0.0 for e in engines)
            nxt = f"{_f(main['balancedness_next'])} / {_f(best)}"
        cells = [_ms(impls[c]["time_ms"]) if c in impls else "-" for c in cols]
        bals = [
            _f(impls[c]["balancedness_in"]) if c in impls else "-" for c in cols if c != "reference"
        ]
        mv = " / ".join(
            _f(impls[n]["moves"], 0) if n in impls else "-" for n in ("fasteplb", MIGRATE)
        )
        if engines:
            mv += " / " + _f(min(e["moves"] or 0.0 for e in engines), 0)
        lines.append(
            f"| {name} | {first[name][1]} | "
            + " | ".join(cells)
            + f" | {speed} | "
            + " | ".join(bals)
            + f" | {nxt} | {mv} |"
        )
    lines += [
        "",
        "Full tables, every planner and profile, moves per rebalance and the gap to the lower "
        "bound: [bench/RESULTS.md](bench/RESULTS.md) (`python bench/bench_engines.py`; "
        "`python -m fasteplb bench --quick` for a one-minute run).",
        "",
        f"![planning time against problem size]({plot_path})",
    ]
    return "\n".join(lines) + "\n"


def write_section(path: str, name: str, body: str, *, heading: str = "") -> None:
    """Put ``body`` between ``<!-- name -->`` and ``<!-- /name -->`` in the markdown file at
    ``path``, leaving the rest of the file as it is (appended, under ``heading``, when the
    file has no such block; the file is created when missing)."""
    block = f"<!-- {name} -->\n{body.strip()}\n<!-- /{name} -->"
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    pattern = re.compile(rf"<!-- {re.escape(name)} -->\n.*?<!-- /{re.escape(name)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda m: block, text, count=1)
    else:
        head = f"{heading.strip()}\n\n" if heading else ""
        text = (text.rstrip() + "\n\n" if text.strip() else "") + head + block + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def read_section(path: str, name: str) -> Optional[str]:
    """The body of the ``name`` block of ``path`` (None when absent)."""
    if not os.path.exists(path):
        return None
    text = open(path, encoding="utf-8").read()
    m = re.search(rf"<!-- {re.escape(name)} -->\n(.*?)\n?<!-- /{re.escape(name)} -->", text, re.S)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------------------
# Plots.
# ----------------------------------------------------------------------------------------

PLOT_FILES = ("time_vs_size.png", "balancedness_per_layer.png", "gpu_load_heatmap.png")
_STYLE = {
    "fasteplb": ("#d62728", "o"),
    "fasteplb:none": ("#ff9896", "v"),
    "fasteplb:swap": ("#e377c2", "^"),
    "reference": ("#7f7f7f", "s"),
    "vllm": ("#1f77b4", "D"),
    "sglang": ("#2ca02c", "P"),
    "sglang-vec": ("#98df8a", "X"),
}


def _size(impls: dict[str, dict[str, Any]]) -> int:
    r = next(iter(impls.values()))
    return int(r["layers"] * r["num_replicas"])


def plot(result: Result, out_dir: str) -> list[str]:
    """Writes PLOT_FILES into ``out_dir``; needs matplotlib. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f) for f in PLOT_FILES]

    # 1. Planning time against problem size (layers x slots), first profile of each config.
    by = _by_case(result.rows)
    first: dict[str, dict[str, dict[str, Any]]] = {}
    for (config, _profile), impls in by.items():
        first.setdefault(config, impls)
    order = sorted(first, key=lambda c: (_size(first[c]), c))
    fig, ax = plt.subplots(figsize=(10, 5.5))
    xs = np.arange(len(order))
    for name in IMPLS:
        ys = [first[c][name]["time_ms"] if name in first[c] else np.nan for c in order]
        if all(np.isnan(ys)):
            continue
        color, marker = _STYLE[name]
        ax.plot(xs, ys, marker=marker, color=color, label=name, linewidth=1.2, alpha=0.9)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels(
        [f"{c}\n{_size(first[c]):,} slots" for c in order], rotation=35, ha="right", fontsize=7
    )
    ax.set_xlabel("configuration, by problem size (MoE layers x physical slots)")
    ax.set_ylabel("median planning time per rebalance (ms, log)")
    ax.set_title(f"EPLB planning time, one CPU process ({machine()})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    # 2. Per-layer balancedness of one case: greedy, local, bound.
    d = result.detail
    config: Config = d["config"]
    g = config.num_gpus
    w0 = d["loads"][0]
    mean = w0.sum(axis=1) / g
    fig, ax = plt.subplots(figsize=(9, 4.5))
    layers = np.arange(w0.shape[0])
    greedy_name = "vllm" if "vllm" in d["plans"] else "fasteplb:none"
    series = [
        (f"greedy ({greedy_name})", d["plans"][greedy_name][0], _STYLE[greedy_name][0]),
        ('fasteplb default (refine="local")', d["plans"]["fasteplb"][0], _STYLE["fasteplb"][0]),
    ]
    if "sglang-vec" in d["plans"]:
        series.append(("sglang-vec", d["plans"]["sglang-vec"][0], _STYLE["sglang-vec"][0]))
    for label, plan, color in series:
        ax.plot(layers, balancedness(plan, w0, g, per_layer=True), color=color, label=label,
                marker=".", linewidth=1)  # fmt: skip
    ax.plot(layers, np.divide(mean, d["bound"], out=np.ones_like(mean), where=d["bound"] > 0),
            color="black", linestyle="--", label="lower bound (best possible)")  # fmt: skip
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("balancedness (mean / max GPU load)")
    ax.set_title(f"{config.name}, {d['profile']}: per-layer balancedness, in-sample (window 0)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)

    # 3. Per-GPU load heat maps: no EPLB, planned, and the plan on the next window.
    experts = w0.shape[1]
    ident = _identity(experts, g)
    plan = d["plans"]["fasteplb"][0]
    panels = []
    if ident is not None:
        panels.append(
            ("no EPLB (expert e on GPU e // (E/G))", np.tile(ident, (w0.shape[0], 1)), w0)
        )
    panels.append(("fasteplb plan, same window", plan, w0))
    if len(d["loads"]) > 1:
        panels.append(("fasteplb plan, next window", plan, d["loads"][1]))
    maps = []
    for title, p, w in panels:
        loads = gpu_loads(p, w, g)
        lm = loads.mean(axis=1, keepdims=True)
        maps.append((title, np.divide(loads, lm, out=np.ones_like(loads), where=lm > 0)))
    vmax = max(float(m.max()) for _, m in maps)
    fig, axes = plt.subplots(
        1, len(maps), figsize=(4.0 * len(maps) + 1.2, 5), squeeze=False, layout="constrained"
    )
    im = None
    for ax, (title, m) in zip(axes[0], maps):
        im = ax.imshow(m, aspect="auto", cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{title}\nmax/mean {m.max(axis=1).mean():.2f} (layer avg)", fontsize=9)
        ax.set_xlabel("GPU")
        ax.set_ylabel("MoE layer")
    fig.colorbar(im, ax=axes[0].tolist(), label="GPU load / layer mean")
    fig.suptitle(f"{config.name}, {d['profile']}: per-GPU load", fontsize=11)
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------------------
# Command line (python -m fasteplb bench).
# ----------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick",
        action="store_true",
        help="6 configurations, one profile each, 3 windows per case (under a minute)",
    )
    p.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    p.add_argument("--markdown", metavar="PATH", help="write the markdown report")
    p.add_argument("--plots", metavar="DIR", help="write the PNG plots (needs matplotlib)")
    p.add_argument(
        "--peers-cache",
        metavar="DIR",
        help="cache of the engines' wheels (default: fasteplb._peers.default_cache_dir())",
    )
    p.add_argument(
        "--no-download",
        action="store_true",
        help="never download an engine wheel; skip peers not in the cache",
    )
    p.add_argument(
        "--peers-root",
        metavar="DIR",
        help="read the peers' policy files from DIR (wheel layout); no download",
    )
    p.add_argument(
        "--configs",
        metavar="NAMES",
        help="comma-separated substrings of configuration names (default: all)",
    )
    p.add_argument(
        "--profiles",
        metavar="NAMES",
        help="comma-separated workload profiles for every configuration",
    )
    p.add_argument("--windows", type=int, metavar="N", help="windows per case (>= 2)")
    p.add_argument("--window-steps", type=int, metavar="N", help="steps per window (100)")
    p.add_argument("--seed", type=int, default=0, help="workload seed (0)")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")  # fmt: skip


def settings_from(args: argparse.Namespace) -> Settings:
    s = QUICK if args.quick else FULL
    if args.windows is not None:
        if args.windows < 2:
            raise SystemExit("--windows must be >= 2 (plans are scored on the next window)")
        s = replace(s, windows=args.windows)
    if args.window_steps is not None:
        if args.window_steps < 1:
            raise SystemExit("--window-steps must be >= 1")
        s = replace(s, window_steps=args.window_steps)
    return replace(s, seed=args.seed)


def configs_from(spec: Optional[str]) -> list[Config]:
    if not spec:
        return list(CONFIGS)
    wanted = [w.strip().lower() for w in spec.split(",") if w.strip()]
    chosen = [c for c in CONFIGS if any(w in c.name.lower() for w in wanted)]
    if not chosen:
        raise SystemExit(
            f"--configs {spec!r} matches none of: {', '.join(c.name for c in CONFIGS)}"
        )
    return chosen


def profiles_from(spec: Optional[str]) -> Optional[list[str]]:
    if not spec:
        return None
    chosen = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in chosen if p not in wl.PROFILES]
    if bad:
        raise SystemExit(f"unknown profiles {bad}; valid: {', '.join(wl.PROFILES)}")
    return chosen


def cli(args: argparse.Namespace) -> int:
    """``python -m fasteplb bench``: run, print the markdown report, write what was asked."""
    if args.list:
        for c in CONFIGS:
            print(f"{c.name}: {c.model} {c.sizes}; profiles {', '.join(c.profiles)}"
                  + (f" (+ full: {', '.join(c.full_profiles)})" if c.full_profiles else ""))  # fmt: skip
        return 0
    settings = settings_from(args)
    configs = configs_from(args.configs)
    profiles = profiles_from(args.profiles)
    download = not args.no_download and args.peers_root is None
    peers, skipped = load_peers(
        ENGINES, args.peers_cache, download=download, root=args.peers_root, log=sys.stdout
    )
    result = run(configs, settings, profiles=profiles, peers=peers, skipped=skipped)
    plots_rel = None
    if args.plots:
        try:
            plot(result, args.plots)
        except ImportError:
            print("no plots: matplotlib is not installed (pip install matplotlib)")
        else:
            base = os.path.dirname(os.path.abspath(args.markdown)) if args.markdown else os.getcwd()
            plots_rel = os.path.relpath(os.path.abspath(args.plots), base)
    report = markdown(result, plots_dir=plots_rel)
    print(report)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result.rows, f, indent=1)
            f.write("\n")
    print(f"bench: {len(result.rows)} rows in {result.wall_s:.1f} s", file=sys.stderr)
    return 0
