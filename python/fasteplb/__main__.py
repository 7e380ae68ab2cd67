"""Command line: ``python -m fasteplb demo`` / ``python -m fasteplb bench`` (also installed as
``fasteplb``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import resources
from typing import Optional

import numpy as np

from . import __version__, balancedness, gpu_loads, lower_bound, rebalance_experts, reference
from ._timing import machine, side_by_side

# DeepSeek-V3 prefill deployment: 256 routed experts in 8 groups, 32 redundant slots,
# 4 nodes x 8 GPUs (EP32, 9 slots per GPU).
DEMO_SHAPE = dict(num_replicas=288, num_groups=8, num_nodes=4, num_gpus=32)


def demo_load() -> np.ndarray:
    """The bundled synthetic DeepSeek-V3-shaped load: [58 layers, 256 experts] token counts."""
    path = resources.files("fasteplb") / "data" / "deepseek_v3_synthetic.npy"
    with resources.as_file(path) as p:
        return np.load(p).astype(np.int64)


def demo(rounds: int) -> int:
    weight = demo_load()
    g = DEMO_SHAPE["num_gpus"]
    print(f"fasteplb {__version__} demo on {machine()}")
    print(
        f"load: synthetic DeepSeek-V3 shape, {weight.shape[0]} layers x {weight.shape[1]} "
        f"experts; plan: {DEMO_SHAPE['num_replicas']} slots, {DEMO_SHAPE['num_groups']} "
        f"groups, {DEMO_SHAPE['num_nodes']} nodes, {g} GPUs (hierarchical)\n"
    )
    rows = []
    for refine in ("none", "swap"):
        ref_plan = reference.rebalance_experts(weight, **DEMO_SHAPE, refine=refine)
        plan = rebalance_experts(weight, **DEMO_SHAPE, refine=refine)
        ref_ms, fast_ms = side_by_side(
            lambda r=refine: reference.rebalance_experts(weight, **DEMO_SHAPE, refine=r),
            lambda r=refine: rebalance_experts(weight, **DEMO_SHAPE, refine=r),
            rounds=rounds,
            inner=50,
        )
        same = all(np.array_equal(a, b) for a, b in zip(plan, ref_plan))
        rows.append((refine, ref_ms, fast_ms, balancedness(plan[0], weight, g), same))
    print(
        f"{'refine':<8}{'reference ms':>14}{'fasteplb ms':>13}{'speed-up':>10}"
        f"{'balancedness':>14}  same plan"
    )
    for refine, ref_ms, fast_ms, bal, same in rows:
        print(
            f"{refine:<8}{ref_ms:>14.1f}{fast_ms:>13.3f}{ref_ms / fast_ms:>9.0f}x{bal:>14.4f}"
            f"  {'yes' if same else 'NO'}"
        )
    # The default mode has no pure-Python twin: time it against the reference greedy.
    ref_ms, fast_ms = side_by_side(
        lambda: reference.rebalance_experts(weight, **DEMO_SHAPE, refine="none"),
        lambda: rebalance_experts(weight, **DEMO_SHAPE),
        rounds=rounds,
        inner=50,
    )
    plan = rebalance_experts(weight, **DEMO_SHAPE)
    bound = lower_bound(weight, **DEMO_SHAPE)
    print(
        f"{'local':<8}{ref_ms:>14.1f}{fast_ms:>13.3f}{ref_ms / fast_ms:>9.0f}x"
        f"{balancedness(plan[0], weight, g):>14.4f}  (default; vs the reference greedy)"
    )
    loads = gpu_loads(plan[0], weight, g)
    print(f"\nlower bound on any plan: balancedness {loads.mean(axis=1).sum() / bound.sum():.4f}")
    identity = np.tile(np.arange(weight.shape[1]), (weight.shape[0], 1))
    print(
        f"without EPLB (expert e on GPU e // 8): balancedness "
        f"{balancedness(identity, weight, g):.4f}"
    )
    return 0 if all(r[-1] for r in rows) else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fasteplb", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fasteplb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser(
        "demo", help="plan a bundled DeepSeek-V3-shaped load, pure-Python reference vs fasteplb"
    )
    p_demo.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="reference calls per mode (each followed by 50 fasteplb calls)",
    )
    p_bench = sub.add_parser(
        "bench",
        help="fasteplb against the serving engines' own EPLB planners (vLLM, SGLang) on "
        "realistic synthetic workloads",
        description="Plan realistic synthetic workloads with fasteplb, the pure-Python "
        "reference and the engines' planners (loaded from their wheels, cached in "
        "~/.cache/fasteplb/peers); report time, balancedness (in-sample and next window), "
        "moves per rebalance and the gap to the lower bound.",
    )
    from ._bench import add_arguments

    add_arguments(p_bench)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.rounds)
    if args.command == "bench":
        from ._bench import cli

        return cli(args)
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
