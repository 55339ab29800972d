"""Kernels for many short rows (``C`` a power of two that fits several times
in one vector: 2, 4, 8, 16 float32 or 2, 4, 8 float64 classes).

A row loop over 8 elements runs its vector loops zero times and everything
in scalar remainders.  These kernels instead treat a block of rows as one
flat array, so every loop is a full-width vector loop.

* Where every value of a block is within :func:`exp_bounded`'s bound (80 in
  float32, 700 in float64), softmax and log_softmax take ``exp(v)`` with no
  shift (:func:`_block_exp`); logsumexp and the cross-entropy do wherever
  every row's sum of them is finite and normal (:func:`_block_exp_sums`,
  no bound on each value): one exp pass (float64 log_softmax also takes
  the rows' maxima, for the accuracy of its logs, but no exponential of
  ``v - max``).  Each row's sum comes from :func:`segment_rows` (a tree
  over whole vectors, one row per lane of the result), per-row values go
  back to the row's lanes by :func:`segment_spread`.
* Other blocks take the shifted path: each row's max and sum reduced inside
  the vectors by :func:`segment_allreduce` (every lane of a row ends up
  holding them), or for log_softmax by the trees.
* The blocks :data:`AHEAD` are prefetched, the input's into L2 (4M x 8, same-process
  pairs: 2-8% faster than into L1), the output's for writing.

Blocks whose rows are not all finite (NaN or ±inf maxima) are handed to the
row kernels, whose rules give SciPy's answers; so are the rows after the
last full block.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._config import FASTMATH, JIT, ORDERED_MATH
from ._math import (
    SEGMENT_FAST_MAX,
    SEGMENT_SUM,
    SPREAD_SCALE,
    SPREAD_SHIFT,
    TERMS_SUM_MIN,
    VECTOR_BYTES,
    exp,
    exp_nonpos,
    exp_term,
    exponent_split,
    fmaximum,
    is_single,
    like,
    log_minus,
    log_pos,
    log_positive,
    log_scaled,
    log_wide,
    magnitude_key,
    ordered_sum,
    prefetch_for_write,
    prefetch_to_l2,
    segment_allreduce,
    segment_one_hot,
    segment_rows,
    segment_softmax_jvp,
    segment_spread,
    segment_spread_write,
    stack_array,
    stream_copy,
    stream_fence,
)
from .hardmax import hardmax_rows
from .jacobian import LOG_JVP, SOFTMAX, row_sum, write_row_per_column
from .jacobian import write_row as jvp_write_row
from .reduce import NEAR_ZERO, logsumexp_of_row, row_max_sumexp
from .schedule import block_bounds, driver, streams
from .softmax import (
    exp_bounded_worst,
    exp_terms_worst,
    is_within_bound,
    same_buffer,
    softmax_rows_cached_block,
)
from .xent import (
    finite_nll_and_lse,
    nll_and_lse,
    nll_grad_factor,
    target_status,
    xent_index_rows,
)

_xent_rows_serial = xent_index_rows.serial
_hardmax_rows_serial = hardmax_rows.serial

#: Elements per block (a multiple of every vector's lane count): with its
#: scratch rows of the same size it stays in L1.
BLOCK_ELEMENTS = 1024
#: Blocks ahead whose memory is prefetched.
AHEAD = 2
#: Parts of :func:`_block_exp`'s loop, each after a part of the prefetch of
#: the block ahead (1, 2, 4, 8, 16 measured: 4 best).
EXP_PARTS = 4
#: The most rows a block can have (2 classes).
MAX_BLOCK_ROWS = BLOCK_ELEMENTS // 2


def fits(n_cols: int, itemsize: int) -> bool:
    """Whether rows of ``n_cols`` elements go to these kernels."""
    lanes = VECTOR_BYTES // itemsize
    return 2 <= n_cols <= lanes and n_cols & (n_cols - 1) == 0


@njit(fastmath=FASTMATH, inline="always", **JIT)
def block_ahead(arr, b, b1, size):
    """Block ``b + AHEAD`` of a flat array of blocks of ``size`` elements, or
    an empty slice if it is not before ``b1``: the block to prefetch while
    block ``b`` is computed.  A block of rows is 4 KiB in float32, one page:
    the hardware prefetchers stop at page boundaries, so every block would
    begin with misses (logsumexp of 4M x 8 float32, one thread: 2.5 -> 1.8
    cycles per element)."""
    if b + AHEAD < b1:
        k1 = (b + AHEAD) * size
        return arr[k1 : k1 + size]
    return arr[:0]


@njit(fastmath=FASTMATH, inline="always", **JIT)
def out_block_ahead(arr, b, b1, in_place):
    """:func:`block_ahead` of an output array of blocks, to prefetch for
    writing (the stores then find their lines owned); empty in place, where
    the input's prefetch brings the lines."""
    return block_ahead(arr, b, b if in_place else b1, BLOCK_ELEMENTS)


@njit(fastmath=FASTMATH, **JIT)
def prefetch_block(arr, b, b1, size):
    """Prefetch :func:`block_ahead` into L2 at once."""
    prefetch_to_l2(block_ahead(arr, b, b1, size))


@njit(fastmath=FASTMATH, **JIT)
def prefetch_out_block(arr, b, b1, in_place):
    """Prefetch :func:`out_block_ahead` at once, for writing."""
    prefetch_for_write(out_block_ahead(arr, b, b1, in_place))


@njit(fastmath=FASTMATH, **JIT)
def geometry(n_rows, n_cols):
    """Rows per block and the number of full blocks."""
    rows_per_block = BLOCK_ELEMENTS // n_cols
    return rows_per_block, n_rows // rows_per_block


def fits_rows(src, dst=None) -> bool:
    """Whether 2-D views (C-contiguous, enough of them) go to these kernels
    (the row length first: the quickest test, and the one most calls fail)."""
    return (
        src.shape[1] <= VECTOR_BYTES // src.itemsize
        and src.flags.c_contiguous
        and (dst is None or dst.flags.c_contiguous)
        and fits(src.shape[1], src.itemsize)
        and src.size >= BLOCK_ELEMENTS
    )


