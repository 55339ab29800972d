"""Kernels for many short rows (``C`` a power of two that fits several times
in one vector: 2, 4, 8, 16 float32 or 2, 4, 8 float64 classes).

A row loop over 8 elements runs its vector loops zero times and everything
in scalar remainders.  These kernels instead treat a block of rows as one
flat array, so every loop is a full-width vector loop, and reduce each row
inside the vectors with :func:`segment_allreduce` (every lane of a row ends
up holding the row's max, then its sum).  Logarithms of the sums are taken
in every lane with the vectorizable :func:`log_pos` (sums of ``exp(v - max)``
lie in ``[1, C]``).

Blocks whose rows are not all finite (NaN or ±inf maxima) are handed to the
row kernels, whose rules give SciPy's answers; so are the rows after the
last full block.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .._config import FASTMATH, JIT
from ._math import VECTOR_BYTES, exp_nonpos, like, log_pos, segment_allreduce
from .reduce import NEAR_ZERO, logsumexp_of_row, row_max_sumexp
from .schedule import driver
from .softmax import same_buffer, softmax_rows_cached_block

#: Elements per block (a multiple of every vector's lane count): with its two
#: scratch rows of the same size it stays in L1.
BLOCK_ELEMENTS = 2048


def fits(n_cols: int, itemsize: int) -> bool:
    """Whether rows of ``n_cols`` elements go to these kernels."""
    lanes = VECTOR_BYTES // itemsize
    return 2 <= n_cols <= lanes and n_cols & (n_cols - 1) == 0


def fits_rows(src, dst=None) -> bool:
    """Whether 2-D views (C-contiguous, enough of them) go to these kernels."""
    return (
        src.flags.c_contiguous
        and (dst is None or dst.flags.c_contiguous)
        and fits(src.shape[1], src.itemsize)
        and src.size >= BLOCK_ELEMENTS
    )


@njit(fastmath=FASTMATH, **JIT)
def _block_stats(xb, scale, m, u, n_cols):
    """``m`` = each row's max of ``xb * scale`` and ``u`` = its sum of
    ``exp(v - max)``, in every lane of the row.  False (and ``u`` unset) if
    some row's max is not finite."""
    lanes = VECTOR_BYTES // xb.itemsize
    for k in range(xb.size):
        m[k] = xb[k] * scale
    for k in range(0, xb.size, lanes):
        segment_allreduce(m, k, n_cols, True)
    finite = True
    for k in range(m.size):
        finite &= math.isfinite(m[k])
    if not finite:
        return False
    for k in range(xb.size):
        u[k] = exp_nonpos(xb[k] * scale - m[k])
    for k in range(0, xb.size, lanes):
        segment_allreduce(u, k, n_cols, False)
    return True


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _softmax_write(xb, ob, scale, m, u, log):
    if log:
        for k in range(xb.size):
            ob[k] = (xb[k] * scale - m[k]) - like(log_pos(np.float64(u[k])), m[k])
    else:
        for k in range(xb.size):
            ob[k] = exp_nonpos(xb[k] * scale - m[k]) / u[k]


