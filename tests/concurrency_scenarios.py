"""Concurrency scenarios, each run in a fresh subprocess by test_reliability.py
(so that an abort or a hang is a test failure, not a dead test run).

Usage: python concurrency_scenarios.py SCENARIO   (prints OK and exits 0)
"""

from __future__ import annotations

import multiprocessing
import sys
import threading

import numpy as np

import fastmax


def _inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 1000)).astype(np.float32)  # over the parallel threshold
    labels = rng.integers(0, 1000, 256)
    return x, labels


def _work(x, labels):
    return (
        fastmax.softmax(x),
        fastmax.logsumexp(x),
        fastmax.hardmax(x, axis=0),
        fastmax.softmax_cross_entropy_with_grad(x, labels)[1],
    )


def _same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


def threads() -> None:
    """8 Python threads calling parallel kernels at once: no abort, same bits."""
    x, labels = _inputs()
    expected = _work(x, labels)
    failures = []

    def run():
        for _ in range(20):
            if not _same(_work(x, labels), expected):
                failures.append("mismatch")

    pool = [threading.Thread(target=run) for _ in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not failures, failures


def _child(_):
    x, labels = _inputs()
    return _work(x, labels)


def _processes(method: str) -> None:
    x, labels = _inputs()
    expected = _work(x, labels)  # the parent has used the parallel kernels
    with multiprocessing.get_context(method).Pool(2) as pool:
        results = pool.map(_child, range(4))
    assert all(_same(r, expected) for r in results)


def fork() -> None:
    """fork-based workers after the parent launched parallel kernels."""
    _processes("fork")


def spawn() -> None:
    """spawn-based workers."""
    _processes("spawn")


if __name__ == "__main__":
    {"threads": threads, "fork": fork, "spawn": spawn}[sys.argv[1]]()
    import numba

    print("OK", numba.threading_layer())
