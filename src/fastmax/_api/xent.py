"""Softmax cross-entropy with PyTorch's semantics: forward, backward, fused."""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._kernels import short
from .._kernels import softmax as KS
from .._kernels import xent as K
from .._kernels.schedule import (
    PARALLEL_MIN_ELEMENTS,
    SMALL_ROWS,
    SPLIT_CHUNK,
    column_block_rows,
    column_chunks,
    row_blocks,
    split_rows,
)
from .._layout import contiguous_for_rows, rows_view, unit_stride
from .._validate import as_array, check_no_partial_overlap, check_out, float_dtypes, reduction_axes
from ._elementwise import fast_out

_REDUCTIONS = ("mean", "sum", "none")


@dataclass
class _Problem:
    """A validated cross-entropy call, laid out as 2-D rows (samples × classes)."""

    func: str
    logits: np.ndarray  # the input as given (for shapes and overlap checks)
    rows: np.ndarray  # (samples, C) view in the compute dtype
    axis: int
    cdt: np.dtype
    rdt: np.dtype
    target_shape: tuple[int, ...]  # the per-sample shape
    index: np.ndarray | None  # int64 class indices, one per row
    probs: np.ndarray | None  # (samples, C) probabilities
    weight: np.ndarray
    ignore_index: int
    reduction: str
    smoothing: float
    z_loss: float
    denominator: float  # mean: summed weights of the kept targets (or samples)
    kept: int  # samples not ignored


def _number(value: Any, name: str, func: str, lo: float, hi: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{func}: {name} must be a number in [{lo}, {hi}], got {value!r}"
        ) from None
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"{func}: {name} must be a number in [{lo}, {hi}], got {value!r}")
    return v


_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


@functools.lru_cache(maxsize=64)
def _unit_weights(n_classes: int, dtype) -> np.ndarray:
    """Weights of 1 for every class without an array of C ones (a read-only
    view of one element: vocabularies can be as large as the logits' rows).
    Read-only, so one per (C, dtype) is shared between calls."""
    return np.broadcast_to(np.ones(1, dtype), (n_classes,))


def _check_targets(target: np.ndarray, n_classes: int, ignore_index: int, w: np.ndarray):
    """:func:`K.check_targets`; a few targets in one chunk, without its
    parallel launch and scratch (0.8 -> 0.3 us)."""
    if target.size < PARALLEL_MIN_ELEMENTS:
        return K.check_chunk(target, n_classes, ignore_index, w)
    return K.check_targets(target.size, target, n_classes, ignore_index, w)


def _common_call(
    logits, target, axis, weight, ignore_index, reduction, label_smoothing, z_loss
) -> bool:
    """The common call, checked quickly: (N, C) C-contiguous float32/float64
    logits, int64 class indices, no weight, smoothing or z-loss."""
    return (
        type(logits) is np.ndarray
        and type(target) is np.ndarray
        and weight is None
        and type(ignore_index) is int
        and type(axis) is int
        and label_smoothing == 0
        and z_loss == 0
        and type(label_smoothing) in (int, float)
        and type(z_loss) in (int, float)
        and reduction in _REDUCTIONS
        and logits.ndim == 2
        and axis in (-1, 1)
        and logits.dtype in _NATIVE
        and logits.size > 0
        and logits.flags.c_contiguous
        and target.dtype == np.int64
        and target.shape == logits.shape[:1]
        and target.flags.c_contiguous
    )


def _small_rows(rows: np.ndarray) -> bool:
    """Whether rows with contiguous classes are for the small kernels: a small
    input, of rows longer than the short rows' sizes."""
    return (
        rows.size < PARALLEL_MIN_ELEMENTS
        and rows.shape[0] <= SMALL_ROWS
        and not short.fits_rows(rows)
    )


def _small_reduced_call(logits, target, ignore_index, reduction, out, fused: bool):
    """The reduced loss of a :func:`_common_call` on :func:`_small_rows` in
    one kernel call, which also checks the targets (64 x 100 float32: loss
    and gradient 7.5 -> 4.7 us, loss 5.7 -> 4.2 us); None on a bad target
    (the general path then raises)."""
    w = _unit_weights(logits.shape[1], logits.dtype)
    bad, loss = K.xent_small_reduced(
        logits, target, w, ignore_index, 0.0, reduction == "mean", out, fused
    )
    return None if bad >= 0 else logits.dtype.type(loss)


def _one_kernel_rows(rows: np.ndarray) -> bool:
    """Whether rows with contiguous classes, not :func:`_small_rows`, take
    one kernel call whole for a reduced loss and its gradient (the paths of
    :func:`_run`): short rows (``short.xent_index_grad_short_rows``, any
    number), or rows neither split over the threads nor more than one chunk
    of :data:`_REDUCE_ROWS` (``xent.xent_index_rows``)."""
    return short.fits_rows(rows) or (rows.shape[0] <= _REDUCE_ROWS and not split_rows(*rows.shape))