@driver(allocates=True)
def softmax_short_rows(x, out, scale, log, n_tasks):
    """softmax / log_softmax of the rows of ``x`` (C-contiguous, ``fits``)."""
    n_rows, n_cols = x.shape
    rows_per_block = BLOCK_ELEMENTS // n_cols
    n_blocks = n_rows // rows_per_block
    in_place = same_buffer(x, out)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for task in prange(n_tasks):
        m = np.empty(BLOCK_ELEMENTS, x.dtype)
        u = np.empty(BLOCK_ELEMENTS, x.dtype)
        for b in range(task * n_blocks // n_tasks, (task + 1) * n_blocks // n_tasks):
            k0 = b * BLOCK_ELEMENTS
            ob = of[k0 : k0 + BLOCK_ELEMENTS]
            if in_place:  # one array for both: equal pointers would not vectorize
                ok = _block_stats(ob, scale, m, u, n_cols)
                if ok:
                    _softmax_write(ob, ob, scale, m, u, log)
            else:
                xb = xf[k0 : k0 + BLOCK_ELEMENTS]
                ok = _block_stats(xb, scale, m, u, n_cols)
                if ok:
                    _softmax_write(xb, ob, scale, m, u, log)
            if not ok:
                r0 = b * rows_per_block
                softmax_rows_cached_block(x, out, scale, log, r0, r0 + rows_per_block)
    if n_blocks * rows_per_block < n_rows:
        softmax_rows_cached_block(x, out, scale, log, n_blocks * rows_per_block, n_rows)


@njit(fastmath=FASTMATH, **JIT)
def _block_logsumexp(x, b, scale, m, u, row_m, row_u, out):
    """``out[i] = logsumexp(x[r0 + i] * scale)`` for the rows of block ``b``
    (``r0`` its first row); ``m``, ``u``, ``row_m``, ``row_u`` are scratch."""
    n_cols = x.shape[1]
    rows_per_block = BLOCK_ELEMENTS // n_cols
    r0 = b * rows_per_block
    k0 = b * BLOCK_ELEMENTS
    if not _block_stats(x.reshape(-1)[k0 : k0 + BLOCK_ELEMENTS], scale, m, u, n_cols):
        for i in range(rows_per_block):
            mr, total = row_max_sumexp(x[r0 + i], scale)
            out[i] = logsumexp_of_row(x[r0 + i], scale, mr, total)
        return
    for i in range(rows_per_block):  # one lane per row, then the logs of those
        row_m[i] = m[i * n_cols]
        row_u[i] = u[i * n_cols]
    for i in range(rows_per_block):
        out[i] = row_m[i] + log_pos(row_u[i])
    # Results near 0 have lost relative accuracy to cancellation: recompute.
    for i in range(rows_per_block):
        if abs(out[i]) < NEAR_ZERO:
            out[i] = logsumexp_of_row(x[r0 + i], scale, row_m[i], row_u[i])


@driver(allocates=True)
def logsumexp_short_rows(x, scale, res, n_tasks):
    """``res[r] = logsumexp(x[r] * scale)`` for rows that ``fits``."""
    n_rows, n_cols = x.shape
    rows_per_block = BLOCK_ELEMENTS // n_cols
    n_blocks = n_rows // rows_per_block
    for task in prange(n_tasks):
        m = np.empty(BLOCK_ELEMENTS, x.dtype)
        u = np.empty(BLOCK_ELEMENTS, x.dtype)
        row_m = np.empty(rows_per_block, np.float64)
        row_u = np.empty(rows_per_block, np.float64)
        for b in range(task * n_blocks // n_tasks, (task + 1) * n_blocks // n_tasks):
            r0 = b * rows_per_block
            _block_logsumexp(x, b, scale, m, u, row_m, row_u, res[r0 : r0 + rows_per_block])
    for r in range(n_blocks * rows_per_block, n_rows):
        mr, total = row_max_sumexp(x[r], scale)
        res[r] = logsumexp_of_row(x[r], scale, mr, total)


@njit(fastmath=FASTMATH, **JIT)
def _index_parts(x, target, w, ignore_index, lse, r0, part_a, part_z):
    for i in range(lse.size):
        r = r0 + i
        t = target[r]
        if t == ignore_index:
            part_a[r] = 0.0
            part_z[r] = 0.0
        else:
            part_a[r] = np.float64(w[t]) * (lse[i] - np.float64(x[r, t]))
            part_z[r] = lse[i] * lse[i]


@driver(allocates=True)
def xent_index_short_rows(x, target, w, ignore_index, part_a, part_z, n_tasks):
    """The cross-entropy forward of index targets without smoothing (see
    ``xent.py`` for the parts), for rows that ``fits``: each block's
    logsumexp, then its parts while the block is in cache."""
    n_rows, n_cols = x.shape
    rows_per_block = BLOCK_ELEMENTS // n_cols
    n_blocks = n_rows // rows_per_block
    one = like(1.0, x[0, 0])
    for task in prange(n_tasks):
        m = np.empty(BLOCK_ELEMENTS, x.dtype)
        u = np.empty(BLOCK_ELEMENTS, x.dtype)
        row_m = np.empty(rows_per_block, np.float64)
        row_u = np.empty(rows_per_block, np.float64)
        lse = np.empty(rows_per_block, np.float64)
        for b in range(task * n_blocks // n_tasks, (task + 1) * n_blocks // n_tasks):
            _block_logsumexp(x, b, one, m, u, row_m, row_u, lse)
            _index_parts(x, target, w, ignore_index, lse, b * rows_per_block, part_a, part_z)
    r0 = n_blocks * rows_per_block
    lse = np.empty(n_rows - r0, np.float64)
    for i in range(lse.size):
        mr, total = row_max_sumexp(x[r0 + i], one)
        lse[i] = logsumexp_of_row(x[r0 + i], one, mr, total)
    _index_parts(x, target, w, ignore_index, lse, r0, part_a, part_z)
