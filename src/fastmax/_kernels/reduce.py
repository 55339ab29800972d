"""Row reductions shared by every kernel family.

All take a 1-D view (any stride) with at least one element and compute in the
view's own floating type; sums of exponentials accumulate in float64, so a
float32 row of millions of elements keeps float32 accuracy.

``scale`` multiplies every element before use (``1/temperature``); as it is
positive, ``max(x) * scale == max(x * scale)`` exactly.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .._config import FASTMATH, JIT
from ._math import exp, fmaximum, like

#: Elements per block of the online max+sum: small enough to stay in L1.
BLOCK = 2048


@njit(fastmath=FASTMATH, **JIT)
def row_max(x):
    """NaN-propagating maximum of a non-empty row (as ``np.max``)."""
    m = x[0]
    for i in range(1, x.size):
        m = fmaximum(m, x[i])
    return m


@njit(fastmath=FASTMATH, **JIT)
def row_sumexp(x, scale, shift):
    """``sum(exp(x * scale - shift))`` accumulated in float64."""
    s = 0.0
    for i in range(x.size):
        s += np.float64(exp(x[i] * scale - shift))
    return s


@njit(fastmath=FASTMATH, **JIT)
def row_sumexp_split(x, scale, shift):
    """Like :func:`row_sumexp`, but leaves out the elements equal to ``shift``.

    Returns ``(sum over the others, how many equal shift)``: logsumexp adds the
    count back through ``log1p`` for accuracy, as SciPy does.
    """
    s = 0.0
    count = 0
    for i in range(x.size):
        v = x[i] * scale
        hit = v == shift
        count += hit
        s += 0.0 if hit else np.float64(exp(v - shift))
    return s, count


@njit(fastmath=FASTMATH, **JIT)
def is_dominant(m):
    """True for a maximum that decides the row alone: NaN or +inf."""
    return not (m < np.inf)


@njit(fastmath=FASTMATH, **JIT)
def row_max_sumexp(x, scale):
    """Online max and split sum in one read of the row, block by block.

    Returns ``(m, rest, count)`` with ``m = max(x * scale)`` (NaN-propagating)
    and ``rest, count`` as :func:`row_sumexp_split` relative to ``m``.
    When ``m`` is NaN, +inf or -inf, ``rest`` and ``count`` are meaningless:
    callers handle such rows on their own path.
    """
    n = x.size
    neg_inf = like(-np.inf, scale)
    m = neg_inf
    rest = 0.0
    count = 0
    for b0 in range(0, n, BLOCK):
        block = x[b0 : min(b0 + BLOCK, n)]
        bm = row_max(block) * scale
        if is_dominant(bm):
            # NaN anywhere wins over +inf: finish the max over the whole row.
            return row_max(x) * scale, math.nan, 0
        if bm > m:
            if m > neg_inf:
                rest = (rest + count) * math.exp(np.float64(m) - np.float64(bm))
            count = 0
            m = bm
        if m > neg_inf:
            s, c = row_sumexp_split(block, scale, m)
            rest += s
            count += c
    return m, rest, count


@njit(fastmath=FASTMATH, **JIT)
def merge_max_sumexp(m_parts, rest_parts, count_parts):
    """Merge per-chunk ``(m, rest, count)`` of one row, in order (deterministic)."""
    neg_inf = like(-np.inf, m_parts[0])
    m = row_max(m_parts)
    if is_dominant(m) or not (m > neg_inf):
        return m, math.nan, 0
    rest = 0.0
    count = 0
    for k in range(m_parts.size):
        mk = m_parts[k]
        if not (mk > neg_inf):
            continue
        if mk == m:
            rest += rest_parts[k]
            count += count_parts[k]
        else:
            rest += (rest_parts[k] + count_parts[k]) * math.exp(np.float64(mk) - np.float64(m))
    return m, rest, count


@njit(fastmath=FASTMATH, **JIT)
def logsumexp_from_stats(m, rest, count):
    """``m + log(count + rest)`` in SciPy's form, float64; non-finite ``m`` passes through."""
    if not math.isfinite(m):
        return np.float64(m)
    return math.log1p(rest / count) + math.log(count) + np.float64(m)
