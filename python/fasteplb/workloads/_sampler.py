"""The count sampler: per step and layer, a multinomial draw of the step's assignments over
the experts, vectorised and threaded (see ``_sample_counts``)."""

from __future__ import annotations

import functools
import math
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from statistics import NormalDist

import numpy as np

# Cells expecting fewer assignments than this get exact Poisson draws; the others a
# skew-corrected normal (Cornish-Fisher) approximation, within 0.007 total variation of the
# Poisson from 2 on (0.002 from 10 on).
_LAM_POISSON = 2.0
# Cells per chunk of the count sampler: small enough for the cache, large enough that
# numpy's per-call overhead stays small. Fixed, so results do not depend on the threads.
_CHUNK_CELLS = 1 << 17


@functools.lru_cache(maxsize=1)
def _normal_table() -> np.ndarray:
    """N(0, 1) at its 65536 midpoint quantiles, float32.

    A 16-bit index into it is a normal draw with tails cut at 4.17 sigma; four come out of
    one 64-bit raw draw, several times cheaper than numpy's normal sampler.
    """
    inv = NormalDist().inv_cdf
    return np.array([inv((i + 0.5) / 65536) for i in range(65536)], dtype=np.float32)


class _Workspace:
    """Scratch buffers of the count sampler, reused across chunks (fresh memory is costly)."""

    def __init__(self, cells: int) -> None:
        self.lam = np.empty(cells)
        self.big = np.empty(cells)
        self.y = np.empty(cells)
        self.z = np.empty(cells, dtype=np.float32)
        self.tiny = np.empty(cells, dtype=bool)


# Above this many bytes the output is mapped with its pages populated in one call: touching
# a fresh page costs a fault each, which on some sandboxed kernels dominates the whole
# generator (9 s of faults for a 2.9 GB trace, against 1.2 s populated up front).
_PREFAULT_BYTES = 1 << 26


def _prefaulted(shape: tuple[int, ...]) -> np.ndarray:
    """An int64 array of `shape`, its memory populated up front where the OS allows."""
    size = int(np.prod(shape)) * 8
    populate = getattr(mmap, "MAP_POPULATE", None)
    if size < _PREFAULT_BYTES or populate is None:
        return np.empty(shape, dtype=np.int64)
    try:
        buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    except (OSError, ValueError):
        return np.empty(shape, dtype=np.int64)
    return np.frombuffer(buf, dtype=np.int64).reshape(shape)


