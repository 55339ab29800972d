"""Row kernels callable from your own Numba code.

Serial (no nested threading), jitted, and usable from ``@njit`` functions and
inside ``prange`` loops of ``@njit(parallel=True)`` functions.  They are built
from the same primitives as the array API (vectorized exp, NaN-propagating
max, float64 sums) and give the same results to rounding::

    import numba, numpy as np
    from fastmax.kernels import softmax_row

    @numba.njit(parallel=True)
    def softmax_each_row(x, out):
        for r in numba.prange(x.shape[0]):
            softmax_row(x[r], out[r])

All take 1-D float32/float64 arrays; ``out`` has the size of ``x`` (it may be
``x`` itself).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._config import FASTMATH, JIT
from ._kernels._math import like
from ._kernels.hardmax import row_argmax, write_one_hot
from ._kernels.reduce import logsumexp_of_row, row_max_sumexp
from ._kernels.softmax import softmax_row_long

__all__ = ["softmax_row", "log_softmax_row", "logsumexp_row", "hardmax_row"]


@njit(fastmath=FASTMATH, **JIT)
def _check_sizes(x, out):
    if out.size != x.size:
        raise ValueError("fastmax.kernels: out must have the size of x")


@njit(fastmath=FASTMATH, **JIT)
def softmax_row(x, out):
    """``out = softmax(x)`` of a 1-D row."""
    _check_sizes(x, out)
    if x.size:
        softmax_row_long(x, out, like(1.0, x[0]), False)


@njit(fastmath=FASTMATH, **JIT)
def log_softmax_row(x, out):
    """``out = log_softmax(x)`` of a 1-D row."""
    _check_sizes(x, out)
    if x.size:
        softmax_row_long(x, out, like(1.0, x[0]), True)


@njit(fastmath=FASTMATH, **JIT)
def logsumexp_row(x):
    """``logsumexp(x)`` of a 1-D row as a float64 (``-inf`` when empty); for
    float32 rows the array API returns this value rounded to float32."""
    if x.size == 0:
        return -np.inf
    one = like(1.0, x[0])
    m, total = row_max_sumexp(x, one)
    return logsumexp_of_row(x, one, m, total)


@njit(fastmath=FASTMATH, **JIT)
def hardmax_row(x, out):
    """``out`` = one-hot of ``np.argmax(x)`` (the first NaN counts as the maximum)."""
    _check_sizes(x, out)
    if x.size:
        write_one_hot(out, row_argmax(x))
