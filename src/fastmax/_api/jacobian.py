"""Jacobian-vector products of softmax and log_softmax, and the batched Jacobian."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from .._kernels import jacobian as K
from .._kernels import short as S
from .._kernels.schedule import (
    PARALLEL_MIN_ELEMENTS,
    SPLIT_CHUNK,
    column_chunks,
    row_blocks,
    split_rows,
)
from .._layout import contiguous_for_rows, empty_for_rows, rows_view, unit_stride
from .._validate import (
    as_array,
    check_no_partial_overlap,
    check_out,
    float_dtypes,
    reduction_axes,
)
from ._elementwise import fast_out, fast_path, last_axis_rows


def _run(y: np.ndarray, v: np.ndarray, out: np.ndarray, mode: int) -> None:
    """Dispatch 2-D views (same shape) to the row or column kernel."""
    size = out.size
    if (
        out.shape[1] > 1
        and not unit_stride(out, 1)
        and unit_stride(y, 0)
        and unit_stride(v, 0)
        and unit_stride(out, 0)
    ):
        chunks = column_chunks(out.shape[1])
        parts = np.zeros((chunks, out.shape[0]))
        K.jvp_cols(size, y.T, v.T, out.T, mode, chunks, parts, np.empty(out.shape[0], out.dtype))
    else:
        _run_rows(y, v, out, mode)


#: Bound once: small calls spend a good part of their time in the Python layer.
_SHORT_ROW_BYTES = S.VECTOR_BYTES
_jvp_rows_serial = K.jvp_rows.serial


def _run_rows(y: np.ndarray, v: np.ndarray, out: np.ndarray, mode: int) -> None:
    """:func:`_run` for views that are not the column kernel's."""
    size = out.size
    # fits_rows' first test inline: most calls have long rows, and skip its call.
    short_rows = out.shape[1] * out.itemsize <= _SHORT_ROW_BYTES
    if short_rows and S.fits_rows(y, out) and v.flags.c_contiguous:
        S.jvp_short_rows(size, y, v, out, mode, row_blocks(out.shape[0]))
    elif size < PARALLEL_MIN_ELEMENTS:
        _jvp_rows_serial(y, v, out, mode)
    elif size >= 2 * SPLIT_CHUNK and split_rows(*out.shape):
        K.jvp_rows_split(size, y, v, out, mode, SPLIT_CHUNK)
    else:
        K.jvp_rows(size, y, v, out, mode)


def _apply(y: np.ndarray, v: np.ndarray, out: np.ndarray, axes: tuple[int, ...], mode: int) -> None:
    """Run over arrays of one shape, splitting off leading batch axes until the
    broadcast inputs have 2-D row views (a stack of K tangents for one primal
    becomes K kernel calls, never K copies of the primal)."""
    views = [rows_view(a, axes) for a in (y, v, out)]
    if all(view is not None for view in views):
        _run(*views, mode)
        return
    batch = [a for a in range(out.ndim) if a not in axes]
    if not batch:  # reduced axes that cannot be merged: work on contiguous copies
        yc, vc = (contiguous_for_rows(a, axes, out.dtype) for a in (y, v))
        oc = empty_for_rows(out.shape, axes, out.dtype)
        _run(rows_view(yc, axes), rows_view(vc, axes), rows_view(oc, axes), mode)
        out[...] = oc
        return
    lead = batch[0]
    inner = tuple(a - 1 if a > lead else a for a in axes)
    index = (slice(None),) * lead
    for i in range(out.shape[lead]):
        _apply(y[index + (i,)], v[index + (i,)], out[index + (i,)], inner, mode)


