"""The engines benchmark's markdown: the report of ``python -m fasteplb bench``, the README's
"How it compares" section, and the ``<!-- name -->`` blocks that the bench scripts keep in
bench/*.md and README.md (``write_section`` / ``read_section``)."""

from __future__ import annotations

import datetime
import math
import os
import re
import statistics
from typing import Any, Optional

import numpy as np

from .. import __version__
from .._timing import machine
from .engines import ENGINES, IMPLS, MIGRATE, SPEEDUP_TARGET, Result, _by_case, _torch
from .plots import PLOT_FILES

__all__ = ["headline", "markdown", "read_section", "targets", "versions", "write_section"]


def _f(x: Optional[float], digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ms(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:.0f}"


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
        x = f"{SPEEDUP_TARGET:.0f}x"
        lines += [
            "### fasteplb (default) against the fastest engine planner",
            "",
            f"{x} target (fasteplb's default at least {x} faster than the fastest engine "
            f"planner): met in {fast_ok} of {len(tg)} (speed-ups {min(ratios):.1f}x to "
            f"{max(ratios):.1f}x, median {statistics.median(ratios):.1f}x). Balance target "
            "(in-sample balancedness at least the best engine's): met in "
            f"{bal_ok} of {len(tg)}.",
            "",
            "*speed-up*: the fastest engine planner's median time / fasteplb's default mode's "
            '(*none*: / `refine="none"`\'s, the greedy plan the engines compute). *best engine*: '
            "the engine planner with the highest balancedness, in-sample or next-window.",
            "",
            "| configuration | profile | fasteplb ms | fastest engine | its ms | speed-up "
            "| speed-up none | bal. in fasteplb | best engine | bal. next fasteplb | best engine "
            f"| bound | no EPLB | {x} target | balance target |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for t in tg:
            lines.append(
                f"| {t['config']} | {t['profile']} | {_ms(t['fasteplb_ms'])} "
                f"| {t['fastest_engine']} | {_ms(t['fastest_engine_ms'])} "
                f"| {t['speedup']:.1f}x | {_f(t['speedup_none'], 1)}x "
                f"| {_f(t['balancedness_in'])} "
                f"| {_f(t['best_engine_in'])} ({t['best_engine_in_name']}) "
                f"| {_f(t['balancedness_next'])} "
                f"| {_f(t['best_engine_next'])} ({t['best_engine_next_name']}) "
                f"| {_f(t['bound'])} | {_f(t['identity'])} "
                f"| {'met' if t['speed_ok'] else 'not met'} "
                f"| {'met' if t['balance_ok'] else 'not met'} |"
            )
        lines.append("")
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
            "published wheels by `fasteplb._bench.peers`)"
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


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def write_section(path: str, name: str, body: str, *, heading: str = "") -> None:
    """Put ``body`` between ``<!-- name -->`` and ``<!-- /name -->`` in the markdown file at
    ``path``, leaving the rest of the file as it is (appended, under ``heading``, when the
    file has no such block; the file is created when missing)."""
    block = f"<!-- {name} -->\n{body.strip()}\n<!-- /{name} -->"
    text = _read(path) if os.path.exists(path) else ""
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
    text = _read(path)
    m = re.search(rf"<!-- {re.escape(name)} -->\n(.*?)\n?<!-- /{re.escape(name)} -->", text, re.S)
    return m.group(1) if m else None