@njit(fastmath=FASTMATH, **JIT)
def _block_exp(xb, scale, e, ahead, ahead_out):
    """``e = exp(xb * scale)`` by :func:`exp_bounded`, with no shift: True if
    every ``|xb * scale|`` is within its bound (80 for float32, 700 for
    float64), where no exponential of the block and no sum of a row's
    overflows or leaves the normal range; False (``e`` unspecified) if one
    is over it or NaN.  A row's sum then has the same rounding as the sum
    shifted by the row's max (each term carries the relative error of its
    exp), so ``log(sum)`` is the row's logsumexp without the max pass; the
    caller takes the shifted path (:func:`_block_stats`) on False.

    ``ahead`` and ``ahead_out`` (blocks of the input and the output from
    :func:`block_ahead`, or empty; the second for writing) are prefetched in
    :data:`EXP_PARTS` parts, one before each part of this loop: the misses
    then spread over the block's arithmetic instead of all waiting at its
    start (4M x 8 float32, 2 threads, same-process pairs: logsumexp 2.46 ->
    2.03-2.19 read floors, softmax 1.33 -> 1.11, log_softmax 1.54 -> 1.30
    copy floors)."""
    return is_within_bound(_exp_in_parts(xb, scale, e, ahead, ahead_out, False), scale)


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _exp_in_parts(xb, scale, e, ahead, ahead_out, terms):
    """``e = exp(xb * scale)`` in :data:`EXP_PARTS` parts, each after its
    part of the prefetches, by :func:`exp_terms_worst` (``terms``) or
    :func:`exp_bounded_worst`; returns the arguments' worst key."""
    worst = magnitude_key(like(0.0, scale))
    n = xb.size
    for q in range(EXP_PARTS):
        k0 = q * n // EXP_PARTS
        k1 = (q + 1) * n // EXP_PARTS
        prefetch_to_l2(ahead[k0:k1])
        prefetch_for_write(ahead_out[k0:k1])
        if terms:
            worst = exp_terms_worst(xb[k0:k1], scale, e[k0:k1], worst)
        else:
            worst = exp_bounded_worst(xb[k0:k1], scale, e[k0:k1], worst)
    return worst


@njit(fastmath=FASTMATH, **JIT)
def _block_exp_sums(xb, scale, e, sums, n_cols, ahead):
    """``sums[i]`` = row ``i``'s sum of ``exp(v)``, ``v = xb * scale``, with no
    shift (``e`` is scratch): True if every sum is right, as it is where
    each is finite and at least :data:`TERMS_SUM_MIN` (the terms by
    :func:`exp_terms_worst`); else False (the sums unspecified): the
    caller takes the shifted path.  The row's ``log(sum)`` is then its
    logsumexp without the max pass.  ``ahead`` is prefetched as
    :func:`_block_exp` does.  Against :func:`_block_exp`'s exponentials
    (each argument's bound tested, float32 by the stored exponentials'
    table), 4M x 8, two threads, same-process rounds, read floors:
    logsumexp float32 1.74 -> 1.55 and 1.32 -> 1.21, float64 1.53 ->
    1.51; cross-entropy forward float32 1.95 -> 1.69 and 2.46 -> 2.19,
    float64 1.75 -> 1.67."""
    if not is_within_bound(_exp_in_parts(xb, scale, e, ahead, ahead[:0], True), scale):
        return False
    segment_rows(e, sums, n_cols, SEGMENT_SUM)
    normal = True
    for i in range(sums.size):  # NaN fails both tests
        normal &= (sums[i] >= TERMS_SUM_MIN) & (sums[i] < np.inf)
    return normal


@njit(fastmath=FASTMATH, **JIT)
def _block_stats(xb, scale, m, e, u, n_cols):
    """For ``v = xb * scale``: ``m`` = each row's max in every lane of the
    row, ``e = exp(v - m)`` and ``u`` = the row's sum of ``e`` in every lane.
    False (``e``, ``u`` unset) if some row is not all finite but for -inf
    entries under a finite max: the machine's max used here may drop a NaN,
    but then ``v - m`` is NaN (as it is for a +inf max or an all -inf row),
    and any ``v - m`` that is not ``<= 0`` sends the block to the row kernels."""
    lanes = VECTOR_BYTES // xb.itemsize
    for k in range(xb.size):
        m[k] = xb[k] * scale
    for k in range(0, xb.size, lanes):
        segment_allreduce(m, m, k, n_cols, SEGMENT_FAST_MAX)
    worst = like(-np.inf, scale)
    for k in range(xb.size):
        d = xb[k] * scale - m[k]
        worst = fmaximum(worst, d)  # NaN if any d is
        e[k] = exp_nonpos(d)
    if not (worst <= 0):
        return False
    for k in range(0, xb.size, lanes):
        segment_allreduce(e, u, k, n_cols, SEGMENT_SUM)
    return True


@njit(fastmath=FASTMATH, **JIT)
def _broadcast_rows(vals, lanes_out, n_cols):
    """``lanes_out[i * n_cols + j] = vals[i]``: the first lane of each row set,
    the others zeroed, then a segment sum."""
    lanes = VECTOR_BYTES // lanes_out.itemsize
    zero = like(0.0, lanes_out[0])
    for k in range(lanes_out.size):
        lanes_out[k] = zero
    for i in range(vals.size):
        lanes_out[i * n_cols] = vals[i]
    for k in range(0, lanes_out.size, lanes):
        segment_allreduce(lanes_out, lanes_out, k, n_cols, SEGMENT_SUM)


@njit(fastmath=FASTMATH, **JIT)
def _softmax_write(e, ob, u, rows):
    """``ob = e / sum`` from :func:`_block_stats`' ``e`` and ``u``.  Float64
    reciprocals (a float64 vector division costs as much as 1.4 cycles per
    element) are taken once per row (``rows`` is scratch) and broadcast to
    the lanes of ``u``; float32 divides in every lane (cheaper than the
    broadcast)."""
    n_cols = e.size // rows.size
    if is_single(e):
        for k in range(e.size):
            ob[k] = e[k] / u[k]
    else:
        for i in range(rows.size):  # a strided loop: not vectorized
            rows[i] = u[i * n_cols]
        for i in range(rows.size):
            rows[i] = 1.0 / rows[i]
        _broadcast_rows(rows, u, n_cols)
        for k in range(e.size):
            ob[k] = e[k] * u[k]


