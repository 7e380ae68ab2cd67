"""Thread-count independence and thread safety of the native core."""

from concurrent.futures import ThreadPoolExecutor

import fasteplb
import pytest
from helpers import assert_same, make_load

WEIGHT = make_load("tokens", (37, 64), seed=21)
THREADS = (2, 3, 8)

CALLS = {
    "rebalance-hierarchical": lambda w, **kw: fasteplb.rebalance_experts(w, 80, 8, 2, 8, **kw),
    "rebalance-global": lambda w, **kw: fasteplb.rebalance_experts(w, 96, 8, 3, 12, **kw),
    "packing": lambda w, **kw: fasteplb.balanced_packing(w, 8, **kw),
}


@pytest.mark.parametrize("refine", ["none", "swap"])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_thread_count_does_not_change_result(name, refine):
    call = CALLS[name]
    serial = call(WEIGHT, refine=refine, num_threads=1)
    for threads in THREADS:
        assert_same(call(WEIGHT, refine=refine, num_threads=threads), serial)
    assert_same(call(WEIGHT, refine=refine), serial)  # default: hardware concurrency


def test_thread_count_does_not_change_replication():
    serial = fasteplb.replicate_experts(WEIGHT, 200, num_threads=1)
    for threads in (*THREADS, None):
        assert_same(fasteplb.replicate_experts(WEIGHT, 200, num_threads=threads), serial)


def test_more_threads_than_rows():
    weight = WEIGHT[:2]
    serial = fasteplb.rebalance_experts(weight, 80, 8, 2, 8, num_threads=1)
    assert_same(fasteplb.rebalance_experts(weight, 80, 8, 2, 8, num_threads=64), serial)


def _jobs():
    """Eight different inputs and calls, each with its serial (single-threaded) result."""
    jobs = []
    for i in range(8):
        weight = make_load(("float", "tokens", "int", "sparse")[i % 4], (9 + i, 64), seed=100 + i)
        refine = ("none", "swap")[i % 2]
        if i % 3 == 0:
            fn = lambda w, r=refine, **kw: fasteplb.rebalance_experts(
                w, 72, 8, 2, 8, refine=r, **kw)
        elif i % 3 == 1:
            fn = lambda w, r=refine, **kw: fasteplb.balanced_packing(w, 16, refine=r, **kw)
        else:
            fn = lambda w, **kw: fasteplb.replicate_experts(w, 100, **kw)
        jobs.append((fn, weight, fn(weight, num_threads=1)))
    return jobs


@pytest.mark.parametrize("inner_threads", [1, 4])
def test_concurrent_python_threads_match_serial(inner_threads):
    jobs = _jobs()

    def work(job):
        fn, weight, _ = job
        return [fn(weight, num_threads=inner_threads) for _ in range(20)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, jobs))
    for (_, _, want), got in zip(jobs, results):
        for out in got:
            assert_same(out, want)


def test_concurrent_errors_stay_with_their_call():
    bad = WEIGHT.copy()
    bad[30, 7] = -2.0

    def work(i):
        if i % 2:
            with pytest.raises(ValueError, match=r"found -2 at \[30, 7\]"):
                fasteplb.rebalance_experts(bad, 80, 8, 2, 8, num_threads=3)
            return None
        return fasteplb.rebalance_experts(WEIGHT, 80, 8, 2, 8, num_threads=3)

    serial = fasteplb.rebalance_experts(WEIGHT, 80, 8, 2, 8, num_threads=1)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(16)))
    for out in results[::2]:
        assert_same(out, serial)