def _jacobian_product(primal, tangent, axis, out, mode: int, func: str, pname: str, tname: str):
    if (
        type(tangent) is np.ndarray
        and fast_path(primal, axis)
        # NumPy's native float dtypes are single objects: an equal dtype that
        # is another object (rare) takes the general path.
        and tangent.dtype is primal.dtype
        and tangent.shape == primal.shape
        and tangent.flags.c_contiguous
        and (out is None or fast_out(out, primal, tangent))
    ):
        # The common call: same shape and dtype, C-contiguous, over the last
        # axis (0.3 us a call less than the general checks' cheapest form:
        # 10% of a 64 x 100 float32 call).
        result = np.empty(primal.shape, primal.dtype) if out is None else out
        if primal.ndim == 2:
            _run_rows(primal, tangent, result, mode)
        else:
            _run_rows(last_axis_rows(primal), last_axis_rows(tangent), last_axis_rows(result), mode)
        return result
    p = as_array(primal, pname, func)
    t = as_array(tangent, tname, func)
    _, rdt_p = float_dtypes(p.dtype, pname, func)
    _, rdt_t = float_dtypes(t.dtype, tname, func)
    rdt = np.result_type(rdt_p, rdt_t)
    cdt = np.dtype(np.float64) if rdt == np.float64 else np.dtype(np.float32)
    try:
        shape = np.broadcast_shapes(p.shape, t.shape)
    except ValueError:
        raise ValueError(
            f"{func}: {pname} of shape {p.shape} and {tname} of shape {t.shape} do not broadcast"
        ) from None
    axes = reduction_axes(axis, len(shape), func)
    if out is not None:
        check_out(out, shape, rdt, func)
        check_no_partial_overlap(out, p, func, pname)
        check_no_partial_overlap(out, t, func, tname)
        result = out
    else:
        # Lay the result out like a full-shape input, so all three share one layout.
        like = t if t.shape == shape else p if p.shape == shape else None
        result = np.empty_like(like, dtype=rdt) if like is not None else None
        if result is None or rows_view(result, axes) is None:
            result = empty_for_rows(shape, axes, rdt)
    if result.size == 0:
        return result
    buffer = result if rdt == cdt else empty_for_rows(shape, axes, cdt)
    p = p if p.dtype == cdt else p.astype(cdt)
    t = t if t.dtype == cdt else t.astype(cdt)
    _apply(np.broadcast_to(p, shape), np.broadcast_to(t, shape), buffer, axes, mode)
    if buffer is not result:
        np.copyto(result, buffer, casting="unsafe")
    return result


_DOC = """
    Batched over all axes but ``axis``; the sum runs along ``axis`` (with
    keepdims).  ``{p}`` and ``{t}`` broadcast against each other with NumPy's
    rules, so one ``{p}`` of shape (B, C) serves a stack of tangents of shape
    (K, B, C) without being copied.  ``out`` (the broadcast shape and result
    dtype) may be ``{p}`` or ``{t}`` itself.
"""


def softmax_jvp(y: Any, v: Any, axis: Any = -1, *, out: np.ndarray | None = None) -> np.ndarray:
    """Jacobian-vector product of softmax at ``y = softmax(x)``: ``y * (v - sum(y * v))``."""
    return _jacobian_product(y, v, axis, out, K.SOFTMAX, "softmax_jvp", "y", "v")


def softmax_vjp(y: Any, g: Any, axis: Any = -1, *, out: np.ndarray | None = None) -> np.ndarray:
    """Vector-Jacobian product of softmax at ``y = softmax(x)``: ``y * (g - sum(y * g))``
    (the Jacobian is symmetric)."""
    return _jacobian_product(y, g, axis, out, K.SOFTMAX, "softmax_vjp", "y", "g")


def log_softmax_jvp(
    logp: Any, v: Any, axis: Any = -1, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Jacobian-vector product of log_softmax at ``logp``: ``v - sum(exp(logp) * v)``."""
    return _jacobian_product(logp, v, axis, out, K.LOG_JVP, "log_softmax_jvp", "logp", "v")


def log_softmax_vjp(
    logp: Any, g: Any, axis: Any = -1, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Vector-Jacobian product of log_softmax at ``logp``: ``g - exp(logp) * sum(g)``."""
    return _jacobian_product(logp, g, axis, out, K.LOG_VJP, "log_softmax_vjp", "logp", "g")


for _fn, _names in (
    (softmax_jvp, ("y", "v")),
    (softmax_vjp, ("y", "g")),
    (log_softmax_jvp, ("logp", "v")),
    (log_softmax_vjp, ("logp", "g")),
):
    _fn.__doc__ += _DOC.format(p=_names[0], t=_names[1])


def softmax_jacobian(y: Any, axis: int = -1) -> np.ndarray:
    """The softmax Jacobians ``diag(y) - y yᵀ`` at ``y = softmax(x)``, one per slice.

    Returns an array shaped like ``y`` with ``axis`` moved last, plus a last
    axis of length C (C × C per slice): meant for small C.
    """
    func = "softmax_jacobian"
    arr = as_array(y, "y", func)
    cdt, rdt = float_dtypes(arr.dtype, "y", func)
    try:
        operator.index(axis)
    except TypeError:
        raise TypeError(f"{func}: axis must be an int, got {axis!r}") from None
    (ax,) = reduction_axes(axis, arr.ndim, func)
    moved = np.moveaxis(arr.astype(cdt, copy=False), ax, -1)
    jac = -moved[..., :, None] * moved[..., None, :]
    diag = np.arange(moved.shape[-1])
    jac[..., diag, diag] += moved
    return jac.astype(rdt, copy=False)
