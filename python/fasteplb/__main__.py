"""Command line: ``fasteplb plan`` / ``report`` / ``demo`` / ``bench`` (also ``python -m
fasteplb``). Mistakes in the command line or its files end with one line on stderr and exit
status 2."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from importlib import resources
from typing import NoReturn, Optional

import numpy as np

from . import __version__, balancedness, gpu_loads, lower_bound, rebalance_experts, reference
from ._cli import UserError, add_commands, run
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


DESCRIPTION = """\
fasteplb: Expert Parallelism Load Balancer for Mixture-of-Experts serving.

commands:
  plan    plan a placement from a load file and write it for an engine
  report  score a plan on a load file (balancedness, gap to the bound, co-location, copies)
  demo    plan a bundled DeepSeek-V3-shaped load, pure-Python reference vs fasteplb
  bench   fasteplb against vLLM's and SGLang's own EPLB planners

examples:
  fasteplb plan --load recorder_dump.pt --replicas 288 --gpus 32 --nodes 4 --groups 8 \\
      --format sglang --out init_expert_location.json
  fasteplb report --load trace.json --plan plan.json --png report.png
  fasteplb demo
  fasteplb bench --quick
Run 'fasteplb COMMAND --help' for a command's options and more examples.
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit status 2), not argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (usage: {self.prog} --help)")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="fasteplb", description=DESCRIPTION, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"fasteplb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub)
    p_demo = sub.add_parser(
        "demo",
        help="plan a bundled DeepSeek-V3-shaped load, pure-Python reference vs fasteplb",
        description=textwrap.fill(
            "Plan a bundled synthetic DeepSeek-V3-shaped load (58 layers x 256 experts onto "
            "288 slots, 4 nodes x 8 GPUs) with fasteplb and the pure-Python reference; print "
            "times, speed-up, balancedness and whether the plans agree. Needs numpy only.",
            width=88,
        ),
        epilog="examples:\n  fasteplb demo\n  fasteplb demo --rounds 1",
        formatter_class=raw,
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
        description=textwrap.fill(
            "Plan realistic synthetic workloads with fasteplb, the pure-Python reference and "
            "the engines' planners (loaded from their wheels, cached in "
            "~/.cache/fasteplb/peers); report time, balancedness (in-sample and next "
            "window), moves per rebalance and the gap to the lower bound. The first run "
            f"downloads the engines' wheels ({_wheels()}) with pip and says so first; "
            "--offline uses only the cache, --no-download runs without missing engines.",
            width=88,
        ),
        epilog="examples:\n  fasteplb bench --quick\n  fasteplb bench --offline --json "
        "rows.json\n  fasteplb bench --configs DeepSeek --profiles stress --plots plots/",
        formatter_class=raw,
    )
    from ._bench.cli import add_arguments

    add_arguments(p_bench)
    return parser


def _wheels() -> str:
    from ._bench.engines import WHEEL_BYTES
    from ._bench.peers import SGLANG_VERSION, VLLM_VERSION

    versions = {"vllm": f"vLLM {VLLM_VERSION}", "sglang": f"SGLang {SGLANG_VERSION}"}
    return ", ".join(f"{versions[k]} about {v / 1e6:.0f} MB" for k, v in WHEEL_BYTES.items())


def _dispatch(argv: Optional[Sequence[str]]) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "demo":
        return demo(args.rounds)
    if args.command == "bench":
        from ._bench.cli import cli

        try:
            return cli(args)
        except SystemExit as exc:  # the bench's own usage errors
            if isinstance(exc.code, str):
                raise UserError(exc.code) from None
            raise
    return run(args)


def _quiet_stdout() -> None:
    """After a broken pipe: send what is left for stdout to /dev/null, so that the exit's
    flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``fasteplb`` command; returns the exit status."""
    command = "fasteplb"
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("plan", "report", "demo", "bench"):
        command = f"fasteplb {args[0]}"
    try:
        return _dispatch(args)
    except UserError as exc:
        print(f"{command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
