"""hardmax kernels: one-hot of the first maximum (``np.argmax``'s choice)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._config import FASTMATH, JIT
from .reduce import row_max
from .schedule import chunk_of, driver


@njit(fastmath=FASTMATH, **JIT)
def row_argmax(x):
    """``np.argmax`` of a non-empty row: the first maximum, or the first NaN.

    A vectorized max first, then a scan for its first position.
    """
    m = row_max(x)
    if m != m:
        for i in range(x.size):
            if x[i] != x[i]:
                return i
    for i in range(x.size):
        if x[i] == m:
            return i
    return 0


@njit(fastmath=FASTMATH, **JIT)
def write_one_hot(out, index):
    for i in range(out.size):
        out[i] = 0
    out[index] = 1


@driver
def hardmax_rows(x, out, n_blocks, zeroed):
    """hardmax of rows in ``n_blocks`` blocks; ``zeroed``: ``out`` is all
    zeros already (a fresh ``np.zeros``), so only the ones are written."""
    n_rows = x.shape[0]
    for b in prange(n_blocks):
        for r in range(b * n_rows // n_blocks, (b + 1) * n_rows // n_blocks):
            if zeroed:
                out[r, row_argmax(x[r])] = 1
            else:
                write_one_hot(out[r], row_argmax(x[r]))


@njit(fastmath=FASTMATH, **JIT)
def _takes_over(v, best):
    """np.argmax's rule, scanning forward: a larger value or the first NaN wins."""
    return (v > best) or (v != v and best == best)


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _first_max(best, index, v, i):
    """``(v, i)`` if row ``i``'s value ``v`` takes over from ``best``, else ``(best, index)``."""
    take = _takes_over(v, best)
    return (v if take else best), (i if take else index)


@driver
def hardmax_cols(x, out, n_chunks, best_parts, index_parts):
    """hardmax along axis 0 of a view whose rows are contiguous: the rows are
    split in chunks over the threads (sequential reads), SIMD runs across
    columns, and the chunks' first maxima are merged in order.  Scratch is
    passed in (``(n_chunks + 1, n_cols)``: the data's type and int64), so the
    per-row views need no reference counting."""
    n, n_cols = x.shape
    for c in prange(n_chunks):
        i0 = c * n // n_chunks
        best = best_parts[c]
        index = index_parts[c]
        row = x[i0]
        for j in range(n_cols):
            best[j] = row[j]
            index[j] = i0
        i1 = (c + 1) * n // n_chunks
        i = i0 + 1
        while i + 4 <= i1:  # four rows per pass over best and index
            a = x[i]
            b = x[i + 1]
            d = x[i + 2]
            e = x[i + 3]
            for j in range(n_cols):
                v, k = _first_max(best[j], index[j], a[j], i)
                v, k = _first_max(v, k, b[j], i + 1)
                v, k = _first_max(v, k, d[j], i + 2)
                best[j], index[j] = _first_max(v, k, e[j], i + 3)
            i += 4
        for r in range(i, i1):
            row = x[r]
            for j in range(n_cols):
                best[j], index[j] = _first_max(best[j], index[j], row[j], r)
    index = index_parts[n_chunks]
    best = best_parts[n_chunks]
    for j in range(n_cols):
        index[j] = index_parts[0, j]
        best[j] = best_parts[0, j]
    for c in range(1, n_chunks):
        for j in range(n_cols):
            if _takes_over(best_parts[c, j], best[j]):
                best[j] = best_parts[c, j]
                index[j] = index_parts[c, j]
    for c in prange(n_chunks):
        for i in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            row = out[i]
            for j in range(n_cols):
                row[j] = 1 if index[j] == i else 0


@driver(allocates=True)
def hardmax_rows_split(x, out, chunk, zeroed):
    """hardmax of few long rows, each split into chunks over all threads: the
    chunks' first maxima are merged in order, then the chunks are written
    (only the ones if ``zeroed``, as in :func:`hardmax_rows`)."""
    n_rows, n_cols = x.shape
    n_chunks = (n_cols + chunk - 1) // chunk
    best = np.empty((n_rows, n_chunks), x.dtype)
    where = np.empty((n_rows, n_chunks), np.int64)
    for t in prange(n_rows * n_chunks):
        r, lo, hi = chunk_of(t, n_chunks, chunk, n_cols)
        i = row_argmax(x[r, lo:hi])
        best.flat[t] = x[r, lo + i]
        where.flat[t] = lo + i
    index = np.empty(n_rows, np.int64)
    for r in range(n_rows):
        index[r] = where[r, row_argmax(best[r])]
    if zeroed:
        for r in range(n_rows):
            out[r, index[r]] = 1
        return
    for t in prange(n_rows * n_chunks):
        r, lo, hi = chunk_of(t, n_chunks, chunk, n_cols)
        o = out[r, lo:hi]
        for i in range(o.size):
            o[i] = 0
        if lo <= index[r] < hi:
            o[index[r] - lo] = 1