@njit(fastmath=FASTMATH, **JIT)
def _softmax_direct(xb, ob, scale, log, e, rows, lows):
    """softmax / log_softmax of a block from :func:`_block_exp`'s ``e``: the
    rows' sums (:func:`segment_rows`), per row the reciprocal or the log,
    then one vector pass that spreads them back to the rows' lanes in
    registers (:func:`segment_spread_write`).  Against spreads to scratch
    and a loop over it, same-process pairs, 4M x 8, two threads, copy
    floors: softmax float32 1.11 -> 1.04 and float64 2.24 -> 1.85,
    log_softmax float32 1.67 -> 1.47.

    The log must not lose the low bits of ``log(sum)`` (``v - log(sum)``
    rounded once would, where ``v - max`` loses none): float32 takes the log
    in float64 and splits it into two floats, ``(v - hi) - lo``; float64
    takes the rows' maxima (a tree over ``xb``) and ``(v - max) - (log(sum)
    - max)``, the second term by :func:`log_minus`, as accurate as the
    shifted path's ``log(sum(exp(v - max)))`` without its exponentials of
    ``v - max`` (4M x 8, two threads, same-process rounds: 1.008 -> 0.540
    ns an element)."""
    n_cols = xb.size // rows.size
    segment_rows(e, rows, n_cols, SEGMENT_SUM)
    if log and not is_single(xb):
        segment_rows(xb, lows, n_cols, SEGMENT_FAST_MAX)  # all finite: no NaN to drop
        for i in range(rows.size):
            top = lows[i] * scale  # max(v): scale > 0 and rounding is monotonic
            lows[i] = log_minus(rows[i], top)
            rows[i] = top
        segment_spread_write(xb, rows, lows, ob, scale, n_cols, SPREAD_SHIFT)
    elif log:
        for i in range(rows.size):
            lg = log_pos(np.float64(rows[i]))
            hi = like(lg, rows[0])
            rows[i] = hi
            lows[i] = like(lg - np.float64(hi), rows[0])
        # (v - hi) - lo in this order: hi + lo is the row's log(sum(exp(v)))
        # in float64 split into two floats (v - hi is nearly exact, as v - max is)
        segment_spread_write(xb, rows, lows, ob, scale, n_cols, SPREAD_SHIFT)
    else:
        for i in range(rows.size):
            rows[i] = like(1.0, rows[0]) / rows[i]
        segment_spread_write(e, rows, rows, ob, scale, n_cols, SPREAD_SCALE)


@njit(fastmath=FASTMATH, **JIT)
def _log_softmax_shifted(xb, ob, scale, m, e, u, rows, sums):
    """log_softmax of a block as ``(v - max) - log(sum(exp(v - max)))`` with
    the rows' maxima and sums from :func:`segment_rows`, the maxima spread
    back by :func:`segment_spread` for the exponentials, and both in the
    write pass by :func:`segment_spread_write` (about half the work of
    :func:`_block_stats`' reductions in every lane and a broadcast).
    False (``ob`` unwritten) if some row is not all finite, by the rule of
    :func:`_block_stats`."""
    n_cols = xb.size // rows.size
    for k in range(xb.size):
        m[k] = xb[k] * scale
    segment_rows(m, rows, n_cols, SEGMENT_FAST_MAX)
    segment_spread(rows, u, n_cols)
    worst = like(-np.inf, scale)
    for k in range(xb.size):
        d = m[k] - u[k]
        worst = fmaximum(worst, d)  # NaN if any d is
        e[k] = exp_term(d)
    if not (worst <= 0):
        return False
    segment_rows(e, sums, n_cols, SEGMENT_SUM)
    for i in range(sums.size):
        sums[i] = like(log_pos(np.float64(sums[i])), sums[0])
    segment_spread_write(xb, rows, sums, ob, scale, n_cols, SPREAD_SHIFT)  # (v - max) - log
    return True


@njit(fastmath=FASTMATH, **JIT)
def _softmax_block(xb, ob, scale, log, m, e, u, rows, lows, ahead, ahead_out):
    """softmax / log_softmax of one block (``ob`` may be ``xb``): the direct
    path if the block is within :func:`_block_exp`'s bound, else the
    shifted one.  False if the block has rows that are not all finite
    (``ob`` unwritten).  ``ahead`` and ``ahead_out`` are prefetched by
    :func:`_block_exp`, whichever path follows."""
    if _block_exp(xb, scale, e, ahead, ahead_out):
        _softmax_direct(xb, ob, scale, log, e, rows, lows)
        return True
    if log:
        return _log_softmax_shifted(xb, ob, scale, m, e, u, rows, lows)
    if _block_stats(xb, scale, m, e, u, xb.size // rows.size):
        _softmax_write(e, ob, u, rows)
        return True
    return False


@driver
def softmax_short_rows(x, out, scale, log, n_tasks):
    """softmax / log_softmax of the rows of ``x`` (C-contiguous, ``fits``)."""
    n_rows, n_cols = x.shape
    rows_per_block, n_blocks = geometry(n_rows, n_cols)
    in_place = same_buffer(x, out)
    stream = streams(out) and not in_place
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for task in prange(n_tasks):
        m = stack_array(BLOCK_ELEMENTS, x[0, 0])
        e = stack_array(BLOCK_ELEMENTS, x[0, 0])
        u = stack_array(BLOCK_ELEMENTS, x[0, 0])
        sb = stack_array(BLOCK_ELEMENTS, x[0, 0])
        rows = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:rows_per_block]
        lows = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:rows_per_block]
        b0, b1 = block_bounds(task, n_blocks, n_tasks)
        for b in range(b0, b1):
            k0 = b * BLOCK_ELEMENTS
            ob = of[k0 : k0 + BLOCK_ELEMENTS]
            ahead = block_ahead(xf, b, b1, BLOCK_ELEMENTS)
            # Streamed blocks go through ``sb``: their output lines are not read.
            ahead_out = of[:0] if stream else out_block_ahead(of, b, b1, in_place)
            if in_place:  # one array for both: equal pointers would not vectorize
                ok = _softmax_block(ob, ob, scale, log, m, e, u, rows, lows, ahead, ahead_out)
            elif stream:
                xb = xf[k0 : k0 + BLOCK_ELEMENTS]
                ok = _softmax_block(xb, sb, scale, log, m, e, u, rows, lows, ahead, ahead_out)
                if ok:
                    stream_copy(sb, ob)
            else:
                xb = xf[k0 : k0 + BLOCK_ELEMENTS]
                ok = _softmax_block(xb, ob, scale, log, m, e, u, rows, lows, ahead, ahead_out)
            if not ok:
                r0 = b * rows_per_block
                softmax_rows_cached_block(x, out, scale, log, r0, r0 + rows_per_block)
        stream_fence()
    if n_blocks * rows_per_block < n_rows:
        softmax_rows_cached_block(x, out, scale, log, n_blocks * rows_per_block, n_rows)


