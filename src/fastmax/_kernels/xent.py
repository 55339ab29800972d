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
from ._math import exp, like
from .reduce import row_max
from .schedule import driver
from .softmax import same_buffer


@njit(fastmath=FASTMATH, **JIT)
def check_targets(target, n_classes, ignore_index, weight):
    """First position of a target outside ``[0, C)`` that is not ``ignore_index``
    (-1 if none), the summed weight of the kept targets and how many are kept."""
    total_weight = 0.0
    kept = 0
    for i in range(target.size):
        t = target[i]
        if t == ignore_index:
            continue
        if t < 0 or t >= n_classes:
            return i, 0.0, 0
        total_weight += np.float64(weight[t])
        kept += 1
    return -1, total_weight, kept


@njit(fastmath=FASTMATH, **JIT)
def _stats_index(x, w, smoothing):
    """``(m, sum(exp(x - m)), sum(w * x))``; the last only when smoothing."""
    m = row_max(x)
    total = 0.0
    for k in range(x.size):
        total += np.float64(exp(x[k] - m))
    xw = 0.0
    if smoothing > 0.0:
        for k in range(x.size):
            xw += np.float64(w[k]) * np.float64(x[k])
    return m, total, xw


@njit(fastmath=FASTMATH, **JIT)
def _stats_prob(x, q, w, smoothing):
    """``(m, sum(exp(x - m)), A, B)`` for probability targets."""
    m = row_max(x)
    n = x.size
    keep = 1.0 - smoothing
    spread = smoothing / n
    total = 0.0
    a = 0.0
    b = 0.0
    for k in range(n):
        total += np.float64(exp(x[k] - m))
        wq = np.float64(w[k]) * (np.float64(q[k]) * keep + spread)
        a += wq
        b += wq * np.float64(x[k])
    return m, total, a, b


@njit(fastmath=FASTMATH, **JIT)
def _lse(m, total):
    return np.float64(m) + math.log(total) if math.isfinite(m) else np.float64(m)


@njit(fastmath=EXACT_MATH, inline="always", **JIT)
def _grad_loop(x, w, q, out, m, coef, minus, use_q):
    """``out_k = exp(x_k - m) * coef - minus * w_k (* q'_k)``."""
    if use_q:
        for k in range(out.size):
            out[k] = exp(x[k] - m) * coef - minus * w[k] * q[k]
    else:
        for k in range(out.size):
            out[k] = exp(x[k] - m) * coef - minus * w[k]


@njit(fastmath=EXACT_MATH, **JIT)
def _write_grad(x, w, q, out, m, coef, minus, use_q):
    if same_buffer(x, out):
        _grad_loop(out, w, q, out, m, coef, minus, use_q)
    else:
        _grad_loop(x, w, q, out, m, coef, minus, use_q)


@driver
def xent_index_rows(x, target, w, ignore_index, smoothing, z_loss, part_a, part_z,
                    write_grad, out, scale, scale_z):
    """Index targets.  ``scale``/``scale_z`` (per row) multiply the gradient of
    the NLL+smoothing part and of the z-loss part (the reduction's denominators
    and the upstream gradient)."""
    n_rows, n_classes = x.shape
    total_w = 0.0
    for k in range(n_classes):
        total_w += np.float64(w[k])
    for r in prange(n_rows):
        t = target[r]
        xr = x[r]
        if t == ignore_index:
            part_a[r] = 0.0
            part_z[r] = 0.0
            if write_grad:
                orow = out[r]
                for k in range(n_classes):
                    orow[k] = 0
            continue
        m, total, xw = _stats_index(xr, w, smoothing)
        lse = _lse(m, total)
        wt = np.float64(w[t])
        xt = np.float64(xr[t])
        a = (1.0 - smoothing) * wt * (lse - xt)
        if smoothing > 0.0:
            a += smoothing / n_classes * (total_w * lse - xw)
        part_a[r] = a
        part_z[r] = lse * lse
        if write_grad:
            s = scale[r]
            a_nll = (1.0 - smoothing) * wt * s
            a_smooth = smoothing / n_classes * s
            z_term = 2.0 * z_loss * lse * scale_z[r] if z_loss != 0.0 else 0.0
            coef = (a_nll + a_smooth * total_w + z_term) / total
            orow = out[r]
            _write_grad(xr, w, w, orow, m, like(coef, m), like(a_smooth, m), False)
            orow[t] -= like(a_nll, m)


@driver
def xent_prob_rows(x, q, w, smoothing, z_loss, part_a, part_z, write_grad, out, scale, scale_z):
    """Probability targets ``q`` (same shape as ``x``)."""
    n_rows, n_classes = x.shape
    keep = like(1.0 - smoothing, x[0, 0])
    spread = like(smoothing / n_classes, x[0, 0])
    for r in prange(n_rows):
        xr = x[r]
        qr = q[r]
        m, total, a, b = _stats_prob(xr, qr, w, smoothing)
        lse = _lse(m, total)
        part_a[r] = a * lse - b
        part_z[r] = lse * lse
        if write_grad:
            s = scale[r]
            z_term = 2.0 * z_loss * lse * scale_z[r] if z_loss != 0.0 else 0.0
            coef = (a * s + z_term) / total
            orow = out[r]
            if smoothing > 0.0:
                # q' = q * keep + spread, written in terms of q for the loop.
                _write_grad(xr, w, qr, orow, m, like(coef, m), like(s, m) * keep, True)
                for k in range(n_classes):
                    orow[k] -= like(s, m) * spread * w[k]
            else:
                _write_grad(xr, w, qr, orow, m, like(coef, m), like(s, m), True)
