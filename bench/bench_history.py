"""Planning from a load history: next-window balancedness of the forecasts and their selection.

A plan is made from the windows before window t and served on window t. For three
configurations (DeepSeek-V3 EP32 hierarchical and global, Qwen3-235B EP64), two kinds of
traffic (the profiles' defaults in 100-step windows; 64 tokens per step of "small-batch"
traffic in 10-step windows) and the five workload profiles, with seeds 0 and 1, each trace
holds 50 windows (30 and seed 0 only with --quick); evaluation positions t run from 24 to the
last window, the history being the windows before t (at most the last 40). At every position
the next-window balancedness (sum of layer means / sum of layer maxima, on window t) of:

- ``last``: plan on window t-1 (today's practice),
- each of the 16 candidates of ``fasteplb.history_candidates()`` as a fixed mode
  (``forecast_load(history, mode, ...)`` then ``rebalance_experts`` on the forecast),
- ``auto``: ``rebalance_experts(history)`` (the model-level share-error proxy's choice),
- full replay: the candidate whose plans scored best (mean next-window balancedness) on the
  8 windows before t, scored the same way (each candidate's plan at each position is made
  once, from position 16 on, and reused),
- per-layer proxy: per layer, the candidate with the smallest squared error of load shares
  over the last 8 windows; the plan assembled layer by layer from the candidates' plans,
- ceiling: plan on the noise-free expected load of window t (``expected_windows``).

Then: time per call (auto on a 16-window history, the single-window plan, ``forecast_load``
alone, ``Planner.plan`` with keep=40), whether the refinement's in-sample gain survives to the
next window (refine none / swap / local on the ``last`` forecast), and whether spreading the
replicas of volatile experts pays (robust vs mean of 8 windows). Prints markdown and, with
--write, stores it in the bench-history section of bench/RESULTS.md and draws
bench/plots/history.png.

    python bench/bench_history.py [--write] [--quick]
"""

from __future__ import annotations

import collections
import datetime
import pathlib
import statistics
import sys
import time

import fasteplb
import fasteplb.workloads as wl
import numpy as np
from fasteplb import _core
from fasteplb._bench.cli import script_parser
from fasteplb._bench.tables import write_section
from fasteplb._timing import machine

HERE = pathlib.Path(__file__).resolve().parent

# label, model, (num_replicas, num_groups, num_nodes, num_gpus)
CONFIGS = [
    ("DeepSeek-V3 EP32 hierarchical", "deepseek-v3", (288, 8, 4, 32)),
    ("DeepSeek-V3 EP32 global", "deepseek-v3", (288, 1, 1, 32)),
    ("Qwen3-235B EP64", "qwen3-235b", (192, 1, 1, 64)),
]
# label, window steps, generate()'s keyword arguments
TRAFFICS = [
    ("100-step windows", 100, {}),
    ("10-step x 64-token windows", 10, {"tokens_per_step": 64, "traffic": "small-batch"}),
]
PROFILES = list(wl.PROFILES)
START = 24  # first evaluation position
REPLAYS = 8  # windows the selections look back on
KEEP = 40  # windows of history kept
REFINE_ROWS = ["deepseek-v3-like", "qwen3-like", "aux-loss-balanced"]


def candidates() -> list[tuple[str, str, dict]]:
    """(name, mode, forecast_load keyword arguments) of the 16 candidates, in auto's order."""
    out = []
    for name, (mode, alpha, window, z) in zip(
        fasteplb.history_candidates(), _core.history_candidates()
    ):
        kw: dict = {}
        if mode == "ema":
            kw["alpha"] = alpha
        if mode in ("mean", "robust"):
            kw["window"] = window
        if mode == "robust":
            kw["z"] = z
        out.append((name, mode, kw))
    return out


CANDS = candidates()
NAMES = [c[0] for c in CANDS]


def shares(load: np.ndarray) -> np.ndarray:
    return load / np.maximum(load.sum(axis=-1, keepdims=True), 1e-300)


def load_windows(model: str, profile: str, traffic: tuple, count: int, seed: int):
    _, size, kw = traffic
    trace, meta = wl.generate(profile, model, count * size, seed=seed, return_meta=True, **kw)
    ws = wl.windows(trace, size).astype(np.float64)
    del trace
    return ws, wl.expected_windows(meta, size)


