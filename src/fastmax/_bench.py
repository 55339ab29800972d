"""Timing against the copy floor, shared by ``python -m fastmax`` and the benchmarks.

Every ratio is taken in one process, on one array, in one run (PERF.md): the
floor and the op are timed interleaved, and medians are compared.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ._config import FASTMATH, JIT_ALLOC

#: The shape classes of PERF.md: name -> (shape, axis).
SHAPES_FULL = {
    "tall": ((4_194_304, 8), -1),
    "classic": ((32768, 1000), -1),
    "vocab": ((2048, 32000), -1),
    "wide": ((128, 262144), -1),
    "row": ((1, 33_554_432), -1),
    "axis0": ((32768, 1000), 0),
    "incache": ((1024, 1000), -1),
    "small": ((64, 100), -1),
}
#: A quicker default set with the same character (under a minute in all).
SHAPES_DEFAULT = {
    "tall": ((524_288, 8), -1),
    "classic": ((4096, 1000), -1),
    "vocab": ((256, 32000), -1),
    "row": ((1, 4_194_304), -1),
    "axis0": ((4096, 1000), 0),
    "incache": ((1024, 1000), -1),
    "small": ((64, 100), -1),
}


@njit(parallel=True, **JIT_ALLOC)
def parallel_copy(src, dst):
    """Copy flat arrays in blocks over all threads."""
    n = src.size
    n_blocks = 64
    for k in prange(n_blocks):
        for i in range(k * n // n_blocks, (k + 1) * n // n_blocks):
            dst[i] = src[i]


@njit(parallel=True, fastmath=FASTMATH, **JIT_ALLOC)
def parallel_read(src):
    """Read a flat array in blocks over all threads (the read floor)."""
    n = src.size
    n_blocks = 64
    partial = np.zeros(n_blocks)
    for k in prange(n_blocks):
        partial[k] = np.sum(src[k * n // n_blocks : (k + 1) * n // n_blocks])
    return partial.sum()


#: :func:`warm_up` calls a function for at least this long (s).
WARM_UP_SECONDS = 0.03


def warm_up(
    fn: Callable[[], object],
    max_calls: int = 6,
    settled: float = 0.8,
    min_seconds: float = WARM_UP_SECONDS,
) -> None:
    """Call ``fn`` until its time stops falling (a call at least ``settled`` times
    the one before), at most ``max_calls`` times, and for at least
    ``min_seconds`` in all.

    A call that allocates a big output page-faults fresh memory; on a
    virtual machine the first calls that touch memory the process has not
    used yet were measured 5-10x slower (210 ms instead of 26 for a 128 MiB
    output) than the same call a few calls later, whichever library makes it.
    Short calls run for ``min_seconds``: after a parallel call, the library
    timed before (PyTorch's OpenMP workers) keeps its threads spinning on
    the cores for several milliseconds, and a call made then shares them:
    fastmax's softmax_vjp on 1024 x 1000 float32 (two threads) took 200-330
    us a call for about 8 ms after 50 PyTorch calls, and 125-140 us before."""
    before = math.inf
    start = time.perf_counter()
    calls = 0
    falling = True
    while True:
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        calls += 1
        falling = falling and calls < max_calls and took < settled * before
        before = took
        if not falling and t0 + took - start >= min_seconds:
            return


def median_time(
    fn: Callable[[], object], repeat: int, budget: float = 1.0, min_sample: float = 2e-3
) -> float:
    """Median wall time of one call of ``fn`` over ``repeat`` samples (fewer if
    over ``budget`` s).  Calls shorter than ``min_sample`` are timed in batches
    of back-to-back calls (as ``timeit`` does), so that a sample is not one
    call of a few microseconds that happens to follow another library's work."""
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    calls = max(1, min(1000, int(min_sample / max(once, 1e-7))))
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
        if time.perf_counter() - start > budget and len(times) >= 3:
            break
    return float(np.median(times))


@dataclass
class Floors:
    copy: float
    read: float


def floor_fns(x: np.ndarray) -> tuple[dict[str, list[Callable[[], object]]], np.ndarray]:
    """The calls that define the floors of ``x``: the copy floor is the faster
    of ``np.copyto`` and a parallel copy, the read floor a parallel read.
    Returns them by floor name, and the destination array they write."""
    flat = x.reshape(-1)
    dst = np.empty_like(flat)
    parallel_copy(flat, dst)
    parallel_read(flat)
    fns = {
        "copy": [lambda: np.copyto(dst, flat), lambda: parallel_copy(flat, dst)],
        "read": [lambda: parallel_read(flat)],
    }
    return fns, dst


def floors(x: np.ndarray, repeat: int) -> Floors:
    """The copy floor (best of ``np.copyto`` and a parallel copy) and the read floor."""
    fns, _ = floor_fns(x)
    copy = min(median_time(fn, repeat) for fn in fns["copy"])
    read = median_time(fns["read"][0], repeat)
    return Floors(copy=copy, read=read)


@dataclass
class Paired:
    time: float  # median time of the op
    floor: float  # median time of the floor
    ratio: float  # median over rounds of op time / floor time in that round


def paired_time(
    fn: Callable[[], object],
    floor: list[Callable[[], object]],
    repeat: int,
    budget: float = 3.0,
    min_sample: float = 2e-3,
    settle: bool = False,
) -> Paired:
    """Time ``fn`` against a floor in alternating rounds: each round times
    ``fn``, then each floor call (the round's floor is the fastest), so that a
    change of the machine's memory bandwidth between rounds (2x from one
    minute to the next on shared machines) changes both sides of a round's
    ratio.  The ratio is the median of the rounds' ratios.  Calls shorter
    than ``min_sample`` are timed in batches, as in :func:`median_time`.

    ``settle``: each sample follows a :func:`warm_up` of its call (at least
    ``WARM_UP_SECONDS``), for a "floor" from another library whose threads
    keep spinning on the cores after its calls (PyTorch's OpenMP workers)."""

    def batch(f: Callable[[], object]) -> int:
        t0 = time.perf_counter()
        f()
        return max(1, min(1000, int(min_sample / max(time.perf_counter() - t0, 1e-7))))

    def sample(f: Callable[[], object], calls: int) -> float:
        if settle:
            warm_up(f, max_calls=1)
        t0 = time.perf_counter()
        for _ in range(calls):
            f()
        return (time.perf_counter() - t0) / calls

    calls = batch(fn)
    floor_calls = [batch(f) for f in floor]
    times, floor_times = [], []
    start = time.perf_counter()
    for _ in range(repeat):
        times.append(sample(fn, calls))
        floor_times.append(min(sample(f, c) for f, c in zip(floor, floor_calls, strict=True)))
        if time.perf_counter() - start > budget and len(times) >= 3:
            break
    ratios = np.array(times) / np.array(floor_times)
    return Paired(
        time=float(np.median(times)),
        floor=float(np.median(floor_times)),
        ratio=float(np.median(ratios)),
    )


def input_array(shape: tuple[int, ...], dtype, seed: int = 0) -> np.ndarray:
    """Seeded logits-like data (standard normal times 4)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(
        shape, dtype=np.float32 if np.dtype(dtype) == np.float32 else np.float64
    )
    x *= 4
    return x.astype(dtype, copy=False)


def gigabytes_per_second(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else math.inf