def _sample_counts(
    rng: np.random.Generator, n: int, lam: np.ndarray, out: np.ndarray, ws: _Workspace
) -> None:
    """Multinomial(n, lam[r] / n) for every row: lam [R, E] float64 with rows summing to n
    (up to rounding) -> out [R, E] int64; ws: scratch of at least R * E cells.

    numpy's multinomial costs ~100 ns per cell (a binomial with a fresh set-up per cell),
    too slow for 10^4 steps x 94 layers x 384 experts. Instead: a multinomial is a Poisson
    process conditioned on its total. Cells with a small mean get exact Poisson draws; the
    others a skew-corrected normal approximation of the Poisson, conditioned (as a Gaussian)
    on adding up to the rest of n: the shortfall is spread in proportion to the means.
    Systematic rounding (one uniform per row) turns that into integers with the row sum
    kept. Rows where too little mass is in large cells use numpy's exact multinomial.
    """
    rows, experts = lam.shape
    cells = rows * experts
    tiny = np.less(lam, _LAM_POISSON, out=ws.tiny[:cells].reshape(rows, experts))
    idx = np.flatnonzero(tiny)
    out.fill(0)
    np.put(out, idx, rng.poisson(np.take(lam, idx)))
    rest = n - out.sum(axis=1)
    big = ws.big[:cells].reshape(rows, experts)
    np.copyto(big, lam)
    np.copyto(big, 0.0, where=tiny)
    big_total = big.sum(axis=1)

    ztab = _normal_table()
    u16 = rng.bit_generator.random_raw((cells + 3) // 4).view(np.uint16)[:cells]
    z = ws.z[:cells].reshape(rows, experts)
    y = ws.y[:cells].reshape(rows, experts)
    # Variance lam - 1/6: the random rounding below adds about 1/6.
    np.subtract(big, 1.0 / 6.0, out=y)
    np.maximum(y, 0.0, out=y)
    np.sqrt(y, out=y)
    np.take(ztab, u16, out=z.reshape(-1))
    y *= z
    # Cornish-Fisher skew term of the Poisson: (z^2 - 1) / 6.
    np.square(z, out=z)
    z -= 1.0
    z *= 1.0 / 6.0
    y += z
    np.copyto(y, 0.0, where=tiny)
    y += big
    shortfall = rest - y.sum(axis=1)
    scale = np.divide(shortfall, big_total, out=np.zeros(rows), where=big_total > 0)
    big *= scale[:, None]
    y += big
    np.maximum(y, 0.0, out=y)
    np.cumsum(y, axis=1, out=y)
    y += rng.random(rows)[:, None]
    np.floor(y, out=y)
    # Differences of the floored cumsum: flat (contiguous, vectorised), then each row's
    # first cell, which took the previous row's last, is put right.
    step = big  # reused: the rounded cell values
    flat_y, flat_step = y.reshape(-1), step.reshape(-1)
    np.subtract(flat_y[1:], flat_y[:-1], out=flat_step[1:])
    step[:, 0] = y[:, 0]
    np.add(out, step, out=out, casting="unsafe")
    # Clipping and float rounding in the cumsum can leave a row a little off: the largest
    # cell absorbs it.
    top = np.argmax(lam, axis=1)
    out[np.arange(rows), top] += n - out.sum(axis=1)
    # The shortfall has standard deviation ~sqrt(n); spread over big_total it must stay a
    # small fraction of every large cell.
    bad = (big_total <= 8.0 * math.sqrt(n) + 20.0) | (out.min(axis=1) < 0)
    if bad.any():
        out[bad] = rng.multinomial(n, lam[bad] / lam[bad].sum(axis=1, keepdims=True))


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _counts(
    hist: np.ndarray,
    slots: int,
    arch: np.ndarray,
    n: int,
    seed_seq: np.random.SeedSequence,
) -> np.ndarray:
    """Counts [steps, L, E] from the batch histogram [steps, C] and archetypes [C, L, E]."""
    steps = hist.shape[0]
    comps, layers, experts = arch.shape
    flat = arch.reshape(comps, layers * experts)
    chunk = max(1, _CHUNK_CELLS // (layers * experts))
    starts = list(range(0, steps, chunk))
    seeds = seed_seq.spawn(len(starts))
    out = _prefaulted((steps, layers, experts))
    threads = min(_threads(), len(starts))

    def work(first: int) -> None:
        ws = _Workspace(chunk * layers * experts)
        for i in range(first, len(starts), threads):
            lo = starts[i]
            hi = min(steps, lo + chunk)
            rows = (hi - lo) * layers
            lam = ws.lam[: rows * experts].reshape(hi - lo, layers * experts)
            # einsum's own loop: BLAS would start its thread pool for this thin product,
            # which costs more than the product itself.
            # Expected counts: archetype rows sum to 1 and the weights to n (up to rounding,
            # which the sampler tolerates: it only needs the row sums to be about n).
            np.einsum("sc,cx->sx", hist[lo:hi] * (n / slots), flat, out=lam)
            lam = lam.reshape(rows, experts)
            rng = np.random.Generator(np.random.PCG64(seeds[i]))
            _sample_counts(rng, n, lam, out[lo:hi].reshape(rows, experts), ws)

    if threads == 1:
        work(0)
    else:
        # numpy's samplers and ufuncs release the GIL; chunks own their seeds, so the
        # result is the same for any thread count.
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(threads)))
    return out
