"""Dask adapter: fastmax's functions on dask arrays, lazily, for data that
outgrows one machine.  Runs on any dask scheduler, ``dask.distributed`` included.

A reduced axis split over many chunks is never rechunked into one block:
each chunk is reduced to its logsumexp by fastmax, the chunk results are
merged by a tree reduction (logsumexp of logsumexps: the online-softmax rule),
and the outputs are then computed blockwise.  softmax, log_softmax and the
cross-entropy first take the max over the axis (one more pass) and reduce the
rows shifted by it (:func:`_shift_by_max`).
"""

from __future__ import annotations

import operator
from typing import Any

import dask.array as da
import numpy as np

import fastmax

from ._validate import float_dtypes, reduction_axes, temperature_scale

__all__ = ["softmax", "log_softmax", "logsumexp", "hardmax", "softmax_cross_entropy"]


def _input(x: Any, func: str) -> tuple[da.Array, np.dtype, np.dtype]:
    arr = da.asarray(x)
    cdt, rdt = float_dtypes(arr.dtype, "x", func)
    return arr.astype(cdt) if arr.dtype != cdt else arr, cdt, rdt


def _unsupported(func: str, **given) -> None:
    for name, value in given.items():
        if value is not None and value is not False:
            raise NotImplementedError(
                f"fastmax.dask.{func}: {name}= is not supported on dask arrays"
            )


def _lse_chunk(block, axis, keepdims):
    return fastmax.logsumexp(block, axis=axis, keepdims=keepdims)


def _logsumexp(x: da.Array, axes: tuple[int, ...], keepdims: bool) -> da.Array:
    return da.reduction(
        x,
        chunk=_lse_chunk,
        combine=_lse_chunk,
        aggregate=_lse_chunk,
        axis=axes,
        keepdims=keepdims,
        dtype=x.dtype,
        concatenate=True,
    )


def _shift_by_max(x: da.Array, axes: tuple[int, ...]) -> tuple[da.Array, da.Array]:
    """``(x - shift, shift)``, ``shift`` the max over ``axes`` (kept as axes of
    one) where it is finite, else 0: the shifted rows' logsumexp lies in
    ``[0, log n]`` and is rounded to an ulp of that, not of the max, so
    ``(x - max) - lse`` keeps the low bits a ``x - lse`` would lose (float32
    softmax of rows near 1e4 was off by 7000 ulps that way: 8e-4)."""
    if any(x.shape[a] == 0 for a in axes):
        return x, da.zeros((1,) * x.ndim, dtype=x.dtype)
    top = x.max(axis=axes, keepdims=True)
    shift = da.where(da.isfinite(top), top, 0).astype(x.dtype)
    return x - shift, shift


def logsumexp(x, axis=-1, *, b=None, keepdims=False, return_sign=False, out=None, where=None):
    """:func:`fastmax.logsumexp` on a dask array (``b``, ``return_sign`` and
    ``out`` are not supported)."""
    _unsupported("logsumexp", b=b, return_sign=return_sign, out=out)
    arr, _, rdt = _input(x, "logsumexp")
    axes = reduction_axes(axis, arr.ndim, "logsumexp")
    if where is not None:
        arr = da.where(where, arr, -np.inf)
    return _logsumexp(arr, axes, keepdims).astype(rdt)


def _softmax_family(x, axis, out, where, temperature, log: bool, func: str):
    _unsupported(func, out=out)
    arr, cdt, rdt = _input(x, func)
    axes = reduction_axes(axis, arr.ndim, func)
    scale = temperature_scale(temperature, func)
    if scale != 1.0:
        arr = arr * cdt.type(scale)
    fill = -np.inf if log else 0.0
    if where is not None:
        mask = da.broadcast_to(da.asarray(where), arr.shape)
        arr = da.where(mask, arr, -np.inf)
    shifted, _ = _shift_by_max(arr, axes)
    lse = _logsumexp(shifted, axes, keepdims=True)
    if log:
        # SciPy's results follow: +inf max -> NaN at the +inf entries, -inf elsewhere;
        # all -inf -> NaN; NaN -> NaN.
        res = shifted - lse
    else:
        res = da.where(da.isfinite(lse), da.exp(shifted - lse), np.nan)
    if where is not None:
        any_included = mask.any(axis=axes, keepdims=True)
        res = da.where(mask & any_included, res, fill)
    return res.astype(rdt)


def softmax(x, axis=-1, *, out=None, where=None, temperature=1.0):
    """:func:`fastmax.softmax` on a dask array (lazy; ``out`` is not supported)."""
    return _softmax_family(x, axis, out, where, temperature, False, "softmax")


