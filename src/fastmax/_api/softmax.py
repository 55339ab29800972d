"""softmax, log_softmax and logsumexp."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._kernels import short as S
from .._kernels import softmax as K
from .._kernels.schedule import (
    PARALLEL_MIN_ELEMENTS,
    SMALL_ROWS,
    SPLIT_CHUNK,
    cached_rows,
    column_block_rows,
    column_chunks,
    row_blocks,
    split_rows,
)
from .._layout import contiguous_for_rows, reduced_shape, rows_view, unit_stride
from .._validate import (
    as_array,
    broadcast_mask,
    check_out,
    float_dtypes,
    reduction_axes,
    temperature_scale,
)
from ._elementwise import elementwise_job, fast_out, fast_path, last_axis_rows

ArrayLike = Any


def _input_rows(arr: np.ndarray, axes: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """2-D rows view of ``arr`` in ``dtype``; a converted copy only when none exists."""
    view = rows_view(arr, axes) if arr.dtype == dtype else None
    if view is None:
        view = rows_view(contiguous_for_rows(arr, axes, dtype), axes)
    return view


def _shared_row(rows: np.ndarray) -> np.ndarray:
    """``rows``' first row alone (shape ``(1, n)``) if every row is it, by a
    stride of 0, and its elements are adjacent: a kernel then reads it as a
    contiguous array, whose loops vectorize (a ``b`` of shape ``(C,)`` against
    8192 x 1000 logits: 33 -> 6 ms)."""
    if rows.shape[0] > 1 and rows.strides[0] == 0 and rows.strides[1] == rows.itemsize:
        return rows[:1]
    return rows


def _mask_rows(mask: np.ndarray | None, axes: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    return _input_rows(mask, axes, np.dtype(np.bool_))


def _softmax_rows(src: np.ndarray, dst: np.ndarray, mask, scale, log: bool) -> None:
    """Run the softmax kernel that suits the layouts of the 2-D views."""
    n_rows, n_cols = src.shape
    size = src.size
    if mask is None and S.fits_rows(src, dst):
        S.softmax_short_rows(size, src, dst, scale, log, row_blocks(n_rows))
    elif (
        mask is None
        and size < PARALLEL_MIN_ELEMENTS
        and n_rows <= SMALL_ROWS
        and src.strides[1] == src.itemsize
    ):
        K.softmax_rows_small(src, dst, scale, log)
    elif mask is not None:
        K.softmax_rows_masked(size, src, mask, dst, scale, log)
    elif unit_stride(src, 1) and unit_stride(dst, 1) and split_rows(n_rows, n_cols):
        m, total = K.row_stats_split(size, src, scale, SPLIT_CHUNK)
        K.softmax_rows_split(size, src, dst, scale, log, SPLIT_CHUNK, m, total)
    elif n_cols > 1 and unit_stride(src, 0) and unit_stride(dst, 0) and not unit_stride(src, 1):
        xt, chunks = src.T, column_chunks(n_cols)
        m, total = K.column_stats_chunked(
            size, xt, scale, chunks, column_block_rows(n_rows, src.itemsize), False
        )
        shift, factor = np.empty((2, xt.shape[1]), src.dtype)  # one per column of xt
        K.softmax_cols_write(size, xt, dst.T, scale, log, chunks, m, total, shift, factor)
    else:
        cached = cached_rows(n_cols, src.itemsize, log, src.nbytes)
        K.softmax_rows(size, src, dst, scale, log, cached, row_blocks(n_rows))


#: 1 in each native float type (``dtype.type(1.0)`` takes 0.2 us a call).
_ONE = {np.dtype(t): t(1.0) for t in (np.float32, np.float64)}


def _softmax_family(x, axis, out, where, temperature, log: bool, func: str):
    if (
        where is None
        and type(temperature) in (float, int)
        and temperature == 1
        and fast_path(x, axis)
        and fast_out(out, x)
    ):
        result = np.empty_like(x) if out is None else out
        _softmax_rows(last_axis_rows(x), last_axis_rows(result), None, _ONE[x.dtype], log)
        return result
    job = elementwise_job(x, axis, out, func)
    scale = temperature_scale(temperature, func)
    mask = broadcast_mask(where, job.arr.shape, func) if where is not None else None
    if job.src is not None:
        scale = job.dst.dtype.type(scale)  # the kernels compute in the array's dtype
        _softmax_rows(job.src, job.dst, _mask_rows(mask, job.axes), scale, log)
    return job.finish()


def softmax(
    x: ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    out: np.ndarray | None = None,
    where: ArrayLike | None = None,
    temperature: float = 1.0,
) -> np.ndarray:
    """Softmax along ``axis``: ``exp(x - max) / sum(exp(x - max))``.

    Parameters
    ----------
    x : array_like
        Input; float32/float64 compute in their own precision, float16 in
        float32 (returned as float16), integers and bool in float64.
    axis : int, tuple of ints or None, default -1
        Axis or axes to normalise over; ``None`` means all axes.
    out : ndarray, optional
        Array of ``x``'s shape and the result dtype to write into; may be
        ``x`` itself (in place).
    where : array_like of bool, optional
        Entries to include, broadcastable to ``x``.  Excluded entries are 0;
        a slice with nothing included is all 0.
    temperature : float, default 1.0
        Computes ``softmax(x / temperature)``; finite and > 0.

    Returns
    -------
    ndarray
        Same shape as ``x``; equals ``scipy.special.softmax(x, axis)``,
        non-finite inputs included.
    """
    return _softmax_family(x, axis, out, where, temperature, False, "softmax")


def log_softmax(
    x: ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    out: np.ndarray | None = None,
    where: ArrayLike | None = None,
    temperature: float = 1.0,
) -> np.ndarray:
    """Logarithm of the softmax along ``axis``: ``x - max - log(sum(exp(x - max)))``.

    Parameters and dtypes as :func:`softmax`; excluded entries (``where``)
    are ``-inf``, and a slice with nothing included is all ``-inf``.  Equals
    ``scipy.special.log_softmax(x, axis)``, non-finite inputs included.
    """
    return _softmax_family(x, axis, out, where, temperature, True, "log_softmax")


def _logsumexp_rows(src: np.ndarray, res: np.ndarray) -> None:
    n_rows, n_cols = src.shape
    size = src.size
    one = src.dtype.type(1.0)
    if S.fits_rows(src):
        S.logsumexp_short_rows(size, src, one, res, row_blocks(n_rows))
    elif size < PARALLEL_MIN_ELEMENTS and n_rows <= SMALL_ROWS:
        K.logsumexp_rows_small(src, one, res)
    elif size < PARALLEL_MIN_ELEMENTS:
        K.logsumexp_rows.serial(src, one, res, 1)
    elif unit_stride(src, 1) and split_rows(n_rows, n_cols):
        m, total = K.row_stats_split(size, src, one, SPLIT_CHUNK)
        K.logsumexp_of_stats(src, one, m, total, res)
    elif n_cols > 1 and unit_stride(src, 0) and not unit_stride(src, 1):
        xt = src.T
        m, total = K.column_stats_chunked(
            size, xt, one, column_chunks(n_cols), column_block_rows(n_rows, src.itemsize), True
        )
        K.logsumexp_of_columns(xt, one, m, total, res)
    else:
        K.logsumexp_rows(size, src, one, res, row_blocks(n_rows))


def _sign_of_logsumexp(res: np.ndarray) -> np.ndarray:
    """SciPy's sign without ``b``: NaN for NaN, 0 for -inf (an all-zero sum), else 1."""
    sgn = np.ones_like(res)
    sgn[res == -np.inf] = 0
    sgn[np.isnan(res)] = np.nan
    return sgn


