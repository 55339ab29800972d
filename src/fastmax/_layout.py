"""Views of N-d arrays as 2-D ``(rows, C)`` arrays, the kernels' only shape.

Reduced axes go last (in their original order), the other axes first; the
result is a view when strides allow, never a copy.
"""

from __future__ import annotations

import math

import numpy as np


def permutation(ndim: int, axes: tuple[int, ...]) -> list[int]:
    """Axis order with the reduced ``axes`` moved last."""
    return [a for a in range(ndim) if a not in axes] + list(axes)


def rows_view(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray | None:
    """``a`` as a 2-D ``(rows, C)`` view reducing over ``axes``, or None if no view exists."""
    moved = a.transpose(permutation(a.ndim, axes))
    n_cols = math.prod(a.shape[ax] for ax in axes)
    n_rows = math.prod(moved.shape[: a.ndim - len(axes)])
    try:
        return np.reshape(moved, (n_rows, n_cols), copy=False)
    except ValueError:
        return None


def empty_for_rows(shape: tuple[int, ...], axes: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An empty array of ``shape`` whose :func:`rows_view` is C-contiguous."""
    perm = permutation(len(shape), axes)
    buf = np.empty([shape[p] for p in perm], dtype)
    return buf.transpose(np.argsort(perm))


def contiguous_for_rows(a: np.ndarray, axes: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A copy of ``a`` (cast to ``dtype``) laid out so that :func:`rows_view` exists."""
    buf = empty_for_rows(a.shape, axes, dtype)
    np.copyto(buf, a, casting="unsafe")
    return buf


def reduced_shape(shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> tuple[int, ...]:
    """Shape of a reduction's result."""
    if keepdims:
        return tuple(1 if i in axes else n for i, n in enumerate(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)


def unit_stride(view: np.ndarray, dim: int) -> bool:
    """Whether consecutive elements along ``dim`` of a 2-D view are adjacent."""
    return view.shape[dim] <= 1 or view.strides[dim] == view.itemsize
