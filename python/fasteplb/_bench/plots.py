"""The engines benchmark's figures (matplotlib, imported only when plotting)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import balancedness, gpu_loads
from .._timing import machine
from .engines import IMPLS, Config, Result, _by_case, _identity

__all__ = ["PLOT_FILES", "plot"]

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