@njit(fastmath=FASTMATH, inline="always", **JIT)
def log_of_sum(s, out):
    """``log(s)`` of a block's row sum for an element of ``out``: into
    float32 by :func:`log_pos32`, into float64 (the cross-entropy's parts
    of float32 sums) by :func:`log_wide`, as accurate as the sum, without
    a division."""
    if is_single(out):
        return log_positive(s)
    return like(log_wide(s), out[0])


@njit(fastmath=FASTMATH, **JIT)
def _rows_logsumexp(x, r0, scale, out):
    """``out[i] = logsumexp(x[r0 + i] * scale)`` by the row kernels' rules (rows
    that are not all finite, and rows after the last full block)."""
    for i in range(out.size):
        mr, total = row_max_sumexp(x[r0 + i], scale)
        out[i] = logsumexp_of_row(x[r0 + i], scale, mr, total)


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _block_of_rows(x, xf, b):
    """Block ``b`` of a 2-D ``x`` (C-contiguous; ``xf`` its flat view) as a
    flat view, with its first row, its number of rows and the row length.
    The flat view comes from the driver: ``x.reshape(-1)`` calls a helper of
    Numba's runtime (9 ns a call), which the loop over blocks cannot hoist."""
    n_cols = x.shape[1]
    rows_per_block, _ = geometry(x.shape[0], n_cols)
    k0 = b * BLOCK_ELEMENTS
    return xf[k0 : k0 + BLOCK_ELEMENTS], b * rows_per_block, rows_per_block, n_cols


@njit(fastmath=FASTMATH, **JIT)
def _block_logsumexp_shifted(x, xf, b, scale, out, e):
    """``out[i] = max + log(sum(exp(v - max)))`` for the rows of block ``b``
    (``e`` is scratch), by the row kernels if some row is not all finite."""
    xb, r0, rows_per_block, n_cols = _block_of_rows(x, xf, b)
    m = stack_array(BLOCK_ELEMENTS, x[0, 0])
    u = stack_array(BLOCK_ELEMENTS, x[0, 0])
    if not _block_stats(xb, scale, m, e, u, n_cols):
        _rows_logsumexp(x, r0, scale, out[:rows_per_block])
        return
    row_m = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
    row_u = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
    for i in range(rows_per_block):  # one lane per row, then the logs of those
        row_m[i] = m[i * n_cols]
        row_u[i] = u[i * n_cols]
    for i in range(rows_per_block):
        out[i] = row_m[i] + log_pos(row_u[i])


@njit(fastmath=FASTMATH, **JIT)
def _refine_near_zero(x, r0, scale, out):
    """Results near 0 have lost relative accuracy to cancellation: recompute
    them by the row kernel (a vector test first: a branch per row costs more
    than its log)."""
    near = False
    for i in range(out.size):
        near |= abs(out[i]) < NEAR_ZERO
    if near:
        for i in range(out.size):
            if abs(out[i]) < NEAR_ZERO:
                _rows_logsumexp(x, r0 + i, scale, out[i : i + 1])


@njit(fastmath=FASTMATH, **JIT)
def _block_logsumexp(x, xf, b, scale, out, ahead):
    """``out[i] = logsumexp(x[r0 + i] * scale)`` for the rows of block ``b``
    (``r0`` its first row): ``log(sum(exp(v)))`` on :func:`_block_exp_sums`'s
    direct path, else ``max + log(sum(exp(v - max)))``; ``ahead`` is
    prefetched."""
    xb, r0, rows_per_block, n_cols = _block_of_rows(x, xf, b)
    e = stack_array(BLOCK_ELEMENTS, x[0, 0])
    sums = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:rows_per_block]
    if _block_exp_sums(xb, scale, e, sums, n_cols, ahead):
        for i in range(rows_per_block):  # in the type of the results
            out[i] = log_of_sum(sums[i], out)
    else:
        _block_logsumexp_shifted(x, xf, b, scale, out, e)
    _refine_near_zero(x, r0, scale, out[:rows_per_block])


@driver
def logsumexp_short_rows(x, scale, res, n_tasks):
    """``res[r] = logsumexp(x[r] * scale)`` for rows that ``fits``."""
    n_rows, n_cols = x.shape
    rows_per_block, n_blocks = geometry(n_rows, n_cols)
    xf = x.reshape(-1)
    for task in prange(n_tasks):
        b0, b1 = block_bounds(task, n_blocks, n_tasks)
        for b in range(b0, b1):
            r0 = b * rows_per_block
            ahead = block_ahead(xf, b, b1, BLOCK_ELEMENTS)
            _block_logsumexp(x, xf, b, scale, res[r0 : r0 + rows_per_block], ahead)
    r0 = n_blocks * rows_per_block
    _rows_logsumexp(x, r0, scale, res[r0:])


def block_count(n_rows: int, n_cols: int) -> int:
    """The number of full blocks of rows of ``n_cols`` elements."""
    return n_rows // (BLOCK_ELEMENTS // n_cols)