def _one_kernel_fused_call(logits, target, ignore_index, reduction, out):
    """The reduced loss and, into ``out``, the gradient (``grad=1``) of a
    :func:`_common_call` on :func:`_one_kernel_rows`: :func:`_prepare`,
    :func:`_scales`, :func:`_run` and :func:`_reduce` for these paths,
    without their choices of path and problem.  Two threads, same-process
    rounds, the whole call, float32: 1024 x 1000 110.7 -> 105.3 us,
    16384 x 8 63.7 -> 49.9 us.
    None on a bad target (the general path then raises)."""
    n, n_classes = logits.shape
    w = _unit_weights(n_classes, logits.dtype)
    bad, denominator, _ = _check_targets(target, n_classes, ignore_index, w)
    if bad >= 0:
        return None
    mean = reduction == "mean"
    s = _divide(1.0, denominator) if mean else 1.0
    if short.fits_rows(logits):
        scale = _same_for_every_row(s, n)
        part_a, part_z = _block_parts(logits)
        short.xent_index_grad_short_rows(
            logits.size, logits, target, w, ignore_index, 0.0, part_a, part_z, True, out,
            scale, scale, _row_blocks(logits),
        )  # fmt: skip
    else:
        scale = np.full(n, s)
        part_a = np.empty(n)
        K.xent_index_rows(
            logits.size, logits, target, w, ignore_index, 0.0, 0.0, part_a, np.empty(n), True,
            out, scale, scale, _row_blocks(logits),
        )  # fmt: skip
    total = float(part_a.sum())
    # The rules of _loss_of_sums without a z-loss.
    return logits.dtype.type(_divide(total, denominator) if mean else total)


def _prepare_common(
    logits, target, axis, weight, ignore_index, reduction, label_smoothing, z_loss, func: str
) -> _Problem | None:
    """The :func:`_common_call` as a problem.  None when the call is anything
    else or has a bad target (the general path then raises the error)."""
    if not _common_call(
        logits, target, axis, weight, ignore_index, reduction, label_smoothing, z_loss
    ):
        return None
    n_classes = logits.shape[1]
    w = _unit_weights(n_classes, logits.dtype)
    bad, denominator, kept = _check_targets(target, n_classes, ignore_index, w)
    if bad >= 0:
        return None
    dt = logits.dtype
    return _Problem(
        func, logits, logits, 1, dt, dt, target.shape, target, None, w, ignore_index,
        reduction, 0.0, 0.0, float(denominator), int(kept),
    )  # fmt: skip


def _prepare(
    logits, target, axis, weight, ignore_index, reduction, label_smoothing, z_loss, func: str
) -> _Problem:
    common = _prepare_common(
        logits, target, axis, weight, ignore_index, reduction, label_smoothing, z_loss, func
    )
    if common is not None:
        return common
    x = as_array(logits, "logits", func)
    cdt, rdt = float_dtypes(x.dtype, "logits", func)
    if x.ndim == 0:
        raise ValueError(f"{func}: logits must have a class axis, got a 0-d array")
    try:
        operator.index(axis)
    except TypeError:
        raise TypeError(f"{func}: axis must be an int, got {axis!r}") from None
    (ax,) = reduction_axes(axis, x.ndim, func)
    n_classes = x.shape[ax]
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{func}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    smoothing = _number(label_smoothing, "label_smoothing", func, 0.0, 1.0)
    z = _number(z_loss, "z_loss", func, 0.0, math.inf)
    try:
        ignore = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"{func}: ignore_index must be an int, got {ignore_index!r}") from None

    if weight is None:
        w = _unit_weights(n_classes, cdt)
    else:
        w = as_array(weight, "weight", func)
        float_dtypes(w.dtype, "weight", func)
        if w.shape != (n_classes,):
            raise ValueError(f"{func}: weight has shape {w.shape}, expected ({n_classes},)")
        w = np.ascontiguousarray(w, dtype=cdt)

    t = as_array(target, "target", func)
    batch_shape = x.shape[:ax] + x.shape[ax + 1 :]
    rows = rows_view(x, (ax,)) if x.dtype == cdt else None
    if rows is None:
        rows = rows_view(contiguous_for_rows(x, (ax,), cdt), (ax,))
    index = probs = None
    if t.dtype.kind in "iu":
        if t.shape != batch_shape:
            raise ValueError(
                f"{func}: target of class indices has shape {t.shape}, expected {batch_shape} "
                f"(logits {x.shape} without axis {ax})"
            )
        flat = np.ascontiguousarray(t).reshape(-1)
        index = flat.astype(np.int64, copy=False)
        if t.dtype.kind == "u" and t.dtype.itemsize == 8:
            # Values past int64 wrap around: mark them out of range, whatever ignore_index is.
            index[flat > np.iinfo(np.int64).max] = -2 if ignore == -1 else -1
        bad, denominator, kept = _check_targets(index, n_classes, ignore, w)
        if bad >= 0:
            where = np.unravel_index(bad, t.shape) if t.ndim else ()
            raise ValueError(
                f"{func}: target {flat[bad]} at index {tuple(int(i) for i in where)} is outside "
                f"[0, {n_classes}) and is not ignore_index={ignore}"
            )
    elif t.dtype.kind == "f":
        if t.shape != x.shape:
            raise ValueError(
                f"{func}: target of class probabilities has shape {t.shape}, expected the "
                f"logits' shape {x.shape}"
            )
        probs = rows_view(t, (ax,)) if t.dtype == cdt else None
        if probs is None:
            probs = rows_view(contiguous_for_rows(t, (ax,), cdt), (ax,))
        denominator, kept = float(rows.shape[0]), rows.shape[0]
    else:
        raise TypeError(
            f"{func}: target must hold integer class indices or float probabilities, "
            f"got dtype {t.dtype}"
        )
    return _Problem(
        func,
        x,
        rows,
        ax,
        cdt,
        rdt,
        batch_shape,
        index,
        probs,
        w,
        ignore,
        reduction,
        smoothing,
        z,
        float(denominator),
        int(kept),
    )


