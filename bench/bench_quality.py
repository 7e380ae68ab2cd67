"""Plan quality of fasteplb's refine modes (none / swap / local) against the lower bound.

For every configuration: in-sample GPU balancedness and median planning time of each mode,
the lower-bound balancedness, each mode's gap to it, the share of greedy's gap that "local"
closes, and avoidable co-located replicas. A second table sums these up as targets. Prints
markdown and, with --write, stores it in bench/QUALITY.md.

    python bench/bench_quality.py [--write] [--quick]
"""

from __future__ import annotations

import datetime
import json
import pathlib
import statistics
import sys
import time

import fasteplb
import numpy as np
from fasteplb import reference
from fasteplb._bench.cli import script_parser
from fasteplb._timing import machine, side_by_side

MODES = ("none", "swap", "local")
QWEN_NAME = "qwen3-235b-a22b_counts235b.json"
QWEN_PATH = pathlib.Path(__file__).resolve().parents[2] / "shared/data/real" / QWEN_NAME

# model, [(label, (num_replicas, num_groups, num_nodes, num_gpus))]
CONFIGS = {
    "DeepSeek-V3": [
        ("EP32 hierarchical", (288, 8, 4, 32)),
        ("EP32 global", (288, 1, 1, 32)),
        ("EP64", (320, 1, 1, 64)),
        ("EP128", (384, 1, 1, 128)),
        ("EP144", (288, 1, 1, 144)),
    ],
    "Qwen3-235B": [
        ("EP16", (144, 1, 1, 16)),
        ("EP32", (160, 1, 1, 32)),
        ("EP64", (192, 1, 1, 64)),
        ("EP128", (256, 1, 1, 128)),
    ],
    "Kimi-K2": [("EP64", (448, 1, 1, 64))],
}


def lognormal_load(layers: int, experts: int, seed: int) -> np.ndarray:
    """Seeded log-normal expert loads (sigma 1), as token counts."""
    rng = np.random.default_rng(seed)
    return np.round(rng.lognormal(0.0, 1.0, size=(layers, experts)) * 1000.0)


def loads() -> dict[str, np.ndarray]:
    """Load matrix per model; Qwen3-235B (real counts) only when the shared file exists."""
    out = {"DeepSeek-V3": lognormal_load(58, 256, 0), "Kimi-K2": lognormal_load(60, 384, 1)}
    if QWEN_PATH.is_file():
        out["Qwen3-235B"] = np.asarray(json.loads(QWEN_PATH.read_text())["counts"], dtype=float)
    else:
        print(f"skipping Qwen3-235B rows: {QWEN_PATH} not found", file=sys.stderr)
    return out


