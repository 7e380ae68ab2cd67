"""Side-by-side timing helpers shared by the demo and the benchmarks."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Callable


def side_by_side(
    baseline: Callable[[], Any], candidate: Callable[[], Any], rounds: int = 5, inner: int = 50
) -> tuple[float, float]:
    """Median milliseconds of `baseline` and `candidate`, measured interleaved.

    Each round times one baseline call, then `inner` candidate calls, so that both see the
    same machine state (frequency, neighbours) and their ratio is robust.
    """
    candidate()
    slow, fast = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        baseline()
        slow.append(time.perf_counter() - start)
        for _ in range(inner):
            start = time.perf_counter()
            candidate()
            fast.append(time.perf_counter() - start)
    return statistics.median(slow) * 1e3, statistics.median(fast) * 1e3


def machine() -> str:
    """One line naming the CPU, core count and Python, for benchmark tables."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
