"""Row reductions shared by every kernel family.

All take a 1-D view (any stride) with at least one element and compute in the
view's own floating type.  Sums of exponentials are float64 across runs of
:data:`ACC_RUN` elements; within a run, exponentials are stored and summed by
:func:`ordered_sum` (float32 in float32 lanes: twice as fast as float64 sums,
and accurate: a lane adds at most ``ACC_RUN / 64`` terms), in an order fixed
by its IR.  Rows of unit stride on AVX-512 take :func:`exp_sum_max`
instead (no buffer; its own fixed order).  A sum vectorized by LLVM runs in
an order that can differ between a kernel compiled in this process and the
same kernel loaded from the on-disk cache (measured: results then differed
in the last bit), so results are the same bits in every process.

``scale`` multiplies every element before use (``1/temperature``); as it is
positive, ``max(x) * scale == max(x * scale)`` exactly.  A row's statistics
are ``(m, total)``: its max (NaN-propagating, as ``np.max``) and
``sum(exp(x * scale - m))``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numba.extending import overload

from .._config import FASTMATH, JIT
from ._math import (
    exp_nonpos,
    exp_sum_max,
    exp_term,
    fmaximum,
    like,
    ordered_sum,
    prefetch_to_l2,
    stack_array,
    table_exp_type,
)

#: Elements per block of the online max+sum: small enough to stay in L1.
BLOCK = 2048
#: Bytes of :func:`sumexp_next_max_far`'s far row or block prefetched
#: before each part of its loop.  Rows read from memory wait for their
#: lines unless they are asked for well ahead: the hardware prefetchers stop
#: at page boundaries, and the loop's arithmetic keeps few of its own loads
#: in flight.  A block prefetched all at once made logsumexp of 2048 x 32000
#: float32 slower (1.60 -> 1.70 read floors); in parts of 2 KiB (32 lines)
#: it ran at 1.30.  Parts of 1 KiB and 4 KiB (float64: 2 KiB 1.42, 1 KiB
#: 1.47, 4 KiB 1.63), and a block further ahead, measured slower.
FAR_PART_BYTES = 2048
#: Elements per run of a sum of exponentials: each run sums in the row's type
#: (float32 sums run twice as fast as float64 ones), runs add up in float64.
ACC_RUN = 2048
#: logsumexp results smaller than this are recomputed in SciPy's more precise
#: form (below it, ``m + log(total)`` loses relative accuracy to cancellation).
NEAR_ZERO = 1e-2


#: Rows of at most this many bytes, of arrays of at least
#: :data:`PREFETCH_MIN_BYTES`, are prefetched :data:`PREFETCH_AHEAD_BYTES`
#: ahead by the read-only pipelined row passes (those of logsumexp and the
#: cross-entropy forward prefetch rows of more than :data:`FAR_PART_BYTES`
#: in parts instead: see :func:`far_rows`): such a row is at most a page,
#: and the hardware prefetchers stop at page boundaries.  Measured
#: (same-process pairs, 2 threads): logsumexp and cross-entropy forward of
#: 32768 x 1000 float32 26-29% faster; 1024 x 1000 float32 (in cache) 7%
#: slower, hence the size floor; rows of 8000 bytes 10% slower, and no gain
#: in passes that also write.  Into L2 (into L1 one thread took 10% longer).
PREFETCH_ROW_BYTES = 4096
PREFETCH_AHEAD_BYTES = 8192
PREFETCH_MIN_BYTES = 1 << 24
#: Rows whose logs the cross-entropy's pipelined row loops take after the
#: run of rows, from the statistics they keep for them.  In the loop, a
#: row's log (``log_minus``: a division and a polynomial) waits on its sum,
#: and the next row's exponentials on the log (the reorder window holds less
#: than a row of 1000): one thread, 1024 x 1000 float32 in cache, the fused
#: cross-entropy took 185 us with each row's log and 145 with the logs after
#: (softmax: 146), the forward 121 -> 108.  (logsumexp's libm log gained
#: nothing so: 103 us either way.)  Over memory the forward takes each
#: row's log after it: there, the runs' logs held up the reads (32768 x
#: 1000, same-process rounds, float32 +3%, float64 +3-6%), while the fused
#: cross-entropy still gained (float32 7.45 -> 6.39 ms, float64 13.2 -> 12.5).
DEFER_ROWS = 64


@njit(fastmath=FASTMATH, inline="always", **JIT)
def over_memory(x):
    """Whether the row passes over ``x`` (2-D) read it from memory, not from
    cache: an array of at least :data:`PREFETCH_MIN_BYTES`."""
    return x.shape[0] * x.shape[1] * x.itemsize >= PREFETCH_MIN_BYTES


@njit(fastmath=FASTMATH, inline="always", **JIT)
def prefetch_row_ahead(x, r, r1):
    """Prefetch the row of ``x`` (2-D; rows before ``r1``) about
    :data:`PREFETCH_AHEAD_BYTES` after row ``r``, for rows and arrays of the
    sizes above."""
    row_bytes = x.shape[1] * x.itemsize
    if row_bytes <= PREFETCH_ROW_BYTES and over_memory(x):
        ahead = r + (PREFETCH_AHEAD_BYTES + row_bytes - 1) // row_bytes
        if ahead < r1:
            prefetch_to_l2(x[ahead])


@njit(fastmath=FASTMATH, **JIT)
def far_rows(x):
    """Whether a pipelined read-only pass over the rows of ``x`` (2-D; one
    :func:`sumexp_next_max` per row) takes :func:`sumexp_next_max_far` with
    the row two after the next: rows longer than :data:`FAR_PART_BYTES` and
    of at most :data:`ACC_RUN` elements, in arrays of at least
    :data:`PREFETCH_MIN_BYTES`.  Measured (same-process runs, 2 threads,
    read floors): logsumexp of 32768 x 1000 float32 1.58 -> 1.41-1.48,
    float64 1.36-1.63 -> 1.30, of 65536 x 500 float64 1.61 -> 1.37; the
    cross-entropy forward 1.67 -> 1.46 and 1.75 -> 1.34.  Rows of 2 KiB
    (65536 x 512 float32) ran slower that way (1.38 -> 1.43): they, and
    shorter rows, keep :func:`prefetch_row_ahead`."""
    return x.shape[1] * x.itemsize > FAR_PART_BYTES and x.shape[1] <= ACC_RUN and over_memory(x)


@njit(fastmath=FASTMATH, **JIT)
def row_max(x):
    """NaN-propagating maximum of a non-empty row (as ``np.max``)."""
    m = x[0]
    for i in range(1, x.size):
        m = fmaximum(m, x[i])
    return m


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _sumexp_part(x, nxt, scale, shift, m_next, buf):
    """``buf = exp(x * scale - shift)``; returns the max of ``m_next`` and ``nxt``."""
    for i in range(x.size):
        buf[i] = exp_term(x[i] * scale - shift)
        m_next = fmaximum(m_next, nxt[i])
    return m_next


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _sumexp_run(x, nxt, scale, shift, m_next, buf):
    m_next = _sumexp_part(x, nxt, scale, shift, m_next, buf)
    return ordered_sum(buf[: x.size]), m_next


def sumexp_next_max(x, nxt, scale, shift):  # pragma: no cover - replaced by the overload
    return np.exp(np.float64(x) * scale - shift).sum(), np.max(nxt[: x.size])


@overload(sumexp_next_max, inline="always")
def _sumexp_next_max_overload(x, nxt, scale, shift):
    """``sum(exp(x * scale - shift))`` as float64 and, in the same loop, the max
    of ``nxt`` (at least as long as ``x``): the next row or block streams in
    from memory while this one's exponentials are computed from cache.

    Rows of unit stride on AVX-512 go to :func:`exp_sum_max` in parts
    (:func:`_table_sumexp`).  Others: runs of :data:`ACC_RUN`
    exponentials go to a stack buffer and are summed by :func:`ordered_sum`
    (in the row's type, in a fixed order); runs add up in float64.  The
    fixed order lets float64 exponentials take Horner's scheme (see
    :func:`exp_term`), whose sums in LLVM's order were measured to differ
    between builds of one kernel."""
    if table_exp_type(x) and table_exp_type(nxt):
        return lambda x, nxt, scale, shift: _table_sumexp(x, nxt, x[:0], scale, shift)
    return lambda x, nxt, scale, shift: sumexp_runs_next_max(x, nxt, scale, shift)


@njit(fastmath=FASTMATH, inline="always", **JIT)
def sumexp_runs_next_max(x, nxt, scale, shift):
    """:func:`sumexp_next_max` by runs of stored exponentials on every array:
    the sums of the write passes that sum the next row's exponentials
    (``softmax.log_write_sumexp_next_max``), bit for bit, for the row they
    do not take (a block's first)."""
    m_next = nxt[0]
    buf = stack_array(ACC_RUN, shift)
    total = 0.0
    n = x.size
    for i0 in range(0, n, ACC_RUN):
        i1 = min(i0 + ACC_RUN, n)
        # A run is a slice: a loop over a whole slice vectorizes, a loop over
        # range(i0, i1) inside this one was measured 2x slower.
        part, m_next = _sumexp_run(x[i0:i1], nxt[i0:i1], scale, shift, m_next, buf)
        total += part
    return total, m_next


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _table_sumexp(x, nxt, far, scale, shift):
    """:func:`sumexp_next_max` by :func:`exp_sum_max`, in parts of
    :data:`FAR_PART_BYTES` (part sums added in order), each after the
    prefetch of that part of ``far`` (empty, or as long as ``x`` or shorter)."""
    m_next = nxt[0]
    total = 0.0
    n = x.size
    step = FAR_PART_BYTES // x.itemsize
    for k0 in range(0, n, step):
        k1 = min(k0 + step, n)
        prefetch_to_l2(far[k0:k1])
        part, top = exp_sum_max(x[k0:k1], nxt[k0:k1], scale, shift)
        total += part
        m_next = fmaximum(m_next, like(top, m_next))
    return total, m_next


def sumexp_next_max_far(x, nxt, far, scale, shift):  # pragma: no cover - replaced by the overload
    return sumexp_next_max(x, nxt, scale, shift)


@overload(sumexp_next_max_far, jit_options={"fastmath": FASTMATH, "_nrt": False})
def _sumexp_next_max_far_overload(x, nxt, far, scale, shift):
    """:func:`sumexp_next_max` of at most :data:`ACC_RUN` elements (the same
    sum, bit for bit) that also prefetches ``far`` (the row or block after
    ``nxt``; as long as ``x``, or shorter near an array's end) into L2, in
    parts of :data:`FAR_PART_BYTES`, one before each part of the loop."""
    if table_exp_type(x) and table_exp_type(nxt):
        return lambda x, nxt, far, scale, shift: _table_sumexp(x, nxt, far, scale, shift)
    return lambda x, nxt, far, scale, shift: _sumexp_runs_far(x, nxt, far, scale, shift)


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _sumexp_runs_far(x, nxt, far, scale, shift):
    m_next = nxt[0]
    buf = stack_array(ACC_RUN, shift)
    n = x.size
    step = FAR_PART_BYTES // x.itemsize
    for k0 in range(0, n, step):
        k1 = min(k0 + step, n)
        prefetch_to_l2(far[k0:k1])
        m_next = _sumexp_part(x[k0:k1], nxt[k0:k1], scale, shift, m_next, buf[k0:k1])
    return ordered_sum(buf[:n]), m_next


@njit(fastmath=FASTMATH, inline="always", **JIT)
def row_sumexp_next_max(x, r, r1, scale, shift, far):
    """``sum(exp(x[r] * scale - shift))`` and the max of the next row (the
    last of rows before ``r1`` passes itself), for the pipelined read-only
    passes over the rows of ``x`` (2-D): with ``far`` (:func:`far_rows`) by
    :func:`sumexp_next_max_far` prefetching the row two after the next (or
    the last), else by :func:`sumexp_next_max` after :func:`prefetch_row_ahead`."""
    nxt = x[min(r + 1, r1 - 1)]
    if far:
        return sumexp_next_max_far(x[r], nxt, x[min(r + 3, r1 - 1)], scale, shift)
    prefetch_row_ahead(x, r, r1)
    return sumexp_next_max(x[r], nxt, scale, shift)


@njit(fastmath=FASTMATH, **JIT)
def row_sumexp_split(x, scale, shift):
    """``(sum of exp(v - shift) over v != shift, how many v == shift)``, ``v = x * scale``."""
    rest = 0.0
    count = 0
    for i in range(x.size):
        v = x[i] * scale
        hit = v == shift
        count += hit
        rest += 0.0 if hit else np.float64(exp_nonpos(v - shift))
    return rest, count


@njit(fastmath=FASTMATH, **JIT)
def is_dominant(m):
    """True for a maximum that decides the row alone: NaN or +inf."""
    return not (m < np.inf)


@njit(fastmath=FASTMATH, **JIT)
def row_max_sumexp(x, scale):
    """Online ``(m, total)`` in one read of the row, block by block.

    When ``m`` is NaN, +inf or -inf, ``total`` is meaningless: callers turn
    such rows into SciPy's answers through :func:`finish`-style rules.
    """
    n = x.size
    neg_inf = like(-np.inf, scale)
    m = neg_inf
    total = 0.0
    block_max = row_max(x[: min(BLOCK, n)])
    for b0 in range(0, n, BLOCK):
        block = x[b0 : min(b0 + BLOCK, n)]
        bm = block_max * scale
        if is_dominant(bm):
            # NaN anywhere wins over +inf: finish the max over the whole row.
            return row_max(x) * scale, math.nan
        if bm > m:
            if m > neg_inf:
                total *= math.exp(np.float64(m) - np.float64(bm))
            m = bm
        # The next block's max is read in the same loop when it is a full block.
        full_next = b0 + 2 * BLOCK <= n
        nxt = x[b0 + BLOCK : b0 + 2 * BLOCK] if full_next else block
        if m > neg_inf and full_next:
            far = x[b0 + 2 * BLOCK : b0 + 3 * BLOCK]  # empty near the row's end
            s, next_max = sumexp_next_max_far(block, nxt, far, scale, m)
            total += s
        elif m > neg_inf:
            s, next_max = sumexp_next_max(block, nxt, scale, m)
            total += s
        else:
            next_max = row_max(nxt)
        if not full_next and b0 + BLOCK < n:
            next_max = row_max(x[b0 + BLOCK :])
        block_max = next_max
    return m, total


@njit(fastmath=FASTMATH, **JIT)
def merge_max_sumexp(m_parts, total_parts):
    """Merge per-chunk ``(m, total)`` of one row, in order (deterministic)."""
    neg_inf = like(-np.inf, m_parts[0])
    m = row_max(m_parts)
    if is_dominant(m) or not (m > neg_inf):
        return m, math.nan
    total = 0.0
    for k in range(m_parts.size):
        mk = m_parts[k]
        if mk > neg_inf:
            total += total_parts[k] * math.exp(np.float64(mk) - np.float64(m))
    return m, total


@njit(fastmath=FASTMATH, **JIT)
def lse_of_stats(m, total):
    """``m + log(total)`` as float64; a non-finite ``m`` (NaN, +inf, or -inf for
    an all -inf row) passes through."""
    return np.float64(m) + math.log(total) if math.isfinite(m) else np.float64(m)


@njit(fastmath=FASTMATH, **JIT)
def logsumexp_of_row(x, scale, m, total):
    """``log(sum(exp(x * scale)))`` from the row's ``(m, total)``, as float64.

    Results near zero, where ``m + log(total)`` has lost relative accuracy,
    are recomputed from the row in SciPy's form ``m + log(count) + log1p(rest/count)``.
    Non-finite ``m`` passes through (NaN, +inf, or -inf for an all -inf row).
    """
    res = lse_of_stats(m, total)
    if math.isfinite(m) and abs(res) < NEAR_ZERO:
        rest, count = row_sumexp_split(x, scale, m)
        res = math.log1p(rest / count) + math.log(count) + np.float64(m)
    return res