def median_ms(fn, repeats: int) -> float:
    """Median milliseconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(model: str, label: str, weight: np.ndarray, shape: tuple, repeats: int) -> dict:
    num_replicas, num_groups, num_nodes, num_gpus = shape
    policy_nodes = num_nodes if num_groups % num_nodes == 0 else 1
    bound = fasteplb.lower_bound(weight, *shape)
    row = dict(
        config=f"{model} {label}",
        k=num_replicas // num_gpus,
        bound=float(weight.sum() / num_gpus) / float(bound.sum()),
    )
    for mode in MODES:
        phy2log = fasteplb.rebalance_experts(weight, *shape, refine=mode)[0]
        row[mode] = fasteplb.balancedness(phy2log, weight, num_gpus)
        row[f"{mode}_ms"] = median_ms(
            lambda: fasteplb.rebalance_experts(weight, *shape, refine=mode), repeats
        )
        row[f"{mode}_gap"] = 100.0 * (row["bound"] / row[mode] - 1.0)
        row[f"{mode}_coloc"] = int(
            fasteplb.colocated(phy2log, num_gpus, avoidable_only=True, num_nodes=policy_nodes).sum()
        )
    headroom = row["bound"] - row["none"]
    row["closed"] = (row["local"] - row["none"]) / headroom if headroom > 1e-12 else float("nan")
    print(
        f"{row['config']:<30} k={row['k']} bound {row['bound']:.4f}  "
        + "  ".join(f"{m} {row[m]:.4f} ({row[m + '_ms']:.2f} ms)" for m in MODES),
        file=sys.stderr,
    )
    return row


def quality_table(rows: list[dict]) -> str:
    lines = [
        "| configuration | k | bal. none | bal. swap | bal. local | bal. bound "
        "| gap none | gap swap | gap local | closed by local "
        "| ms none | ms swap | ms local | avoidable co-loc. none | avoidable co-loc. local |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['k']} "
            + "".join(f"| {r[m]:.4f} " for m in (*MODES, "bound"))
            + "".join(f"| {r[m + '_gap']:.2f}% " for m in MODES)
            + f"| {100 * r['closed']:.0f}% "
            + "".join(f"| {r[m + '_ms']:.3f} " for m in MODES)
            + f"| {r['none_coloc']} | {r['local_coloc']} |"
        )
    return "\n".join(lines)


def targets_table(rows: list[dict], ref_ms: float, local_ms: float) -> str:
    by_name = {r["config"]: r for r in rows}

    def mean_of(key: str, pick, fmt) -> tuple[str, str]:
        chosen = [r for r in rows if pick(r["k"])]
        if not chosen:
            return "n/a", "no such rows"
        detail = ", ".join(f"{r['config']} {fmt(r[key])}" for r in chosen)
        return fmt(statistics.fmean(r[key] for r in chosen)), detail

    def time_of(name: str) -> tuple[str, str]:
        return f"{by_name[name]['local_ms']:.3f} ms", name

    gap, share = (lambda v: f"{v:.2f}%"), (lambda v: f"{100 * v:.0f}%")
    items = [
        ("mean gap of local to the bound, k >= 5", *mean_of("local_gap", lambda k: k >= 5, gap)),
        (
            "share of greedy's gap closed by local, k = 3",
            *mean_of("closed", lambda k: k == 3, share),
        ),
        (
            "share of greedy's gap closed by local, k = 2",
            *mean_of("closed", lambda k: k == 2, share),
        ),
        (
            "local planning time, DeepSeek-V3 EP32 hierarchical",
            *time_of("DeepSeek-V3 EP32 hierarchical"),
        ),
        ("local planning time, Kimi-K2 EP64", *time_of("Kimi-K2 EP64")),
        (
            'speed-up of local vs pure-Python greedy (reference, refine="none"), '
            "DeepSeek-V3 EP32 hierarchical",
            f"{ref_ms / local_ms:.0f}x",
            f"reference {ref_ms:.1f} ms vs local {local_ms:.3f} ms (side by side)",
        ),
    ]
    lines = ["| target | value | rows (per-row values) |", "|---|---:|---|"]
    lines += [f"| {t} | {v} | {d} |" for t, v, d in items]
    return "\n".join(lines)


def main() -> int:
    parser = script_parser(__doc__, write="bench/QUALITY.md", quick="5 repeats, 2 reference rounds")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per mode")
    parser.add_argument("--rounds", type=int, default=3, help="reference calls (speed-up)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.rounds = 5, 2

    weights = loads()
    rows = [
        measure(model, label, weights[model], shape, args.repeats)
        for model, configs in CONFIGS.items()
        if model in weights
        for label, shape in configs
    ]

    weight, shape = weights["DeepSeek-V3"], CONFIGS["DeepSeek-V3"][0][1]
    ref_ms, local_ms = side_by_side(
        lambda: reference.rebalance_experts(weight, *shape, refine="none"),
        lambda: fasteplb.rebalance_experts(weight, *shape, refine="local"),
        rounds=args.rounds,
        inner=args.repeats,
    )

    qwen = (
        f"Qwen3-235B-A22B real routed-token counts `../shared/data/real/{QWEN_NAME}` "
        "(from sjqsjq/EPLB, not stored in this repository)"
        if "Qwen3-235B" in weights
        else "Qwen3-235B rows skipped (real counts file not found)"
    )
    header = (
        f"Machine: {machine()}; numpy {np.__version__}; fasteplb {fasteplb.__version__}; "
        f"{datetime.date.today().isoformat()}.\n\n"
        "Loads: DeepSeek-V3 [58, 256] and Kimi-K2 [60, 384] are seeded synthetic log-normal "
        "(sigma 1, x1000, rounded; seeds 0 and 1); " + qwen + ".\n\n"
        "Balancedness (bal.) is in-sample, sum of layer mean GPU loads / sum of layer maxima; "
        "bound is the same ratio with fasteplb.lower_bound in place of the maxima; gap = "
        "bound / bal. - 1; closed by local = (local - none) / (bound - none); avoidable "
        "co-loc. = extra replicas of one expert on one GPU that a placement could avoid, "
        f"summed over layers. Times: median of {args.repeats} calls after a warm-up, "
        "default threads; speed-up measured interleaved with fasteplb._timing.side_by_side "
        f"({args.rounds} reference rounds)."
    )
    text = (
        f"{header}\n\n## Quality per configuration\n\n{quality_table(rows)}\n\n"
        f"## Targets\n\n{targets_table(rows, ref_ms, local_ms)}\n"
    )
    print(text)
    if args.write:
        out = pathlib.Path(__file__).with_name("QUALITY.md")
        out.write_text(
            "# fasteplb plan quality\n\nGenerated by `python bench/bench_quality.py "
            f"--write`.\n\n{text}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