def evaluate(shape: tuple, ws: np.ndarray, ew: np.ndarray, refine_rows: bool) -> dict:
    """Per-position next-window balancedness of every method on one trace's windows."""
    gpus = shape[3]
    count = ws.shape[0]
    first = START - REPLAYS
    score = np.zeros((len(CANDS), count))  # candidate c's plan at position p, scored on p
    err = np.zeros((len(CANDS), count, ws.shape[1]))  # per-layer share error at p
    out: dict = collections.defaultdict(list)
    for p in range(first, count):
        hist = ws[max(0, p - KEEP) : p]
        actual = shares(ws[p])
        plans = []
        for c, (_, mode, kw) in enumerate(CANDS):
            fc = fasteplb.forecast_load(hist, mode, **kw)[0]
            plan = fasteplb.rebalance_experts(fc, *shape)[0]
            plans.append(plan)
            score[c, p] = fasteplb.balancedness(plan, ws[p], gpus)
            err[c, p] = ((shares(fc) - actual) ** 2).sum(axis=-1)
        if p < START:
            continue
        for c, name in enumerate(NAMES):
            out[name].append(score[c, p])
        out["last"].append(score[0, p])
        auto = fasteplb.rebalance_experts(hist, *shape)[0]
        out["auto"].append(fasteplb.balancedness(auto, ws[p], gpus))
        out["auto_pick"].append(fasteplb.forecast_load(hist, "auto")[1])
        past = slice(p - REPLAYS, p)
        full = int(np.argmax(score[:, past].mean(axis=1)))
        out["full"].append(score[full, p])
        out["full_pick"].append(NAMES[full])
        layer_err = err[:, past].sum(axis=1)  # [candidates, layers]
        out["proxy_pick"].append(NAMES[int(np.argmin(layer_err.sum(axis=1)))])
        pick = np.argmin(layer_err, axis=0)
        assembled = np.stack(plans)[pick, np.arange(len(pick))]
        out["layer"].append(fasteplb.balancedness(assembled, ws[p], gpus))
        ceiling = fasteplb.rebalance_experts(ew[p], *shape)[0]
        out["ceiling"].append(fasteplb.balancedness(ceiling, ws[p], gpus))
        if refine_rows:
            prev = ws[p - 1]
            for refine in ("none", "swap", "local"):
                plan = plans[0] if refine == "local" else None
                if plan is None:
                    plan = fasteplb.rebalance_experts(prev, *shape, refine=refine)[0]
                out[f"in_{refine}"].append(fasteplb.balancedness(plan, prev, gpus))
                out[f"next_{refine}"].append(fasteplb.balancedness(plan, ws[p], gpus))
    return out


def summarize(runs: list[dict]) -> dict:
    """Averages over positions and seeds of one row (config, traffic, profile)."""
    merged: dict = collections.defaultdict(list)
    for r in runs:
        for k, v in r.items():
            merged[k] += v
    row = {k: float(np.mean(v)) for k, v in merged.items() if not k.endswith("_pick")}
    best = max(NAMES, key=lambda n: row[n])
    row["best_name"], row["best"] = best, row[best]
    auto, full, proxy = merged["auto_pick"], merged["full_pick"], merged["proxy_pick"]
    row["agree"] = float(np.mean([a == f for a, f in zip(auto, full)]))
    row["proxy_agree"] = float(np.mean([a == q for a, q in zip(auto, proxy)]))
    top, n = collections.Counter(auto).most_common(1)[0]
    row["top_pick"], row["top_rate"] = top, n / len(auto)
    row["positions"] = len(auto)
    return row


