"""The plumbing of every op whose output has its input's shape (softmax,
log_softmax, hardmax): validation of ``x`` and ``out``, the output buffer, and
2-D row views of both, converting or re-laying the input only when needed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._layout import empty_for_rows, rows_view
from .._validate import (
    as_array,
    check_no_partial_overlap,
    check_out,
    float_dtypes,
    reduction_axes,
)

NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def fast_path(x: Any, axis: Any) -> bool:
    """The common call — a C-contiguous float32/float64 array over its last
    axis — can skip the general validation and layout machinery."""
    return (
        type(x) is np.ndarray
        and x.dtype in NATIVE_FLOATS
        and x.ndim >= 1
        and x.size > 0
        and x.flags.c_contiguous
        and type(axis) is int
        and (axis == -1 or axis == x.ndim - 1)
    )


def last_axis_rows(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array as rows of its last axis (2-D arrays as they are:
    a reshape costs 0.1 us)."""
    return a if a.ndim == 2 else a.reshape(-1, a.shape[-1])


def fast_out(
    out: Any, x: np.ndarray, other: np.ndarray | None = None, shape: tuple | None = None
) -> bool:
    """``out`` for the common call: None, or a C-contiguous array of ``x``'s
    dtype and shape (or ``shape``, a reduction's) that is ``x`` (or
    ``other``, a second input) itself or shares no memory with it."""
    if out is None:
        return True
    if type(out) is not np.ndarray:
        return False
    flags = out.flags
    dtype = out.dtype
    if not (
        (dtype is x.dtype or dtype == x.dtype)
        and out.shape == (x.shape if shape is None else shape)
        and flags.c_contiguous
        and flags.writeable
    ):
        return False
    # Two arrays that each own their data are two allocations (quicker to
    # ask than np.may_share_memory, which computes both extents).
    owns = flags.owndata
    if out is not x and not (owns and x.flags.owndata) and np.may_share_memory(out, x):
        return False
    return (
        other is None
        or out is other
        or (owns and other.flags.owndata)
        or not np.may_share_memory(out, other)
    )


@dataclass
class RowsJob:
    """What a kernel needs: ``src`` and ``dst`` 2-D views (possibly the same
    memory), and how to turn ``dst`` into the returned result."""

    arr: np.ndarray
    axes: tuple[int, ...]
    src: np.ndarray | None
    dst: np.ndarray | None
    result: np.ndarray
    buffer: np.ndarray
    returns_scalar: bool

    def finish(self):
        if self.buffer is not self.result:
            with np.errstate(over="ignore"):  # float16 results may overflow to ±inf
                np.copyto(self.result, self.buffer, casting="unsafe")
        return self.result[()] if self.returns_scalar else self.result


def elementwise_job(x: Any, axis: Any, out: Any, func: str) -> RowsJob:
    """Validate ``x``, ``axis`` and ``out`` and lay out the work as 2-D rows.

    ``src``/``dst`` are None for an empty input (nothing to compute).
    """
    arr = as_array(x, "x", func)
    cdt, rdt = float_dtypes(arr.dtype, "x", func)
    axes = reduction_axes(axis, arr.ndim, func)
    if out is not None:
        check_out(out, arr.shape, rdt, func)
        check_no_partial_overlap(out, arr, func)
        result = out
        buffer = out if out.dtype == cdt else None
    else:
        result = np.empty_like(arr, dtype=rdt)
        if rows_view(result, axes) is None:
            result = empty_for_rows(arr.shape, axes, rdt)
        buffer = result if rdt == cdt else None
    scalar = result.ndim == 0 and out is None
    if arr.size == 0:
        return RowsJob(arr, axes, None, None, result, result, scalar)
    dst = rows_view(buffer, axes) if buffer is not None else None
    if dst is None:
        buffer = empty_for_rows(arr.shape, axes, cdt)
        dst = rows_view(buffer, axes)
    src = rows_view(arr, axes) if arr.dtype == cdt else None
    if src is None:
        # Convert or re-lay the input into the output buffer, then work in place.
        np.copyto(buffer, arr, casting="unsafe")
        src = dst
    return RowsJob(arr, axes, src, dst, result, buffer, scalar)
