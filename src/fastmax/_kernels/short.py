"""Kernels for many short rows (``C`` a power of two that fits several times
in one vector: 2, 4, 8, 16 float32 or 2, 4, 8 float64 classes).

A row loop over 8 elements runs its vector loops zero times and everything
in scalar remainders.  These kernels instead treat a block of rows as one
flat array, so every loop is a full-width vector loop, and reduce each row
inside the vectors with :func:`segment_allreduce` (every lane of a row ends
up holding the row's max, then its sum).  Logarithms of the sums are taken
in every lane with the vectorizable :func:`log_pos` (sums of ``exp(v - max)``
lie in ``[1, C]``).

Blocks whose rows are not all finite (NaN or ±inf maxima) are handed to the
row kernels, whose rules give SciPy's answers; so are the rows after the
last full block.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._config import FASTMATH, JIT
from ._math import (
    SEGMENT_FAST_MAX,
    SEGMENT_MAX,
    SEGMENT_SUM,
    VECTOR_BYTES,
    exp,
    exp_nonpos,
    fmaximum,
    is_single,
    like,
    log_pos,
    segment_allreduce,
    stack_array,
)
from .hardmax import row_argmax, write_one_hot
from .jacobian import LOG_JVP, SOFTMAX, row_sum, write_row_per_column
from .jacobian import write_row as jvp_write_row
from .reduce import NEAR_ZERO, logsumexp_of_row, row_max_sumexp
from .schedule import block_bounds, driver
from .softmax import same_buffer, softmax_rows_cached_block
from .xent import index_parts, xent_index_rows

_xent_rows_serial = xent_index_rows.serial

#: Elements per block (a multiple of every vector's lane count): with its
#: scratch rows of the same size it stays in L1.
BLOCK_ELEMENTS = 1024
#: The most rows a block can have (2 classes).
MAX_BLOCK_ROWS = BLOCK_ELEMENTS // 2


def fits(n_cols: int, itemsize: int) -> bool:
    """Whether rows of ``n_cols`` elements go to these kernels."""
    lanes = VECTOR_BYTES // itemsize
    return 2 <= n_cols <= lanes and n_cols & (n_cols - 1) == 0


@njit(fastmath=FASTMATH, **JIT)
def geometry(n_rows, n_cols):
    """Rows per block and the number of full blocks."""
    rows_per_block = BLOCK_ELEMENTS // n_cols
    return rows_per_block, n_rows // rows_per_block


def fits_rows(src, dst=None) -> bool:
    """Whether 2-D views (C-contiguous, enough of them) go to these kernels."""
    return (
        src.flags.c_contiguous
        and (dst is None or dst.flags.c_contiguous)
        and fits(src.shape[1], src.itemsize)
        and src.size >= BLOCK_ELEMENTS
    )


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
def _softmax_write(xb, ob, scale, m, e, u, rows, log):
    """``e / sum`` or ``(v - m) - log(sum)``.  Logs, and float64 reciprocals
    (a float64 vector division costs as much as 1.4 cycles per element), are
    taken once per row (``rows`` is scratch) and broadcast to the lanes of
    ``u``; float32 divides in every lane (cheaper than the broadcast)."""
    n_cols = xb.size // rows.size
    if log:
        for i in range(rows.size):  # a strided loop: not vectorized
            rows[i] = u[i * n_cols]
        for i in range(rows.size):
            rows[i] = like(log_pos(np.float64(rows[i])), rows[0])
        _broadcast_rows(rows, u, n_cols)
        for k in range(xb.size):
            ob[k] = (xb[k] * scale - m[k]) - u[k]
    elif is_single(e):
        for k in range(xb.size):
            ob[k] = e[k] / u[k]
    else:
        for i in range(rows.size):
            rows[i] = u[i * n_cols]
        for i in range(rows.size):
            rows[i] = 1.0 / rows[i]
        _broadcast_rows(rows, u, n_cols)
        for k in range(xb.size):
            ob[k] = e[k] * u[k]


@driver
def softmax_short_rows(x, out, scale, log, n_tasks):
    """softmax / log_softmax of the rows of ``x`` (C-contiguous, ``fits``)."""
    n_rows, n_cols = x.shape
    rows_per_block, n_blocks = geometry(n_rows, n_cols)
    in_place = same_buffer(x, out)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for task in prange(n_tasks):
        m = stack_array(BLOCK_ELEMENTS, x[0, 0])
        e = stack_array(BLOCK_ELEMENTS, x[0, 0])
        u = stack_array(BLOCK_ELEMENTS, x[0, 0])
        rows = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:rows_per_block]
        b0, b1 = block_bounds(task, n_blocks, n_tasks)
        for b in range(b0, b1):
            k0 = b * BLOCK_ELEMENTS
            ob = of[k0 : k0 + BLOCK_ELEMENTS]
            if in_place:  # one array for both: equal pointers would not vectorize
                ok = _block_stats(ob, scale, m, e, u, n_cols)
                if ok:
                    _softmax_write(ob, ob, scale, m, e, u, rows, log)
            else:
                xb = xf[k0 : k0 + BLOCK_ELEMENTS]
                ok = _block_stats(xb, scale, m, e, u, n_cols)
                if ok:
                    _softmax_write(xb, ob, scale, m, e, u, rows, log)
            if not ok:
                r0 = b * rows_per_block
                softmax_rows_cached_block(x, out, scale, log, r0, r0 + rows_per_block)
    if n_blocks * rows_per_block < n_rows:
        softmax_rows_cached_block(x, out, scale, log, n_blocks * rows_per_block, n_rows)


@njit(fastmath=FASTMATH, **JIT)
def _rows_logsumexp(x, r0, scale, out):
    """``out[i] = logsumexp(x[r0 + i] * scale)`` by the row kernels' rules (rows
    that are not all finite, and rows after the last full block)."""
    for i in range(out.size):
        mr, total = row_max_sumexp(x[r0 + i], scale)
        out[i] = logsumexp_of_row(x[r0 + i], scale, mr, total)


@njit(fastmath=FASTMATH, **JIT)
def _block_logsumexp(x, b, scale, out):
    """``out[i] = logsumexp(x[r0 + i] * scale)`` for the rows of block ``b``
    (``r0`` its first row)."""
    n_cols = x.shape[1]
    rows_per_block, _ = geometry(x.shape[0], n_cols)
    r0 = b * rows_per_block
    k0 = b * BLOCK_ELEMENTS
    m = stack_array(BLOCK_ELEMENTS, x[0, 0])
    e = stack_array(BLOCK_ELEMENTS, x[0, 0])
    u = stack_array(BLOCK_ELEMENTS, x[0, 0])
    if not _block_stats(x.reshape(-1)[k0 : k0 + BLOCK_ELEMENTS], scale, m, e, u, n_cols):
        _rows_logsumexp(x, r0, scale, out[:rows_per_block])
        return
    row_m = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
    row_u = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
    for i in range(rows_per_block):  # one lane per row, then the logs of those
        row_m[i] = m[i * n_cols]
        row_u[i] = u[i * n_cols]
    for i in range(rows_per_block):
        out[i] = row_m[i] + log_pos(row_u[i])
    # Results near 0 have lost relative accuracy to cancellation: recompute.
    for i in range(rows_per_block):
        if abs(out[i]) < NEAR_ZERO:
            out[i] = logsumexp_of_row(x[r0 + i], scale, row_m[i], row_u[i])


@driver
def logsumexp_short_rows(x, scale, res, n_tasks):
    """``res[r] = logsumexp(x[r] * scale)`` for rows that ``fits``."""
    n_rows, n_cols = x.shape
    rows_per_block, n_blocks = geometry(n_rows, n_cols)
    for task in prange(n_tasks):
        b0, b1 = block_bounds(task, n_blocks, n_tasks)
        for b in range(b0, b1):
            r0 = b * rows_per_block
            _block_logsumexp(x, b, scale, res[r0 : r0 + rows_per_block])
    r0 = n_blocks * rows_per_block
    _rows_logsumexp(x, r0, scale, res[r0:])


@driver
def xent_index_short_rows(x, target, w, ignore_index, part_a, part_z, n_tasks):
    """The cross-entropy forward of index targets without smoothing (see
    ``xent.py`` for the parts), for rows that ``fits``: each block's
    logsumexp, then its parts while the block is in cache."""
    n_rows, n_cols = x.shape
    rows_per_block, n_blocks = geometry(n_rows, n_cols)
    one = like(1.0, x[0, 0])
    for task in prange(n_tasks):
        lse = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
        b0, b1 = block_bounds(task, n_blocks, n_tasks)
        for b in range(b0, b1):
            _block_logsumexp(x, b, one, lse)
            index_parts(x, target, w, ignore_index, lse, b * rows_per_block, part_a, part_z)
    r0 = n_blocks * rows_per_block
    lse = stack_array(MAX_BLOCK_ROWS, 0.0)[: n_rows - r0]
    _rows_logsumexp(x, r0, one, lse)
    index_parts(x, target, w, ignore_index, lse, r0, part_a, part_z)


@njit(fastmath=FASTMATH, **JIT)
def _first_max_lanes(xb, m, c, n_cols):
    """``c`` = minus the position in its row of each row's first maximum (or
    first NaN, as ``np.argmax``), in every lane of the row."""
    lanes = VECTOR_BYTES // xb.itemsize
    nans = 0
    for k in range(xb.size):
        v = xb[k]
        m[k] = v
        nans += v != v
    # The machine's max may drop a NaN: blocks with one take llvm.maximum.
    if nans:
        for k in range(0, xb.size, lanes):
            segment_allreduce(m, m, k, n_cols, SEGMENT_MAX)
    else:
        for k in range(0, xb.size, lanes):
            segment_allreduce(m, m, k, n_cols, SEGMENT_FAST_MAX)
    neg_inf = like(-np.inf, m[0])
    for k in range(xb.size):
        v = xb[k]
        # A NaN row's max is NaN, equal to nothing: its candidates are its NaNs.
        hit = (v == m[k]) | (v != v)
        c[k] = -like(k & (n_cols - 1), v) if hit else neg_inf
    for k in range(0, xb.size, lanes):
        segment_allreduce(c, c, k, n_cols, SEGMENT_FAST_MAX)


@driver
def hardmax_short_rows(x, out, n_tasks):
    """One-hot of ``np.argmax`` of each row, for rows that ``fits``."""
    n_rows, n_cols = x.shape
    rows_per_block, n_blocks = geometry(n_rows, n_cols)
    in_place = same_buffer(x, out)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    one = like(1.0, of[0])
    zero = like(0.0, of[0])
    for task in prange(n_tasks):
        m = stack_array(BLOCK_ELEMENTS, x[0, 0])
        c = stack_array(BLOCK_ELEMENTS, x[0, 0])
        b0, b1 = block_bounds(task, n_blocks, n_tasks)
        for b in range(b0, b1):
            k0 = b * BLOCK_ELEMENTS
            ob = of[k0 : k0 + BLOCK_ELEMENTS]
            if in_place:  # everything is read before the first write
                _first_max_lanes(ob, m, c, n_cols)
            else:
                _first_max_lanes(xf[k0 : k0 + BLOCK_ELEMENTS], m, c, n_cols)
            for k in range(BLOCK_ELEMENTS):
                ob[k] = one if -like(k & (n_cols - 1), c[k]) == c[k] else zero
    for r in range(n_blocks * rows_per_block, n_rows):
        write_one_hot(out[r], row_argmax(x[r]))


@driver
def xent_index_grad_short_rows(
    x, target, w, ignore_index, z_loss, part_a, part_z, out, scale, scale_z, n_tasks
):
    """The fused cross-entropy pass of index targets without smoothing for rows
    that ``fits``: the forward parts and ``out = d loss / d x`` (``out`` may
    be ``x``), with ``scale``/``scale_z`` as in ``xent.xent_index_rows``.

    Per block: the row statistics in every lane; per row the loss parts and
    the gradient's factor ``(w[t] * s + 2 z lse s_z) / sum``, broadcast back
    to the row's lanes by a segment sum over lanes that are 0 but the first;
    then one vector pass ``exp(x - max) * factor`` and, per row, ``- w[t] * s``
    at the target."""
    n_rows, n_cols = x.shape
    rows_per_block, n_blocks = geometry(n_rows, n_cols)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    one = like(1.0, x[0, 0])
    for task in prange(n_tasks):
        m = stack_array(BLOCK_ELEMENTS, x[0, 0])
        e = stack_array(BLOCK_ELEMENTS, x[0, 0])
        u = stack_array(BLOCK_ELEMENTS, x[0, 0])
        a_nll = stack_array(MAX_BLOCK_ROWS, 0.0)[:rows_per_block]
        rows = stack_array(MAX_BLOCK_ROWS, x[0, 0])[:rows_per_block]
        b0, b1 = block_bounds(task, n_blocks, n_tasks)
        for b in range(b0, b1):
            k0 = b * BLOCK_ELEMENTS
            r0 = b * rows_per_block
            xb = xf[k0 : k0 + BLOCK_ELEMENTS]
            ob = of[k0 : k0 + BLOCK_ELEMENTS]
            if not _block_stats(xb, one, m, e, u, n_cols):
                _xent_rows_serial(
                    x[r0 : r0 + rows_per_block],
                    target[r0 : r0 + rows_per_block],
                    w,
                    ignore_index,
                    0.0,
                    z_loss,
                    part_a[r0 : r0 + rows_per_block],
                    part_z[r0 : r0 + rows_per_block],
                    True,
                    out[r0 : r0 + rows_per_block],
                    scale[r0 : r0 + rows_per_block],
                    scale_z[r0 : r0 + rows_per_block],
                    1,
                )
                continue
            for i in range(rows_per_block):
                r = r0 + i
                t = target[r]
                total = np.float64(u[i * n_cols])
                if t == ignore_index:
                    part_a[r] = 0.0
                    part_z[r] = 0.0
                    a_nll[i] = 0.0
                    rows[i] = 0.0
                    continue
                lse = np.float64(m[i * n_cols]) + log_pos(total)
                wt = np.float64(w[t])
                part_a[r] = wt * (lse - np.float64(x[r, t]))
                part_z[r] = lse * lse
                a_nll[i] = wt * scale[r]
                z_term = 2.0 * z_loss * lse * scale_z[r] if z_loss != 0.0 else 0.0
                rows[i] = (a_nll[i] + z_term) / total
            _broadcast_rows(rows, u, n_cols)
            for k in range(BLOCK_ELEMENTS):
                ob[k] = e[k] * u[k]
            for i in range(rows_per_block):
                t = target[r0 + i]
                if t != ignore_index:
                    ob[i * n_cols + t] -= like(a_nll[i], one)
    r0 = n_blocks * rows_per_block
    _xent_rows_serial(
        x[r0:],
        target[r0:],
        w,
        ignore_index,
        0.0,
        z_loss,
        part_a[r0:],
        part_z[r0:],
        True,
        out[r0:],
        scale[r0:],
        scale_z[r0:],
        1,
    )


@njit(fastmath=FASTMATH, **JIT)
def _jvp_terms(yb, vb, p, mode):
    """The terms of each row's sum in ``jacobian``'s modes."""
    if mode == SOFTMAX:
        for k in range(p.size):
            p[k] = yb[k] * vb[k]
    elif mode == LOG_JVP:
        for k in range(p.size):
            p[k] = exp(yb[k]) * vb[k]
    else:
        for k in range(p.size):
            p[k] = vb[k]


@driver
def jvp_short_rows(y, v, out, mode, n_tasks):
    """``jacobian.jvp_rows`` for rows that ``fits`` (``y``, ``v``, ``out``
    C-contiguous; ``out`` may be ``y`` or ``v``): per block, the terms, their
    row sums in every lane (in the data's type: at most 16 terms), then the
    write pass with a sum per element."""
    n_rows, n_cols = y.shape
    rows_per_block, n_blocks = geometry(n_rows, n_cols)
    lanes = VECTOR_BYTES // y.itemsize
    yf = y.reshape(-1)
    vf = v.reshape(-1)
    of = out.reshape(-1)
    for task in prange(n_tasks):
        p = stack_array(BLOCK_ELEMENTS, y[0, 0])
        b0, b1 = block_bounds(task, n_blocks, n_tasks)
        for b in range(b0, b1):
            k0 = b * BLOCK_ELEMENTS
            yb = yf[k0 : k0 + BLOCK_ELEMENTS]
            vb = vf[k0 : k0 + BLOCK_ELEMENTS]
            _jvp_terms(yb, vb, p, mode)
            for k in range(0, BLOCK_ELEMENTS, lanes):
                segment_allreduce(p, p, k, n_cols, SEGMENT_SUM)
            write_row_per_column(yb, vb, of[k0 : k0 + BLOCK_ELEMENTS], p, mode)
    for r in range(n_blocks * rows_per_block, n_rows):
        s = row_sum(y[r], v[r], mode)
        jvp_write_row(y[r], v[r], out[r], like(s, out[r, 0]), mode)
