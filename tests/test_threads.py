"""Thread-count independence and thread safety of the native core."""

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import fasteplb
import numpy as np
import pytest
from fasteplb import _core
from helpers import assert_same, make_load

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

WEIGHT = make_load("tokens", (37, 64), seed=21)
THREADS = (2, 3, 8)

CALLS = {
    "rebalance-hierarchical": lambda w, **kw: fasteplb.rebalance_experts(w, 80, 8, 2, 8, **kw),
    "rebalance-global": lambda w, **kw: fasteplb.rebalance_experts(w, 96, 8, 3, 12, **kw),
    "packing": lambda w, **kw: fasteplb.balanced_packing(w, 8, **kw),
}


@pytest.mark.parametrize("refine", ["local", "none", "swap"])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_thread_count_does_not_change_result(name, refine):
    call = CALLS[name]
    serial = call(WEIGHT, refine=refine, num_threads=1)
    for threads in THREADS:
        assert_same(call(WEIGHT, refine=refine, num_threads=threads), serial)
        # Threads are capped by the CPUs this process may use and by the rows.
        assert _core._last_pool_size() == min(threads, CPUS, WEIGHT.shape[0])


# Large enough that the default uses several threads: 64 layers x 288 slots of work (the
# default gives a thread per 4096 slots, up to the usable CPUs).
BIG = make_load("tokens", (64, 256), seed=22)
BIG_CALLS = {
    "rebalance": lambda w, **kw: fasteplb.rebalance_experts(w, 288, 8, 4, 32, **kw),
    "packing": lambda w, **kw: fasteplb.balanced_packing(w, 32, **kw),
}


@pytest.mark.skipif(CPUS < 2, reason="needs at least 2 usable CPUs")
@pytest.mark.parametrize("refine", ["local", "none", "swap"])
@pytest.mark.parametrize("name", sorted(BIG_CALLS))
def test_default_thread_count_uses_several_threads(name, refine):
    call = BIG_CALLS[name]
    serial = call(BIG, refine=refine, num_threads=1)
    assert _core._last_pool_size() == 1
    assert_same(call(BIG, refine=refine), serial)  # default: one thread per 4096 slots
    slots = 288 if name == "rebalance" else 256
    assert _core._last_pool_size() == min(CPUS, 1 + 64 * slots // 4096) >= 2


@pytest.mark.parametrize("name", sorted(CALLS))
def test_default_mode_thread_count_does_not_change_result(name):
    # The default refinement (refine="local"), without naming it.
    call = CALLS[name]
    serial = call(WEIGHT, num_threads=1)
    assert_same(serial, call(WEIGHT, refine="local", num_threads=1))
    for threads in (*THREADS, None):
        assert_same(call(WEIGHT, num_threads=threads), serial)


MIGRATIONS = {  # (num_replicas, num_groups, num_nodes, num_gpus): hierarchical and global
    "hierarchical": (80, 8, 2, 8),
    "global": (96, 8, 3, 12),
}


@pytest.mark.parametrize("max_moves", [None, 0, 3, 40])
@pytest.mark.parametrize("refine", [None, "none"])
@pytest.mark.parametrize("name", sorted(MIGRATIONS))
def test_thread_count_does_not_change_migration(name, refine, max_moves):
    # Planning from an old placement (the default mode, or "none": count repair only), from
    # the plan of other loads and from a random placement.
    sizes = MIGRATIONS[name]
    kw = {} if refine is None else {"refine": refine}
    rng = np.random.default_rng(5)
    drifted = WEIGHT * rng.lognormal(0.0, 0.5, WEIGHT.shape)
    layers, experts = WEIGHT.shape
    extra = rng.integers(0, experts, (layers, sizes[0] - experts))
    random_old = rng.permuted(
        np.concatenate([np.tile(np.arange(experts), (layers, 1)), extra], axis=1), axis=1
    )
    for old in (fasteplb.rebalance_experts(WEIGHT, *sizes)[0], random_old):
        serial = fasteplb.rebalance_experts(
            drifted, *sizes, old_phy2log=old, max_moves=max_moves, num_threads=1, **kw
        )
        for threads in (*THREADS, None):
            assert_same(
                fasteplb.rebalance_experts(
                    drifted, *sizes, old_phy2log=old, max_moves=max_moves, num_threads=threads, **kw
                ),
                serial,
            )


def test_baseline_kernels_give_the_same_plans(tmp_path):
    # The core picks AVX2 or baseline kernels at run time (FASTEPLB_SIMD=default forces the
    # baseline, in a fresh process); plans are bit-identical either way, in every mode.
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import fasteplb
        from helpers import make_load
        out = []
        for i, (kind, shape, sizes) in enumerate([
                ("float", (6, 256), (288, 8, 4, 32)), ("int", (5, 64), (80, 8, 2, 8)),
                ("tokens", (4, 300), (600, 1, 1, 8)), ("sparse", (4, 96), (192, 4, 3, 12))]):
            w = make_load(kind, shape, seed=40 + i)
            for refine in ("local", "swap", "none"):
                out += fasteplb.rebalance_experts(w, *sizes, refine=refine, swap_rounds=50)
                out += fasteplb.balanced_packing(w, 4, refine=refine, swap_rounds=50)
            old = fasteplb.rebalance_experts(w, *sizes)[0]
            out += fasteplb.rebalance_experts(w[::-1].copy(), *sizes, old_phy2log=old,
                                              max_moves=7)
        np.savez(sys.argv[1], *out)
    """)
    tests = os.path.dirname(os.path.abspath(__file__))
    results = []
    for simd in ("", "default"):
        path = str(tmp_path / f"plans-{simd or 'best'}.npz")
        env = dict(
            os.environ,
            FASTEPLB_SIMD=simd,
            PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
        )
        subprocess.run([sys.executable, "-c", script, path], env=env, check=True, timeout=120)
        with np.load(path) as data:
            results.append([data[k] for k in sorted(data.files, key=lambda k: int(k[4:]))])
    assert len(results[0]) == len(results[1]) > 0
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


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
        refine = ("none", "swap", "local")[i // 3 % 3]  # each mode with each call
        if i % 3 == 0:
            fn = lambda w, r=refine, **kw: fasteplb.rebalance_experts(
                w, 72, 8, 2, 8, refine=r, **kw
            )
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
