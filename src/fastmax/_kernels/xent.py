"""Softmax cross-entropy kernels: per-sample losses and, in the same pass over
each row, the gradient with respect to the logits (``out`` may be the logits).

Rows are samples (the class axis is last in the 2-D view).  Per sample the
kernels write two float64 parts, reduced by the caller: ``part_a`` (the
weighted NLL and label-smoothing terms) and ``part_z`` (``lse**2``), because
PyTorch's mean divides them by different denominators.

Index targets, with ``w`` the class weights (ones when none are given),
``W = sum(w)``, ``eps`` the label smoothing and ``lse`` the row's logsumexp:

    part_a = (1 - eps) * w[t] * (lse - x[t]) + eps / C * (W * lse - sum(w * x))
    d/dx_k = s * ((1 - eps) * w[t] * (p_k - [k == t]) + eps / C * (W * p_k - w_k))
             + 2 * z * lse * p_k * s_z

Probability targets ``q``, smoothed to ``q' = (1 - eps) * q + eps / C``:

    part_a = A * lse - B,  A = sum(w * q'),  B = sum(w * q' * x)
    d/dx_k = s * (A * p_k - w_k * q'_k) + 2 * z * lse * p_k * s_z
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .._config import EXACT_MATH, FASTMATH, JIT
from ._math import (
    exp_nonpos,
    flat_view,
    is_c_contiguous,
    like,
    log_minus,
    log_pos,
    ordered_sum,
    stack_array,
)
from .reduce import (
    BLOCK,
    DEFER_ROWS,
    far_rows,
    lse_of_stats,
    over_memory,
    prefetch_row_ahead,
    row_max,
    row_max_sumexp,
    row_sumexp_next_max,
    sumexp_next_max,
)
from .schedule import SMALL_ROWS, block_bounds, chunk_of, column_tile, driver
from .softmax import (
    exp_store_sum_next_max,
    exp_within_bound,
    prefetch_in_place_ahead,
    same_buffer,
    small_rows_stats,
    write_row,
    write_row_per_column,
)

#: Chunks of the target check (fixed, so the summed weight does not depend
#: on the number of threads).
TARGET_CHUNKS = 16


@njit(fastmath=FASTMATH, inline="always", **JIT)
def target_status(t, n_classes, ignore_index):
    """Whether index target ``t`` is kept (not ``ignore_index``), and whether
    it is kept and outside ``[0, C)``: no branch, so loops of it vectorize."""
    keep = t != ignore_index
    return keep, keep & ((t < 0) | (t >= n_classes))


@njit(fastmath=FASTMATH, inline="always", **JIT)
def nll_and_lse(shift, total, xt):
    """A row's ``(lse - x[t], lse)`` in float64 from its ``shift`` (0, or its
    max: a non-finite one passes through as in :func:`lse_of_stats`), the
    sum ``total`` of ``exp(x - shift)`` and its target's logit ``xt``, by
    :func:`finite_nll_and_lse` where ``shift`` is finite."""
    if math.isfinite(shift):
        return finite_nll_and_lse(shift, total, xt)
    lse = np.float64(shift)
    return lse - np.float64(xt), lse


@njit(fastmath=FASTMATH, inline="always", **JIT)
def finite_nll_and_lse(shift, total, xt):
    """:func:`nll_and_lse` for a finite ``shift`` (``total`` then is a
    positive normal number): ``log(total) - (xt - shift)`` by
    :func:`log_minus`, whose error is of the order of an ulp of the loss,
    and ``lse`` from it.  ``lse - xt`` would carry the rounding of ``lse``
    to an ulp of the row's largest logit (float64 logits near 1e5: 32,700
    ulps of the loss; near 1000: 256; float32 logits of 1e30, rounded to
    float64: the whole loss)."""
    x_t = np.float64(xt)
    nll = log_minus(np.float64(total), x_t - np.float64(shift))
    return nll, nll + x_t


@njit(fastmath=FASTMATH, **JIT)
def _count_targets(target, n_classes, ignore_index):
    """How many targets are kept and how many of those are outside ``[0, C)``:
    one loop without an exit, so it vectorizes."""
    kept = 0
    bad = 0
    for i in range(target.size):
        keep, out = target_status(target[i], n_classes, ignore_index)
        kept += keep
        bad += out
    return kept, bad


@njit(fastmath=EXACT_MATH, **JIT)
def _kept_weight(target, ignore_index, weight):
    """Summed weight of the kept targets, in order (no reassociation)."""
    total = 0.0
    for i in range(target.size):
        t = target[i]
        if t != ignore_index:
            total += np.float64(weight[t])
    return total


@njit(fastmath=FASTMATH, **JIT)
def check_chunk(target, n_classes, ignore_index, weight):
    """:func:`check_targets` of one chunk (positions within it)."""
    kept, bad = _count_targets(target, n_classes, ignore_index)
    if bad:
        for i in range(target.size):
            t = target[i]
            if t != ignore_index and (t < 0 or t >= n_classes):
                return i, 0.0, 0
    if weight.strides[0] == 0:  # one weight for every class (a broadcast view)
        return -1, np.float64(weight[0]) * kept, kept
    return -1, _kept_weight(target, ignore_index, weight), kept


@driver(allocates=True)
def check_targets(target, n_classes, ignore_index, weight):
    """First position of a target outside ``[0, C)`` that is not ``ignore_index``
    (-1 if none), the summed weight of the kept targets and how many are kept."""
    n = target.size
    bad = np.empty(TARGET_CHUNKS, np.int64)
    weights = np.empty(TARGET_CHUNKS, np.float64)
    counts = np.empty(TARGET_CHUNKS, np.int64)
    for c in prange(TARGET_CHUNKS):
        lo = c * n // TARGET_CHUNKS
        b, weights[c], counts[c] = check_chunk(
            target[lo : (c + 1) * n // TARGET_CHUNKS], n_classes, ignore_index, weight
        )
        bad[c] = lo + b if b >= 0 else -1
    total_weight = 0.0
    kept = 0
    for c in range(TARGET_CHUNKS):
        if bad[c] >= 0:
            return bad[c], 0.0, 0
        total_weight += weights[c]
        kept += counts[c]
    return -1, total_weight, kept


@njit(fastmath=FASTMATH, inline="always", **JIT)
def b_shift(m):
    """The shift of :func:`row_pass`'s weighted sums of the logits: the row's
    max ``m`` where it is finite (the sums are then of ``x - m``, whose
    terms keep their low bits: ``A * lse - B`` of the unshifted sums loses
    them to cancellation), else 0."""
    return np.float64(m) if math.isfinite(m) else 0.0


@njit(fastmath=FASTMATH, inline="always", **JIT)
def shifted_lse_product(a, m, total, lse):
    """``a * lse`` less the ``a * m`` that :func:`row_pass`'s sums of ``x -
    m`` leave out (:func:`b_shift`): ``a * log(total)`` for a finite ``m``,
    else ``a * lse``."""
    return a * log_pos(total) if math.isfinite(m) else a * lse


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _weighted_sums(x, w, q, shift, smoothing, use_q):
    """:func:`row_pass`'s ``(A, B)``: for probability targets ``A = sum(w *
    q')`` and ``B = sum(w * q' * (x - shift))``, else ``(0, sum(w * (x -
    shift)))``; no weight is read when there is one for every class.  In a
    loop of its own: in the exponentials' loop, these float64 sums kept it
    from vectorizing (8192 x 1000 with label smoothing: float32 6.9, float64
    2.9 ns an element)."""
    n = x.size
    keep = 1.0 - smoothing
    spread = smoothing / n
    unit = w.strides[0] == 0  # one weight for every class (a broadcast view)
    w0 = np.float64(w[0])
    a = 0.0
    b = 0.0
    if use_q and unit:
        for k in range(n):
            wq = w0 * (np.float64(q[k]) * keep + spread)
            a += wq
            b += wq * (np.float64(x[k]) - shift)
    elif use_q:
        for k in range(n):
            wq = np.float64(w[k]) * (np.float64(q[k]) * keep + spread)
            a += wq
            b += wq * (np.float64(x[k]) - shift)
    elif unit:
        for k in range(n):
            b += np.float64(x[k]) - shift
        b *= w0
    else:
        for k in range(n):
            b += np.float64(w[k]) * (np.float64(x[k]) - shift)
    return a, b


@njit(fastmath=FASTMATH, **JIT)
def row_pass(x, nxt, w, q, out, m, smoothing, store, use_q):
    """One pass over a row: ``sum(exp(x - m))``, the max of the next row
    ``nxt`` (streamed from memory while this row's exponentials are computed
    from cache), and, for probability targets (``use_q``), ``A = sum(w * q')``
    and ``B = sum(w * q' * (x - s))``, or else ``sum(w * (x - s))`` when
    smoothing, ``s`` the :func:`b_shift` of ``m`` (:func:`_weighted_sums`,
    before the exponentials, which may overwrite ``x``).  With ``store``,
    ``out = exp(x - m)`` (``out`` may be ``x``): the gradient pass then only
    rescales (one exp per element).  A row whose max ``m`` is not finite
    gets a NaN sum (its loss is decided by ``m``).  The exp loops are
    softmax's."""
    one = like(1.0, m)
    a = 0.0
    b = 0.0
    if use_q or smoothing > 0.0:
        a, b = _weighted_sums(x, w, q, b_shift(m), smoothing, use_q)
    if store:
        total, m_next = exp_store_sum_next_max(x, out, nxt, one, m, same_buffer(x, out))
    else:  # the loop of logsumexp
        total, m_next = sumexp_next_max(x, nxt, one, m)
    return total if math.isfinite(m) else math.nan, a, b, m_next


@njit(fastmath=EXACT_MATH, **JIT)
def rescale_pass(out, w, q, coef, minus, keep, spread, use_q):
    """``out = out * coef - minus * w * q'`` (``q' = q * keep + spread``), or
    ``out * coef - minus * w`` for index targets."""
    if use_q:
        for k in range(out.size):
            out[k] = out[k] * coef - minus * w[k] * (q[k] * keep + spread)
    elif minus != 0:
        for k in range(out.size):
            out[k] = out[k] * coef - minus * w[k]
    else:  # no smoothing: no weights to read
        for k in range(out.size):
            out[k] = out[k] * coef


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _loss_part(nll, lse, wt, m, total, xw, smoothing, total_w, n_classes):
    """A row's loss part ``(1 - smoothing) wt nll``, plus the smoothing's part
    (from ``xw``, :func:`row_pass`'s sum), from its ``nll`` and ``lse``."""
    a = (1.0 - smoothing) * wt * nll
    if smoothing > 0.0:
        a += smoothing / n_classes * (shifted_lse_product(total_w, m, total, lse) - xw)
    return a


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _index_row_part(m, total, xt, wt, xw, smoothing, total_w, n_classes):
    """A row's :func:`_loss_part` and its lse (:func:`nll_and_lse`)."""
    nll, lse = nll_and_lse(m, total, xt)
    return _loss_part(nll, lse, wt, m, total, xw, smoothing, total_w, n_classes), lse


@njit(fastmath=FASTMATH, inline="always", **JIT)
def _deferred_parts(tb, w, ignore_index, smoothing, total_w, shifts, totals, xts, xws, pa, pz):
    """:func:`xent_index_rows`' parts of a run of rows (targets ``tb``, kept
    or not; an ignored row's parts are 0) from their shifts, sums, target
    logits and weighted sums, in a loop without branches: the logs
    vectorize (128 x 1000 float32, fused loss and gradient, one thread,
    same-process rounds, against a log per kept row behind a branch: 27.2
    -> 24.8 us)."""
    n_classes = w.size
    for j in range(tb.size):
        t = tb[j]
        keep = t != ignore_index
        wt = np.float64(w[t if keep else 0])
        s = shifts[j]
        fin = abs(s) < np.inf
        # A non-finite max is the loss (lse_of_stats): the log's arguments are then dummies.
        nll, lse = finite_nll_and_lse(s if fin else 0.0, totals[j] if fin else 1.0, xts[j])
        lse = lse if fin else np.float64(s)
        nll = nll if fin else np.float64(s) - xts[j]
        a = _loss_part(nll, lse, wt, s, totals[j], xws[j], smoothing, total_w, n_classes)
        pa[j] = a if keep else 0.0
        pz[j] = lse * lse if keep else 0.0


@njit(fastmath=FASTMATH, **JIT)
def _grad_rows_run(x, target, w, ignore_index, out, scale, c0, c1, r1, m_next, shifts, totals, xts):
    """:func:`xent_index_rows`' gradient without smoothing or z-loss, rows
    ``c0:c1`` of a block that ends at ``r1`` (``m_next``: row ``c0``'s max):
    each row's exponentials stored and summed (softmax's loop), then scaled
    by ``w[t] * scale[r] / total``, less ``w[t] * scale[r]`` at its target
    ``t`` (an ignored row's gradient is 0); its max, sum and target logit
    go to ``shifts``, ``totals`` and ``xts`` (from index 0) for
    :func:`_deferred_parts`.  Returns the max of the row after ``c1 - 1``
    (of ``r1 - 1`` at the block's end).  A function of its own, not
    inlined: the same loop in the driver, beside the other paths and the
    parts' loop, ran 20% slower than softmax's rows (1024 x 1000 float32,
    fused loss and gradient, one thread, same-process rounds: 190 us
    there, 161 here, softmax 157)."""
    n_classes = x.shape[1]
    one = like(1.0, x[c0, 0])
    in_place = same_buffer(x, out)
    for r in range(c0, c1):
        m = m_next
        t = target[r]
        keep = t != ignore_index
        tt = t if keep else 0
        xts[r - c0] = np.float64(x[r, tt])  # before the pass may overwrite it (in place)
        orow = out[r]
        total, m_next = exp_store_sum_next_max(x[r], orow, x[min(r + 1, r1 - 1)], one, m, in_place)
        shifts[r - c0] = m
        totals[r - c0] = total
        if not keep:
            for k in range(n_classes):
                orow[k] = 0
            continue
        c, a = _row_factor(np.float64(w[t]), scale[r], total, m)
        for k in range(n_classes):
            orow[k] *= c
        orow[t] -= a
    return m_next


@njit(fastmath=EXACT_MATH, **JIT)
def _row_factor(wt, s, total, m):
    """A kept row's factor ``wt * s / total`` of its exponentials in the
    gradient (NaN if ``m`` is not finite: the exponentials are not the
    answer, as in :func:`rescale_pass`) and ``wt * s``, taken off at its
    target, in ``m``'s type.  Without fast-math flags, in a function of its
    own: in :func:`_grad_rows_run`, LLVM rounded it differently depending on
    how that function was compiled (in the process, or loaded from the
    on-disk cache beside helpers compiled in the process), and float64
    gradients of one call differed in the last bit between processes."""
    a = wt * s
    c = a / total if math.isfinite(m) else math.nan
    return like(c, m), like(a, m)


@driver
def xent_index_rows(
    x,
    target,
    w,
    ignore_index,
    smoothing,
    z_loss,
    part_a,
    part_z,
    write_grad,
    out,
    scale,
    scale_z,
    n_blocks,
):
    """Index targets.  ``scale``/``scale_z`` (per row) multiply the gradient of
    the NLL+smoothing part and of the z-loss part (the reduction's denominators
    and the upstream gradient).  Rows go in ``n_blocks`` blocks of consecutive
    rows, each row's pass also reading the next row's max; the gradient
    without smoothing or z-loss by :func:`_grad_rows_run`.  The forward
    without smoothing is :func:`xent_index_forward`'s."""
    n_rows, n_classes = x.shape
    total_w = 0.0
    for k in range(n_classes):
        total_w += np.float64(w[k])
    # Without z-loss the gradient needs no log: the rows' parts wait for the
    # end of each run of DEFER_ROWS rows.
    defer = z_loss == 0.0
    plain = write_grad and defer and smoothing == 0.0
    for blk in prange(n_blocks):
        r0, r1 = block_bounds(blk, n_rows, n_blocks)
        m_next = row_max(x[r0]) if r1 > r0 else x[0, 0]
        shifts = stack_array(DEFER_ROWS, m_next)
        totals = stack_array(DEFER_ROWS, 0.0)
        xts = stack_array(DEFER_ROWS, 0.0)
        xws = stack_array(DEFER_ROWS, 0.0)
        for c0 in range(r0, r1, DEFER_ROWS):
            c1 = min(c0 + DEFER_ROWS, r1)
            if plain:
                m_next = _grad_rows_run(
                    x, target, w, ignore_index, out, scale, c0, c1, r1, m_next, shifts, totals,
                    xts,
                )  # fmt: skip
            else:
                for r in range(c0, c1):
                    m = m_next
                    t = target[r]
                    xr = x[r]
                    nxt = x[min(r + 1, r1 - 1)]
                    if not write_grad:
                        prefetch_row_ahead(x, r, r1)
                    if t == ignore_index:
                        m_next = row_max(nxt)
                        part_a[r] = 0.0
                        part_z[r] = 0.0
                        if write_grad:
                            orow = out[r]
                            for k in range(n_classes):
                                orow[k] = 0
                        continue
                    xt = np.float64(xr[t])  # before the pass may overwrite it (in place)
                    orow = out[r] if write_grad else out[0]
                    total, _, xw, m_next = row_pass(
                        xr, nxt, w, w, orow, m, smoothing, write_grad, False
                    )
                    wt = np.float64(w[t])
                    lse = 0.0
                    if defer:
                        shifts[r - c0], totals[r - c0], xts[r - c0], xws[r - c0] = m, total, xt, xw
                    else:
                        part_a[r], lse = _index_row_part(
                            m, total, xt, wt, xw, smoothing, total_w, n_classes
                        )
                        part_z[r] = lse * lse
                    if write_grad:
                        s = scale[r]
                        a_nll = (1.0 - smoothing) * wt * s
                        a_smooth = smoothing / n_classes * s
                        z_term = 2.0 * z_loss * lse * scale_z[r] if z_loss != 0.0 else 0.0
                        coef = (a_nll + a_smooth * total_w + z_term) / total
                        one = like(1.0, m)
                        rescale_pass(orow, w, w, like(coef, m), like(a_smooth, m), one, one, False)
                        orow[t] -= like(a_nll, m)
            if defer:
                _deferred_parts(
                    target[c0:c1], w, ignore_index, smoothing, total_w, shifts, totals, xts,
                    xws, part_a[c0:c1], part_z[c0:c1],
                )  # fmt: skip


@njit(fastmath=FASTMATH, inline="always", **JIT)
def set_index_part(x, target, w, ignore_index, r, shift, total, part_a, part_z, p):
    """``part_a[p] = w[t] * (lse - x[r, t])`` and ``part_z[p] = lse**2`` for
    row ``r`` and its target ``t`` (0 for an ignored row) from the row's
    shift and sum (:func:`nll_and_lse`)."""
    t = target[r]
    keep = t != ignore_index
    tt = t if keep else 0
    nll, lse = nll_and_lse(shift, total, x[r, tt])
    part_a[p] = np.float64(w[tt]) * nll if keep else 0.0
    part_z[p] = lse * lse if keep else 0.0


@njit(fastmath=FASTMATH, **JIT)
def index_forward_block(x, target, w, ignore_index, part_a, part_z, r0, r1):
    """The forward of index targets without smoothing on rows ``r0:r1`` (of
    at most a block), pipelined as :func:`softmax.logsumexp_rows_block`:
    each row's exponentials also read the next row's max.  In a function of
    its own, apart from :func:`xent_index_rows`' other paths: in that
    function the loop ran slower (32768 x 1000 float64, same-process pairs
    in three processes, with float64 terms by Horner: 1.90 -> 1.51-1.79
    read floors).  The fused parts beat a logsumexp pass into a row-sized
    buffer followed by the parts (float32: 1.70 against 1.89-2.02)."""
    one = like(1.0, x[r0, 0])
    far = far_rows(x)
    m_next = row_max(x[r0])
    shifts = stack_array(DEFER_ROWS, one)
    totals = stack_array(DEFER_ROWS, 0.0)
    # Over memory, each row's log right after it (see DEFER_ROWS).
    run = 1 if over_memory(x) else DEFER_ROWS
    for c0 in range(r0, r1, run):
        c1 = min(c0 + run, r1)
        for r in range(c0, c1):
            m = m_next
            totals[r - c0], m_next = row_sumexp_next_max(x, r, r1, one, m, far)
            shifts[r - c0] = m
        for r in range(c0, c1):  # the logs; the rows are in cache still
            set_index_part(
                x, target, w, ignore_index, r, shifts[r - c0], totals[r - c0], part_a, part_z, r
            )


@njit(fastmath=FASTMATH, **JIT)
def index_forward_long_rows(x, target, w, ignore_index, part_a, part_z, r0, r1):
    """:func:`index_forward_block` for rows longer than a block: each read
    once by :func:`row_max_sumexp` (the next row's max read along with a
    long row's exponentials from L2 cost 2.2 read floors on 128 x 256K
    float32 against 1.65), and ignored rows not at all."""
    one = like(1.0, x[r0, 0])
    for r in range(r0, r1):
        m, total = like(0.0, one), 1.0  # an ignored row's parts are 0
        if target[r] != ignore_index:
            m, total = row_max_sumexp(x[r], one)
        set_index_part(x, target, w, ignore_index, r, m, total, part_a, part_z, r)


@driver
def xent_index_forward(x, target, w, ignore_index, part_a, part_z, n_blocks):
    """The forward of index targets without smoothing (z-loss allowed: its
    part is ``lse**2``): per row ``part_a = w[t] (lse - x[t])`` and ``part_z
    = lse**2``, in ``n_blocks`` blocks of consecutive rows."""
    n_rows, n_classes = x.shape
    for b in prange(n_blocks):
        r0, r1 = block_bounds(b, n_rows, n_blocks)
        if r1 > r0:
            if n_classes > BLOCK:
                index_forward_long_rows(x, target, w, ignore_index, part_a, part_z, r0, r1)
            else:
                index_forward_block(x, target, w, ignore_index, part_a, part_z, r0, r1)


@njit(fastmath=FASTMATH, **JIT)
def xent_index_rows_small(x, target, w, ignore_index, part_a, part_z):
    """The forward of :func:`xent_index_rows` (index targets, no smoothing)
    for inputs that fit in cache: the rows' shifts and sums by
    :func:`small_rows_stats`, then the parts: where the shifts are all 0,
    in loops without branches, the targets' logits in one of their own (64
    x 100 float32, same-process rounds against one loop of
    :func:`set_index_part`: 3.03 -> 2.90 us).  At most
    :data:`SMALL_ROWS` rows (scratch on the stack).  The parts go to
    ``part_a``/``part_z`` if they have a row's length (else they stay on the
    stack); returns their sums (:func:`ordered_sum`: a fixed order)."""
    n = x.shape[0]
    one = like(1.0, x[0, 0])
    pa = part_a if part_a.size == n else stack_array(SMALL_ROWS, 0.0)[:n]
    pz = part_z if part_z.size == n else stack_array(SMALL_ROWS, 0.0)[:n]
    shift = stack_array(SMALL_ROWS, one)[:n]
    total = stack_array(SMALL_ROWS, 0.0)[:n]
    if small_rows_stats(x, one, shift, total):
        xt = stack_array(SMALL_ROWS, 0.0)[:n]
        for r in range(n):
            t = target[r]
            xt[r] = x[r, t if t != ignore_index else 0]
        for r in range(n):  # the losses in xt, the logsumexps in pz
            xt[r], pz[r] = finite_nll_and_lse(shift[r], total[r], xt[r])
        for r in range(n):
            t = target[r]
            keep = t != ignore_index
            pa[r] = np.float64(w[t if keep else 0]) * xt[r] if keep else 0.0
            pz[r] = pz[r] * pz[r] if keep else 0.0
    else:
        for r in range(n):
            set_index_part(x, target, w, ignore_index, r, shift[r], total[r], pa, pz, r)
    return ordered_sum(pa), ordered_sum(pz)


@njit(fastmath=FASTMATH, inline="always", **JIT)
def grad_factor(keep, xt, wt, shift, total, s, s_z, z_loss):
    """One row's loss parts and gradient factors (index targets, no
    smoothing) from its target's logit ``xt``, weight ``wt``, shift (0 or
    its max) and sum of ``exp(x - shift)``: ``(w[t] (lse - x[t]), lse**2,
    a_nll, factor)`` with ``a_nll = w[t] s`` taken off at the target and
    ``factor = (a_nll + 2 z lse s_z) / sum`` multiplying ``exp(x - shift)``;
    all 0 for an ignored row (``keep`` False), without branches.  The shift
    is finite (:func:`finite_nll_and_lse`)."""
    nll, lse = finite_nll_and_lse(shift, total, xt)
    return nll_grad_factor(keep, nll, lse, wt, total, s, s_z, z_loss)


@njit(fastmath=FASTMATH, inline="always", **JIT)
def nll_grad_factor(keep, nll, lse, wt, total, s, s_z, z_loss):
    """:func:`grad_factor` from the row's ``lse - x[t]`` and logsumexp."""
    a = wt * s
    z_term = 2.0 * z_loss * lse * s_z
    return (
        wt * nll if keep else 0.0,
        lse * lse if keep else 0.0,
        a if keep else 0.0,
        (a + z_term) / total if keep else 0.0,
    )


_xent_index_rows_serial = xent_index_rows.serial


@njit(fastmath=FASTMATH, **JIT)
def xent_index_grad_rows_small(
    x, target, w, ignore_index, z_loss, part_a, part_z, out, scale, scale_z
):
    """The fused pass of :func:`xent_index_rows` (index targets, no
    smoothing) for inputs that fit in cache, as :func:`xent_index_rows_small`
    does the forward: in passes over all rows, the targets' logits (before
    ``out``, which may be ``x``, is written), the maxima (none for
    C-contiguous arrays whose values are all within the exp bound: their
    exponentials are taken unshifted, in one flat loop), the exponentials
    into ``out`` and their sums, the parts and factors, then the scaling.
    If a row's max is not finite, the whole call takes the row kernel.
    ``scale``/``scale_z`` have one element per row, or one for every row
    (the reductions "mean" and "sum").  Measured on 64 x 100 float32: 2.5 us
    a call, where the row kernel took 11 us.  The parts are kept as
    :func:`xent_index_rows_small` keeps them; returns their sums."""
    n = x.shape[0]
    one = like(1.0, x[0, 0])
    shift = stack_array(SMALL_ROWS, one)[:n]
    xt = stack_array(SMALL_ROWS, 0.0)[:n]
    sums = stack_array(SMALL_ROWS, 0.0)[:n]
    a_nll = stack_array(SMALL_ROWS, 0.0)[:n]
    factor = stack_array(SMALL_ROWS, one)[:n]
    pa = part_a if part_a.size == n else stack_array(SMALL_ROWS, 0.0)[:n]
    pz = part_z if part_z.size == n else stack_array(SMALL_ROWS, 0.0)[:n]
    step = 1 if scale.size == n else 0
    for r in range(n):
        t = target[r]
        xt[r] = np.float64(x[r, t if t != ignore_index else 0])
    direct = is_c_contiguous(x) and is_c_contiguous(out)
    if direct:  # on False, x (even in place) is as it was
        direct = exp_within_bound(flat_view(x), flat_view(out), one)
    if direct:
        for r in range(n):
            shift[r] = 0.0
            sums[r] = ordered_sum(out[r])
    else:
        finite = True
        for r in range(n):
            shift[r] = row_max(x[r])
            finite &= abs(shift[r]) < np.inf
        if not finite:
            for i in range(n):  # one row at a time: the scales may be one for all
                k = i * step
                _xent_index_rows_serial(
                    x[i : i + 1], target[i : i + 1], w, ignore_index, 0.0, z_loss,
                    pa[i : i + 1], pz[i : i + 1], True, out[i : i + 1],
                    scale[k : k + 1], scale_z[k : k + 1], 1,
                )  # fmt: skip
            return ordered_sum(pa), ordered_sum(pz)
        in_place = same_buffer(x, out)
        for r in range(n):
            sums[r], _ = exp_store_sum_next_max(x[r], out[r], x[r], one, shift[r], in_place)
    for r in range(n):
        t = target[r]
        keep = t != ignore_index
        wt = np.float64(w[t if keep else 0])
        pa[r], pz[r], a_nll[r], f = grad_factor(
            keep, xt[r], wt, shift[r], sums[r], scale[r * step], scale_z[r * step], z_loss
        )
        factor[r] = like(f, one)
    for r in range(n):
        orow = out[r]
        f = factor[r]
        for k in range(orow.size):
            orow[k] *= f
        t = target[r]
        orow[t if t != ignore_index else 0] -= like(a_nll[r], one)
    return ordered_sum(pa), ordered_sum(pz)


@njit(fastmath=FASTMATH, **JIT)
def xent_small_reduced(x, target, w, ignore_index, z_loss, mean, out, fused):
    """A reduced loss (mean if ``mean``, else sum) of index targets without
    smoothing, on an input for :func:`xent_index_rows_small`, in one call:
    the targets' check (:func:`check_chunk`), then the forward or, if
    ``fused``, the fused pass for ``grad=1`` into ``out``, the gradient's
    scales and the loss (the rules of the Python layer's ``_reduced_scales``
    and ``_loss_of_sums``, whose calls cost more than this kernel on small
    inputs).  Returns ``(bad, loss)``: ``bad`` is the position of the first
    target outside ``[0, C)`` that is not ``ignore_index`` (nothing is
    written then) or -1."""
    bad, denominator, kept = check_chunk(target, x.shape[1], ignore_index, w)
    if bad >= 0:
        return bad, 0.0
    none = stack_array(1, 0.0)[:0]  # the parts stay on the kernels' stacks
    if fused:
        scale = stack_array(1, 0.0)
        scale_z = stack_array(1, 0.0)
        scale[0] = 1.0 / denominator if mean else 1.0  # 1 / 0 is inf, as in Python's path
        scale_z[0] = 1.0 / max(kept, 1) if mean else 1.0
        total, z = xent_index_grad_rows_small(
            x, target, w, ignore_index, z_loss, none, none, out, scale, scale_z
        )
    else:
        total, z = xent_index_rows_small(x, target, w, ignore_index, none, none)
    if mean:  # 0 / 0 is NaN
        return -1, total / denominator + (z_loss * z / kept if z_loss != 0.0 else 0.0)
    return -1, total + (z_loss * z if z_loss != 0.0 else 0.0)


@driver
def xent_prob_rows(
    x, q, w, smoothing, z_loss, part_a, part_z, write_grad, out, scale, scale_z, n_blocks
):
    """Probability targets ``q`` (same shape as ``x``), rows in blocks as above."""
    n_rows, n_classes = x.shape
    keep = like(1.0 - smoothing, x[0, 0])
    spread = like(smoothing / n_classes, x[0, 0])
    for blk in prange(n_blocks):
        r0, r1 = block_bounds(blk, n_rows, n_blocks)
        m_next = row_max(x[r0]) if r1 > r0 else x[0, 0]
        for r in range(r0, r1):
            m = m_next
            xr = x[r]
            orow = out[r] if write_grad else out[0]
            total, a, b, m_next = row_pass(
                xr, x[min(r + 1, r1 - 1)], w, q[r], orow, m, smoothing, write_grad, True
            )
            lse = lse_of_stats(m, total)
            part_a[r] = shifted_lse_product(a, m, total, lse) - b
            part_z[r] = lse * lse
            if write_grad:
                s = scale[r]
                z_term = 2.0 * z_loss * lse * scale_z[r] if z_loss != 0.0 else 0.0
                coef = (a * s + z_term) / total
                rescale_pass(orow, w, q[r], like(coef, m), like(s, m), keep, spread, True)


@driver
def xent_grad_rows_split(x, w, out, m_rows, coef_rows, smooth_rows, chunk):
    """The gradient of few long rows split into chunks over all threads:
    ``out = exp(x - m) * coef - smooth * w`` per row (``out`` may be ``x``);
    the caller then subtracts the target's term."""
    n_rows, n_cols = x.shape
    n_chunks = (n_cols + chunk - 1) // chunk
    for task in prange(n_rows * n_chunks):
        r, lo, hi = chunk_of(task, n_chunks, chunk, n_cols)
        m = m_rows[r]
        coef = like(coef_rows[r], m)
        smooth = like(smooth_rows[r], m)
        o = out[r, lo:hi]
        ws = w[lo:hi]
        if smooth == 0:  # softmax's write pass: no weights to read
            write_row(x[r, lo:hi], o, like(1.0, m), m, coef, False)
        elif same_buffer(x, out):  # one array: equal pointers would not vectorize
            for i in range(o.size):
                o[i] = exp_nonpos(o[i] - m) * coef - smooth * ws[i]
        else:
            xs = x[r, lo:hi]
            for i in range(o.size):
                o[i] = exp_nonpos(xs[i] - m) * coef - smooth * ws[i]


@driver
def xent_grad_cols(x, out, m, coef, n_chunks):
    """The gradient when the class axis is the first of ``x`` (C, N) and the
    samples are the contiguous axis: ``out = exp(x - m[j]) * coef[j]``, rows of
    classes split in chunks over the threads; the caller then subtracts the
    targets' terms."""
    n, n_cols = x.shape
    one = like(1.0, m[0])
    tile = column_tile(n_cols, x.itemsize)
    for c in prange(n_chunks):
        i1 = ((c + 1) * n) // n_chunks
        for c0 in range(0, n_cols, tile):
            c1 = min(c0 + tile, n_cols)
            for i in range((c * n) // n_chunks, i1):
                prefetch_in_place_ahead(x, out, i, i1, c0, c1)
                write_row_per_column(x[i, c0:c1], out[i, c0:c1], one, m[c0:c1], coef[c0:c1], False)


@driver
def copy_rows(src, dst):
    """``dst[...] = src`` for 2-D views of one shape, walking ``src``'s rows in
    order (a gather of a transposed view streams instead of striding)."""
    for i in prange(src.shape[0]):
        s = src[i]
        d = dst[i]
        for j in range(s.size):
            d[j] = s[j]
