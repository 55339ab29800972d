"""softmax / log_softmax / logsumexp kernels.

Every driver takes 2-D views.  ``rows`` drivers reduce along the last axis
(``x[r]`` is one row); ``cols`` drivers reduce along the first axis of a view
whose last axis is the contiguous one (SIMD runs across the columns).
``log`` selects log_softmax instead of softmax; ``scale`` is 1/temperature.

Non-finite rows need no branch of their own: :func:`finish` turns the row
statistics into a shift and factor that reproduce SciPy's NaN/±inf results
through the ordinary write pass, which also keeps ``out is x`` correct.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .._config import EXACT_MATH, FASTMATH, JIT, ORDERED_MATH
from ._math import (
    at,
    column_exp_add,
    column_terms_add,
    data_address,
    exp,
    exp_bound,
    exp_bounded,
    exp_bounded_store,
    exp_nonpos,
    exp_store_sum_max,
    exp_stored,
    exp_term,
    exp_terms_store,
    exp_write,
    flat_view,
    fmaximum,
    is_c_contiguous,
    is_single,
    like,
    line_offset,
    log_pos,
    magnitude_key,
    max_key,
    ordered_sum,
    prefetch,
    prefetch_for_write,
    prefetch_to_l2,
    shifted_row,
    stack_array,
    stream_copy,
    stream_fence,
    table_exp_type,
)
from .reduce import (
    ACC_RUN,
    BLOCK,
    FAR_PART_BYTES,
    NEAR_ZERO,
    far_rows,
    logsumexp_of_row,
    lse_of_stats,
    merge_max_sumexp,
    row_max,
    row_max_sumexp,
    row_sumexp_next_max,
    sumexp_next_max,
    sumexp_runs_next_max,
)
from .schedule import SMALL_ROWS, block_bounds, chunk_of, column_tile, driver, streams

#: The most terms of one float32 column sum (in row order) in the column kernels.
COLUMN_TERMS = 1024


@njit(fastmath=FASTMATH, **JIT)
def finish(m, total, log):
    """Shift and factor for the write pass from a row's max ``m`` and sum of exp.

    softmax: ``exp(v - shift) * factor``; log_softmax: ``(v - shift) - factor``.
    A NaN or infinite max gives SciPy's answers: all NaN, except log_softmax
    with a +inf max, which is NaN at the +inf entries and -inf elsewhere.
    (The NaN factor makes softmax NaN whatever ``exp_nonpos(NaN)`` returns.)
    """
    if math.isfinite(m):
        if log:
            return m, like(math.log(total), m)
        return m, like(1.0 / total, m)
    if log and m == np.inf:
        return m, like(0.0, m)
    return like(math.nan, m), like(math.nan, m)


@njit(fastmath=FASTMATH, **JIT)
def same_buffer(x, out):
    """Whether ``out`` is ``x`` (in place).

    Elementwise loops then get one array for both arguments: with two
    pointers that are equal, LLVM's runtime overlap check fails and it runs
    the scalar loop (measured 4x slower), while one pointer vectorizes.
    """
    return data_address(x) == data_address(out)


@njit(fastmath=EXACT_MATH, inline="always", **JIT)
def _exp_write_exact(x, out, scale, shift, factor):
    """``out = exp(x*scale - shift) * factor`` by :func:`exp_stored`;
    ``shift`` and ``factor`` are scalars or per-element arrays (:func:`at`)."""
    for i in range(x.size):
        out[i] = exp_stored(x[i] * scale - at(shift, i)) * at(factor, i)


@njit(fastmath=EXACT_MATH, inline="always", **JIT)
def _exp_write_bounded(x, out, scale, shift, factor):
    """:func:`_exp_write_exact` by :func:`exp_bounded`, and whether some
    ``x*scale - shift`` is below minus :func:`exp_bound` (``out`` is then
    unspecified).  A NaN argument does not count: it comes with a NaN
    shift, whose NaN factor makes the answer NaN whatever was stored."""
    lo = -exp_bound(x)
    under = False
    for i in range(x.size):
        v = x[i] * scale - at(shift, i)
        under |= v < lo
        out[i] = exp_bounded(v) * at(factor, i)
    return under


@njit(fastmath=EXACT_MATH, inline="always", **JIT)
def _exp_write_loops(x, out, scale, shift, factor):
    """``out = exp(x*scale - shift) * factor``.  Into another array, by
    :func:`exp_bounded`, testing the bound as it goes (as in logits whose
    range is under 80 in float32 or 700 in float64), and again by
    :func:`exp_stored` if some argument is past it: softmax of 1 x 8M and
    16 x 500K float64, one thread, same-process pairs, 0.91 of the time
    (0.93 on two threads).  In place (``x`` is ``out``: a row that fits in
    cache, the column kernels), by :func:`exp_stored`: the test would take
    a pass of its own first (axis 0 in place, 8192 x 1000: 1.03-1.05 of
    the time).  Long rows in place go through a stack buffer (see
    :func:`write_row`), into another array."""
    if same_buffer(x, out):
        _exp_write_exact(out, out, scale, shift, factor)
    elif _exp_write_bounded(x, out, scale, shift, factor):
        _exp_write_exact(x, out, scale, shift, factor)


def _exp_write(x, out, scale, shift, factor):  # pragma: no cover - replaced by the overload
    out[:] = np.exp(x * scale - shift) * factor


@overload(_exp_write)
def _exp_write_overload(x, out, scale, shift, factor):
    """``out = exp(x*scale - shift) * factor``.  A row's write (``shift`` and
    ``factor`` scalars) of unit stride on AVX-512 by the table's exponential
    (:func:`exp_write`, in place or not; arguments below its range lane by
    lane by :func:`exp_stored`).  Softmax of 128 x 262144 float64,
    same-process rounds: 2.73 -> 2.45 and 3.95 -> 3.65 read floors in two
    runs, equal in a third; 1 x 32M 3.93 -> 3.82; 2048 x 32000 no change.
    Others by :func:`_exp_write_loops`: along axis 0 (a shift and factor per
    column) the table's loop measured slower, 4.84 -> 5.15.  Not inlined:
    inlined into the column drivers' parallel loops Numba warned of
    variables out of scope."""
    dt = getattr(x, "dtype", None)
    if table_exp_type(x) and table_exp_type(out) and out.dtype == dt and shift == factor == dt:
        return lambda x, out, scale, shift, factor: exp_write(x, out, scale, shift, factor)
    return lambda x, out, scale, shift, factor: _exp_write_loops(x, out, scale, shift, factor)


@njit(fastmath=EXACT_MATH, inline="always", **JIT)
def _write_loop(x, out, scale, shift, factor, log):
    """The write pass of a row: log_softmax ``(x*scale - shift) - factor`` or
    softmax :func:`_exp_write`; ``shift`` and ``factor`` are the row's scalars
    or, in the column kernels, arrays of one per element (:func:`at`)."""
    if log:
        for i in range(x.size):
            out[i] = (x[i] * scale - at(shift, i)) - at(factor, i)
    else:
        _exp_write(x, out, scale, shift, factor)


#: Elements per chunk of :func:`write_row` on long rows, and how many
#: chunks ahead it prefetches.
WRITE_CHUNK = 512
WRITE_AHEAD = 2
#: Elements per chunk of :func:`write_row`'s softmax in place on long rows.
IN_PLACE_CHUNK = 8192


@njit(fastmath=EXACT_MATH, inline="always", **JIT)
def prefetch_chunk_ahead(arr, i0, write):
    """Prefetch the chunk :data:`WRITE_AHEAD` chunks after the one at ``i0``
    of a long row (for writing if ``write``), if the row has it."""
    j0 = i0 + WRITE_AHEAD * WRITE_CHUNK
    if j0 < arr.size:
        j1 = min(j0 + WRITE_CHUNK, arr.size)
        if write:
            prefetch_for_write(arr[j0:j1])
        else:
            prefetch(arr[j0:j1])


@njit(fastmath=EXACT_MATH, **JIT)
def write_row(x, out, scale, shift, factor, log):
    """``out = softmax or log_softmax term of x`` given the row's shift and factor.

    log_softmax rows longer than a few chunks go chunk by chunk, prefetching
    the input and (for writing) the output :data:`WRITE_AHEAD` chunks
    ahead: the hardware prefetchers stop at every page boundary, and a store
    to a line not in cache waits for the line to be read first (log_softmax
    of 1 x 32M float32, 2 threads: 1.68 -> 1.33 copy floors).  The softmax
    write, with an exp per element, ran slower in chunks (float64 in cache:
    1.75 -> 2.2 cycles per element) and is left whole."""
    in_place = same_buffer(x, out)
    n = x.size
    if in_place and not log and n > 4 * WRITE_CHUNK:
        # In place, a long row's exponentials go to a stack buffer a chunk at
        # a time and are copied back: float64 over memory, 33 -> 15 ms for
        # 128 MiB on one thread (the exp loop reading and writing the same
        # lines ran at half the speed of one writing another array).
        buf = stack_array(IN_PLACE_CHUNK, scale)
        for i0 in range(0, n, IN_PLACE_CHUNK):
            seg = out[i0 : min(i0 + IN_PLACE_CHUNK, n)]
            _write_loop(seg, buf[: seg.size], scale, shift, factor, False)
            for i in range(seg.size):
                seg[i] = buf[i]
        return
    if n <= 4 * WRITE_CHUNK or not log:
        if in_place:
            _write_loop(out, out, scale, shift, factor, log)
        else:
            _write_loop(x, out, scale, shift, factor, log)
        return
    for i0 in range(0, n, WRITE_CHUNK):
        i1 = min(i0 + WRITE_CHUNK, n)
        prefetch_chunk_ahead(x, i0, False)
        if not in_place:
            prefetch_chunk_ahead(out, i0, True)
        if in_place:
            _write_loop(out[i0:i1], out[i0:i1], scale, shift, factor, log)
        else:
            _write_loop(x[i0:i1], out[i0:i1], scale, shift, factor, log)


#: Elements per chunk of :func:`write_row_streamed` (its stack buffer).
STREAM_CHUNK = 512


@njit(fastmath=EXACT_MATH, **JIT)
def write_row_streamed(x, out, scale, shift, factor, log):
    """:func:`write_row` into another array (``out`` is not ``x``) by streaming
    stores: each chunk goes to a stack buffer, then to ``out`` by
    :func:`stream_copy`, so the output's lines are not read before they are
    written (a plain store first reads the line: a third of a copy's memory
    traffic).  For outputs far larger than the caches, which they leave.
    log_softmax's loop, with no exponentials to hide the input's reads,
    prefetches the input :data:`WRITE_AHEAD` chunks ahead, as
    :func:`write_row` does (split write pass of 1 x 32M, two threads,
    same-process rounds, copy floors: float32 0.92 -> 0.76, float64 0.99 ->
    0.81; softmax's: 0.77 and 0.76)."""
    n = out.size
    head = line_offset(out)
    _write_loop(x[:head], out[:head], scale, shift, factor, log)
    buf = stack_array(STREAM_CHUNK, scale)
    for i0 in range(head, n, STREAM_CHUNK):
        i1 = min(i0 + STREAM_CHUNK, n)
        if log:
            prefetch_chunk_ahead(x, i0, False)
        seg = buf[: i1 - i0]
        _write_loop(x[i0:i1], seg, scale, shift, factor, log)
        stream_copy(seg, out[i0:i1])
    stream_fence()


@njit(fastmath=EXACT_MATH, **JIT)
def write_row_to(x, out, scale, shift, factor, log, stream):
    """:func:`write_row`, or with ``stream`` into another array
    :func:`write_row_streamed`."""
    if stream and not same_buffer(x, out):
        write_row_streamed(x, out, scale, shift, factor, log)
    else:
        write_row(x, out, scale, shift, factor, log)


@njit(fastmath=EXACT_MATH, **JIT)
def write_row_per_column(x, out, scale, shift, factor, log):
    """:func:`write_row` with a shift and factor per element (column kernels)."""
    if same_buffer(x, out):
        _write_loop(out, out, scale, shift, factor, log)
    else:
        _write_loop(x, out, scale, shift, factor, log)


@njit(fastmath=EXACT_MATH, **JIT)
def write_row_per_column_to(x, out, scale, shift, factor, log, stream):
    """:func:`write_row_per_column`, or with ``stream`` into another array by
    streaming stores as :func:`write_row_streamed` writes (the caller runs
    :func:`stream_fence` after its rows).  Along axis 0 of 32768 x 1000,
    streaming took the log_softmax write pass from 1.17 to 0.86 copy floors
    in float64 and from 0.98 to 0.73 in float32.  The softmax write, whose
    exponentials keep the loop busier, first measured slower streamed (on a
    Zen 4 machine: 1.20 -> 1.34, float64); on the Zen 5 one the whole softmax
    along axis 0 of 32768 x 1000 float32 went from 1.58-1.71 to 1.42-1.56
    copy floors (three same-process runs), float64 1.48 -> 1.47."""
    if not stream or same_buffer(x, out):
        write_row_per_column(x, out, scale, shift, factor, log)
        return
    n = out.size
    head = line_offset(out)
    _write_loop(x[:head], out[:head], scale, shift[:head], factor[:head], log)
    buf = stack_array(STREAM_CHUNK, scale)
    for i0 in range(head, n, STREAM_CHUNK):
        i1 = min(i0 + STREAM_CHUNK, n)
        seg = buf[: i1 - i0]
        _write_loop(x[i0:i1], seg, scale, shift[i0:i1], factor[i0:i1], log)
        stream_copy(seg, out[i0:i1])


#: The column kernels' write pass in place prefetches the row about this many
#: bytes ahead, for rows up to :data:`IN_PLACE_ROW_BYTES`.
IN_PLACE_AHEAD_BYTES = 1 << 14
IN_PLACE_ROW_BYTES = 1 << 16


@njit(fastmath=EXACT_MATH, inline="always", **JIT)
def prefetch_in_place_ahead(x, out, i, i1, c0, c1):
    """In a column write pass over rows ``i < i1`` of ``x`` (2-D), tile
    ``c0:c1`` (:func:`schedule.column_tile`), prefetch that tile's part of the
    row :data:`IN_PLACE_AHEAD_BYTES` of tile parts after row ``i`` when
    ``out`` is ``x``.
    Over memory, the write pass in place ran at half the speed of one into
    another array without it, and at the same speed or better with it (the
    CE gradient in place along axis 0, 32768 x 1000: float64 2.00 -> 1.00
    copy floors, float32 0.85 -> 0.63; 8 to 64 KiB ahead measured alike).
    Into another array it was slower with it (float64 1.22 -> 1.35)."""
    row_bytes = (c1 - c0) * x.itemsize
    if row_bytes <= IN_PLACE_ROW_BYTES and same_buffer(x, out):
        k = i + (IN_PLACE_AHEAD_BYTES + row_bytes - 1) // row_bytes
        if k < i1:
            prefetch(x[k, c0:c1])


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _exp_store_run(x, out, nxt, scale, m, m_next):
    """``out = exp(x*scale - m)`` by :func:`exp_stored` (any ``x*scale - m``
    up to 0) and the max of ``m_next`` and ``nxt``."""
    for i in range(x.size):
        out[i] = exp_stored(x[i] * scale - m)
        m_next = fmaximum(m_next, nxt[i])
    return m_next


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _exp_store_bounded_run(x, out, nxt, scale, m, m_next):
    """:func:`_exp_store_run` by :func:`exp_bounded`, and whether some
    ``x*scale - m`` is below minus :func:`exp_bound` (``out`` is then
    unspecified).  A NaN argument does not count: it comes with a NaN max,
    whose rows the callers answer whatever was stored."""
    lo = -exp_bound(m)
    under = False
    for i in range(x.size):
        v = x[i] * scale - m
        under |= v < lo
        out[i] = exp_bounded(v)
        m_next = fmaximum(m_next, nxt[i])
    return under, m_next


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _below_bound(x, scale, m):
    """Whether some ``x*scale - m`` is below minus :func:`exp_bound`."""
    lo = -exp_bound(x)
    under = False
    for i in range(x.size):
        under |= x[i] * scale - m < lo
    return under


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _exp_store_part(x, out, nxt, scale, m, m_next, in_place):
    """``out = exp(x*scale - m)`` and the max of ``m_next`` and ``nxt``: by
    :func:`exp_bounded` (no clamp or select: float32 0.85, float64 0.74 of
    the time of the exp-store loop, rows of 1000 in L1) where every
    argument is within its bound, as in logits whose range is under 80
    (float32) or 700 (float64), else by :func:`exp_stored`.  Out of place,
    one loop tests the bound as it goes, and a run that fails is done again;
    in place (``x`` is ``out``), the bound is tested first."""
    if in_place:
        if _below_bound(x, scale, m):
            return _exp_store_run(out, out, nxt, scale, m, m_next)
        _, m_next = _exp_store_bounded_run(out, out, nxt, scale, m, m_next)
        return m_next
    under, m_bounded = _exp_store_bounded_run(x, out, nxt, scale, m, m_next)
    if under:
        return _exp_store_run(x, out, nxt, scale, m, m_next)
    return m_bounded


def exp_store_sum_next_max(x, out, nxt, scale, m, in_place):  # pragma: no cover - the overload
    out[:] = np.exp(x * scale - m)
    return float(out.sum()), nxt.max()


@overload(exp_store_sum_next_max, inline="always")
def _exp_store_sum_next_max_overload(x, out, nxt, scale, m, in_place):
    """``out = exp(x*scale - m)``, its float64 sum, and the max of the next row.

    Reading the next row (a DRAM stream) in the loop that computes this row's
    exponentials (from cache) overlaps memory traffic with arithmetic.  Rows
    of unit stride on AVX-512 by :func:`exp_store_sum_max` (the table's
    exponentials, stored and summed in one loop), per run of
    :data:`ACC_RUN`, runs added in float64.  Against the loops below (a
    polynomial exponential, then a pass of :func:`ordered_sum`), softmax of
    16 x 1000 in cache on one thread took 0.319 -> 0.277 ns an element in
    float32 and 0.791 -> 0.607 in float64; 1024 x 1000 on two threads
    (same-process rounds) 0.210 -> 0.177 and 0.415 -> 0.336, the fused
    cross-entropy in place 0.214 -> 0.194 and 0.472 -> 0.407.  Others by
    :func:`_exp_store_sum_next_max_loops`."""
    if table_exp_type(x) and table_exp_type(out) and table_exp_type(nxt):
        return lambda x, out, nxt, scale, m, in_place: _table_exp_store_sum(x, out, nxt, scale, m)
    return lambda x, out, nxt, scale, m, in_place: _exp_store_sum_next_max_loops(
        x, out, nxt, scale, m, in_place
    )


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _table_exp_store_sum(x, out, nxt, scale, m):
    """:func:`exp_store_sum_next_max` by :func:`exp_store_sum_max`, per run."""
    m_next = nxt[0]
    total = 0.0
    n = x.size
    for i0 in range(0, n, ACC_RUN):
        i1 = min(i0 + ACC_RUN, n)
        part, top = exp_store_sum_max(x[i0:i1], out[i0:i1], nxt[i0:i1], scale, m)
        total += part
        m_next = fmaximum(m_next, top)
    return total, m_next


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _exp_store_sum_next_max_loops(x, out, nxt, scale, m, in_place):
    """:func:`exp_store_sum_next_max` by loops.  The sum is taken as in
    :func:`reduce.sumexp_next_max`, per run of stored exponentials by
    :func:`ordered_sum` (in a fixed order: the exponentials can take
    Horner's scheme, see :func:`exp_stored`).  In place, the loop gets one
    array for ``x`` and ``out`` (equal pointers in two arrays would not
    vectorize); the last row of a block passes itself as ``nxt`` (its "next"
    max is not needed), and then one array serves all three.
    """
    alone = in_place and same_buffer(x, nxt)
    total = 0.0
    m_next = nxt[0]
    n = x.size
    for i0 in range(0, n, ACC_RUN):
        i1 = min(i0 + ACC_RUN, n)
        o = out[i0:i1]
        if alone:
            m_next = _exp_store_part(o, o, o, scale, m, m_next, True)
        elif in_place:
            m_next = _exp_store_part(o, o, nxt[i0:i1], scale, m, m_next, True)
        else:
            m_next = _exp_store_part(x[i0:i1], o, nxt[i0:i1], scale, m, m_next, False)
        total += ordered_sum(o)
    return total, m_next


@njit(fastmath=ORDERED_MATH, inline="always", **JIT)
def _log_write_exp_loop(x, out, scale, shift, lsum, y, nxt, m, m_next, buf):
    for i in range(x.size):
        out[i] = (x[i] * scale - shift) - lsum
        buf[i] = exp_term(y[i] * scale - m)
        m_next = fmaximum(m_next, nxt[i])
    return m_next


@njit(fastmath=ORDERED_MATH, **JIT)
def _log_write_exp_run(x, out, scale, shift, lsum, y, nxt, m, m_next, buf):
    return _log_write_exp_loop(x, out, scale, shift, lsum, y, nxt, m, m_next, buf)


@njit(fastmath=ORDERED_MATH, **JIT)
def _log_write_exp_run_in_place(out, scale, shift, lsum, y, nxt, m, m_next, buf):
    return _log_write_exp_loop(out, out, scale, shift, lsum, y, nxt, m, m_next, buf)


@njit(fastmath=FASTMATH, inline="always", **JIT)
def log_write_sumexp_next_max(x, out, scale, shift, lsum, y, nxt, m, in_place):
    """Three rows in one loop: ``out = (x*scale - shift) - lsum`` (a row's
    log_softmax), the sum of ``exp(y*scale - m)`` (the next row's) and the max
    of ``nxt`` (the one after), so the writes of one row stream out while the
    next row's exponentials are computed.  Sums as in
    :func:`reduce.sumexp_next_max`, by :func:`ordered_sum` over runs.

    Plain stores: writing each run to a stack buffer and on by
    :func:`stream_copy` (as the long rows' write does) made log_softmax over
    memory slower (two threads, copy floors: 32768 x 1000 float64 1.30 ->
    1.03 and 2048 x 32000 float32 1.28 -> 1.02 without it), and rows of
    arrays that large which are longer than ``LOG_CACHED_ROW_BYTES`` take
    the long rows' passes instead (see ``schedule``)."""
    buf = stack_array(ACC_RUN, m)
    total = 0.0
    m_next = nxt[0]
    n = x.size
    for i0 in range(0, n, ACC_RUN):
        i1 = min(i0 + ACC_RUN, n)
        o = out[i0:i1]
        if in_place:
            m_next = _log_write_exp_run_in_place(
                o, scale, shift, lsum, y[i0:i1], nxt[i0:i1], m, m_next, buf
            )
        else:
            m_next = _log_write_exp_run(
                x[i0:i1], o, scale, shift, lsum, y[i0:i1], nxt[i0:i1], m, m_next, buf
            )
        total += ordered_sum(buf[: i1 - i0])
    return total, m_next


@njit(fastmath=FASTMATH, **JIT)
def softmax_rows_cached_block(x, out, scale, log, r0, r1):
    """softmax / log_softmax of rows ``r0:r1`` that fit in cache, pipelined:
    each row's exp pass also reads the next row's max (one exp per element)."""
    in_place = same_buffer(x, out)
    m_next = row_max(x[r0])
    if log:
        m = m_next * scale
        # As the write passes sum the rows after it: a row's bits must not
        # depend on whether it begins a block (on the thread count).
        total, m_next = sumexp_runs_next_max(x[r0], x[min(r0 + 1, r1 - 1)], scale, m)
        for r in range(r0, r1 - 1):
            shift, lsum = finish(m, total, True)
            m = m_next * scale
            total, m_next = log_write_sumexp_next_max(
                x[r],
                out[r],
                scale,
                shift,
                lsum,
                x[r + 1],
                x[min(r + 2, r1 - 1)],
                m,
                in_place,
            )
        shift, lsum = finish(m, total, True)
        write_row(x[r1 - 1], out[r1 - 1], scale, shift, lsum, True)
        return
    for r in range(r0, r1):
        nxt = x[min(r + 1, r1 - 1)]
        m = m_next * scale
        orow = out[r]
        total, m_next = exp_store_sum_next_max(x[r], orow, nxt, scale, m, in_place)
        shift, factor = finish(m, total, False)
        if shift != m:  # non-finite max: the answer is NaN whatever was stored
            write_row(orow, orow, scale, shift, factor, False)
            continue
        for i in range(orow.size):
            orow[i] *= factor


@njit(fastmath=FASTMATH, **JIT)
def within_bound(xf, scale):
    """Whether every ``|xf * scale|`` is within :func:`exp_bounded`'s bound
    (False for NaN)."""
    worst = magnitude_key(like(0.0, scale))
    for k in range(xf.size):
        worst = max_key(worst, magnitude_key(xf[k] * scale))
    return is_within_bound(worst, scale)


@njit(fastmath=FASTMATH, inline="always", **JIT)
def is_within_bound(worst, scale):
    """Whether :func:`magnitude_key` ``worst`` is within :func:`exp_bound` (not NaN)."""
    return worst <= magnitude_key(exp_bound(scale))


def exp_bounded_worst(xf, scale, of, worst):  # pragma: no cover - replaced by the overload
    of[:] = np.exp(xf * scale)
    return max(worst, np.abs(xf * scale).max())


@overload(exp_bounded_worst, inline="always")
def _exp_bounded_worst_overload(xf, scale, of, worst):
    """``of = exp_bounded(xf * scale)`` (``of`` not ``xf``) and, in the same
    loop, the max of ``worst`` and the :func:`magnitude_key` of every
    ``xf * scale``: one pass where :func:`within_bound` and then the
    exponentials take two; ``of`` is meaningless unless the result
    :func:`is_within_bound`.  Arrays of unit stride on AVX-512 take the
    table's exponentials (:func:`exp_bounded_store`)."""
    if table_exp_type(xf) and table_exp_type(of):
        return lambda xf, scale, of, worst: max_key(worst, exp_bounded_store(xf, scale, of))
    return lambda xf, scale, of, worst: _exp_bounded_worst_loop(xf, scale, of, worst)


def exp_terms_worst(xf, scale, of, worst):  # pragma: no cover - replaced by the overload
    of[:] = np.exp(xf * scale)
    return worst


@overload(exp_terms_worst, inline="always")
def _exp_terms_worst_overload(xf, scale, of, worst):
    """``of = exp(xf * scale)`` as terms of sums, and ``worst``, for sums
    that are right if :func:`is_within_bound` (``worst``) and if each is
    finite and at least :data:`TERMS_SUM_MIN`: arrays of unit stride on
    AVX-512 by :func:`exp_terms_store`, which needs no bound (``worst``
    unchanged), others as :func:`exp_bounded_worst`."""
    if table_exp_type(xf) and table_exp_type(of):

        def impl(xf, scale, of, worst):
            exp_terms_store(xf, scale, of)
            return worst

        return impl
    return lambda xf, scale, of, worst: _exp_bounded_worst_loop(xf, scale, of, worst)


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _exp_bounded_worst_loop(xf, scale, of, worst):
    for k in range(xf.size):
        v = xf[k] * scale
        worst = max_key(worst, magnitude_key(v))
        of[k] = exp_bounded(v)
    return worst


@njit(fastmath=FASTMATH, inline="always", **JIT)
def exp_bounded_within(xf, scale, of):
    """:func:`exp_bounded_worst` from nothing: True if every ``|xf * scale|``
    is within the bound (``of`` then holds the exponentials)."""
    worst = exp_bounded_worst(xf, scale, of, magnitude_key(like(0.0, scale)))
    return is_within_bound(worst, scale)


@njit(fastmath=FASTMATH, **JIT)
def exp_within_bound(xf, of, scale):
    """``of = exp_bounded(xf * scale)`` if every ``|xf * scale|`` is within
    :func:`exp_bound` (True), else False.  ``of`` may be ``xf``: in place
    the bound is tested first and ``of`` is left as it was on False;
    otherwise one loop does both and ``of`` is unspecified on False."""
    if same_buffer(xf, of):
        if not within_bound(xf, scale):
            return False
        for k in range(of.size):
            of[k] = exp_bounded(of[k] * scale)
        return True
    return exp_bounded_within(xf, scale, of)


@njit(fastmath=FASTMATH, **JIT)
def softmax_small_direct(xf, of, n_cols, scale, log, total):
    """softmax / log_softmax of C-contiguous rows of ``n_cols`` that fit in
    cache, as flat arrays (``of`` may be ``xf``), without a max pass, where
    every ``|v|`` is within :func:`exp_bounded`'s bound (nothing then
    overflows or leaves the normal range, as in the short-row kernels): one
    flat loop of ``exp(v)`` into ``of``, then per row its sum and the
    scaling, or the log of the sum (in float64, split into two floats)
    taken off ``v``.  Measured on 64 x 100 float32: 4.4 -> 2.5 us.  False
    (``of`` unspecified) if the bound does not hold, for rows of one element
    (exactly 1 or 0 on the shifted path), for a float64 log_softmax (whose
    ``v - log(sum)`` would lose the low bits that ``v - max`` keeps) and
    for a log_softmax in place (``of`` holds the exponentials before ``xf``
    is read again): :func:`softmax_rows_small` goes on then."""
    if n_cols < 2 or (log and (not is_single(xf) or same_buffer(xf, of))):
        return False
    if not exp_within_bound(xf, of, scale):
        return False
    n_rows = total.size
    for r in range(n_rows):
        total[r] = ordered_sum(of[r * n_cols : (r + 1) * n_cols])
    if log:
        for r in range(n_rows):  # vectorized
            total[r] = log_pos(total[r])
    for r in range(n_rows):
        orow = of[r * n_cols : (r + 1) * n_cols]
        if log:
            hi = like(total[r], scale)
            lo = like(total[r] - np.float64(hi), scale)
            # (v - hi) - lo, in this order: hi + lo is the row's log-sum-exp
            shifted_row(xf[r * n_cols : (r + 1) * n_cols], orow, scale, hi, lo)
        else:  # a loop: a masked store at a row's end would block the next row's loads
            factor = like(1.0 / total[r], scale)
            for i in range(orow.size):
                orow[i] *= factor
    return True


#: Elements of the small kernels' stack buffer of exponentials.
SMALL_CHUNK = 4096


@njit(fastmath=FASTMATH, **JIT)
def small_rows_stats(x, scale, shift, total):
    """Each row's shift (0, or its max) into ``shift`` and its sum of
    ``exp(x * scale - shift)`` into ``total`` (float64; NaN or inf sums
    where the max is not finite) for at most :data:`SMALL_ROWS` rows, in
    passes over all rows: rows are independent within a pass, so the CPU
    overlaps them, which the pipelined kernels' row-to-row dependency
    prevents (as in :func:`softmax_rows_small`).  A C-contiguous input whose
    values are all within the exp bound skips the maxima: its exponentials
    are taken unshifted (the same rounding as shifted sums; see
    :func:`exp_within_bound`), in one loop over :data:`SMALL_CHUNK` elements
    of whole rows at a time, then summed per row.  Returns whether it did
    (the shifts then are 0)."""
    n, n_cols = x.shape
    one = like(1.0, x[0, 0])
    direct = n_cols <= ACC_RUN and is_c_contiguous(x)
    if direct:
        xf = flat_view(x)
        buf = stack_array(SMALL_CHUNK, one)
        rows = max(1, SMALL_CHUNK // n_cols)
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            seg = xf[r0 * n_cols : r1 * n_cols]
            if not exp_bounded_within(seg, scale, buf):
                direct = False
                break
            for r in range(r0, r1):
                k0 = (r - r0) * n_cols
                shift[r] = 0.0
                total[r] = ordered_sum(buf[k0 : k0 + n_cols])
    if not direct:
        for r in range(n):
            shift[r] = row_max(x[r]) * scale
        for r in range(n):
            row_total, _ = sumexp_next_max(x[r], x[r], scale, shift[r])
            total[r] = row_total
    return direct


@njit(fastmath=FASTMATH, inline="always", **JIT)
def small_rows_lse(x, scale, lse):
    """Each row's ``log(sum(exp(x * scale)))`` into ``lse`` (float64; a
    non-finite max passes through) from :func:`small_rows_stats`."""
    n = x.shape[0]
    shift = stack_array(SMALL_ROWS, like(1.0, x[0, 0]))[:n]
    total = stack_array(SMALL_ROWS, 0.0)[:n]
    if small_rows_stats(x, scale, shift, total):
        for r in range(n):
            lse[r] = log_pos(total[r])
    else:
        for r in range(n):
            lse[r] = lse_of_stats(shift[r], total[r])


@njit(fastmath=FASTMATH, **JIT)
def logsumexp_rows_small(x, scale, res):
    """:func:`logsumexp_rows` for inputs that fit in cache (at most
    :data:`SMALL_ROWS` rows) by :func:`small_rows_lse`; results near zero are
    refined by :func:`logsumexp_of_row`, from the row's max."""
    n = x.shape[0]
    lse = stack_array(SMALL_ROWS, 0.0)[:n]
    small_rows_lse(x, scale, lse)
    for r in range(n):
        v = lse[r]
        if abs(v) < NEAR_ZERO:
            m, total = row_max_sumexp(x[r], scale)
            v = logsumexp_of_row(x[r], scale, m, total)
        res[r] = v


@njit(fastmath=FASTMATH, **JIT)
def softmax_rows_small(x, out, scale, log):
    """softmax / log_softmax of at most :data:`SMALL_ROWS` rows that fit in
    cache, in three passes over all of them: the maxima, then exp and sum,
    then the factor.  Rows are independent within a pass, so the CPU overlaps
    them, which the pipelined kernel's row-to-row dependency prevents
    (measured 1.5-1.9x faster on rows of 100-128 elements).  The per-row
    scratch is on the stack: arrays allocated in the kernel would need
    Numba's reference counting, whose atomic count updates on every row view
    cost 4.4 of 9.5 us on 64 rows of 100, and two passed in from Python cost
    0.4 us."""
    n = x.shape[0]
    shift = stack_array(SMALL_ROWS, scale)[:n]
    total = stack_array(SMALL_ROWS, 0.0)[:n]
    if is_c_contiguous(x) and is_c_contiguous(out):
        n_cols = x.shape[1]
        if softmax_small_direct(flat_view(x), flat_view(out), n_cols, scale, log, total):
            return
    in_place = same_buffer(x, out)
    for r in range(n):
        shift[r] = row_max(x[r]) * scale
    for r in range(n):
        m = shift[r]
        if log:
            total[r], _ = sumexp_next_max(x[r], x[r], scale, m)
        else:
            total[r], _ = exp_store_sum_next_max(x[r], out[r], x[r], scale, m, in_place)
    for r in range(n):
        m = shift[r]
        s, factor = finish(m, total[r], log)
        orow = out[r]
        if log:
            write_row(x[r], orow, scale, s, factor, True)
        elif s != m:  # non-finite max: the answer is NaN whatever was stored
            write_row(orow, orow, scale, s, factor, False)
        else:
            for i in range(orow.size):
                orow[i] *= factor


@njit(fastmath=FASTMATH, **JIT)
def _softmax_row_long(x, out, scale, log, stream):
    m, total = row_max_sumexp(x, scale)
    shift, factor = finish(m, total, log)
    write_row_to(x, out, scale, shift, factor, log, stream)


@njit(fastmath=FASTMATH, **JIT)
def softmax_row_long(x, out, scale, log):
    """softmax / log_softmax of a row too long for cache: online stats, then write."""
    _softmax_row_long(x, out, scale, log, streams(out))


@driver
def softmax_rows(x, out, scale, log, cached, n_blocks):
    n_rows = x.shape[0]
    stream = streams(out)
    if not cached:
        for r in prange(n_rows):
            _softmax_row_long(x[r], out[r], scale, log, stream)
        return
    for b in prange(n_blocks):
        softmax_rows_cached_block(
            x, out, scale, log, b * n_rows // n_blocks, (b + 1) * n_rows // n_blocks
        )


@njit(fastmath=FASTMATH, **JIT)
def logsumexp_rows_block(x, scale, res, r0, r1):
    """:func:`logsumexp_rows` on rows ``r0:r1``, pipelined: each row's
    exponentials also read the next row's max.  The loop takes
    ``m + log(total)`` for every row; the rare rows near zero are refined
    by :func:`logsumexp_of_row` after it, and rows longer than a block go
    to :func:`logsumexp_long_rows`, each in a function of its own: with
    either in the loop's function its exponentials ran slower (32768 x
    1000 float64, same-process pairs in three processes, with float64 terms
    by Horner: 1.75 -> 1.37-1.55 read floors)."""
    far = far_rows(x)
    m_next = row_max(x[r0])
    for r in range(r0, r1):
        m = m_next * scale
        total, m_next = row_sumexp_next_max(x, r, r1, scale, m, far)
        res[r] = lse_of_stats(m, total)
    for r in range(r0, r1):
        if abs(res[r]) < NEAR_ZERO:
            m, total = row_max_sumexp(x[r], scale)
            res[r] = logsumexp_of_row(x[r], scale, m, total)


@njit(fastmath=FASTMATH, **JIT)
def logsumexp_long_rows(x, scale, res, r0, r1):
    """:func:`logsumexp_rows` on rows ``r0:r1`` longer than a block, each
    read once by :func:`row_max_sumexp`."""
    for r in range(r0, r1):
        m, total = row_max_sumexp(x[r], scale)
        res[r] = logsumexp_of_row(x[r], scale, m, total)


@driver
def logsumexp_rows(x, scale, res, n_blocks):
    n_rows, n_cols = x.shape
    for b in prange(n_blocks):
        r0, r1 = block_bounds(b, n_rows, n_blocks)
        if r1 > r0:
            if n_cols > BLOCK:
                logsumexp_long_rows(x, scale, res, r0, r1)
            else:
                logsumexp_rows_block(x, scale, res, r0, r1)


@driver(allocates=True)
def row_stats_split(x, scale, chunk):
    """Per-row ``(m, total)`` of long rows, each split into chunks over all
    threads and merged in chunk order (the result does not depend on the
    number of threads)."""
    n_rows, n_cols = x.shape
    n_chunks = (n_cols + chunk - 1) // chunk
    m_parts = np.empty((n_rows, n_chunks), x.dtype)
    total_parts = np.empty((n_rows, n_chunks), np.float64)
    for t in prange(n_rows * n_chunks):
        r, lo, hi = chunk_of(t, n_chunks, chunk, n_cols)
        m, total = row_max_sumexp(x[r, lo:hi], scale)
        m_parts.flat[t] = m
        total_parts.flat[t] = total
    m_rows = np.empty(n_rows, x.dtype)
    total_rows = np.empty(n_rows, np.float64)
    for r in range(n_rows):
        m_rows[r], total_rows[r] = merge_max_sumexp(m_parts[r], total_parts[r])
    return m_rows, total_rows


@driver
def softmax_rows_split(x, out, scale, log, chunk, m_rows, total_rows):
    """Write pass of long rows split into chunks, from :func:`row_stats_split`."""
    n_rows, n_cols = x.shape
    n_chunks = (n_cols + chunk - 1) // chunk
    stream = streams(out)
    for t in prange(n_rows * n_chunks):
        r, lo, hi = chunk_of(t, n_chunks, chunk, n_cols)
        shift, factor = finish(m_rows[r], total_rows[r], log)
        write_row_to(x[r, lo:hi], out[r, lo:hi], scale, shift, factor, log, stream)


@njit(fastmath=FASTMATH, **JIT)
def logsumexp_of_stats(x, scale, m_rows, total_rows, res):
    for r in range(m_rows.size):
        res[r] = logsumexp_of_row(x[r], scale, m_rows[r], total_rows[r])


@njit(fastmath=FASTMATH, **JIT)
def _column_block_max(x, i0, i1, block_max, c0, c1):
    """Per-column max of rows ``i0:i1``, columns ``c0:c1`` (NaN-propagating),
    four rows per pass over ``block_max`` (measured 0.24 -> 0.18
    cycles/element, float32)."""
    row = x[i0, c0:c1]
    for j in range(row.size):
        block_max[j] = row[j]
    i = i0 + 1
    while i + 4 <= i1:
        a = x[i, c0:c1]
        b = x[i + 1, c0:c1]
        c = x[i + 2, c0:c1]
        d = x[i + 3, c0:c1]
        for j in range(a.size):
            ab = fmaximum(a[j], b[j])
            cd = fmaximum(c[j], d[j])
            block_max[j] = fmaximum(block_max[j], fmaximum(ab, cd))
        i += 4
    for k in range(i, i1):
        row = x[k, c0:c1]
        for j in range(row.size):
            block_max[j] = fmaximum(block_max[j], row[j])


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _column_sumexp_loop(row, scale, shift, part):
    for j in range(part.size):
        part[j] += exp_term(row[j] * scale - shift[j])


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _column_sumexp_next_max_loop(row, nxt, scale, shift, part, next_max):
    for j in range(part.size):
        part[j] += exp_term(row[j] * scale - shift[j])
        next_max[j] = fmaximum(next_max[j], nxt[j])


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _column_sumexp_next_max_loop4(rows, nexts, scale, shift, part, next_max):
    a, b, c, d = rows
    na, nb, nc, nd = nexts
    for j in range(part.size):
        s = shift[j]
        ab = exp_term(a[j] * scale - s) + exp_term(b[j] * scale - s)
        cd = exp_term(c[j] * scale - s) + exp_term(d[j] * scale - s)
        part[j] += ab + cd
        top = fmaximum(fmaximum(na[j], nb[j]), fmaximum(nc[j], nd[j]))
        next_max[j] = fmaximum(next_max[j], top)


def column_sumexp(rows, nexts, scale, shift, part, next_max):  # pragma: no cover - the overload
    column_exp_add(rows, nexts, scale, shift, part, next_max)


@overload(column_sumexp, inline="always")
def _column_sumexp_overload(rows, nexts, scale, shift, part, next_max):
    """The column kernels' step: ``part[j] +=`` the ``exp_term(row[j] * scale
    - shift[j])`` of one row or four (``rows``; four as ``(a + b) + (c +
    d)``), and ``next_max[j]`` the NaN-propagating max of itself and the
    ``nexts`` (none, or one per row), for every ``j < part.size``.  Four
    rows a pass load and store ``part`` and ``next_max`` once for the four.
    Arrays of unit stride on AVX-512 take the table's exponentials
    (:func:`column_exp_add`): logsumexp along axis 0 of 32768 x 1000,
    same-process rounds, float32 1.60 -> 1.37 read floors, float64 2.23 ->
    1.68 (with :func:`whole_column_blocks`)."""
    arrays = (*rows, *nexts, shift, part, next_max)
    if all(table_exp_type(a) for a in arrays):
        return lambda rows, nexts, scale, shift, part, next_max: column_exp_add(
            rows, nexts, scale, shift, part, next_max
        )
    if len(rows) == 4 and len(nexts) == 4:
        return lambda rows, nexts, scale, shift, part, next_max: _column_sumexp_next_max_loop4(
            rows, nexts, scale, shift, part, next_max
        )
    if len(rows) == 1 and len(nexts) == 1:
        return lambda rows, nexts, scale, shift, part, next_max: _column_sumexp_next_max_loop(
            rows[0], nexts[0], scale, shift, part, next_max
        )
    if len(rows) == 1 and len(nexts) == 0:
        return lambda rows, nexts, scale, shift, part, next_max: _column_sumexp_loop(
            rows[0], scale, shift, part
        )
    return None


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _start_column_block(m, total, shift, part, block_max, scale):
    """Fold a block's per-column max into the running ``(m, total)`` and set
    the block's ``shift``; ``part`` (the block's sums) to 0."""
    zero = like(0.0, scale)
    for j in range(m.size):  # without branches, so that it vectorizes
        old = m[j]
        new = fmaximum(old, block_max[j] * scale)
        # Rescale a finite running sum to the new max; -inf so far means 0.
        finite_new = abs(new) < np.inf
        keep = (abs(old) < np.inf) & finite_new
        rescale = exp_nonpos(np.float64(old) - np.float64(new))
        total[j] = total[j] * rescale if keep else 0.0
        m[j] = new
        # Shift by 0 where the max is not finite (those columns are
        # finished by the non-finite rules; this keeps the sums NaN-free).
        shift[j] = new if finite_new else zero
        part[j] = zero


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _column_block_terms(x, scale, i0, i1, n1, shift, part, c0, c1, direct):
    """Add rows ``i0:i1``'s terms to ``part`` (columns ``c0:c1`` of ``x``):
    ``exp_term(x * scale - shift)`` (:func:`column_sumexp`), or with
    ``direct`` (a constant) :func:`column_terms_add`'s ``exp(x * scale)``
    (``shift`` unused).  Beside row ``i``, row ``i`` of the next block (rows
    before ``n1``) is prefetched into L2, in parts of
    :data:`FAR_PART_BYTES`, one before each part of the row's loop."""
    n_cols = c1 - c0
    step = FAR_PART_BYTES // x.itemsize
    for i in range(i0, i1):
        k = i1 + (i - i0)
        nxt = x[k, c0:c1] if k < n1 else x[i, c0:c0]
        row = x[i, c0:c1]
        for j0 in range(0, n_cols, step):
            j1 = min(j0 + step, n_cols)
            prefetch_to_l2(nxt[j0:j1])
            sums = part[j0:j1]
            if direct:
                column_terms_add(row[j0:j1], scale, sums)
            else:
                column_sumexp((row[j0:j1],), (), scale, shift[j0:j1], sums, sums)


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _shifted_column_block(x, scale, i0, i1, n1, m, total, shift, block_max, part, c0, c1):
    """Rows ``i0:i1`` as :func:`column_stats` takes a block: its max in a
    pass of its own, folded into the running ``(m, total)``, then its terms
    shifted by the new ``m`` into ``part`` (:func:`_column_block_terms`)."""
    _column_block_max(x, i0, i1, block_max, c0, c1)
    _start_column_block(m, total, shift, part, block_max, scale)
    _column_block_terms(x, scale, i0, i1, n1, shift, part, c0, c1, False)


@njit(fastmath=FASTMATH, **JIT)
def column_stats(x, scale, i_lo, i_hi, block_rows, m, total, shift, block_max, part, c0, c1):
    """Online ``(m, total)`` per column of ``x[i_lo:i_hi]``, reduced along axis 0
    in blocks of rows (kept in cache); SIMD runs across columns.  While a
    block's exponentials are computed, the next block is prefetched row by
    row into L2, in parts of :data:`FAR_PART_BYTES`, one before each part of
    the row's loop (its memory reads overlap the arithmetic; its max is then
    taken from cache).  Along axis 0 of 32768 x 1000 float32 (same-process
    runs), logsumexp took 2.24 -> 1.87 read floors and softmax 1.62 -> 1.56
    copy floors against whole rows prefetched into L1 at once.  A block's
    sums run in the data's type, per column in row order (no reduction
    across lanes: deterministic), at most :data:`COLUMN_TERMS` terms; blocks
    add up in float64.  Columns ``c0:c1`` (a tile: see
    :func:`column_stats_chunked`); ``shift``, ``block_max`` and ``part`` are
    scratch of the tile's width."""
    n_cols = c1 - c0
    neg_inf = like(-np.inf, scale)
    for j in range(n_cols):
        m[j] = neg_inf
        total[j] = 0.0
    block_rows = min(block_rows, COLUMN_TERMS)
    for i0 in range(i_lo, i_hi, block_rows):
        i1 = min(i0 + block_rows, i_hi)
        n1 = min(i1 + block_rows, i_hi)  # the next block
        _shifted_column_block(x, scale, i0, i1, n1, m, total, shift, block_max, part, c0, c1)
        for j in range(n_cols):
            total[j] += np.float64(part[j])


#: :func:`direct_column_stats` keeps a column's sum about a reference of 0
#: where it is at least this much a row: the terms clamped at ``exp(-86)``
#: (float32; float64 ``exp(-700)``) then weigh less than 2^-64 of the sum.
DIRECT_SUM_MIN = 2.0**-60


def takes_direct_sums(x):  # pragma: no cover - replaced by the overload in jitted code
    return True


@overload(takes_direct_sums, inline="always")
def _takes_direct_sums_overload(x):
    """Whether the column statistics of ``x`` (2-D) for logsumexp and the
    float32 cross-entropy forward take :func:`direct_column_stats`: C rows
    on AVX-512 (the table's exponentials; others were not measured)."""
    direct = x.layout == "C" and table_exp_type(types.Array(x.dtype, 1, "C"))
    return lambda x: direct


@njit(fastmath=FASTMATH, **JIT)
def direct_column_stats(x, scale, i_lo, i_hi, block_rows, m, total, shift, block_max, part, c0, c1):
    """:func:`column_stats`' ``(m, total)`` with ``m`` a reference rather than
    the max (logsumexp's statistics: ``m + log(total)`` is the same), by
    blocks of rows that take the sums of ``exp(x * scale)`` with no shift
    and so no max pass (:func:`column_terms_add`), about a reference of 0,
    while every block's sums are finite.  From the first block whose sums
    are not (a NaN, +inf or an exponential that overflows), that block and
    the rest go as in :func:`column_stats`, from the sums so far about 0
    (the online rule holds for any reference: ``m`` becomes the larger of
    it and each block's max).  False if a column's sum about 0 is below
    :data:`DIRECT_SUM_MIN` a row (tiny exponentials, or all -inf): the
    caller takes :func:`column_stats`.  One thread, 32768 x 1000
    (prototype of the direct blocks): float32 181 -> 140 ps an element,
    float64 395 -> 330 (with the rows in L2: 123 -> 84 and 368 -> 272)."""
    n_cols = c1 - c0
    zero = like(0.0, scale)
    for j in range(n_cols):
        m[j] = zero
        total[j] = 0.0
    block_rows = min(block_rows, COLUMN_TERMS)
    direct = True
    for i0 in range(i_lo, i_hi, block_rows):
        i1 = min(i0 + block_rows, i_hi)
        n1 = min(i1 + block_rows, i_hi)  # the next block
        if direct:
            for j in range(n_cols):
                part[j] = zero
            _column_block_terms(x, scale, i0, i1, n1, part, part, c0, c1, True)
            finite = True
            for j in range(n_cols):  # NaN fails
                finite &= abs(part[j]) < np.inf
            direct = finite
        if not direct:  # the block again, shifted (it is in cache)
            _shifted_column_block(x, scale, i0, i1, n1, m, total, shift, block_max, part, c0, c1)
        for j in range(n_cols):
            total[j] += np.float64(part[j])
    least = (i_hi - i_lo) * DIRECT_SUM_MIN
    ok = True
    for j in range(n_cols):  # about a larger reference the sum has a term >= 1
        ok &= (m[j] != 0) | (total[j] >= least)
    return ok


@njit(fastmath=FASTMATH, **JIT)
def column_stats_next_max(
    x, scale, i_lo, i_hi, block_rows, m, total, shift, block_max, part, c0, c1
):
    """:func:`column_stats` with each block's max taken in the exponentials'
    loop of the block before (row ``i`` of a block beside row ``i`` of the
    next), as the row kernels take the next row's, in blocks of half
    ``block_rows``: float64 rows without the table's exponentials (see
    :func:`whole_column_blocks`).  Along axis 0 of 32768 x 1000 float64, the
    statistics pass took 2.05-2.08 -> 1.88-1.89 read floors (two processes
    each; whole :func:`column_stats` blocks measured slower, 2.34-2.39, in a
    prototype where the half took 1.74-1.90).  In float32 the prototype
    measured 1.88-1.98 -> 2.33-2.59.  Rows go four at a time
    (:func:`column_sumexp`: one load and store of a column's sum and max for
    four rows; logsumexp along axis 0 of 32768 x 1000 float64, same-process
    runs, 2.76 -> 2.10 read floors; in float32's :func:`column_stats` four
    rows a pass ran slower: 1.45 -> 1.66, and with the table float32 1.65
    -> 1.86, float64 1.50 -> 1.81).
    ``part`` holds twice the tile's width (the sums, then the next block's
    max)."""
    n_cols = c1 - c0
    neg_inf = like(-np.inf, scale)
    sums = part[:n_cols]
    next_max = part[n_cols:]
    for j in range(n_cols):
        m[j] = neg_inf
        total[j] = 0.0
    block_rows = min(max(1, block_rows // 2), COLUMN_TERMS)
    _column_block_max(x, i_lo, min(i_lo + block_rows, i_hi), block_max, c0, c1)
    for i0 in range(i_lo, i_hi, block_rows):
        i1 = min(i0 + block_rows, i_hi)
        _start_column_block(m, total, shift, sums, block_max, scale)
        for j in range(n_cols):
            next_max[j] = neg_inf
        n1 = min(i1 + block_rows, i_hi)  # the next block, no longer than this one
        i = i0
        while i + 4 <= i1 and i1 + (i + 4 - i0) <= n1:
            k = i1 + (i - i0)
            rows = (x[i, c0:c1], x[i + 1, c0:c1], x[i + 2, c0:c1], x[i + 3, c0:c1])
            nxts = (x[k, c0:c1], x[k + 1, c0:c1], x[k + 2, c0:c1], x[k + 3, c0:c1])
            column_sumexp(rows, nxts, scale, shift, sums, next_max)
            i += 4
        for r in range(i, i1):
            k = i1 + (r - i0)
            if k < n1:
                column_sumexp((x[r, c0:c1],), (x[k, c0:c1],), scale, shift, sums, next_max)
            else:
                column_sumexp((x[r, c0:c1],), (), scale, shift, sums, next_max)
        for j in range(n_cols):
            total[j] += np.float64(sums[j])
            block_max[j] = next_max[j]


def whole_column_blocks(x):  # pragma: no cover - replaced by the overload in jitted code
    return True


@overload(whole_column_blocks, inline="always")
def _whole_column_blocks_overload(x):
    """Whether :func:`column_stats_chunked` takes :func:`column_stats` (whole
    blocks, each block's max in a pass of its own over the prefetched block)
    rather than :func:`column_stats_next_max`: float32 always, float64 when
    its rows take the table's exponentials (C rows on AVX-512).  With the
    table, logsumexp along axis 0 of 32768 x 1000 float64 took 1.99 -> 1.50
    read floors and the cross-entropy forward 2.30 -> 1.75 (same-process
    rounds); without it the exponentials are dearer and the float64
    measurements of :func:`column_stats_next_max` hold."""
    whole = x.dtype == types.float32 or (
        x.layout == "C" and table_exp_type(types.Array(x.dtype, 1, "C"))
    )
    return lambda x: whole


@njit(fastmath=FASTMATH, **JIT)
def _merge_column_stats(m_parts, total_parts, m, total):
    for j in range(m.size):
        m[j], total[j] = merge_max_sumexp(m_parts[:, j], total_parts[:, j])


@driver(allocates=True)
def column_stats_chunked(x, scale, n_chunks, block_rows, direct):
    """Per-column ``(m, total)`` of ``x`` along axis 0: the rows are split into
    ``n_chunks`` chunks over the threads, merged in chunk order; each chunk
    goes tile by tile (:func:`schedule.column_tile`), each tile through all
    the chunk's rows, so that a tile's statistics stay in L1.  With
    ``direct`` (logsumexp: ``m`` is then a reference, not the max), a
    chunk's tile takes :func:`direct_column_stats` where it can
    (:func:`takes_direct_sums`)."""
    n, n_cols = x.shape
    m_parts = np.empty((n_chunks, n_cols), x.dtype)
    total_parts = np.empty((n_chunks, n_cols), np.float64)
    whole = whole_column_blocks(x)
    tile = column_tile(n_cols, x.itemsize)
    for c in prange(n_chunks):
        shift = np.empty(tile, x.dtype)
        block_max = np.empty(tile, x.dtype)
        part = np.empty(tile if whole else 2 * tile, x.dtype)
        i_lo = c * n // n_chunks
        i_hi = (c + 1) * n // n_chunks
        for c0 in range(0, n_cols, tile):
            c1 = min(c0 + tile, n_cols)
            w = c1 - c0
            m_tile = m_parts[c, c0:c1]
            total_tile = total_parts[c, c0:c1]
            if direct and takes_direct_sums(x):
                done = direct_column_stats(
                    x, scale, i_lo, i_hi, block_rows, m_tile, total_tile, shift[:w],
                    block_max[:w], part[:w], c0, c1,
                )  # fmt: skip
                if done:
                    continue
            if whole:
                column_stats(
                    x, scale, i_lo, i_hi, block_rows, m_tile, total_tile, shift[:w],
                    block_max[:w], part[:w], c0, c1,
                )  # fmt: skip
            else:
                column_stats_next_max(
                    x, scale, i_lo, i_hi, block_rows, m_tile, total_tile, shift[:w],
                    block_max[:w], part[: 2 * w], c0, c1,
                )  # fmt: skip
    m = np.empty(n_cols, x.dtype)
    total = np.empty(n_cols, np.float64)
    _merge_column_stats(m_parts, total_parts, m, total)
    return m, total


@driver
def softmax_cols_write(x, out, scale, log, n_chunks, m, total, shift, factor):
    """Write pass of the column kernels, rows split in chunks over the threads;
    ``shift`` and ``factor`` (the data's type, a row's length) are scratch,
    passed in so that the per-row views need no reference counting."""
    n, n_cols = x.shape
    for j in range(n_cols):
        shift[j], factor[j] = finish(m[j], total[j], log)
    stream = streams(out)
    tile = column_tile(n_cols, x.itemsize)
    for c in prange(n_chunks):
        i1 = ((c + 1) * n) // n_chunks
        for c0 in range(0, n_cols, tile):
            c1 = min(c0 + tile, n_cols)
            for i in range((c * n) // n_chunks, i1):
                prefetch_in_place_ahead(x, out, i, i1, c0, c1)
                write_row_per_column_to(
                    x[i, c0:c1], out[i, c0:c1], scale, shift[c0:c1], factor[c0:c1], log, stream
                )
        stream_fence()


@njit(fastmath=FASTMATH, **JIT)
def logsumexp_of_columns(x, scale, m, total, res):
    """``res[j]`` from column ``j``'s statistics (:func:`column_stats_chunked`
    with ``direct``: ``m[j]`` is a reference, not always the max), by
    :func:`logsumexp_of_row`, about the column's max where the result is
    near zero (its refinement counts the entries equal to the max)."""
    for j in range(m.size):
        col = x[:, j]
        mj, tj = m[j], total[j]
        if math.isfinite(mj) and abs(lse_of_stats(mj, tj)) < NEAR_ZERO:
            top = row_max(col) * scale
            tj = tj * math.exp(np.float64(mj) - np.float64(top))
            mj = top
        res[j] = logsumexp_of_row(col, scale, mj, tj)


@njit(fastmath=FASTMATH, **JIT)
def masked_stats(x, mask, scale):
    """``(m, rest, count, included)`` over the entries of a row where
    ``mask``: their max, the sum of the exponentials of the others less it,
    how many equal it (a float), and whether there is any.  Loops without
    branches or integer counts (an entry left out adds 0 in float64, as the
    terms), with :func:`exp_term` (a term below its bound cannot change a
    sum with a term 1): 1000-entry rows in cache, one thread, 0.64 -> 0.44
    ns/element (float32), 1.04 -> 0.78 (float64)."""
    neg_inf = like(-np.inf, scale)
    m = neg_inf
    for i in range(x.size):
        m = fmaximum(m, x[i] * scale if mask[i] else neg_inf)
    rest = 0.0
    count = 0.0
    if math.isfinite(m):
        for i in range(x.size):
            v = x[i] * scale
            take = mask[i]
            count += 1.0 if take & (v == m) else 0.0
            rest += np.float64(exp_term(v - m)) if take & (v != m) else 0.0
        return m, rest, count, True
    included = False  # m is -inf (none, or only -inf), +inf or NaN
    for i in range(x.size):
        included |= mask[i]
    return m, rest, count, included


@driver
def softmax_rows_masked(x, mask, out, scale, log):
    """softmax / log_softmax over the entries where ``mask``; 0 / -inf elsewhere."""
    fill = like(-np.inf if log else 0.0, scale)
    for r in prange(x.shape[0]):
        xr = x[r]
        mr = mask[r]
        orow = out[r]
        m, rest, count, included = masked_stats(xr, mr, scale)
        if not included:
            for i in range(xr.size):
                orow[i] = fill
            continue
        shift, factor = finish(m, rest + count, log)
        _masked_write(xr, mr, orow, scale, shift, factor, fill, log)


@njit(fastmath=ORDERED_MATH, **JIT)
def _masked_write(x, mask, out, scale, shift, factor, fill, log):
    """The write pass of a masked row, in a function without reassociation:
    under fast-math flags LLVM may make ``(v - shift) - factor`` into ``v -
    (shift + factor)``, which rounds the row's log to an ulp of its max
    (rows near 1e4 were off by 4000 ulps, 4.8e-4 in float32)."""
    for i in range(x.size):
        v = x[i] * scale
        if not mask[i]:
            out[i] = fill
        elif log:
            out[i] = (v - shift) - factor
        else:
            out[i] = exp_nonpos(v - shift) * factor


@driver
def logsumexp_rows_masked(x, mask, res):
    one = like(1.0, x[0, 0])
    for r in prange(x.shape[0]):
        m, rest, count, included = masked_stats(x[r], mask[r], one)
        if not included:
            res[r] = -np.inf
        elif not math.isfinite(m):
            res[r] = m
        else:
            res[r] = math.log1p(rest / count) + math.log(count) + np.float64(m)


@njit(fastmath=EXACT_MATH, **JIT)
def sign(v):
    """``np.sign`` of a float64."""
    if v > 0.0:
        return 1.0
    if v < 0.0:
        return -1.0
    return v  # 0.0 or NaN


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _weighted_loops(x, b, mask, masked):
    """:func:`_weighted_max_and_sums`' loops; ``masked`` False: every entry
    is in (``mask`` is not read)."""
    a_max = -np.inf
    for i in range(x.size):
        take = (mask[i] if masked else True) & (b[i] != 0)  # & rather than and: no branch
        a_max = fmaximum(a_max, np.float64(x[i]) if take else -np.inf)
    m = 0.0
    s = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        bi = np.float64(b[i])
        take = (mask[i] if masked else True) & (bi != 0)
        e = exp_nonpos(v - a_max)  # v - a_max <= 0 (or -inf) where it is taken
        m += bi if take & (v == a_max) else 0.0
        s += bi * e if take & (v != a_max) else 0.0
    return a_max, m, s


@njit(fastmath=FASTMATH, **JIT)
def _weighted_max_and_sums(x, b, mask):
    """:func:`weighted_logsumexp_row`'s max of the entries it takes (where
    ``mask`` and ``b != 0``; -inf for none), the sum of their weights at the
    max and of ``b * exp(x - max)`` over the others, in float64.  Loops
    without branches (an entry left out adds 0), which vectorize; ``x`` and
    ``b`` are read in their own types, and a mask that is a broadcast True
    (no ``where``) not at all: a stride-0 mask kept the loops scalar.  A
    NaN max leaves the sums unspecified (the caller's result is NaN)."""
    if mask.strides[0] == 0 and mask[0]:
        return _weighted_loops(x, b, mask, False)
    return _weighted_loops(x, b, mask, True)


@njit(fastmath=EXACT_MATH, **JIT)
def weighted_logsumexp_row(x, b, mask, return_sign):
    """SciPy's ``logsumexp(a, b=b)`` of one row, in float64, entries where ``mask``.

    Follows ``scipy.special.logsumexp`` step by step so that signs, zeros and
    non-finite values come out the same: entries with ``b == 0`` are left out
    of the max, the max entries are summed apart for accuracy
    (:func:`_weighted_max_and_sums`: 8192 x 1000 float32 with a weight for
    every entry took 55-61 ms in loops that branched per entry, read a
    broadcast mask and took float64 copies of the arrays; 5.9 ms now), and
    a non-finite result is recomputed directly as ``log(sum(b * exp(a)))``.
    """
    a_max, m, s = _weighted_max_and_sums(x, b, mask)
    s = s if s == 0 else s / m
    sgn = sign(s + 1.0) * sign(m)
    if s < -1.0:
        s = -s - 2.0
    out = math.log1p(s) + math.log(abs(m)) + a_max
    if not return_sign and sgn < 0:
        out = math.nan
    if not math.isfinite(out):
        total = 0.0
        for i in range(x.size):
            if mask[i]:
                total += np.float64(b[i]) * exp(np.float64(x[i]))
        sgn = sign(total)
        out = math.log(abs(total)) if return_sign else math.log(total)
    return out, sgn


@njit(fastmath=EXACT_MATH, inline="always", **JIT)
def row_or_shared(a, r):
    """Row ``r`` of ``a``, or its one row (shared by every row)."""
    return a[r] if a.shape[0] > 1 else a[0]


@driver
def logsumexp_rows_weighted(x, b, mask, return_sign, res, signs):
    """Rows of ``x`` with their rows of ``b`` and ``mask``, or with their one
    row where they have one."""
    for r in prange(x.shape[0]):
        b_r = row_or_shared(b, r)
        mask_r = row_or_shared(mask, r)
        res[r], signs[r] = weighted_logsumexp_row(x[r], b_r, mask_r, return_sign)