def results_table(rows: dict, traffic: str) -> list[str]:
    lines = [
        "| configuration | profile | last | auto | full replay | per-layer proxy | "
        "best fixed (hindsight) | ceiling | auto = full replay | auto's usual pick |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, _, _ in CONFIGS:
        for profile in PROFILES:
            r = rows[(label, traffic, profile)]
            last = r["last"]
            lines.append(
                f"| {label} | {profile} | {last:.4f} | {r['auto'] - last:+.4f} | "
                f"{r['full'] - last:+.4f} | {r['layer'] - last:+.4f} | "
                f"{r['best'] - last:+.4f} `{r['best_name']}` | {r['ceiling'] - last:+.4f} | "
                f"{r['agree']:.0%} | `{r['top_pick']}` ({r['top_rate']:.0%}) |"
            )
    return lines


def short(name: str) -> str:
    """A candidate's name for a table column: ema(alpha=0.2) -> ema .2, mean(window=8) -> mean 8,
    robust(window=16, z=1) -> rob 16/1."""
    if name.startswith("ema"):
        return "ema " + name.split("=")[1].rstrip(")").lstrip("0")
    if name.startswith("mean"):
        return "mean " + name.split("=")[1].rstrip(")")
    if name.startswith("robust"):
        window, z = (part.split("=")[1] for part in name[7:-1].split(", "))
        return f"rob {window}/{z}"
    return name


def modes_table(rows: dict, traffic: str) -> list[str]:
    """Every fixed mode's next-window balancedness, as the difference to `last`."""
    modes = NAMES[1:]
    lines = [
        "| configuration | profile | last | " + " | ".join(short(m) for m in modes) + " |",
        "|---|---|---|" + "---:|" * len(modes),
    ]
    for label, _, _ in CONFIGS:
        for profile in PROFILES:
            r = rows[(label, traffic, profile)]
            cells = " | ".join(f"{r[m] - r['last']:+.4f}" for m in modes)
            lines.append(f"| {label} | {profile} | {r['last']:.4f} | {cells} |")
    return lines


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def targets(rows: dict) -> list[str]:
    def delta(label, traffic, profile, key="auto"):
        r = rows[(label, traffic, profile)]
        return r[key] - r["last"]

    big, small = TRAFFICS[0][0], TRAFFICS[1][0]
    keys = list(rows)
    lines = []
    worst_key = min(keys, key=lambda k: delta(*k))
    worst = delta(*worst_key)
    lines.append(
        f"- (a) auto never worse than last by more than 0.005 on any row: "
        f"{verdict(worst >= -0.005)} (worst auto - last {worst:+.4f}: "
        f"{worst_key[0]}, {worst_key[1]}, {worst_key[2]})"
    )
    drift = [(c[0], big, p) for c in CONFIGS for p in PROFILES if p != "stress"]
    worst_key = min(drift, key=lambda k: delta(*k))
    worst = delta(*worst_key)
    lines.append(
        f"- (b) 100-step windows, non-stress profiles (drift-limited): auto - last >= -0.001: "
        f"{verdict(worst >= -0.001)} (worst {worst:+.4f}: {worst_key[0]}, {worst_key[2]})"
    )
    parts, ok = [], True
    for label, _, _ in CONFIGS:
        mean = float(np.mean([delta(label, small, p) for p in PROFILES]))
        low_p = min((p for p in PROFILES if p != "stress"), key=lambda p: delta(label, small, p))
        low = delta(label, small, low_p)
        ok &= mean >= 0.02 and low >= 0.015
        parts.append(f"{label}: mean {mean:+.4f}, lowest non-stress {low:+.4f} ({low_p})")
    lines.append(
        "- (c) 10-step x 64-token windows: auto - last averaged over the profiles >= +0.02 per "
        f"configuration and >= +0.015 on every non-stress profile: {verdict(ok)} "
        f"({'; '.join(parts)})"
    )
    vals = {c[0]: delta(c[0], big, "stress") for c in CONFIGS}
    lines.append(
        f"- (d) 100-step stress: auto - last >= +0.015 per configuration: "
        f"{verdict(min(vals.values()) >= 0.015)} "
        f"({'; '.join(f'{k} {v:+.4f}' for k, v in vals.items())})"
    )
    parts = []
    for traffic in (big, small, None):
        sel = [k for k in keys if traffic is None or k[1] == traffic]
        model = float(np.mean([delta(*k) for k in sel]))
        layer = float(np.mean([delta(*k, key="layer") for k in sel]))
        full = float(np.mean([delta(*k, key="full") for k in sel]))
        parts.append(
            f"{traffic or 'all rows'}: per model (auto) {model:+.4f}, per layer {layer:+.4f}, "
            f"full replay {full:+.4f}"
        )
    model = float(np.mean([delta(*k) for k in keys]))
    layer = float(np.mean([delta(*k, key="layer") for k in keys]))
    better = "per layer" if layer > model else "per model (auto)"
    lines.append(
        f"- Selection per model or per layer (mean delta vs last): {better} is better by "
        f"{abs(layer - model):.4f} ({'; '.join(parts)})"
    )
    agree = float(np.mean([rows[k]["proxy_agree"] for k in keys]))
    lines.append(
        f"- Check: auto's pick equals this script's own model-level share-error proxy at "
        f"{agree:.1%} of positions."
    )
    return lines


def timing(shape: tuple, ws: np.ndarray, repeats: int) -> list[str]:
    """Interleaved medians (ms) of the four calls, one process, default threads."""
    h16 = ws[:16]
    planner = fasteplb.Planner(*shape, keep=KEEP)
    for w in ws[:KEEP]:
        planner.plan(w)
    feed = ws[KEEP:] if ws.shape[0] > KEEP else ws
    calls = {
        "auto": lambda i: fasteplb.rebalance_experts(h16, *shape),
        "single": lambda i: fasteplb.rebalance_experts(h16[-1], *shape),
        "forecast": lambda i: fasteplb.forecast_load(h16),
        "planner": lambda i: planner.plan(feed[i % len(feed)]),
    }
    times: dict = {k: [] for k in calls}
    for i in range(repeats + 3):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn(i)
            if i >= 3:
                times[k].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    single = med["single"]
    ratio = med["auto"] / single
    return [
        f"- `rebalance_experts` on its last window alone (single-window plan): {single:.2f} ms",
        f"- `rebalance_experts` on the 16-window history (auto): {med['auto']:.2f} ms "
        f"({ratio:.2f}x the single-window plan; target <= 5x: {verdict(ratio <= 5)})",
        f"- `forecast_load` (auto) on the 16-window history alone: {med['forecast']:.2f} ms "
        f"({med['forecast'] / single:.2f}x)",
        f"- `Planner.plan`, one new window per call (keep=40, after 40 windows of warm-up): "
        f"{med['planner']:.2f} ms ({med['planner'] / single:.2f}x; auto over 40 windows)",
    ]


def refine_table(rows: dict) -> list[str]:
    big = TRAFFICS[0][0]
    lines = [
        "| configuration | profile | none in / next | swap in / next | local in / next | "
        "local - none in-sample | local - none next | robust(8, z=0.5) - mean(8) | "
        "robust(8, z=1) - mean(8) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    gains_in, gains_next, spread = [], [], []
    for label, _, _ in CONFIGS:
        for profile in REFINE_ROWS:
            r = rows[(label, big, profile)]
            gi, gn = r["in_local"] - r["in_none"], r["next_local"] - r["next_none"]
            s05 = r["robust(window=8, z=0.5)"] - r["mean(window=8)"]
            s1 = r["robust(window=8, z=1)"] - r["mean(window=8)"]
            gains_in.append(gi)
            gains_next.append(gn)
            spread += [s05, s1]
            lines.append(
                f"| {label} | {profile} | "
                + " | ".join(
                    f"{r[f'in_{m}']:.4f} / {r[f'next_{m}']:.4f}" for m in ("none", "swap", "local")
                )
                + f" | {gi:+.4f} | {gn:+.4f} | {s05:+.4f} | {s1:+.4f} |"
            )
    gi, gn = float(np.mean(gains_in)), float(np.mean(gains_next))
    lines += [
        "",
        f"Refinement (local vs none, `last` forecast): mean in-sample gain {gi:+.4f}, mean "
        f"next-window gain {gn:+.4f} ({gn / gi:.0%} of the in-sample gain survives)"
        if gi
        else "Refinement: no in-sample gain.",
        f"Spreading volatile experts' replicas (robust - mean of 8 windows, next window): mean "
        f"{np.mean(spread):+.4f}, range {min(spread):+.4f} .. {max(spread):+.4f} "
        "(positive = spreading pays).",
    ]
    return lines


def plot(rows: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=False)
    width = 0.26
    colors = ["tab:blue", "tab:orange", "tab:green"]
    x = np.arange(len(PROFILES))
    for ax, (traffic, _, _) in zip(axes, TRAFFICS):
        for i, (label, _, _) in enumerate(CONFIGS):
            rs = [rows[(label, traffic, p)] for p in PROFILES]
            pos = x + (i - 1) * width
            ax.bar(pos, [r["auto"] - r["last"] for r in rs], width, color=colors[i], label=label)
            ax.scatter(
                pos,
                [r["ceiling"] - r["last"] for r in rs],
                marker="_",
                s=220,
                linewidths=2,
                color="black",
                zorder=3,
                label="ceiling (expected load)" if i == 0 else None,
            )
        ax.axhline(0.0, color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(x)
        ax.set_xticklabels(PROFILES, rotation=15)
        ax.set_title(traffic)
        ax.set_ylabel("next-window balancedness, auto - last")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Planning from a load history: gain of auto over planning on the last window")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = script_parser(
        __doc__,
        write="bench/RESULTS.md (its bench-history section) and bench/plots/history.png",
        quick="30 windows per trace and seed 0 only (positions 24-29), 10 timing repeats",
    )
    args = parser.parse_args()
    count = 30 if args.quick else 50
    seeds = [0] if args.quick else [0, 1]
    repeats = 10 if args.quick else 40
    started = time.perf_counter()
    rows, timing_ws = {}, None
    for traffic in TRAFFICS:
        for label, model, shape in CONFIGS:
            for profile in PROFILES:
                runs = []
                for seed in seeds:
                    t0 = time.perf_counter()
                    ws, ew = load_windows(model, profile, traffic, count, seed)
                    runs.append(evaluate(shape, ws, ew, traffic is TRAFFICS[0]))
                    if (traffic, label, profile, seed) == (
                        TRAFFICS[0],
                        CONFIGS[0][0],
                        "deepseek-v3-like",
                        0,
                    ):
                        timing_ws = ws
                    del ws, ew
                    print(
                        f"{traffic[0]} | {label} | {profile} | seed {seed}: "
                        f"{time.perf_counter() - t0:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                rows[(label, traffic[0], profile)] = r = summarize(runs)
                print(
                    f"  last {r['last']:.4f} auto {r['auto'] - r['last']:+.4f} "
                    f"full {r['full'] - r['last']:+.4f} layer {r['layer'] - r['last']:+.4f} "
                    f"ceiling {r['ceiling'] - r['last']:+.4f}",
                    file=sys.stderr,
                    flush=True,
                )
    time_lines = timing(CONFIGS[0][2], timing_ws, repeats)
    wall = time.perf_counter() - started
    positions = rows[next(iter(rows))]["positions"]
    lines = [
        f"Machine: {machine()}; fasteplb {fasteplb.__version__}, numpy {np.__version__}; "
        f"{datetime.date.today().isoformat()}. Generated by `python bench/bench_history.py "
        f"--write{' --quick' if args.quick else ''}` ({wall / 60:.1f} min).",
        "",
        "Next-window balancedness (sum of layer means / sum of layer maxima): each plan is made "
        "from the windows before window t and scored on window t. "
        f"`fasteplb.workloads.generate(profile, model, ...)`, {count} windows per trace, seeds "
        f"{', '.join(map(str, seeds))}; positions t = {START}..{count - 1}, history = the "
        f"windows before t (at most {KEEP}); {positions} positions per row. `last`: plan on "
        "window t-1 (absolute); the other columns are differences to it. auto: "
        "`rebalance_experts(history)`. Full replay: the candidate whose plans scored best on "
        f"the {REPLAYS} windows before t. Per-layer proxy: per layer, the candidate with the "
        f"smallest share error over the last {REPLAYS} windows, plans assembled layer by "
        "layer. Best fixed: the best of the 16 candidates in hindsight, for the row. Ceiling: "
        "plan on window t's noise-free expected load. auto = full replay: share of positions "
        "where auto picked the same candidate.",
        "",
    ]
    for traffic, size, kw in TRAFFICS:
        extra = f", {', '.join(f'{k}={v!r}' for k, v in kw.items())}" if kw else ""
        lines += [f"### {traffic} ({size} steps per window{extra})", ""]
        lines += [*results_table(rows, traffic), ""]
        lines += [
            f"Every fixed mode, {traffic} (difference to `last`; ema a: alpha a, mean w: the "
            "last w windows, rob w/z: their mean + z std):",
            "",
            *modes_table(rows, traffic),
            "",
        ]
    lines += ["### Targets", "", *targets(rows), ""]
    lines += [
        "### Time per call",
        "",
        f"{CONFIGS[0][0]}, deepseek-v3-like 100-step windows; medians of {repeats} interleaved "
        "repeats after 3 warm-up rounds, one process, default threads.",
        "",
        *time_lines,
        "",
        "### Does the refinement's gain survive to the next window?",
        "",
        "100-step windows, the `last` forecast: balancedness in-sample (plan and score on "
        "window t-1) and on the next window t, for refine none / swap / local; then the "
        "next-window difference of robust(window=8) to mean(window=8), both refined locally.",
        "",
        *refine_table(rows),
        "",
        "![history](plots/history.png)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        plot(rows, HERE / "plots" / "history.png")
        write_section(
            str(HERE / "RESULTS.md"),
            "bench-history",
            f"## Planning from a load history\n\n{text}",
        )
    print(f"bench_history: {wall:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