@njit(fastmath=FASTMATH, **JIT)
def _store_parts(pa, pz, part_a, part_z, b, r0, sums):
    """A block's per-row parts: to ``part_a[r0:]`` (in its own type: a loss
    per sample can go straight to the result) and to ``part_z``, unless that
    is empty (no z-loss), or, with ``sums``, their sums to ``part_a[b]``
    and ``part_z[b]`` (:func:`ordered_sum`: a fixed order, so the total does
    not depend on the number of threads)."""
    if sums:
        part_a[b] = ordered_sum(pa)
        if part_z.size:
            part_z[b] = ordered_sum(pz)
    else:
        for i in range(pa.size):
            part_a[r0 + i] = pa[i]
        if part_z.size:
            for i in range(pz.size):
                part_z[r0 + i] = pz[i]


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _target_column(t, n_cols):
    """Target ``t``'s column, unsigned (no wraparound code at the loads): ``t``
    itself in ``[0, C)``, some column for any other ``t`` (``C`` is a power of
    two), so a load there is in bounds whatever the target."""
    return np.uint64(t) & np.uint64(n_cols - 1)


@njit(fastmath=FASTMATH, **JIT)
def _target_logits(xb, tb, dst):
    """``dst[i]`` = row ``i``'s logit at :func:`_target_column` of ``tb[i]``,
    for a block ``xb`` of rows (flat), in a loop of its own."""
    n_cols = xb.size // tb.size
    for i in range(tb.size):
        dst[i] = np.float64(xb[np.uint64(i * n_cols) + _target_column(tb[i], n_cols)])


@njit(fastmath=FASTMATH, **JIT)
def _rows_stats(x, r0, scale, shift, total):
    """``shift[i]``, ``total[i]``: row ``r0 + i``'s max and sum of ``exp(x *
    scale - max)`` by the row kernels' rules."""
    for i in range(shift.size):
        shift[i], total[i] = row_max_sumexp(x[r0 + i], scale)


@njit(fastmath=FASTMATH, **JIT)
def _block_shifts_and_sums(x, xf, b, shift, total, ahead):
    """Each row of block ``b``'s shift and sum of ``exp(x - shift)``: 0 and
    the sum of ``exp(x)`` on :func:`_block_exp_sums`'s direct path, else its max
    and the sum of ``exp(x - max)`` (by the row kernels if some row is not
    all finite); ``ahead`` is prefetched.  Returns whether it took the
    direct path."""
    xb, _, rows_per_block, n_cols = _block_of_rows(x, xf, b)
    e = stack_array(BLOCK_ELEMENTS, x[0, 0])
    if _block_exp_sums(xb, like(1.0, x[0, 0]), e, total, n_cols, ahead):
        for i in range(rows_per_block):
            shift[i] = 0.0
        return True
    _block_shifted_stats(x, xf, b, shift, total, e)
    return False


@njit(fastmath=FASTMATH, **JIT)
def _block_shifted_stats(x, xf, b, shift, total, e):
    """:func:`_block_shifts_and_sums` off the direct path: each row's max
    and sum of ``exp(x - max)`` (``e`` is scratch)."""
    xb, r0, rows_per_block, n_cols = _block_of_rows(x, xf, b)
    one = like(1.0, x[0, 0])
    m = stack_array(BLOCK_ELEMENTS, x[0, 0])
    u = stack_array(BLOCK_ELEMENTS, x[0, 0])
    if not _block_stats(xb, one, m, e, u, n_cols):
        _rows_stats(x, r0, one, shift, total)
        return
    for i in range(rows_per_block):  # one lane per row
        shift[i] = m[i * n_cols]
        total[i] = u[i * n_cols]


@njit(fastmath=FASTMATH, **JIT)
def _block_index_parts(xb, target, w, ignore_index, lse, r0, pa, pz, shift, total, finite):
    """The loss parts (``xent.set_index_part``) of a block ``xb`` of rows
    (flat, from row ``r0``), checking the targets as it reads them: from
    the rows' shifts and sums (:func:`xent.nll_and_lse`; ``lse`` is scratch
    for the rows' logsumexps, ``lse**2`` the z-loss parts; ``finite``: every
    shift is finite, as on the direct path).  Returns how
    many rows are kept and how many of those have a target outside ``[0,
    C)`` (their parts are then not defined: the caller raises).

    The loads of the targets' logits (:func:`_target_logits`) take a loop
    of their own, the checks and the parts another.  Indices are unsigned
    and the targets a slice: a signed index such as ``target[r0 + i]`` takes
    Numba's wraparound code (a shift and a mask) at every load.  No weight
    is read when there is one for every class.  Same-process pairs against
    one loop with signed indices: 16K x 8 in cache, one thread, 0.87
    (float32) and 0.91 (float64) of its time; 4M x 8, two threads, 6.56 ->
    5.83 (float32) and 6.53 -> 5.22 (float64) read floors (medians of 7
    rounds while the machine ran slow: the table's run had 4.2 and 5.5).
    Those figures are of a version with the checks, the unit-weight parts
    and the per-class-weight parts in loops of their own; this one loop took
    0.98-1.00 of its time (16K x 8 in cache)."""
    rows = lse.size
    n_cols = xb.size // rows
    tb = target[r0 : r0 + rows]
    picked = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows]
    _target_logits(xb, tb, picked)
    if finite:  # no branch (4M x 8 float32, per sample: 7.0 -> 6.7 ms)
        for i in range(rows):  # lse - x[t] in picked, and lse
            picked[i], lse[i] = finite_nll_and_lse(shift[i], total[i], picked[i])
    else:
        for i in range(rows):
            picked[i], lse[i] = nll_and_lse(shift[i], total[i], picked[i])
    unit = w.strides[0] == 0  # one weight for every class (a broadcast view)
    w0 = np.float64(w[0])
    kept = 0
    bad = 0
    for i in range(rows):
        t = tb[i]
        keep, out = target_status(t, n_cols, ignore_index)
        kept += keep
        bad += out
        wt = w0 if unit else np.float64(w[_target_column(t, n_cols)])
        pa[i] = wt * picked[i] if keep else 0.0
        pz[i] = lse[i] * lse[i] if keep else 0.0
    return kept, bad