def log_softmax(x, axis=-1, *, out=None, where=None, temperature=1.0):
    """:func:`fastmax.log_softmax` on a dask array (lazy; ``out`` is not supported)."""
    return _softmax_family(x, axis, out, where, temperature, True, "log_softmax")


def _along(values: da.Array | np.ndarray, ndim: int, axis: int) -> Any:
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def hardmax(x, axis=-1, *, out=None):
    """:func:`fastmax.hardmax` on a dask array (an int axis; ``out`` is not supported)."""
    _unsupported("hardmax", out=out)
    arr, _, rdt = _input(x, "hardmax")
    try:
        operator.index(axis)
    except TypeError:
        raise TypeError(f"fastmax.dask.hardmax: axis must be an int, got {axis!r}") from None
    (ax,) = reduction_axes(axis, arr.ndim, "hardmax")
    index = da.argmax(arr, axis=ax, keepdims=True)
    positions = _along(da.arange(arr.shape[ax], chunks=arr.chunks[ax]), arr.ndim, ax)
    return (positions == index).astype(rdt)


def _checked_targets(block, n_classes, ignore_index):
    bad = (block != ignore_index) & ((block < 0) | (block >= n_classes))
    if bad.any():
        value = block[bad][0]
        raise ValueError(
            f"softmax_cross_entropy: target {value} is outside [0, {n_classes}) and is not "
            f"ignore_index={ignore_index}"
        )
    return block


def softmax_cross_entropy(
    logits,
    target,
    *,
    axis=-1,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
):
    """:func:`fastmax.softmax_cross_entropy` on dask arrays, lazily.

    The class axis may be split over many chunks; per-sample terms are reduced
    blockwise and summed by dask.  Bad targets raise ``ValueError`` at compute time.
    """
    func = "softmax_cross_entropy"
    x, cdt, rdt = _input(logits, func)
    (ax,) = reduction_axes(axis, x.ndim, func)
    n_classes = x.shape[ax]
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{func}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"{func}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    w = np.ones(n_classes, cdt) if weight is None else np.asarray(weight, cdt)
    if w.shape != (n_classes,):
        raise ValueError(f"{func}: weight has shape {w.shape}, expected ({n_classes},)")
    w_along = _along(da.from_array(w, chunks=(x.chunks[ax],)), x.ndim, ax)
    # Per-sample terms lse - x as lse(x - shift) - (x - shift), rounded to ulps
    # of the loss rather than of the largest logit.
    shifted, shift = _shift_by_max(x, (ax,))
    lse_s = _logsumexp(shifted, (ax,), keepdims=False)
    lse = lse_s + da.squeeze(shift, axis=ax)
    t = da.asarray(target)
    batch_chunks = x.chunks[:ax] + x.chunks[ax + 1 :]
    if t.dtype.kind == "f":
        if t.shape != x.shape:
            raise ValueError(
                f"{func}: target of probabilities has shape {t.shape}, expected {x.shape}"
            )
        q = t.astype(cdt) * (1.0 - eps) + eps / n_classes
        per = (w_along * q * (da.expand_dims(lse_s, ax) - shifted)).sum(axis=ax)
        z = lse**2
        weight_sum = kept = per.size
    else:
        batch_shape = x.shape[:ax] + x.shape[ax + 1 :]
        if t.shape != batch_shape:
            raise ValueError(f"{func}: target has shape {t.shape}, expected {batch_shape}")
        t = t.rechunk(batch_chunks).map_blocks(
            _checked_targets, n_classes, ignore_index, dtype=t.dtype
        )
        keep = t != ignore_index
        hot = _along(da.arange(n_classes, chunks=x.chunks[ax]), x.ndim, ax) == da.expand_dims(t, ax)
        shifted_t = da.where(hot, shifted, 0).sum(axis=ax)
        w_t = da.where(hot, w_along, 0).sum(axis=ax)
        per = da.where(keep, (1.0 - eps) * w_t * (lse_s - shifted_t), 0.0)
        if eps > 0:
            smooth = float(w.sum()) * lse_s - (shifted * w_along).sum(axis=ax)
            per = per + da.where(keep, eps / n_classes * smooth, 0.0)
        z = da.where(keep, lse**2, 0.0)
        weight_sum = da.where(keep, w_t, 0).sum()
        kept = keep.sum()
    if reduction == "none":
        res = per + z_loss * z if z_loss else per
    elif reduction == "sum":
        res = per.sum() + (z_loss * z.sum() if z_loss else 0)
    else:
        res = per.sum() / weight_sum + (z_loss * z.sum() / kept if z_loss else 0)
    return res.astype(rdt)
