"""hardmax: the one-hot of the first maximum along an axis."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._kernels import hardmax as K
from .._kernels import short
from .._kernels.schedule import (
    PARALLEL_MIN_ELEMENTS,
    SPLIT_CHUNK,
    column_chunks,
    row_blocks,
    split_rows,
)
from .._layout import unit_stride
from ._elementwise import elementwise_job, fast_out, fast_path, last_axis_rows


def _hardmax_rows(src: np.ndarray, dst: np.ndarray, zeroed: bool = False) -> None:
    """``zeroed``: ``dst`` is all zeros already and not for the short-row or
    column kernels; only the ones are written."""
    if short.fits_rows(src, dst) and src.dtype == dst.dtype:
        short.hardmax_short_rows(src.size, src, dst, row_blocks(src.shape[0]))
    elif src.size < PARALLEL_MIN_ELEMENTS and unit_stride(src, 1):
        K.hardmax_rows.serial(src, dst, 1, zeroed)  # small: no thread-count query, no launch
    elif (
        src.shape[1] > 1 and unit_stride(src, 0) and unit_stride(dst, 0) and not unit_stride(src, 1)
    ):
        chunks = column_chunks(src.shape[1])
        best = np.empty((chunks + 1, src.shape[0]), src.dtype)
        index = np.empty((chunks + 1, src.shape[0]), np.int64)
        K.hardmax_cols(src.size, src.T, dst.T, chunks, best, index)
    elif src.size >= 2 * SPLIT_CHUNK and split_rows(*src.shape):
        K.hardmax_rows_split(src.size, src, dst, SPLIT_CHUNK, zeroed)
    else:
        K.hardmax_rows(src.size, src, dst, row_blocks(src.shape[0]), zeroed)


#: Rows at least this long (bytes) make a fresh result of :func:`np.zeros`.
ZEROED_ROW_BYTES = 1 << 16


def _zeroed_rows(rows: np.ndarray) -> bool:
    """Whether a new result for these rows starts as ``np.zeros``, with only
    the ones written: calloc'd pages that nothing writes are never touched,
    but each one written costs a page fault of its own (one per row), where
    a result written whole pays for the write of every byte.  Measured
    allocating calls, float32: 1 x 32M 18 -> 8 ms, 128 x 256K 21 -> 18 ms,
    2048 x 32000 41 -> 34 ms; rows of 4000 bytes would go 20 -> 106 ms."""
    return rows.shape[1] * rows.itemsize >= ZEROED_ROW_BYTES


def hardmax(
    x: Any,
    axis: int | tuple[int, ...] | None = -1,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One-hot of the first maximal entry along ``axis``: 1 there, 0 elsewhere.

    The position is ``np.argmax``'s: ties go to the first, and the first NaN
    counts as the maximum.  Over several axes, "first" is in row-major order
    of those axes taken in the array's order.  The result has the dtype policy of
    :func:`fastmax.softmax`.  ``hardmax(x, out=x)`` works in place and
    allocates nothing the size of ``x``.

    Parameters
    ----------
    x : array_like
    axis : int, tuple of ints or None, default -1
    out : ndarray, optional
        Array of ``x``'s shape and the result dtype; may be ``x`` itself.
    """
    if fast_path(x, axis) and fast_out(out, x):
        rows = last_axis_rows(x)
        zeroed = out is None and x.size >= PARALLEL_MIN_ELEMENTS and _zeroed_rows(rows)
        if out is not None:
            result = out
        else:
            result = np.zeros(x.shape, x.dtype) if zeroed else np.empty_like(x)
        _hardmax_rows(rows, result.reshape(rows.shape), zeroed)
        return result
    job = elementwise_job(x, axis, out, "hardmax")
    if job.src is not None:
        _hardmax_rows(job.src, job.dst)
    return job.finish()