#: Lanes of :func:`_sum_of_losses`' product (fixed, as its order is).
PRODUCT_LANES = 8


@njit(fastmath=ORDERED_MATH, **JIT)
def _sum_of_losses(sums, tb, picked, ignore_index, n_cols):
    """The sum over the kept rows of ``log(sums[i]) - picked[i]`` (a block's
    unweighted losses from its rows' sums of ``exp(x)`` and its targets'
    logits), how many rows are kept and how many of those have a target
    outside ``[0, C)``; ``picked`` is scratch after.  The rows are a full
    block's (a multiple of :data:`PRODUCT_LANES`).  The sum of the rows'
    logs is one log, of their product, taken as a product of mantissas in
    ``[1, 2)`` (at most 2^512) and a sum of exponents (:func:`log_scaled`);
    its error, a few float64 ulps of the block's total, is that of summing
    the rows' logs.  The products and sums go in a fixed order (lanes of
    :data:`PRODUCT_LANES`, :func:`ordered_sum`), not in the one LLVM's
    vectorizer would pick, so the bits do not depend on how this was
    compiled."""
    rows = sums.size
    mant = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows]
    k_sum = 0
    kept = 0
    bad = 0
    for i in range(rows):  # no branch and no float reduction: it vectorizes
        keep, out = target_status(tb[i], n_cols, ignore_index)
        kept += keep
        bad += out
        k, mant[i] = exponent_split(np.float64(sums[i]) if keep else 1.0)
        k_sum += k
        picked[i] = picked[i] if keep else 0.0
    lanes = stack_array(PRODUCT_LANES, 0.0)
    for j in range(PRODUCT_LANES):
        lanes[j] = 1.0
    for q in range(0, rows, PRODUCT_LANES):
        for j in range(PRODUCT_LANES):
            lanes[j] *= mant[q + j]
    width = PRODUCT_LANES
    while width > 1:  # a fixed tree: lanes j and j + half
        width //= 2
        for j in range(width):
            lanes[j] *= lanes[j + width]
    return log_scaled(lanes[0], k_sum) - ordered_sum(picked), kept, bad


@njit(fastmath=FASTMATH, **JIT)
def _block_loss_total(x, xf, b, target, w, ignore_index, ahead):
    """The sum of block ``b``'s losses ``w0 (lse - x[t])`` over its kept rows
    (unit weights ``w``, a broadcast of ``w0``), how many rows are kept and
    how many of those have a bad target.  On :func:`_block_exp_sums`'s direct
    path by :func:`_sum_of_losses`: no logsumexp per row (4M x 8, two
    threads, same-process rounds against a logsumexp and parts per row:
    float32 2.90 -> 2.35 and float64 2.99 -> 2.61 read floors)."""
    xb, r0, rows_per_block, n_cols = _block_of_rows(x, xf, b)
    one = like(1.0, x[0, 0])
    e = stack_array(BLOCK_ELEMENTS, x[0, 0])
    sums = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:rows_per_block]
    if _block_exp_sums(xb, one, e, sums, n_cols, ahead):
        tb = target[r0 : r0 + rows_per_block]
        picked = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
        _target_logits(xb, tb, picked)
        total, kept, bad = _sum_of_losses(sums, tb, picked, ignore_index, n_cols)
        return np.float64(w[0]) * total, kept, bad
    lse = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
    shift = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:rows_per_block]
    total = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:rows_per_block]
    _block_shifted_stats(x, xf, b, shift, total, e)
    pa = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
    pz = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
    kept, bad = _block_index_parts(
        xb, target, w, ignore_index, lse, r0, pa, pz, shift, total, False
    )
    return ordered_sum(pa), kept, bad


@driver
def xent_index_short_rows(x, target, w, ignore_index, part_a, part_z, sums, counts, n_tasks):
    """The cross-entropy forward of index targets without smoothing (see
    ``xent.py`` for the parts), for rows that ``fits``: each block's
    logsumexp, then its parts while the block is in cache.  The parts go to
    ``part_a``/``part_z`` per row, or with ``sums`` per block (the sums of
    full block ``b`` to index ``b``, of the rows after the last full block
    to index ``block_count``): a reduced loss writes no per-row array, and
    with unit weights and ``part_z`` empty (no z-loss) a full block's sum
    comes from :func:`_block_loss_total`, with no logsumexp per row.
    The targets are checked in the same pass: ``counts[b]`` gets block
    ``b``'s number of kept rows and of kept targets outside ``[0, C)``
    (if any, the parts are not defined)."""
    n_rows, n_cols = x.shape
    rows_per_block, n_blocks = geometry(n_rows, n_cols)
    one = like(1.0, x[0, 0])
    xf = x.reshape(-1)
    # Block sums without z-loss parts, of unit weights: no per-row logsumexp.
    totals = sums and part_z.size == 0 and w.strides[0] == 0
    for task in prange(n_tasks):
        lse = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
        pa = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
        pz = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
        shift = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:rows_per_block]
        total = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:rows_per_block]
        b0, b1 = block_bounds(task, n_blocks, n_tasks)
        for b in range(b0, b1):
            prefetch_block(target, b, b1, rows_per_block)
            r0 = b * rows_per_block
            k0 = b * BLOCK_ELEMENTS
            if totals:
                part_a[b], counts[b, 0], counts[b, 1] = _block_loss_total(
                    x, xf, b, target, w, ignore_index, block_ahead(xf, b, b1, BLOCK_ELEMENTS)
                )
                continue
            ahead = block_ahead(xf, b, b1, BLOCK_ELEMENTS)
            direct = _block_shifts_and_sums(x, xf, b, shift, total, ahead)
            counts[b, 0], counts[b, 1] = _block_index_parts(
                xf[k0 : k0 + BLOCK_ELEMENTS], target, w, ignore_index, lse, r0, pa, pz, shift,
                total, direct,
            )  # fmt: skip
            _store_parts(pa, pz, part_a, part_z, b, r0, sums)
    r0 = n_blocks * rows_per_block
    tail = n_rows - r0
    lse = stack_array(MAX_BLOCK_ROWS, 0.0)[:tail]
    pa = stack_array(MAX_BLOCK_ROWS, 0.0)[:tail]
    pz = stack_array(MAX_BLOCK_ROWS, 0.0)[:tail]
    shift = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:tail]
    total = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:tail]
    kept = bad = 0
    if tail:  # the rows after the last full block, as one more (short) block
        _rows_stats(x, r0, one, shift, total)
        kept, bad = _block_index_parts(
            xf[r0 * n_cols :], target, w, ignore_index, lse, r0, pa, pz, shift, total, False
        )
    counts[n_blocks, 0], counts[n_blocks, 1] = kept, bad
    _store_parts(pa, pz, part_a, part_z, n_blocks, r0, sums)


