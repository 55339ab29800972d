"""Argument checks and normalisation shared by every public function.

Every error is raised here, before any kernel runs, and names the argument
and the offending value.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def as_array(x: Any, name: str, func: str) -> np.ndarray:
    """``np.asarray`` with a clear error for inputs NumPy cannot take."""
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists, objects that refuse conversion
        raise TypeError(f"{func}: {name} could not be converted to an array: {exc}") from exc


def float_dtypes(dtype: np.dtype, name: str, func: str) -> tuple[np.dtype, np.dtype]:
    """``(compute dtype, result dtype)`` under the package's dtype policy.

    float32/float64 compute in their own precision, float16 in float32,
    integers and bool in float64 (as SciPy); anything else is a TypeError.
    """
    kind = dtype.kind
    if kind == "f":
        if dtype.itemsize <= 2:
            return np.dtype(np.float32), np.dtype(np.float16)
        if dtype.itemsize == 4:
            return np.dtype(np.float32), np.dtype(np.float32)
        return np.dtype(np.float64), np.dtype(np.float64)
    if kind in "biu":
        return np.dtype(np.float64), np.dtype(np.float64)
    raise TypeError(
        f"{func}: unsupported dtype {dtype} for {name}; expected a real floating, "
        "integer or bool array"
    )


def reduction_axes(axis: Any, ndim: int, func: str) -> tuple[int, ...]:
    """Sorted, non-negative axes; ``None`` means all.  AxisError / ValueError as NumPy."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (tuple, list)):
        axes = tuple(_axis_index(a, func) for a in axis)
    else:
        axes = (_axis_index(axis, func),)
    try:
        return tuple(sorted(normalize_axis_tuple(axes, ndim, argname="axis")))
    except ValueError as exc:
        if isinstance(exc, np.exceptions.AxisError):
            raise np.exceptions.AxisError(f"{func}: {exc}") from None
        raise ValueError(f"{func}: repeated axis in axis={axis!r}") from None


def _axis_index(a: Any, func: str) -> int:
    try:
        return operator.index(a)
    except TypeError:
        raise TypeError(
            f"{func}: axis must be an int, a tuple of ints or None, got {a!r}"
        ) from None


def temperature_scale(temperature: Any, func: str) -> float:
    """``1 / temperature``, for a finite temperature > 0 (a number, not a string)."""
    if isinstance(temperature, (str, bytes)):
        raise ValueError(f"{func}: temperature must be a finite number > 0, got {temperature!r}")
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(
            f"{func}: temperature must be a finite number > 0, got {temperature!r}"
        ) from None
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"{func}: temperature must be a finite number > 0, got {temperature!r}")
    return 1.0 / t


def check_out(
    out: Any, shape: tuple[int, ...], dtype: np.dtype, func: str, name: str = "out"
) -> np.ndarray:
    """An ``out=`` array of exactly ``shape`` and ``dtype`` that can be written."""
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{func}: {name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{func}: {name} has shape {out.shape}, expected {shape}")
    if out.dtype != dtype:
        raise ValueError(f"{func}: {name} has dtype {out.dtype}, expected {dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{func}: {name} is read-only")
    return out


def same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` are the same elements in the same layout."""
    return (
        a.shape == b.shape
        and a.strides == b.strides
        and a.dtype == b.dtype
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


def check_no_partial_overlap(out: np.ndarray, x: np.ndarray, func: str, name: str = "x") -> None:
    """``out`` may be ``x`` itself, but must not overlap it otherwise."""
    if same_memory(out, x):
        return
    if np.may_share_memory(out, x) and np.shares_memory(out, x):
        raise ValueError(f"{func}: out overlaps {name} without being {name} itself")


def broadcast_mask(
    where: Any, shape: tuple[int, ...], func: str, name: str = "where"
) -> np.ndarray:
    """``where`` as a read-only boolean view broadcast to ``shape``."""
    mask = as_array(where, name, func)
    if mask.dtype != np.bool_:
        raise TypeError(f"{func}: {name} must be a boolean array, got dtype {mask.dtype}")
    try:
        return np.broadcast_to(mask, shape)
    except ValueError:
        raise ValueError(
            f"{func}: {name} of shape {mask.shape} does not broadcast to the input's shape {shape}"
        ) from None