#: Samples per block when the class axis is strided (gathered into a buffer).
_GATHER_BYTES = 1 << 23
#: Samples per kernel call when a loss is reduced over many samples: their
#: parts (and gradient scales) live in small reused buffers instead of arrays
#: of N, whose page faults and second pass cost as much as reading the logits
#: on short rows (which now sum their parts per block in one call instead:
#: :func:`_run_short_sums`).
_REDUCE_ROWS = 1 << 16


def _index_terms(pb: _Problem, rows, index, m, total, xw, part_a, part_z, scale, scale_z):
    """The forward parts of index targets from each row's max ``m`` and
    ``total = sum(exp(x - m))`` (``xw = (x - m) @ w`` per row when smoothing,
    ``x @ w`` where ``m`` is not finite), and,
    with ``scale``, the gradient's terms per row: ``(kept, t, a_nll, a_smooth,
    coef)`` for ``d/dx = exp(x - m) * coef - a_smooth * w - a_nll at t``.
    The formulas of ``xent.xent_index_rows``, vectorized over few rows."""
    n_rows, n_classes = rows.shape
    eps = pb.smoothing
    w = pb.weight
    total_w = float(n_classes) if w.strides == (0,) else float(np.sum(w, dtype=np.float64))
    kept = index != pb.ignore_index
    t = np.where(kept, index, 0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m64 = m.astype(np.float64)
        finite = np.isfinite(m)
        lse = np.where(finite, m64 + np.log(total), m64)  # as reduce.lse_of_stats
        wt = w[t].astype(np.float64)
        # lse - x[t] as (m - x[t]) + log(total): two terms of at most its size,
        # not rounded to an ulp of lse (as xent.nll_and_lse)
        xt = rows[np.arange(n_rows), t].astype(np.float64)
        a = (1.0 - eps) * wt * np.where(finite, (m64 - xt) + np.log(total), lse - xt)
        if eps > 0.0:  # as xent.shifted_lse_product
            a = a + eps / n_classes * (total_w * np.where(finite, np.log(total), lse) - xw)
        part_a[:] = np.where(kept, a, 0.0)
        part_z[:] = np.where(kept, lse * lse, 0.0)
        if scale is None:
            return None
        a_nll = np.where(kept, (1.0 - eps) * wt * scale, 0.0)
        a_smooth = np.where(kept, eps / n_classes * scale, 0.0)
        z_term = 2.0 * pb.z_loss * lse * scale_z if pb.z_loss else 0.0
        coef = np.where(kept, (a_nll + a_smooth * total_w + z_term) / total, 0.0)
    return kept, t, a_nll, a_smooth, coef


def _subtract_at_targets(grad_rows, kept, t, a_nll) -> None:
    """``grad[r, t[r]] -= a_nll[r]`` for the kept rows, in the gradient's dtype
    (as the row kernels do)."""
    grad_rows[np.flatnonzero(kept), t[kept]] -= a_nll[kept].astype(grad_rows.dtype)


def _split_index_rows(pb: _Problem, rows, index, part_a, part_z, grad_rows, scale, scale_z):
    """Index targets on few long rows: each row split over all threads (row
    statistics merged exactly, as softmax does), then a split gradient pass."""
    n_rows, n_classes = rows.shape
    one = rows.dtype.type(1.0)
    m, total = KS.row_stats_split(rows.size, rows, one, SPLIT_CHUNK)
    xw = None
    if pb.smoothing > 0.0:  # sum(w * (x - m)), m where finite (as xent.row_pass)
        w64 = pb.weight.astype(np.float64)
        shift = np.where(np.isfinite(m), m, 0.0).astype(np.float64)[:, None]
        xw = np.zeros(n_rows)
        for lo in range(0, n_classes, SPLIT_CHUNK):  # float64 in bounded pieces
            hi = lo + SPLIT_CHUNK
            xw += (rows[:, lo:hi].astype(np.float64) - shift) @ w64[lo:hi]
    terms = _index_terms(pb, rows, index, m, total, xw, part_a, part_z, scale, scale_z)
    if grad_rows is None:
        return
    kept, t, a_nll, a_smooth, coef = terms
    K.xent_grad_rows_split(rows.size, rows, pb.weight, grad_rows, m, coef, a_smooth, SPLIT_CHUNK)
    _subtract_at_targets(grad_rows, kept, t, a_nll)


def _columns(pb: _Problem, rows, index, grad_rows) -> bool:
    """Whether the column path applies (see :func:`_column_index_rows`)."""
    return (
        index is not None
        and pb.smoothing == 0.0
        and rows.shape[1] > 1
        and not unit_stride(rows, 1)
        and unit_stride(rows, 0)
        and (grad_rows is None or unit_stride(grad_rows, 0))
    )


def _column_index_rows(pb: _Problem, rows, index, part_a, part_z, grad_rows, scale, scale_z):
    """Index targets, no smoothing, with the class axis strided and the samples
    contiguous (``axis=0``): per-sample statistics by the column kernel of
    softmax (SIMD across samples, sequential reads), then a column write pass
    over the same chunks of classes."""
    n, n_classes = rows.shape
    one = rows.dtype.type(1.0)
    xt_cols = rows.T  # (C, N), rows contiguous
    chunks = column_chunks(n_classes)
    # The forward of float32 takes the sums with no shift where they are right
    # (m is then a reference, not the max): its losses, in float64, keep their
    # precision.
    direct = grad_rows is None and rows.dtype == np.float32
    m, total = KS.column_stats_chunked(
        rows.size, xt_cols, one, chunks, column_block_rows(n, rows.itemsize), direct
    )
    terms = _index_terms(pb, rows, index, m, total, None, part_a, part_z, scale, scale_z)
    if grad_rows is None:
        return
    kept, t, a_nll, _, coef = terms
    K.xent_grad_cols(rows.size, xt_cols, grad_rows.T, m, coef.astype(rows.dtype), chunks)
    _subtract_at_targets(grad_rows, kept, t, a_nll)


def _kernel(pb: _Problem, rows, index, probs, part_a, part_z, grad_rows, scale, scale_z):
    write = grad_rows is not None
    if _columns(pb, rows, index, grad_rows):
        _column_index_rows(pb, rows, index, part_a, part_z, grad_rows, scale, scale_z)
        return
    if (
        index is not None
        and unit_stride(rows, 1)
        and (not write or unit_stride(grad_rows, 1))
        and split_rows(*rows.shape)
    ):
        _split_index_rows(pb, rows, index, part_a, part_z, grad_rows, scale, scale_z)
        return
    n_blocks = _row_blocks(rows)
    forward_nll = index is not None and not write and pb.smoothing == 0.0
    if forward_nll and short.fits_rows(rows):
        # Many short rows: logsumexp with the rows reduced inside vectors.
        _short_forward(rows, index, pb.weight, pb.ignore_index, False, part_a, part_z, pb.z_loss)
        return
    if forward_nll:
        K.xent_index_forward(
            rows.size, rows, index, pb.weight, pb.ignore_index, part_a, part_z, n_blocks
        )
        return
    out = grad_rows if write else np.empty((1, rows.shape[1]), pb.cdt)
    scale = scale if write else np.empty(1)
    scale_z = scale_z if write else np.empty(1)
    if index is not None and write and pb.smoothing == 0.0 and short.fits_rows(rows, out):
        short.xent_index_grad_short_rows(
            rows.size,
            rows,
            index,
            pb.weight,
            pb.ignore_index,
            pb.z_loss,
            part_a,
            part_z,
            False,
            out,
            scale,
            scale_z,
            n_blocks,
        )
    elif index is not None:
        K.xent_index_rows(
            rows.size,
            rows,
            index,
            pb.weight,
            pb.ignore_index,
            pb.smoothing,
            pb.z_loss,
            part_a,
            part_z,
            write,
            out,
            scale,
            scale_z,
            n_blocks,
        )
    else:
        K.xent_prob_rows(
            rows.size,
            rows,
            probs,
            pb.weight,
            pb.smoothing,
            pb.z_loss,
            part_a,
            part_z,
            write,
            out,
            scale,
            scale_z,
            n_blocks,
        )


def _chunked(pb: _Problem, grad_rows: np.ndarray | None) -> bool:
    """Whether a reduced loss over many samples (contiguous classes) runs in
    chunks of :data:`_REDUCE_ROWS` samples."""
    return (
        pb.reduction != "none"
        and pb.rows.shape[0] > _REDUCE_ROWS
        and unit_stride(pb.rows, 1)
        and (grad_rows is None or unit_stride(grad_rows, 1))
    )


def _run_chunks(pb: _Problem, grad_rows: np.ndarray | None, scale, scale_z):
    """:func:`_run` for :func:`_chunked` problems: each chunk's parts go to one
    reused buffer and are summed there (in order: deterministic).  Returns the
    sums as 1-element parts."""
    n = pb.rows.shape[0]
    part_a = np.empty(_REDUCE_ROWS)
    part_z = np.empty(_REDUCE_ROWS)
    sum_a = 0.0
    sum_z = 0.0
    for s0 in range(0, n, _REDUCE_ROWS):
        s1 = min(s0 + _REDUCE_ROWS, n)
        k = s1 - s0
        _kernel(
            pb,
            pb.rows[s0:s1],
            None if pb.index is None else pb.index[s0:s1],
            None if pb.probs is None else pb.probs[s0:s1],
            part_a[:k],
            part_z[:k],
            None if grad_rows is None else grad_rows[s0:s1],
            None if scale is None else scale[:k],
            None if scale_z is None else scale_z[:k],
        )
        sum_a += part_a[:k].sum()
        if pb.z_loss:
            sum_z += part_z[:k].sum()
    return np.array([sum_a]), np.array([sum_z])


def _small(pb: _Problem, grad_rows: np.ndarray | None) -> bool:
    """Whether index targets without smoothing run on a small input with
    contiguous classes (of more than the short rows' sizes): the small
    kernels, forward or fused."""
    return (
        pb.index is not None
        and pb.smoothing == 0.0
        and unit_stride(pb.rows, 1)
        and (grad_rows is None or unit_stride(grad_rows, 1))
        and _small_rows(pb.rows)
    )


def _short_sums(pb: _Problem, grad_rows: np.ndarray | None) -> bool:
    """Whether a reduced loss of index targets without smoothing, on short
    contiguous rows, runs in one call of the short-row kernels, which sum
    the parts per block of rows instead of writing them per sample."""
    return (
        pb.reduction != "none"
        and pb.index is not None
        and pb.smoothing == 0.0
        and short.fits_rows(pb.rows, grad_rows)
        and (grad_rows is None or grad_rows.dtype == pb.rows.dtype)
    )


def _run_short_sums(pb: _Problem, grad_rows: np.ndarray | None, scale, scale_z):
    """:func:`_run` for :func:`_short_sums` problems; returns the sums as
    1-element parts.  The gradient's scales of "mean"/"sum" are one value
    for every sample: a stride-0 view of it stands for the per-row array."""
    rows = pb.rows
    if grad_rows is None:
        part_a, part_z, _ = _short_forward(
            rows, pb.index, pb.weight, pb.ignore_index, True, z_loss=pb.z_loss
        )
    else:
        part_a, part_z = _block_parts(rows)
        n = rows.shape[0]
        short.xent_index_grad_short_rows(
            rows.size, rows, pb.index, pb.weight, pb.ignore_index, pb.z_loss, part_a, part_z,
            True, grad_rows, _same_for_every_row(scale[0], n), _same_for_every_row(scale_z[0], n),
            _row_blocks(rows),
        )  # fmt: skip
    return np.array([part_a.sum()]), np.array([part_z.sum()])


def _same_for_every_row(value: float, n: int) -> np.ndarray:
    """A read-only float64 array of ``n`` elements, all ``value``: a stride-0
    view of one, which is the Numba type of ``np.broadcast_to``'s view (a
    kernel compiles once for both) but takes 0.2 us to make, not 2."""
    one = np.full(1, value, np.float64)
    view = np.ndarray((n,), one.dtype, one, 0, (0,))
    view.flags.writeable = False
    return view


def _row_blocks(rows: np.ndarray) -> int:
    """The row kernels' block count; small calls run serially (one block, and
    no thread-count query)."""
    return row_blocks(rows.shape[0]) if rows.size >= PARALLEL_MIN_ELEMENTS else 1


def _block_parts(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``part_a``/``part_z`` of the short-row kernels' per-block sums: one per
    full block of ``rows`` and one for the rows after them."""
    part_a = np.empty(short.block_count(*rows.shape) + 1)
    return part_a, np.empty_like(part_a)


def _short_forward(
    rows, index, weight, ignore_index, sums: bool, part_a=None, part_z=None, z_loss=0.0
):
    """:func:`short.xent_index_short_rows` on ``rows`` that ``short.fits_rows``:
    the parts per block (``sums``, into new arrays) or per row (into
    ``part_a``/``part_z``), and the numbers of kept rows and of bad targets
    (the kernel checks the targets in its pass).  Without a z-loss no
    z-loss parts are stored (nothing reads them: ``part_z`` is not needed),
    and the block sums of unit weights take no logsumexp per row."""
    if sums:
        part_a, part_z = _block_parts(rows)
    if not z_loss:
        part_z = part_a[:0]  # empty, of the parts' type
    counts = np.empty((short.block_count(*rows.shape) + 1, 2), np.int64)
    short.xent_index_short_rows(
        rows.size, rows, index, weight, ignore_index, part_a, part_z, sums, counts,
        _row_blocks(rows),
    )  # fmt: skip
    return part_a, part_z, counts.sum(axis=0)


def _short_losses_call(logits, target, ignore_index):
    """The per-sample losses ("none") of a :func:`_common_call` on short rows
    in one kernel call that checks the targets and writes each loss in the
    logits' dtype: no float64 array of losses and none of z-loss parts to
    fill and convert (4M x 8, two threads, same-process rounds: float32
    6.97 -> 3.83 and float64 3.94 -> 2.62 read floors); None on a bad
    target (the general path then raises)."""
    w = _unit_weights(logits.shape[1], logits.dtype)
    loss = np.empty(logits.shape[0], logits.dtype)
    _, _, (_, bad) = _short_forward(logits, target, w, ignore_index, False, loss)
    return None if bad else loss


def _short_reduced_call(logits, target, ignore_index, reduction):
    """The reduced loss of a :func:`_common_call` on short rows in one kernel
    call, which checks the targets in its pass over the logits rather than in
    a pass of its own before it; None on a bad target (the general path then
    raises)."""
    w = _unit_weights(logits.shape[1], logits.dtype)
    part_a, _, (kept, bad) = _short_forward(logits, target, w, ignore_index, True)
    if bad:
        return None
    total = float(part_a.sum())
    # The rules of _loss_of_sums, with unit weights (the denominator is the count).
    return logits.dtype.type(_divide(total, float(kept)) if reduction == "mean" else total)


def _run(pb: _Problem, grad_rows: np.ndarray | None, scale, scale_z):
    """One pass of the kernel: per-sample parts, and the gradient if asked."""
    if _short_sums(pb, grad_rows):
        return _run_short_sums(pb, grad_rows, scale, scale_z)
    if _chunked(pb, grad_rows):
        return _run_chunks(pb, grad_rows, scale, scale_z)
    n, n_classes = pb.rows.shape
    part_a = np.empty(n)
    part_z = np.empty(n)
    if _small(pb, grad_rows):
        # The parts' sums come from the kernel, as 1-element parts (as _run_chunks).
        args = (pb.rows, pb.index, pb.weight, pb.ignore_index)
        if grad_rows is None:
            sum_a, sum_z = K.xent_index_rows_small(*args, part_a, part_z)
        else:
            sum_a, sum_z = K.xent_index_grad_rows_small(
                *args, pb.z_loss, part_a, part_z, grad_rows, scale, scale_z
            )
        if pb.reduction == "none":
            return part_a, part_z
        return np.array([sum_a]), np.array([sum_z])
    contiguous = unit_stride(pb.rows, 1) and (grad_rows is None or unit_stride(grad_rows, 1))
    if contiguous or n == 1 or _columns(pb, pb.rows, pb.index, grad_rows):
        _kernel(pb, pb.rows, pb.index, pb.probs, part_a, part_z, grad_rows, scale, scale_z)
        return part_a, part_z
    # A strided class axis (e.g. axis=0): gather blocks of samples into a bounded
    # contiguous buffer, run the row kernel there, scatter the gradient back.
    block = max(1, _GATHER_BYTES // (n_classes * pb.rows.itemsize))
    buf = np.empty((min(block, n), n_classes), pb.cdt)
    pbuf = np.empty_like(buf) if pb.probs is not None else None
    for s0 in range(0, n, block):
        s1 = min(s0 + block, n)
        xb = buf[: s1 - s0]
        # The sample axis is the contiguous one: copy along it (transposed views).
        K.copy_rows(xb.size, pb.rows[s0:s1].T, xb.T)
        qb = None
        if pbuf is not None:
            qb = pbuf[: s1 - s0]
            K.copy_rows(qb.size, pb.probs[s0:s1].T, qb.T)
        index = None if pb.index is None else pb.index[s0:s1]
        write = grad_rows is not None
        _kernel(
            pb,
            xb,
            index,
            qb,
            part_a[s0:s1],
            part_z[s0:s1],
            xb if write else None,
            scale[s0:s1] if write else None,
            scale_z[s0:s1] if write else None,
        )
        if write:
            K.copy_rows(xb.size, xb.T, grad_rows[s0:s1].T)
    return part_a, part_z


def _divide(x: float, d: float) -> float:
    """``x / d`` as float64 division gives it, without ``np.errstate`` (about
    2 us a call): ``x / 0`` is NaN for ``x`` 0 or NaN, else ±inf."""
    if d != 0:
        return x / d
    if x == 0 or x != x:
        return math.nan
    return math.copysign(math.inf, x) * math.copysign(1.0, d)


def _reduce(pb: _Problem, part_a: np.ndarray, part_z: np.ndarray):
    if pb.reduction == "none":
        with np.errstate(invalid="ignore"):
            loss = part_a + pb.z_loss * part_z if pb.z_loss else part_a
        return loss.reshape(pb.target_shape).astype(pb.rdt, copy=False)  # a new array already
    # 1-element parts are sums already (the chunked and small paths).
    total = float(part_a[0] if part_a.size == 1 else part_a.sum())
    z = float(part_z[0] if part_z.size == 1 else part_z.sum()) if pb.z_loss else 0.0
    return _loss_of_sums(pb, total, z)


def _loss_of_sums(pb: _Problem, total: float, z: float):
    """The reduced loss from the sums of the parts."""
    if pb.reduction == "mean":
        total = _divide(total, pb.denominator)
        if pb.z_loss:
            total += _divide(pb.z_loss * z, pb.kept)
    elif pb.z_loss:
        total += pb.z_loss * z
    return pb.rdt.type(total)


def _small_reduced(pb: _Problem, grad_rows: np.ndarray | None = None):
    """A reduced loss ("mean"/"sum") of a :func:`_small` problem in one kernel
    call without per-sample arrays; with ``grad_rows``, the gradient of
    ``grad=1`` too (64 x 100 float32, the forward and backward call: 14 ->
    6 us).  The targets were checked already."""
    fused = grad_rows is not None
    _, loss = K.xent_small_reduced(
        pb.rows, pb.index, pb.weight, pb.ignore_index, pb.z_loss, pb.reduction == "mean",
        grad_rows if fused else pb.rows, fused,
    )  # fmt: skip
    return pb.rdt.type(loss)


def _reduced_scales(pb: _Problem, g: float) -> tuple[float, float]:
    """The gradient's two multipliers for a reduced loss ("mean"/"sum") and
    upstream gradient ``g``: of the NLL part and of the z-loss part."""
    if pb.reduction == "sum":
        return g, g
    return _divide(g, pb.denominator), _divide(g, max(pb.kept, 1))


def _scales(pb: _Problem, grad: Any, grad_rows: np.ndarray):
    """Per-row multipliers of the gradient's two parts (see the kernel module);
    for "mean"/"sum", one chunk's worth when :func:`_chunked`."""
    if pb.reduction != "none" and (_small(pb, grad_rows) or _short_sums(pb, grad_rows)):
        n = 1  # the small and short-row kernels take one scale for every row
    elif _chunked(pb, grad_rows):
        n = min(pb.rows.shape[0], _REDUCE_ROWS)
    else:
        n = pb.rows.shape[0]
    if pb.reduction == "none":
        g = as_array(grad, "grad", pb.func)
        try:
            g = np.broadcast_to(g, pb.target_shape)
        except ValueError:
            raise ValueError(
                f"{pb.func}: grad of shape {g.shape} does not broadcast to the per-sample "
                f"shape {pb.target_shape}"
            ) from None
        g = np.ascontiguousarray(g, dtype=np.float64).reshape(-1)
        return g, g
    if type(grad) not in (int, float) and np.ndim(grad) != 0:
        raise ValueError(
            f"{pb.func}: grad must be a scalar for reduction={pb.reduction!r}, "
            f"got shape {np.shape(grad)}"
        )
    s, s_z = _reduced_scales(pb, float(grad))
    return np.full(n, s), np.full(n, s_z)


def _gradient_buffer(pb: _Problem, out: Any):
    """``(result, rows view to write, copy needed)`` for the gradient."""
    x = pb.logits
    if pb.rows is x and (out is None or fast_out(out, x)):
        # The common call: (N, C) C-contiguous logits, as rows of themselves.
        result = np.empty_like(x) if out is None else out
        return result, result, None
    if out is not None:
        check_out(out, x.shape, pb.rdt, pb.func)
        check_no_partial_overlap(out, x, pb.func, "logits")
        result = out
    else:
        result = np.empty_like(x, dtype=pb.rdt)
    view = rows_view(result, (pb.axis,)) if result.dtype == pb.cdt else None
    if view is not None:
        return result, view, None
    buffer = np.empty(pb.rows.shape, pb.cdt)
    return result, buffer, buffer


def _finish_gradient(pb: _Problem, result: np.ndarray, buffer):
    if buffer is not None:
        moved = np.moveaxis(result, pb.axis, -1)
        with np.errstate(over="ignore"):
            np.copyto(moved, buffer.reshape(moved.shape), casting="unsafe")
    return result


_KEYWORDS_DOC = """
    Parameters
    ----------
    logits : array_like
        Unnormalised scores; the class axis is ``axis``.  float32/float64
        compute in their own precision (float16 in float32; integers in float64).
    target : array_like
        Integer class indices shaped like ``logits`` without ``axis``, or float
        class probabilities shaped like ``logits``.
    axis : int, default -1
        The class axis (``axis=1`` for PyTorch's (N, C, d1, ...) layout).
    weight : array_like of length C, optional
        Class weights, as in PyTorch (a weighted mean divides by the summed
        weights of the non-ignored targets).
    ignore_index : int, default -100
        Index targets equal to it add nothing to the loss or the gradient.
    reduction : {"mean", "sum", "none"}, default "mean"
    label_smoothing : float in [0, 1], default 0.0
    z_loss : float >= 0, default 0.0
        Adds ``z_loss * logsumexp(logits)**2`` per non-ignored sample, reduced
        the same way, not weighted by ``weight``.
"""


def softmax_cross_entropy(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
):
    """Cross-entropy of softmax(logits) against ``target``, equal to
    ``torch.nn.functional.cross_entropy`` (plus the optional z-loss).

    Reads the logits once and allocates O(samples), never O(samples × C).
    Returns a 0-d result of the logits' dtype for "mean"/"sum", an array of the
    per-sample shape for "none".
    """
    if _common_call(logits, target, axis, weight, ignore_index, reduction, label_smoothing, z_loss):
        loss = None
        if reduction == "none":
            if short.fits_rows(logits):
                loss = _short_losses_call(logits, target, ignore_index)
        elif _small_rows(logits):
            loss = _small_reduced_call(logits, target, ignore_index, reduction, logits, False)
        elif short.fits_rows(logits):
            loss = _short_reduced_call(logits, target, ignore_index, reduction)
        if loss is not None:
            return loss
    pb = _prepare(
        logits,
        target,
        axis,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        "softmax_cross_entropy",
    )
    if pb.reduction != "none" and _small(pb, None):
        return _small_reduced(pb)
    return _reduce(pb, *_run(pb, None, None, None))


def softmax_cross_entropy_backward(
    logits: Any,
    target: Any,
    grad: Any = 1.0,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """d(loss)/d(logits) of :func:`softmax_cross_entropy`, scaled by ``grad``
    (a scalar for "mean"/"sum", an array of the per-sample shape for "none").
    ``out`` (the logits' shape and result dtype) may be ``logits`` itself."""
    pb = _prepare(
        logits,
        target,
        axis,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        "softmax_cross_entropy_backward",
    )
    result, view, buffer = _gradient_buffer(pb, out)
    _run(pb, view, *_scales(pb, grad, view))
    return _finish_gradient(pb, result, buffer)


def softmax_cross_entropy_with_grad(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    out: np.ndarray | None = None,
):
    """``(loss, dlogits)`` for ``grad=1`` from one fused pass over the logits.

    ``out=logits`` writes the gradient over the logits: no second buffer.
    """
    if (
        _common_call(logits, target, axis, weight, ignore_index, reduction, label_smoothing, z_loss)
        and reduction != "none"
        and (out is None or fast_out(out, logits))
    ):
        loss = None
        if _small_rows(logits):
            result = np.empty_like(logits) if out is None else out
            loss = _small_reduced_call(logits, target, ignore_index, reduction, result, True)
        elif _one_kernel_rows(logits):
            result = np.empty_like(logits) if out is None else out
            loss = _one_kernel_fused_call(logits, target, ignore_index, reduction, result)
        if loss is not None:
            return loss, result
    pb = _prepare(
        logits,
        target,
        axis,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        "softmax_cross_entropy_with_grad",
    )
    result, view, buffer = _gradient_buffer(pb, out)
    if pb.reduction != "none" and buffer is None and _small(pb, view):
        return _small_reduced(pb, view), result
    part_a, part_z = _run(pb, view, *_scales(pb, 1.0, view))
    return _reduce(pb, part_a, part_z), _finish_gradient(pb, result, buffer)


for _fn in (softmax_cross_entropy, softmax_cross_entropy_backward, softmax_cross_entropy_with_grad):
    _fn.__doc__ += _KEYWORDS_DOC