@driver
def hardmax_short_rows(x, out, n_tasks):
    """One-hot of ``np.argmax`` of each row, for rows that ``fits``: each
    block by :func:`segment_one_hot`, in registers; a block with a NaN is
    then done again by the row kernel, whose rule it needs (the block's
    vectors without NaN may already hold their one-hots: a one-hot's argmax
    is itself, so in place that is the same answer).

    The earlier version took the same steps through scratch arrays (two
    trees, two spreads and two passes over the block in memory).  Against
    it, same-process pairs, in place, two threads, copy floors: 4M x 8
    float32 1.03 -> 0.61 and float64 1.46 -> 0.86; 16M x 2 float32 0.98 ->
    0.51; 2M x 16 float32 0.84 -> 0.51; 8M x 4 float64 1.54 -> 0.93."""
    n_rows, n_cols = x.shape
    rows_per_block, n_blocks = geometry(n_rows, n_cols)
    in_place = same_buffer(x, out)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for task in prange(n_tasks):
        b0, b1 = block_bounds(task, n_blocks, n_tasks)
        for b in range(b0, b1):
            k0 = b * BLOCK_ELEMENTS
            prefetch_block(xf, b, b1, BLOCK_ELEMENTS)
            prefetch_out_block(of, b, b1, in_place)
            ob = of[k0 : k0 + BLOCK_ELEMENTS]
            if not segment_one_hot(xf[k0 : k0 + BLOCK_ELEMENTS], ob, n_cols):
                r0 = b * rows_per_block
                _hardmax_rows_serial(
                    x[r0 : r0 + rows_per_block], out[r0 : r0 + rows_per_block], 1, False
                )
    r0 = n_blocks * rows_per_block
    _hardmax_rows_serial(x[r0:], out[r0:], 1, False)


@njit(fastmath=FASTMATH, **JIT)
def _xent_grad_rows(x, target, w, ignore_index, z_loss, r0, pa, pz, out, scale, scale_z):
    """The row kernel's fused pass over ``pa.size`` rows from ``r0`` (rows
    that are not all finite, and the rows after the last full block), its
    parts to ``pa``/``pz``."""
    r1 = r0 + pa.size
    _xent_rows_serial(
        x[r0:r1],
        target[r0:r1],
        w,
        ignore_index,
        0.0,
        z_loss,
        pa,
        pz,
        True,
        out[r0:r1],
        scale[r0:r1],
        scale_z[r0:r1],
        1,
    )


@njit(fastmath=FASTMATH, **JIT)
def _xent_grad_factors(
    xb, target, w, ignore_index, z_loss, r0, shift, sums, pa, pz, a_nll, factor, scale, scale_z
):
    """Per row of a block ``xb`` (flat, from row ``r0``), from its shift (0
    on the direct path, else the max) and its sum of ``exp(x - shift)``: the
    loss parts, the amount ``a_nll = w[t] * s`` taken off at the target, and
    the factor ``(a_nll + 2 z lse s_z) / sum`` of ``exp(x - shift)`` in the
    gradient; all 0 for ignored rows, without branches (the flat index and
    the weight as in :func:`_block_index_parts`: :func:`_target_logits`,
    unsigned indices, slices).  The rows' logsumexps also take a loop of their own: with them,
    the loop of the factors stayed scalar (two float64 divisions a row).
    Against one loop with signed indices, same-process pairs, 16K x 8 in
    cache, one thread: 0.62 (float32) and 0.73 (float64) of its time."""
    rows = pa.size
    n_cols = xb.size // rows
    tb = target[r0 : r0 + rows]
    sb = scale[r0 : r0 + rows]
    szb = scale_z[r0 : r0 + rows]
    _target_logits(xb, tb, a_nll)  # in a_nll until it is set
    unit = w.strides[0] == 0  # one weight for every class (a broadcast view)
    w0 = np.float64(w[0])
    for i in range(rows):  # lse - x[t] and lse, in pa and pz until they are set
        pa[i], pz[i] = finite_nll_and_lse(shift[i], sums[i], a_nll[i])
    for i in range(rows):
        t = tb[i]
        wt = w0 if unit else np.float64(w[_target_column(t, n_cols)])
        pa[i], pz[i], a_nll[i], f = nll_grad_factor(
            t != ignore_index, pa[i], pz[i], wt, np.float64(sums[i]), sb[i], szb[i], z_loss
        )
        factor[i] = like(f, factor[0])


