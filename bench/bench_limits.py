"""Worst-case planning time and peak memory at fasteplb's supported limits.

Every path and mode is run at the limits of python/fasteplb/_checks.py (the README's
"Supported sizes"), over several shapes that put the slots in different places (few or many
experts, GPUs, nodes) and four adversarial loads (all equal, one hot expert, geometric over six
decades, log-normal random). Each call runs once, on one layer, in a fresh subprocess, which
reports its wall time and its peak resident memory above the baseline (VmHWM minus VmRSS
before the call, with the loads already built). A second table measures peak memory against
the input and output sizes on many layers, and the estimate `_checks.memory` checks.

    python bench/bench_limits.py            # prints the tables (about 3 minutes here)
    python bench/bench_limits.py --write    # ... and puts them into README.md
    python bench/bench_limits.py --quick    # one load per shape
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from fasteplb._bench.cli import script_parser
from fasteplb._timing import machine

LOADS = ("equal", "hot", "geometric", "random")


def loads(kind: str, layers: int, experts: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "equal":
        return np.ones((layers, experts))
    if kind == "hot":
        w = np.ones((layers, experts))
        w[:, 0] = 1e6
        return w
    if kind == "geometric":
        return np.tile(np.logspace(6, 0, experts), (layers, 1))
    if kind == "random":
        return rng.lognormal(0.0, 1.5, (layers, experts))
    raise ValueError(kind)


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _old_placement(kind: str, layers: int, experts: int, args: list) -> np.ndarray:
    """A valid current placement: a fresh plan of other loads, or a random one."""
    import fasteplb

    slots = args[0]
    if kind == "plan":
        other = loads("random", layers, experts, seed=5)
        return fasteplb.rebalance_experts(other, *args, refine="none")[0]
    rng = np.random.default_rng(1)
    old = np.empty((layers, slots), np.int64)
    for layer in range(layers):
        row = np.concatenate([np.arange(experts), rng.integers(0, experts, slots - experts)])
        rng.shuffle(row)
        old[layer] = row
    return old


def child(spec: dict) -> None:
    import fasteplb

    fasteplb.rebalance_experts([[1.0, 2.0]], 2, 1, 1, 1)  # load the core
    layers, experts = spec["layers"], spec["experts"]
    w = loads(spec["load"], layers, experts)
    kw = dict(spec.get("kw", {}))
    if "old" in spec:
        kw["old_phy2log"] = _old_placement(spec["old"], layers, experts, spec["args"])
    base = _status("VmRSS")
    fn = getattr(fasteplb, spec["fn"])
    seconds = float("inf")
    out = None
    for _ in range(spec.get("repeat", 3)):
        # The fastest of a few calls: the machine may be shared, and a worst case is a
        # property of the input, not of whatever else ran at the same time.
        out = None  # the previous call's outputs are freed first, as in a serving loop
        start = time.perf_counter()
        out = fn(w, *spec["args"], **kw)
        seconds = min(seconds, time.perf_counter() - start)
    peak = _status("VmHWM") - base  # a high-water mark: the largest of the calls
    print(
        json.dumps({"s": seconds, "peak": peak, "in": w.nbytes, "out": sum(o.nbytes for o in out)})
    )


def measure(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"s": float("inf"), "peak": 0, "in": 0, "out": 0, "error": "timeout"}
    if p.returncode:
        raise RuntimeError(f"{spec}: {p.stderr.strip()[-400:]}")
    return json.loads(p.stdout)


def rebalance(mode: str, P: int, G: int, E: int, K: int = 1, N: int = 1, **extra) -> dict:
    """A rebalance_experts case; E is lowered (in steps of K) to the most experts the log2phy
    rule, experts x (P - E + 1) <= MAX_LOG2PHY_LAYER, admits."""
    from fasteplb import _checks

    while E * (P - E + 1) > _checks.MAX_LOG2PHY_LAYER:
        E -= K
    assert E > 0, (P, K)
    kw = {"refine": mode}
    kw.update(extra.pop("kw", {}))
    # Every case is inside the limits (the checks would refuse it otherwise).
    _checks.plan(1, E, P, K, N, G, mode, kw.get("swap_rounds", 20), "old" in extra)
    return {"fn": "rebalance_experts", "args": [P, K, N, G], "kw": kw, "experts": E, **extra}


# (path, mode, the limits it runs at, shapes). Shapes are at the limits: the most slots,
# slots per GPU, nodes or rounds the rules admit, with experts from few to as many as slots.
def cases() -> list[tuple[str, str, str, list[dict]]]:
    R = 1 << 20  # MAX_REPLICAS
    L = 1 << 13  # LOCAL_MAX_SLOTS
    W = 1 << 16  # SWAP_MAX_SLOTS
    out = []
    # log2phy: experts x (num_replicas - experts + 1) <= 2^24 (rebalance() fits E).
    fresh_none = [
        rebalance("none", R, R // 2, 16),
        rebalance("none", R, 1, 16),
        rebalance("none", R, R // 256, 16),
        rebalance("none", R, R // 2, R),
        rebalance("none", R, R // 2, R - 15),
        rebalance("none", R, R // 2, R, K=R // 2, N=R // 64),
        rebalance("none", 8188, 4, 4094),
        rebalance("none", 8188, 4, 4094, K=4094, N=2),
    ]
    out.append(("rebalance_experts", "none", "num_replicas <= 2^20", fresh_none))
    swap = {"swap_rounds": 1000}
    fresh_swap = [
        rebalance("swap", W, W // 2, 16, kw=swap),
        rebalance("swap", W, W // 256, 16, kw=swap),
        rebalance("swap", W, W // 256, W, kw=swap),
        rebalance("swap", W, W // 2, W, kw=swap),
        rebalance("swap", W, W // 2, W - 16, kw=swap),
        rebalance("swap", W, W // 2, W, K=W // 2, N=W // 64, kw=swap),
        rebalance("swap", 8188, 46, 4094, kw=swap),
        rebalance("swap", 8188, 46, 4094, K=4094, N=2, kw=swap),
    ]
    out.append(
        (
            "rebalance_experts",
            "swap",
            "num_replicas <= 2^16, slots per GPU <= 256, swap_rounds <= 1000",
            fresh_swap,
        )
    )
    local = []
    for k in (2, 3, 4, 16, 256):
        G = L // k
        P = G * k
        for E in sorted({16, G, P // 2, P // 2 + 2, P}):
            local.append(rebalance("local", P, G, E, kw=swap))
    local += [
        rebalance("local", L, 32, L, K=L, N=2, kw=swap),
        rebalance("local", L, 32, 4032, K=64, N=2, kw=swap),
        rebalance("local", L, 64, 4096, K=16, N=16, kw=swap),
        rebalance("local", L, 64, 4092, K=12, N=4, kw=swap),
        rebalance("local", L, 4096, 4096, K=1024, N=1024, kw=swap),
        rebalance("local", L, 1024, 2048, K=8, N=8, kw=swap),
    ]
    local = list({json.dumps(c): c for c in local}.values())  # distinct shapes
    out.append(
        (
            "rebalance_experts",
            "local",
            "num_replicas <= 2^13, slots per GPU <= 256, swap_rounds <= 1000",
            local,
        )
    )
    migrate = []
    for mode in ("local", "none"):
        for old in ("random", "plan"):
            migrate += [
                rebalance(mode, L, 1024, 4096, K=1024, N=1024, old=old),
                rebalance(mode, L, 4096, 4096, K=1024, N=1024, old=old),
                rebalance(mode, L, 32, 4096, old=old),
                rebalance(mode, L, 64, 2048, K=16, N=16, old=old),
            ]
    out.append(
        (
            "rebalance_experts(old_phy2log)",
            "local, none",
            "num_replicas <= 2^13, num_nodes <= 1024 (+ the mode's)",
            migrate,
        )
    )
    pack = []
    for mode, n, per in (
        ("none", 1 << 20, (2, 256, 1 << 20)),
        ("swap", 1 << 16, (2, 256)),
        ("local", L, (2, 3, 16, 256)),
    ):
        for c in per:
            if n % c == 0 or mode == "local":
                m = n // c
                pack.append(
                    {
                        "fn": "balanced_packing",
                        "args": [m],
                        "kw": {"refine": mode, "swap_rounds": 1000}
                        if mode != "none"
                        else {"refine": mode},
                        "experts": m * c,
                    }
                )
    out.append(
        (
            "balanced_packing",
            "none, swap, local",
            "items <= 2^20 (swap 2^16, local 2^13); items per pack <= 256 (swap, local)",
            pack,
        )
    )
    rep = [{"fn": "replicate_experts", "args": [R], "experts": E} for E in (16, 1 << 16, R // 2, R)]
    out.append(("replicate_experts", "-", "num_phy <= 2^20", rep))
    return out


def memory_rows() -> list[dict]:
    """Many layers: peak memory against the input and outputs, and the checked estimate."""
    shapes = [
        ("DeepSeek-V3 EP32, 2,048 layers", rebalance("local", 288, 32, 256, K=8, N=4)),
        ("DeepSeek-V3 EP32, 2,048 layers, none", rebalance("none", 288, 32, 256, K=8, N=4)),
        ("Qwen3 EP64, 2,048 layers", rebalance("local", 192, 64, 128)),
        (
            "balanced_packing 256 items / 32 packs, 8,192 rows",
            {"fn": "balanced_packing", "args": [32], "experts": 256},
        ),
    ]
    out = []
    for name, spec in shapes:
        layers = 8192 if spec["fn"] == "balanced_packing" else 2048
        out.append((name, dict(spec, layers=layers, load="random")))
    return out


def estimate_for(spec: dict) -> int:
    """What `_checks.memory` estimates for the call `spec` (default threads)."""
    from fasteplb import _checks

    rows, cols = spec.get("layers", 1), spec["experts"]
    if spec["fn"] == "rebalance_experts":
        nodes = spec["args"][2] if "old" in spec else 0
        return _checks.memory_estimate(rows, cols, spec["args"][0], 0, True, nodes)
    if spec["fn"] == "balanced_packing":
        return _checks.memory_estimate(rows, cols, cols)
    return _checks.memory_estimate(rows, cols, spec["args"][0])


def main() -> None:
    ap = script_parser(
        __doc__, write="the tables into README.md", quick="one load (random) per shape"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    from fasteplb import __version__

    lines: list[str] = []

    def emit(text: str, flush: bool = True) -> None:
        lines.extend(text.split("\n"))
        print(text, flush=flush)

    kinds = ("random",) if args.quick else LOADS
    emit(
        f"Machine: {machine()}; fasteplb {__version__}; {time.strftime('%Y-%m-%d')}. One "
        "layer per call, default threads, the fastest of 3 calls; worst over the shapes listed in "
        "`bench/bench_limits.py` and the loads " + ", ".join(kinds) + ".\n"
    )
    emit(
        "| path | refine | at the limits | shapes x loads | worst time per layer (s) "
        "| worst case | peak memory (MiB) | its estimate (MiB) |"
    )
    emit("|---|---|---|---:|---:|---|---:|---:|")
    for path, mode, rule, specs in cases():
        worst = (-1.0, "", 0.0)
        peak, estimate = 0, 0
        for spec in specs:
            for kind in kinds:
                r = measure(dict(spec, load=kind, layers=1), args.timeout)
                P, K, N, G = (
                    spec["args"] if len(spec["args"]) == 4 else (spec["args"][0], None, None, None)
                )
                if G:
                    shape = f"P={P} G={G} N={N} K={K} E={spec['experts']}"
                elif spec["fn"] == "balanced_packing":
                    shape = f"n={spec['experts']} packs={P}"
                else:
                    shape = f"num_phy={P} n={spec['experts']}"
                if "old" in spec:
                    shape += f" old={spec['old']}"
                if spec.get("kw", {}).get("refine") not in (None, mode):
                    shape += f" {spec['kw']['refine']}"
                label = f"{shape}, {kind}"
                if r["s"] > worst[0]:
                    worst = (r["s"], label, r["peak"])
                if r["peak"] >= peak:
                    peak, estimate = r["peak"], estimate_for(spec)
        count = len(specs) * len(kinds)
        emit(
            f"| `{path}` | {mode} | {rule} | {count} | {worst[0]:.3f} | {worst[1]} "
            f"| {peak / 2**20:.0f} | {estimate / 2**20:.0f} |",
            flush=True,
        )

    emit(
        "\nPeak memory on many layers (random loads; MiB; *estimate*: what "
        "`_checks.memory` checks against the memory available):\n"
    )
    emit(
        "| call | input | outputs | peak above baseline | peak / input | "
        "peak / (input + outputs) | estimate |"
    )
    emit("|---|---:|---:|---:|---:|---:|---:|")
    for name, spec in memory_rows():
        r = measure(spec, args.timeout)
        est = estimate_for(spec)
        mib = 2**20
        emit(
            f"| {name} | {r['in'] / mib:.1f} | {r['out'] / mib:.1f} | {r['peak'] / mib:.1f} "
            f"| {r['peak'] / r['in']:.1f}x | {r['peak'] / (r['in'] + r['out']):.2f}x "
            f"| {est / mib:.0f} |",
            flush=True,
        )

    if args.write:
        write_readme(lines)


def write_readme(lines: list[str]) -> None:
    """Replaces what lies between README's bench-limits markers (inside the "Supported
    sizes" bullet, so indented by two spaces)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")
    with open(path) as f:
        text = f.read()
    start, end = "  <!-- bench-limits -->\n", "  <!-- /bench-limits -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    body = "".join(("  " + line if line else "") + "\n" for line in lines).rstrip("\n")
    with open(path, "w") as f:
        f.write(head + start + body + "\n" + end + tail)


if __name__ == "__main__":
    main()
