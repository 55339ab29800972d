"""Jacobian-vector products of softmax and log_softmax, batched over rows.

``mode`` selects the formula (``s`` is a row sum accumulated in float64):

* ``SOFTMAX`` (jvp and vjp):  ``y * (v - s)``,          ``s = sum(y * v)``
* ``LOG_JVP``:                ``v - s``,                ``s = sum(exp(logp) * v)``
* ``LOG_VJP``:                ``g - exp(logp) * s``,    ``s = sum(g)``
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._config import EXACT_MATH, FASTMATH, JIT
from ._math import (
    at,
    exp,
    like,
    line_offset,
    ordered_dot,
    ordered_sum,
    scaled_difference,
    stack_array,
    stream_copy,
    stream_fence,
)
from .reduce import ACC_RUN
from .schedule import chunk_of, driver, streams
from .softmax import STREAM_CHUNK, same_buffer

SOFTMAX = 0
LOG_JVP = 1
LOG_VJP = 2


@njit(fastmath=FASTMATH, inline="always", **JIT)
def row_sum(y, v, mode):
    """The row's sum of the mode's terms, as float64, in a fixed order:
    :func:`ordered_dot` and :func:`ordered_sum` over runs of ``ACC_RUN``
    (float32 lanes keep their accuracy on long rows); ``exp(logp) * v``
    terms are stored a run at a time for :func:`ordered_sum`."""
    s = 0.0
    if mode == LOG_VJP:
        for i0 in range(0, v.size, ACC_RUN):
            s += ordered_sum(v[i0 : i0 + ACC_RUN])
    elif mode == SOFTMAX and y.size <= ACC_RUN:  # one run: no slices (short rows)
        s = ordered_dot(y, v)
    elif mode == SOFTMAX:
        for i0 in range(0, v.size, ACC_RUN):
            s += ordered_dot(y[i0 : i0 + ACC_RUN], v[i0 : i0 + ACC_RUN])
    else:
        terms = stack_array(ACC_RUN, y[0])
        for i0 in range(0, y.size, ACC_RUN):
            i1 = min(i0 + ACC_RUN, y.size)
            # Over slices: indexed as terms[i - i0], y[i], this loop stayed
            # scalar (8192 x 1000 float32 log_softmax_jvp: 14.2 -> 4.2 ms).
            ys = y[i0:i1]
            vs = v[i0:i1]
            run = terms[: i1 - i0]
            for j in range(run.size):
                run[j] = exp(ys[j]) * vs[j]
            s += ordered_sum(run)
    return s


@njit(fastmath=EXACT_MATH, inline="always", **JIT)
def unit_strides(y, v, out):
    """Whether three 1-D arrays have unit strides."""
    return (
        y.strides[0] == y.itemsize and v.strides[0] == v.itemsize and out.strides[0] == out.itemsize
    )


@njit(fastmath=EXACT_MATH, inline="always", **JIT)
def _write_loop(y, v, out, s, mode):
    """The mode's write pass; ``s`` is the row's sum or, in the column
    kernels, an array of one per element (:func:`at`)."""
    if mode == SOFTMAX:
        for i in range(out.size):
            out[i] = y[i] * (v[i] - at(s, i))
    elif mode == LOG_JVP:
        for i in range(out.size):
            out[i] = v[i] - at(s, i)
    else:
        for i in range(out.size):
            out[i] = v[i] - exp(y[i]) * at(s, i)


@njit(fastmath=EXACT_MATH, inline="always", **JIT)
def write_row(y, v, out, s, mode):
    """The write pass; ``out`` may be ``y`` or ``v`` (one pointer then, so the
    loops vectorize).  :func:`scaled_difference` writes unit-stride softmax
    rows, but in place (its masked store at a row's end would hold up the
    next row's loads)."""
    in_v = same_buffer(v, out)
    in_y = same_buffer(y, out)
    if mode == SOFTMAX and unit_strides(y, v, out) and not (in_v or in_y):
        scaled_difference(y, v, out, s)
    elif in_v:
        _write_loop(y, out, out, s, mode)
    elif in_y:
        _write_loop(out, v, out, s, mode)
    else:
        _write_loop(y, v, out, s, mode)


@njit(fastmath=EXACT_MATH, **JIT)
def write_row_to(y, v, out, s, mode, stream):
    """:func:`write_row`, or with ``stream`` into a third unit-stride array by
    streaming stores from a stack buffer (as ``softmax.write_row_streamed``:
    the output's lines are not read before they are written).  The caller
    runs :func:`stream_fence` after its rows."""
    if not stream or same_buffer(v, out) or same_buffer(y, out) or not unit_strides(y, v, out):
        write_row(y, v, out, s, mode)
        return
    n = out.size
    head = line_offset(out)
    _write_loop(y[:head], v[:head], out[:head], s, mode)
    buf = stack_array(STREAM_CHUNK, s)
    for i0 in range(head, n, STREAM_CHUNK):
        i1 = min(i0 + STREAM_CHUNK, n)
        seg = buf[: i1 - i0]
        _write_loop(y[i0:i1], v[i0:i1], seg, s, mode)
        stream_copy(seg, out[i0:i1])


@njit(fastmath=EXACT_MATH, **JIT)
def write_row_per_column(y, v, out, s, mode):
    """:func:`write_row` with a sum per element (column kernels)."""
    if same_buffer(v, out):
        _write_loop(y, out, out, s, mode)
    elif same_buffer(y, out):
        _write_loop(out, v, out, s, mode)
    else:
        _write_loop(y, v, out, s, mode)


@njit(fastmath=EXACT_MATH, **JIT)
def write_row_per_column_to(y, v, out, s, mode, stream):
    """:func:`write_row_per_column`, or with ``stream`` by streaming stores as
    :func:`write_row_to` writes."""
    if not stream or same_buffer(v, out) or same_buffer(y, out):
        write_row_per_column(y, v, out, s, mode)
        return
    n = out.size
    head = line_offset(out)
    _write_loop(y[:head], v[:head], out[:head], s[:head], mode)
    buf = stack_array(STREAM_CHUNK, s[0])
    for i0 in range(head, n, STREAM_CHUNK):
        i1 = min(i0 + STREAM_CHUNK, n)
        seg = buf[: i1 - i0]
        _write_loop(y[i0:i1], v[i0:i1], seg, s[i0:i1], mode)
        stream_copy(seg, out[i0:i1])


@driver
def jvp_rows(y, v, out, mode):
    if streams(out):
        for r in prange(out.shape[0]):
            s = row_sum(y[r], v[r], mode)
            write_row_to(y[r], v[r], out[r], like(s, out[r, 0]), mode, True)
            stream_fence()
        return
    if mode == SOFTMAX and out.shape[1] <= ACC_RUN:
        # row_sum's branch for these rows, in a loop of its own: in the loop
        # below, 64 x 100 float32 took 24.8-26.3 ns a row against 21.6-22.2.
        for r in prange(out.shape[0]):
            s = ordered_dot(y[r], v[r])
            write_row(y[r], v[r], out[r], like(s, out[r, 0]), SOFTMAX)
        return
    for r in prange(out.shape[0]):  # write_row inlined: small rows pay no call
        s = row_sum(y[r], v[r], mode)
        write_row(y[r], v[r], out[r], like(s, out[r, 0]), mode)


@driver
def jvp_cols(y, v, out, mode, n_chunks, parts, s):
    """Reduction along axis 0 of views whose rows are contiguous: rows split in
    chunks over the threads (sequential reads), partial sums merged in order,
    SIMD across columns.  Scratch is passed in (``parts``: float64 zeros of
    ``(n_chunks, n_cols)``; ``s``: the output's type), so the per-row views
    need no reference counting."""
    n, n_cols = out.shape
    for c in prange(n_chunks):
        sums = parts[c]
        for i in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            yi = y[i]
            vi = v[i]
            if mode == SOFTMAX:
                for j in range(n_cols):
                    sums[j] += np.float64(yi[j] * vi[j])
            elif mode == LOG_JVP:
                for j in range(n_cols):
                    sums[j] += np.float64(exp(yi[j]) * vi[j])
            else:
                for j in range(n_cols):
                    sums[j] += np.float64(vi[j])
    for j in range(n_cols):
        total = 0.0
        for c in range(n_chunks):
            total += parts[c, j]
        s[j] = total
    stream = streams(out)
    for c in prange(n_chunks):
        for i in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            write_row_per_column_to(y[i], v[i], out[i], s, mode, stream)
        stream_fence()


@driver(allocates=True)
def jvp_rows_split(y, v, out, mode, chunk):
    """Few long rows, each split into chunks over all threads: chunk sums
    merged in order (deterministic), then a parallel write pass."""
    n_rows, n_cols = out.shape
    n_chunks = (n_cols + chunk - 1) // chunk
    parts = np.empty((n_rows, n_chunks), np.float64)
    for t in prange(n_rows * n_chunks):
        r, lo, hi = chunk_of(t, n_chunks, chunk, n_cols)
        parts.flat[t] = row_sum(y[r, lo:hi], v[r, lo:hi], mode)
    sums = np.empty(n_rows, out.dtype)
    for r in range(n_rows):
        s = 0.0
        for c in range(n_chunks):
            s += parts[r, c]
        sums[r] = s
    stream = streams(out)
    for t in prange(n_rows * n_chunks):
        r, lo, hi = chunk_of(t, n_chunks, chunk, n_cols)
        write_row_to(y[r, lo:hi], v[r, lo:hi], out[r, lo:hi], sums[r], mode, stream)
        stream_fence()