@driver
def xent_index_grad_short_rows(
    x, target, w, ignore_index, z_loss, part_a, part_z, sums, out, scale, scale_z, n_tasks
):
    """The fused cross-entropy pass of index targets without smoothing for rows
    that ``fits``: the forward parts (per row, or per block with ``sums``, as
    in :func:`xent_index_short_rows`) and ``out = d loss / d x`` (``out`` may
    be ``x``), with ``scale``/``scale_z`` as in ``xent.xent_index_rows``.

    Per block: ``exp(x)`` and the rows' sums on the direct path of
    :func:`_block_exp` (else ``exp(x - max)``, and the sums, in every lane);
    per row the loss parts and the gradient's factor; then one vector pass
    ``exp * factor``, the factors spread to the rows' lanes in registers
    (:func:`segment_spread_write`), and, per row, ``- w[t] * s`` at the
    target."""
    n_rows, n_cols = x.shape
    rows_per_block, n_blocks = geometry(n_rows, n_cols)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    in_place = same_buffer(x, out)
    one = like(1.0, x[0, 0])
    for task in prange(n_tasks):
        m = stack_array(BLOCK_ELEMENTS, x[0, 0])
        e = stack_array(BLOCK_ELEMENTS, x[0, 0])
        u = stack_array(BLOCK_ELEMENTS, x[0, 0])
        shift = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:rows_per_block]
        row_sums = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:rows_per_block]
        factor = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:rows_per_block]
        a_nll = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
        pa = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
        pz = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
        b0, b1 = block_bounds(task, n_blocks, n_tasks)
        for b in range(b0, b1):
            k0 = b * BLOCK_ELEMENTS
            r0 = b * rows_per_block
            prefetch_block(target, b, b1, rows_per_block)
            xb = xf[k0 : k0 + BLOCK_ELEMENTS]
            ob = of[k0 : k0 + BLOCK_ELEMENTS]
            ahead = block_ahead(xf, b, b1, BLOCK_ELEMENTS)
            ahead_out = out_block_ahead(of, b, b1, in_place)
            if _block_exp(xb, one, e, ahead, ahead_out):
                segment_rows(e, row_sums, n_cols, SEGMENT_SUM)
                for i in range(rows_per_block):
                    shift[i] = 0.0
            elif _block_stats(xb, one, m, e, u, n_cols):  # (ahead prefetched)
                for i in range(rows_per_block):  # one lane per row
                    shift[i] = m[i * n_cols]
                    row_sums[i] = u[i * n_cols]
            else:
                _xent_grad_rows(x, target, w, ignore_index, z_loss, r0, pa, pz, out, scale, scale_z)
                _store_parts(pa, pz, part_a, part_z, b, r0, sums)
                continue
            _xent_grad_factors(
                xb,
                target,
                w,
                ignore_index,
                z_loss,
                r0,
                shift,
                row_sums,
                pa,
                pz,
                a_nll,
                factor,
                scale,
                scale_z,
            )
            _store_parts(pa, pz, part_a, part_z, b, r0, sums)
            segment_spread_write(e, factor, factor, ob, one, n_cols, SPREAD_SCALE)
            tb = target[r0 : r0 + rows_per_block]
            for i in range(rows_per_block):  # ignored rows take off 0
                ob[np.uint64(i * n_cols) + _target_column(tb[i], n_cols)] -= like(a_nll[i], one)
    r0 = n_blocks * rows_per_block
    tail = n_rows - r0
    pa = stack_array(MAX_BLOCK_ROWS, 0.0)[:tail]
    pz = stack_array(MAX_BLOCK_ROWS, 0.0)[:tail]
    _xent_grad_rows(x, target, w, ignore_index, z_loss, r0, pa, pz, out, scale, scale_z)
    _store_parts(pa, pz, part_a, part_z, n_blocks, r0, sums)


@njit(fastmath=FASTMATH, **JIT)
def _jvp_terms(yb, vb, p, mode):
    """The terms of each row's sum in ``jacobian``'s log modes."""
    if mode == LOG_JVP:
        for k in range(p.size):
            p[k] = exp(yb[k]) * vb[k]
    else:
        for k in range(p.size):
            p[k] = vb[k]


@driver
def jvp_short_rows(y, v, out, mode, n_tasks):
    """``jacobian.jvp_rows`` for rows that ``fits`` (``y``, ``v``, ``out``
    C-contiguous; ``out`` may be ``y`` or ``v``).  The softmax mode takes a
    block in registers (:func:`segment_softmax_jvp`); the log modes, whose
    terms need exponentials, take three passes: the terms, their row sums in
    every lane, then the write pass with a sum per element.  The rows' sums
    are in the data's type (at most 16 terms).  Big outputs that are neither
    input are written through scratch by streaming stores, as softmax's
    are.  Against the three passes with no streaming, softmax_vjp into a new
    array, same-process pairs, two threads, copy floors: 4M x 8 float64 2.37
    -> 1.73 and float32 1.55 -> 1.21; 8M x 4 float64 2.17 -> 1.58; 2M x 16
    float32 1.61 -> 1.31; 16M x 2 float32 1.56 -> 1.10."""
    n_rows, n_cols = y.shape
    rows_per_block, n_blocks = geometry(n_rows, n_cols)
    lanes = VECTOR_BYTES // y.itemsize
    yf = y.reshape(-1)
    vf = v.reshape(-1)
    of = out.reshape(-1)
    aliased = same_buffer(y, out) or same_buffer(v, out)
    stream = streams(out) and not aliased
    for task in prange(n_tasks):
        p = stack_array(BLOCK_ELEMENTS, y[0, 0])
        sb = stack_array(BLOCK_ELEMENTS, y[0, 0])
        b0, b1 = block_bounds(task, n_blocks, n_tasks)
        for b in range(b0, b1):
            k0 = b * BLOCK_ELEMENTS
            prefetch_block(yf, b, b1, BLOCK_ELEMENTS)
            prefetch_block(vf, b, b1, BLOCK_ELEMENTS)
            if not stream:
                prefetch_out_block(of, b, b1, aliased)
            yb = yf[k0 : k0 + BLOCK_ELEMENTS]
            vb = vf[k0 : k0 + BLOCK_ELEMENTS]
            ob = sb if stream else of[k0 : k0 + BLOCK_ELEMENTS]
            if mode == SOFTMAX:
                segment_softmax_jvp(yb, vb, ob, n_cols)
            else:
                _jvp_terms(yb, vb, p, mode)
                for k in range(0, BLOCK_ELEMENTS, lanes):
                    segment_allreduce(p, p, k, n_cols, SEGMENT_SUM)
                write_row_per_column(yb, vb, ob, p, mode)
            if stream:
                stream_copy(sb, of[k0 : k0 + BLOCK_ELEMENTS])
        stream_fence()
    for r in range(n_blocks * rows_per_block, n_rows):
        s = row_sum(y[r], v[r], mode)
        jvp_write_row(y[r], v[r], out[r], like(s, out[r, 0]), mode)