def logsumexp(
    x: ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    b: ArrayLike | None = None,
    keepdims: bool = False,
    return_sign: bool = False,
    out: np.ndarray | None = None,
    where: ArrayLike | None = None,
):
    """``log(sum(b * exp(x)))`` along ``axis``, computed stably.

    Parameters
    ----------
    x : array_like
        Input, with the dtype policy of :func:`softmax`.
    axis : int, tuple of ints or None, default -1
        Axes to reduce; ``None`` means all.
    b : array_like, optional
        Weights broadcastable against ``x`` (may be negative), as in SciPy.
    keepdims : bool, default False
        Keep the reduced axes with length 1.
    return_sign : bool, default False
        Also return the sign of the sum (as SciPy); the result is then ``log|sum|``.
    out : ndarray, optional
        Array of the result's shape and dtype to write the result into.
    where : array_like of bool, optional
        Entries to include; a slice with nothing included gives ``-inf``.

    Returns
    -------
    ndarray or scalar, or a tuple ``(result, sign)`` with ``return_sign``
        Equals ``scipy.special.logsumexp(x, axis, b, keepdims, return_sign)``.
    """
    if (
        b is None
        and where is None
        and keepdims is False
        and return_sign is False
        and fast_path(x, axis)
        and fast_out(out, x, shape=x.shape[:-1])
    ):  # the common call: no layout machinery
        rows = last_axis_rows(x)
        if out is not None:  # written in place, without a temporary
            _logsumexp_rows(rows, out.reshape(rows.shape[0]))
            return out
        res = np.empty(rows.shape[0], x.dtype)
        _logsumexp_rows(rows, res)
        return res[0] if x.ndim == 1 else res.reshape(x.shape[:-1])
    func = "logsumexp"
    arr = as_array(x, "x", func)
    cdt, rdt = float_dtypes(arr.dtype, "x", func)
    weights = None
    if b is not None:
        weights = as_array(b, "b", func)
        wdt, _ = float_dtypes(weights.dtype, "b", func)  # rejects complex, object, ...
        _, rdt = float_dtypes(np.result_type(rdt, weights.dtype), "b", func)
        try:
            shape = np.broadcast_shapes(arr.shape, weights.shape)
        except ValueError:
            raise ValueError(
                f"{func}: b of shape {weights.shape} does not broadcast against "
                f"x of shape {arr.shape}"
            ) from None
        arr = np.broadcast_to(arr, shape)
        weights = np.broadcast_to(weights, shape)
    axes = reduction_axes(axis, arr.ndim, func)
    rshape = reduced_shape(arr.shape, axes, keepdims)
    if out is not None:
        check_out(out, rshape, rdt, func)
    mask = broadcast_mask(where, arr.shape, func) if where is not None else None

    n_cols = math.prod(arr.shape[a] for a in axes)
    n_rows = math.prod(rshape)
    if n_cols == 0 or n_rows == 0:
        res = np.full(n_rows, -np.inf, rdt)
        sgn = np.full(n_rows, -1.0, rdt)
    elif weights is not None:
        # Read in their own types (no float64 copies of float32 arrays).
        src = _input_rows(arr, axes, cdt)
        w = _shared_row(_input_rows(weights, axes, wdt))
        keep = _mask_rows(mask, axes)
        keep = np.broadcast_to(np.True_, src.shape) if keep is None else _shared_row(keep)
        res = np.empty(n_rows, np.float64)
        sgn = np.empty(n_rows, np.float64)
        K.logsumexp_rows_weighted(src.size, src, w, keep, bool(return_sign), res, sgn)
    else:
        src = _input_rows(arr, axes, cdt)
        res = np.empty(n_rows, cdt)
        keep = _mask_rows(mask, axes)
        if keep is not None:
            K.logsumexp_rows_masked(src.size, src, keep, res)
        else:
            _logsumexp_rows(src, res)
        sgn = _sign_of_logsumexp(res) if return_sign else None
    res = res.reshape(rshape).astype(rdt, copy=False)
    if out is not None:
        np.copyto(out, res, casting="unsafe")
        res = out
    elif res.ndim == 0:
        res = res[()]
    if not return_sign:
        return res
    sgn = sgn.reshape(rshape).astype(rdt, copy=False)
    return res, (sgn[()] if sgn.ndim == 0 else sgn)
