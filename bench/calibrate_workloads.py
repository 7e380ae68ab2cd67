"""Statistics of every workload profile against WORKLOADS.md's targets and the real matrices.

    python bench/calibrate_workloads.py [--steps N] [--seeds 0 1 2] [--profiles NAME ...]

The last line times generate("qwen3-like") at 10^4 steps x 94 layers x 384 experts (2.9 GB
of int64; set SKIP_TIMING=1 to leave it out).

The real matrices are read from ../shared/data/real (or $FASTEPLB_REAL_DATA) when present;
nothing derived from them is written anywhere.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from fasteplb import workloads as wl
from fasteplb._bench.cli import script_parser

# profile -> (model, statistics window in steps, EP sizes, steps); windows as in the target
# table (per-step statistics plan one EPLB per step, hence the shorter traces).
CASES = {
    "qwen3-like": ("qwen3-235b", 100, (8, 16, 32), 2000),
    "deepseek-v3-like": ("deepseek-v3", 1, (8, 32), 400),
    "aux-loss-balanced": ("qwen2-57b", 100, (4, 8, 16), 2000),
    "near-uniform": ("qwen2-57b", 100, (4, 8, 16), 2000),
    "stress": ("deepseek-v3", 1, (8, 32), 400),
}

TARGETS = {
    "qwen3-like": "max/mean 10.9 (7.7-13.8), top10 0.51, cold 0.30, EP8/16/32 1.74/2.44/3.8, "
    "EPLB EP32 1.02, consec >= 0.9, cross ~0",
    "deepseek-v3-like": "max/mean ~12/step, top10 0.35-0.45, cold 0.05-0.15, EP32 2.56/step "
    "(layers 1.46-3.46), EPLB EP32 1.11, consec >= 0.9, cross 0.2-0.4",
    "aux-loss-balanced": "max/mean ~1.5 (worst ~4), top10 0.13, cold 0, EP4 1.11 EP8 1.22, "
    "EPLB EP16 1.02, consec >= 0.8, cross ~0.5",
    "near-uniform": "shape 20-50",
    "stress": "shape 0.2, very hot experts, fast switches",
}

REAL = {
    "qwen3-like": ["qwen3-235b-a22b_counts235b.json", "qwen3-30b-a3b_counts30b.json"],
    "aux-loss-balanced": [
        "qwen2-57b-a14b_counts57b_L256.json",
        "qwen2-57b-a14b_counts57b_sharegpt.json",
    ],
}


def real_dir() -> Path:
    env = os.environ.get("FASTEPLB_REAL_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def fmt(s: dict) -> str:
    def f(x):
        return "  -  " if x is None else f"{x:.3f}"

    ident = " ".join(f"EP{g} {f(v)}" for g, v in s["identity"].items())
    layers = " ".join(
        f"EP{g} {f(v[0])}-{f(v[1])}" for g, v in s["identity_layers"].items() if v is not None
    )
    eplb = " ".join(f"EP{g} {f(v)}" for g, v in s["eplb"].items())
    nxt = " ".join(f"EP{g} {f(v)}" for g, v in s["eplb_next"].items())
    return (
        f"  expert max/mean {f(s['expert_max_mean'])} (p10 {f(s['expert_max_mean_p10'])}, "
        f"p90 {f(s['expert_max_mean_p90'])}, worst {f(s['expert_max_mean_worst'])})\n"
        f"  top10 share {f(s['top_share'])}  cold {f(s['cold_fraction'])}\n"
        f"  identity {ident}\n  identity per layer p10-p90 {layers}\n"
        f"  eplb in-sample {eplb}  next window {nxt}\n"
        f"  consecutive rank corr {f(s['rank_corr_consecutive'])} "
        f"(skewed layers {f(s['rank_corr_consecutive_skewed'])})  "
        f"cross-domain {f(s['cross_domain_rank_corr'])}"
    )


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("--steps", type=int, default=None, help="trace length (default: per case)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--profiles", nargs="+", default=list(CASES))
    args = ap.parse_args()
    real = real_dir()
    for name in args.profiles:
        model, window, gpus, steps = CASES[name]
        steps = args.steps or steps
        print(f"== {name} on {model}, {steps} steps, window {window}: targets {TARGETS[name]}")
        for seed in args.seeds:
            t0 = time.perf_counter()
            trace, meta = wl.generate(name, model, steps, seed=seed, return_meta=True)
            t1 = time.perf_counter()
            s = wl.statistics(
                trace,
                window=window,
                num_gpus_list=gpus,
                # Same-regime pairs only, unless regimes are shorter than two windows
                # (stress), where no pair would be left.
                regime=meta["regime"] if wl.PROFILES[name].dwell >= 200 else None,
                domain_popularity=meta["domain_popularity"],
            )
            t2 = time.perf_counter()
            print(f" seed {seed}: generate {t1 - t0:.2f}s, statistics {t2 - t1:.2f}s")
            print(fmt(s))
        for fname in REAL.get(name, []):
            path = real / fname
            if path.exists():
                print(f" real {fname}:")
                print(fmt(wl.statistics(wl.load_trace(path), num_gpus_list=gpus)))
        print()
    if os.environ.get("SKIP_TIMING"):
        return
    sizes = (10_000, 94, 384)
    t0 = time.perf_counter()
    trace = wl.generate("qwen3-like", sizes[1:], sizes[0])
    dt = time.perf_counter() - t0
    assert np.all(trace.sum(axis=2) == 8 * 4096)
    print(f"generate qwen3-like {sizes}: {dt:.1f}s")


if __name__ == "__main__":
    main()
