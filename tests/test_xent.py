"""Softmax cross-entropy against PyTorch (when installed) and a NumPy reference."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tracemalloc

import numba
import numpy as np
import pytest
from scipy import special

import fastmax
from fastmax._kernels import schedule, short

from . import reference as ref
from .strategies import rows_past_the_exp_bound, short_rows_at_the_edges

REDUCTIONS = ["mean", "sum", "none"]


def _problem(rng, shape, axis, dtype, kind, ignore=True):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    n_classes = shape[axis]
    batch = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
    if kind == "index":
        t = rng.integers(0, n_classes, size=batch)
        if ignore and t.size > 2:
            t.flat[1] = -100
            t.flat[-1] = -100
    else:
        t = rng.random(shape).astype(dtype)
        t /= t.sum(axis=axis, keepdims=True)
    return x, t


# --- against PyTorch ---------------------------------------------------------

try:  # torch is an optional test dependency
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch not installed
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch (optional) is not installed")


def _torch_loss_and_grad(x, t, axis, weight, reduction, smoothing, upstream):
    xt = torch.tensor(np.moveaxis(x, axis, 1) if x.ndim > 1 else x, requires_grad=True)
    tt = torch.tensor(np.moveaxis(t, axis, 1) if t.dtype.kind == "f" and t.ndim > 1 else t)
    wt = None if weight is None else torch.tensor(weight)
    loss = F.cross_entropy(xt, tt, weight=wt, reduction=reduction, label_smoothing=smoothing)
    if reduction == "none":
        loss.backward(torch.tensor(upstream))
    else:
        loss.backward(torch.tensor(upstream, dtype=loss.dtype))
    grad = xt.grad.numpy()
    grad = np.moveaxis(grad, 1, axis) if x.ndim > 1 else grad
    return loss.detach().numpy(), grad


@needs_torch
@pytest.mark.parametrize(
    "reduction, smoothing, weighted, dtype, kind, axis",
    list(
        itertools.product(
            REDUCTIONS,
            [0.0, 0.2, 1.0],
            [False, True],
            [np.float32, np.float64],
            ["index", "prob"],
            [-1, 1],
        )
    ),
)
def test_matches_torch(reduction, smoothing, weighted, dtype, kind, axis, rng):
    shape = (6, 7, 5) if axis == 1 else (9, 11)
    x, t = _problem(rng, shape, axis, dtype, kind)
    n_classes = shape[axis]
    weight = rng.random(n_classes).astype(dtype) + 0.1 if weighted else None
    batch = (
        t.shape if kind == "index" else shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
    )
    upstream = (
        rng.standard_normal(batch).astype(dtype) if reduction == "none" else np.array(0.7, dtype)
    )
    exp_loss, exp_grad = _torch_loss_and_grad(x, t, axis, weight, reduction, smoothing, upstream)
    kw = dict(axis=axis, weight=weight, reduction=reduction, label_smoothing=smoothing)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)
    loss = fastmax.softmax_cross_entropy(x, t, **kw)
    assert np.asarray(loss).dtype == dtype
    np.testing.assert_allclose(loss, exp_loss, **tol)
    grad = fastmax.softmax_cross_entropy_backward(
        x, t, upstream if reduction == "none" else 0.7, **kw
    )
    np.testing.assert_allclose(grad, exp_grad, **tol)
    # fused, for grad = 1, in place over a copy of the logits
    ones = np.ones_like(upstream)
    _, exp_grad1 = _torch_loss_and_grad(x, t, axis, weight, reduction, smoothing, ones)
    buf = x.copy()
    loss2, grad2 = fastmax.softmax_cross_entropy_with_grad(buf, t, out=buf, **kw)
    assert grad2 is buf
    np.testing.assert_allclose(loss2, exp_loss, **tol)
    np.testing.assert_allclose(grad2, exp_grad1, **tol)


@needs_torch
def test_all_ignored_mean_is_nan_like_torch():
    x = np.zeros((3, 4))
    t = np.full(3, -100)
    assert np.isnan(fastmax.softmax_cross_entropy(x, t))
    expected = F.cross_entropy(torch.tensor(x), torch.tensor(t)).item()
    assert np.isnan(expected)
    np.testing.assert_array_equal(fastmax.softmax_cross_entropy_backward(x, t), 0.0)


# --- against the NumPy reference (no torch needed) ---------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
def test_matches_numpy_reference_and_finite_differences(reduction, kind, z_loss, rng):
    x, t = _problem(rng, (5, 6), -1, np.float64, kind)
    w = rng.random(6) + 0.5
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.1, z_loss=z_loss)
    loss = fastmax.softmax_cross_entropy(x, t, **kw)
    np.testing.assert_allclose(loss, ref.cross_entropy(x, t, **kw), rtol=1e-12, atol=1e-14)
    upstream = rng.standard_normal(5) if reduction == "none" else 1.3
    grad = fastmax.softmax_cross_entropy_backward(x, t, upstream, **kw)
    h = 1e-6
    fd = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        diff = ref.cross_entropy(x + e, t, **kw) - ref.cross_entropy(x - e, t, **kw)
        fd[idx] = np.sum(np.asarray(diff) * upstream) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_z_loss_adds_lse_squared_for_kept_samples(rng):
    x, t = _problem(rng, (8, 10), -1, np.float64, "index")
    lse = ref.logsumexp(x)
    kept = t != -100
    base = fastmax.softmax_cross_entropy(x, t, reduction="none")
    with_z = fastmax.softmax_cross_entropy(x, t, reduction="none", z_loss=0.5)
    np.testing.assert_allclose(with_z - base, np.where(kept, 0.5 * lse**2, 0.0), rtol=1e-12)
    w = rng.random(10)
    diff = fastmax.softmax_cross_entropy(
        x, t, weight=w, z_loss=0.5
    ) - fastmax.softmax_cross_entropy(x, t, weight=w)
    np.testing.assert_allclose(diff, 0.5 * np.mean(lse[kept] ** 2), rtol=1e-10)  # not weighted


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_cols", [2, 8, 16])
def test_many_short_rows(dtype, n_cols, rng):
    """The forward pass on rows reduced inside vectors, against the reference."""
    x, t = _problem(rng, (3000, n_cols), -1, dtype, "index")
    x[9, :] = -np.inf
    x[11, 0] = np.nan
    w = (rng.random(n_cols) + 0.5).astype(dtype)
    kw = dict(weight=w, reduction="none", z_loss=1e-3)
    tol = dict(rtol=2e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    with np.errstate(invalid="ignore"):
        expected = ref.cross_entropy(x, t, **kw)
    np.testing.assert_allclose(fastmax.softmax_cross_entropy(x, t, **kw), expected, **tol)
    finite = np.isfinite(x).all(axis=1)
    np.testing.assert_allclose(
        fastmax.softmax_cross_entropy(x[finite], t[finite], weight=w),
        ref.cross_entropy(x[finite], t[finite], weight=w),
        **tol,
    )
    # The fused pass against the row kernels, run on pieces too small for the
    # short-row kernels (100 rows), with an upstream gradient per sample.
    g = rng.standard_normal(x.shape[0])
    grad = fastmax.softmax_cross_entropy_backward(x, t, g, **kw)
    loss, grad1 = fastmax.softmax_cross_entropy_with_grad(x, t, **kw)
    for r0 in range(0, x.shape[0], 100):
        p = slice(r0, r0 + 100)
        expected = fastmax.softmax_cross_entropy_backward(x[p], t[p], g[p], **kw)
        np.testing.assert_allclose(grad[p], expected, rtol=tol["rtol"], atol=tol["atol"])
        lp, gp = fastmax.softmax_cross_entropy_with_grad(x[p], t[p], **kw)
        np.testing.assert_allclose(loss[p], lp, rtol=tol["rtol"], atol=tol["atol"])
        np.testing.assert_allclose(grad1[p], gp, rtol=tol["rtol"], atol=tol["atol"])
    y = x.copy()
    loss_in_place, _ = fastmax.softmax_cross_entropy_with_grad(y, t, out=y, **kw)
    np.testing.assert_allclose(loss_in_place, loss, rtol=tol["rtol"], atol=tol["atol"])
    np.testing.assert_allclose(y, grad1, rtol=tol["rtol"], atol=tol["atol"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_cols", [2, 8, 16])
def test_short_rows_at_the_edges_of_the_sums(dtype, n_cols, rng):
    """The forward pass of short rows whose sums of exp(x) without a shift
    leave the normal range, or nearly (see short_rows_at_the_edges), on
    its rows of finite logits, against SciPy's log_softmax: per sample,
    and reduced (a block's losses summed as one log) on the rows whose
    losses are moderate."""
    x = short_rows_at_the_edges(dtype, rng, n_cols)
    t = rng.integers(0, n_cols, x.shape[0])
    tol = dict(rtol=2e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    with np.errstate(invalid="ignore"):  # rows of ±inf
        expected = -special.log_softmax(x.astype(np.float64), axis=-1)[np.arange(t.size), t]
    got = fastmax.softmax_cross_entropy(x, t, reduction="none")
    fin = np.isfinite(x).all(axis=1)
    assert np.isnan(got[np.isnan(x).any(axis=1)]).all()
    np.testing.assert_allclose(got[fin], expected[fin], **tol)
    # A loss of 1e30 would hide the others' errors in the mean.
    keep = fin & (expected < 1e3)
    assert keep.sum() > 0.9 * keep.size
    mean = fastmax.softmax_cross_entropy(x[keep], t[keep])
    np.testing.assert_allclose(mean, expected[keep].mean(), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape",
    [(4099, 8), (64, 100), (300, 1000), (3, 40000)],
    ids=["short rows", "small", "rows", "long rows"],
)
def test_per_sample_losses_of_huge_logits(dtype, shape, rng):
    """Rows of logits at ±1e30 or ±1e10 or a few spacings below, the target
    at the row's max, tied with others: each loss is the log of a count,
    and must not be lost to the logsumexp's rounding (``lse - x[t]`` in
    float64 gives 0): per sample, with class weights and with the
    gradient."""
    values = rng.choice([1e30, -1e30, 1e10, -1e10], shape[0])[:, None]
    top = np.broadcast_to(values, shape).astype(dtype)
    x = (top - rng.integers(0, 3, shape) * np.abs(np.spacing(top))).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    x[np.arange(t.size), t] = top[:, 0]
    w = rng.uniform(0.5, 2.0, shape[1]).astype(dtype)
    expected = -special.log_softmax(x.astype(np.float64), axis=-1)[np.arange(t.size), t]
    assert (expected > 0.5).mean() > 0.8  # ties: what the rounding would take whole
    tol = dict(rtol=1e-5) if dtype == np.float32 else dict(rtol=1e-12)
    got = fastmax.softmax_cross_entropy(x, t, reduction="none")
    np.testing.assert_allclose(got, expected, **tol)
    got = fastmax.softmax_cross_entropy(x, t, weight=w, reduction="none")
    np.testing.assert_allclose(got, w[t] * expected, **tol)
    loss, _ = fastmax.softmax_cross_entropy_with_grad(x, t, reduction="none")
    np.testing.assert_allclose(loss, expected, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 3000), (16, 300)], ids=["cached rows", "small"])
def test_fused_exp_store_pass_past_the_bound(dtype, shape, rng):
    """The fused pass's exponentials, stored for the gradient, on rows past
    the clamp-free exponential's bound among ordinary ones (see
    ``test_softmax.test_exp_store_pass_past_the_bound``): into another array
    and in place over the logits."""
    x = rows_past_the_exp_bound(dtype, rng, shape)
    t = rng.integers(0, shape[1], size=shape[0])
    expected = ref.softmax(x)
    expected[np.arange(shape[0]), t] -= 1.0
    expected /= shape[0]
    picked = x[np.arange(shape[0]), t].astype(np.float64)
    loss = np.mean(ref.logsumexp(x.astype(np.float64)) - picked)
    got_loss, grad = fastmax.softmax_cross_entropy_with_grad(x, t)
    y = x.copy()
    loss_in_place, _ = fastmax.softmax_cross_entropy_with_grad(y, t, out=y)
    for g, lo, context in ((grad, got_loss, "into another array"), (y, loss_in_place, "in place")):
        ref.assert_matches(g, expected, dtype, context=context)
        ref.assert_matches(lo, loss, dtype, scale=10, context=context)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(200, 300), (24, 5000)])
def test_row_forward(dtype, shape, rng):
    """The forward pass of the row kernels, on rows of a block or less and on
    longer rows (read once, online), against the reference: ignored rows
    (the first and last of the array and of a block among them), rows that
    are all -inf or have a NaN, weights and z-loss."""
    x, t = _problem(rng, shape, -1, dtype, "index")
    t[[0, 1, 7, -1]] = -1
    x[3, :] = -np.inf
    x[5, 2] = np.nan
    w = (rng.random(shape[1]) + 0.5).astype(dtype)
    tol = dict(rtol=2e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for kw in ({}, {"weight": w, "z_loss": 1e-3}):
        kw = dict(kw, ignore_index=-1)
        with np.errstate(invalid="ignore"):
            expected = ref.cross_entropy(x, t, reduction="none", **kw)
        got = fastmax.softmax_cross_entropy(x, t, reduction="none", **kw)
        np.testing.assert_allclose(got, expected, **tol)
        finite = np.isfinite(x).all(axis=1)
        np.testing.assert_allclose(
            fastmax.softmax_cross_entropy(x[finite], t[finite], **kw),
            ref.cross_entropy(x[finite], t[finite], **kw),
            **tol,
        )


_FUSED_PATHS = """
import sys
import numpy as np
import fastmax
out = []
for shape in ((3000, 37), (3000, 8)):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    t = rng.integers(0, shape[1], shape[0])
    t[::5] = -100
    grads = [fastmax.softmax_cross_entropy_with_grad(x, t, weight=np.ones(shape[1]))[1]]
    if sys.argv[1] == "both":
        grads.append(fastmax.softmax_cross_entropy_with_grad(x, t)[1])
        out.append(bool(np.array_equal(grads[0], grads[1])))
print(out)
"""


def test_common_fused_call_is_the_general_one_across_processes(tmp_path):
    """The common fused call's path and the general one give the same bits
    when one was compiled in this process and the other's kernels come
    from the on-disk cache (float64, the mean: a process fills an empty
    cache with the general path's kernels, another runs both).  With
    fast-math flags on the rows' gradient scaling, the two differed in
    the last bit on every kept row."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    for which, expected in (("general", "[]"), ("both", "[True, True]")):
        proc = subprocess.run(
            [sys.executable, "-c", _FUSED_PATHS, which],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert proc.stdout.strip() == expected, proc.stdout


def _index_grad_reference(x, t, w, smoothing, z_loss, ignore_index, upstream):
    """The gradient of the per-sample losses of index targets times ``upstream``,
    in NumPy (float64): ``(1 - e) w_t (p - onehot) + e/C (W p - w) + 2 z lse p``."""
    x = np.asarray(x, np.float64)
    n, n_classes = x.shape
    keep = t != ignore_index
    tt = np.where(keep, t, 0)
    p = special.softmax(x, axis=-1)
    lse = special.logsumexp(x, axis=-1)[:, None]
    wt = w[tt][:, None]
    onehot = np.zeros_like(p)
    onehot[np.arange(n), tt] = 1.0
    g = (1 - smoothing) * wt * (p - onehot) + smoothing / n_classes * (w.sum() * p - w)
    g += 2 * z_loss * lse * p
    return np.where(keep[:, None], g * upstream[:, None], 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "shape", [(3000, 37), (3000, 8), (20000, 4)], ids=["rows", "short rows", "short rows, threads"]
)
def test_common_fused_call_in_one_kernel(dtype, reduction, shape, rng):
    """The common call's own path on rows that take one kernel whole
    (``_api.xent._one_kernel_fused_call``) against the general path (taken
    with weights of 1: the same sums, so the same bits) and the reference,
    into a new array and in place; all targets ignored: a NaN mean and
    zeros."""
    n_rows, n_classes = shape
    x, t = _problem(rng, shape, -1, dtype, "index")
    t[::5] = -100
    ones = np.ones(n_classes, dtype)
    loss, grad = fastmax.softmax_cross_entropy_with_grad(x, t, reduction=reduction)
    loss_w, grad_w = fastmax.softmax_cross_entropy_with_grad(x, t, reduction=reduction, weight=ones)
    assert type(loss) is type(loss_w) is dtype
    assert loss == loss_w
    np.testing.assert_array_equal(grad, grad_w)
    tol = dict(rtol=2e-5, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(loss, ref.cross_entropy(x, t, reduction=reduction), **tol)
    kept = t != -100
    scale = 1.0 / kept.sum() if reduction == "mean" else 1.0
    want = _index_grad_reference(x, t, ones, 0.0, 0.0, -100, np.full(n_rows, scale))
    np.testing.assert_allclose(grad, want, **tol)
    y = x.copy()
    loss_in_place, grad_in_place = fastmax.softmax_cross_entropy_with_grad(
        y, t, reduction=reduction, out=y
    )
    assert grad_in_place is y
    assert loss_in_place == loss
    np.testing.assert_array_equal(y, grad)
    none_kept = np.full(n_rows, -100)
    loss, grad = fastmax.softmax_cross_entropy_with_grad(x, none_kept, reduction=reduction)
    assert np.isnan(loss) if reduction == "mean" else loss == 0
    assert (grad == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_losses_across_runs_of_rows(dtype, rng):
    """Blocks of rows longer than the runs whose logs are taken after the
    run (``reduce.DEFER_ROWS``), forward and fused, with and without z-loss
    (which takes each row's log in the loop): ignored rows at the runs'
    edges, a row of -inf, one with a NaN and one with +inf at its target,
    weights and smoothing."""
    from fastmax._kernels.reduce import DEFER_ROWS

    n_rows = 12 * DEFER_ROWS  # blocks of about 1.5 runs (2 threads: 8 blocks)
    x, t = _problem(rng, (n_rows, 60), -1, dtype, "index")
    t[t < 0] = -1
    for r in (0, DEFER_ROWS - 1, DEFER_ROWS, DEFER_ROWS + 1, 2 * DEFER_ROWS, n_rows - 1):
        t[r] = -1
    x[DEFER_ROWS + 3, :] = -np.inf
    x[2 * DEFER_ROWS - 1, 7] = np.nan
    t[3 * DEFER_ROWS + 5] = 11
    x[3 * DEFER_ROWS + 5, 11] = np.inf  # at the target: NaN loss (PyTorch's too)
    w = (rng.random(60) + 0.5).astype(dtype)
    finite = np.isfinite(x).all(axis=1)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)
    for kw in ({}, {"weight": w}, {"weight": w, "z_loss": 1e-3}, {"label_smoothing": 0.1}):
        kw = dict(kw, ignore_index=-1)
        with np.errstate(invalid="ignore"):
            expected = ref.cross_entropy(x, t, reduction="none", **kw)
        got = fastmax.softmax_cross_entropy(x, t, reduction="none", **kw)
        np.testing.assert_allclose(got, expected, **tol, err_msg=str(kw))
        # The gradient of the per-sample losses' sum (grad=1 for each).
        loss, grad = fastmax.softmax_cross_entropy_with_grad(
            x[finite], t[finite], reduction="none", **kw
        )
        np.testing.assert_allclose(loss, expected[finite], **tol, err_msg=str(kw))
        weights = np.asarray(kw.get("weight", np.ones(60)), np.float64)
        want = _index_grad_reference(
            x[finite], t[finite], weights, kw.get("label_smoothing", 0.0),
            kw.get("z_loss", 0.0), -1, np.ones(finite.sum()),
        )  # fmt: skip
        np.testing.assert_allclose(grad, want, **tol, err_msg=str(kw))
        # Every row, into another array and in place: a kept row that is not
        # all finite gets a NaN gradient, an ignored one zeros.
        kept = t != -1
        for in_place in (False, True):
            y = x.copy()
            loss, grad = fastmax.softmax_cross_entropy_with_grad(
                y, t, reduction="none", out=y if in_place else None, **kw
            )
            context = f"{kw}, in place: {in_place}"
            np.testing.assert_allclose(loss, expected, **tol, err_msg=context)
            np.testing.assert_allclose(grad[finite], want, **tol, err_msg=context)
            assert np.isnan(grad[~finite & kept]).all(), context
            assert (grad[~kept] == 0).all(), context


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_forward_without_a_max_pass(dtype, rng):
    """The small forward kernel skips the maxima of a C-contiguous input whose
    values are all within the exp bound: it agrees with a strided view of
    the same values (which takes them) and with the reference, also with a
    value past the bound and with a NaN."""
    x, t = _problem(rng, (64, 100), -1, dtype, "index")
    strided = np.empty((64, 200), dtype)[:, ::2]
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    for bad in (None, 95.0, np.nan):
        if bad is not None:
            x[5, 7] = bad
        strided[...] = x
        for reduction in ("mean", "none"):
            with np.errstate(invalid="ignore"):
                expected = ref.cross_entropy(x, t, reduction=reduction)
            got = fastmax.softmax_cross_entropy(x, t, reduction=reduction)
            np.testing.assert_allclose(got, expected, **tol)
            np.testing.assert_allclose(
                fastmax.softmax_cross_entropy(strided, t, reduction=reduction), got, **tol
            )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_small_fused_pass(dtype, reduction, rng):
    """The small fused kernel (one call: the exponentials into the gradient,
    then their scaling; no max pass for a C-contiguous input within the exp
    bound) agrees with the row kernel on a strided view of the same values,
    with the forward, and (plain mean) with softmax minus the one-hot: also
    with weights and z-loss, a value past the bound, a NaN (the row kernel
    takes the call), in place, and an ignored target."""
    x, t = _problem(rng, (64, 100), -1, dtype, "index")
    t[3] = -100
    strided = np.empty((64, 200), dtype)[:, ::2]
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    w = (rng.random(100) + 0.5).astype(dtype)
    big = 95.0 if dtype == np.float32 else 800.0
    for bad, kw in itertools.product((None, big, np.nan), ({}, dict(weight=w, z_loss=1e-3))):
        y = x.copy()
        if bad is not None:
            y[5, 7] = bad
        strided[...] = y
        kw = dict(kw, reduction=reduction)
        with np.errstate(invalid="ignore"):
            loss, grad = fastmax.softmax_cross_entropy_with_grad(y, t, **kw)
            loss_s, grad_s = fastmax.softmax_cross_entropy_with_grad(strided, t, **kw)
            forward = fastmax.softmax_cross_entropy(y, t, **kw)
        np.testing.assert_allclose(loss, loss_s, **tol)
        np.testing.assert_allclose(loss, forward, **tol)
        np.testing.assert_allclose(grad, grad_s, **tol)
        z = y.copy()
        with np.errstate(invalid="ignore"):
            loss_z, _ = fastmax.softmax_cross_entropy_with_grad(z, t, out=z, **kw)
        np.testing.assert_allclose(loss_z, loss, **tol)
        np.testing.assert_allclose(z, grad, **tol)
        assert np.all(grad[3] == 0)
        if reduction == "none":  # a scale per row
            g = rng.random(64)
            with np.errstate(invalid="ignore"):
                back = fastmax.softmax_cross_entropy_backward(y, t, g, **kw)
                back_s = fastmax.softmax_cross_entropy_backward(strided, t, g, **kw)
            np.testing.assert_allclose(back, back_s, **tol)
        if bad is None and not kw.get("z_loss") and reduction == "mean":
            keep = t != -100
            onehot = np.zeros_like(y, dtype=np.float64)
            onehot[np.arange(64), np.where(keep, t, 0)] = 1.0
            expected = (ref.softmax(y) - onehot) * keep[:, None] / keep.sum()
            np.testing.assert_allclose(grad, expected, **tol)
            np.testing.assert_allclose(loss, ref.cross_entropy(y, t), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_cols", [2, 4, 8, 16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_many_short_rows_reduced_in_one_call(dtype, n_cols, reduction, rng):
    """A reduced loss on short rows: one call of the short-row kernels, which
    sum the parts per block.  Blocks on the direct path (no shift), a block
    with values past its bound (shifted), a block with a NaN and one with an
    all -inf row (the row kernels), ignored samples, weights and z-loss:
    the loss against the reference, the gradient against the per-sample
    path (reduction "none" scaled as the reduction does)."""
    if not short.fits(n_cols, np.dtype(dtype).itemsize):
        pytest.skip("rows longer than a vector")
    rows_per_block = short.BLOCK_ELEMENTS // n_cols
    n = 5 * rows_per_block + 3
    x, t = _problem(rng, (n, n_cols), -1, dtype, "index")
    x[rows_per_block + 2, 0] = 95.0  # past the direct path's bound of 80
    x[rows_per_block + 3, :] = -300.0
    w = (rng.random(n_cols) + 0.5).astype(dtype)
    kw = dict(weight=w, reduction=reduction, z_loss=1e-3)
    tol = dict(rtol=2e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(
        fastmax.softmax_cross_entropy(x, t, **kw), ref.cross_entropy(x, t, **kw), **tol
    )
    per_sample = fastmax.softmax_cross_entropy_backward(
        x, t, np.ones(n), **{**kw, "reduction": "none"}
    )
    if reduction == "mean":
        kept = t != -100
        denominator = w[t[kept]].astype(np.float64).sum()
        # z-loss is averaged over the kept samples, the weighted part by the weights
        grad_a = fastmax.softmax_cross_entropy_backward(
            x, t, np.ones(n) / denominator, **{**kw, "reduction": "none", "z_loss": 0.0}
        )
        z_only = per_sample - fastmax.softmax_cross_entropy_backward(
            x, t, np.ones(n), **{**kw, "reduction": "none", "z_loss": 0.0}
        )
        per_sample = grad_a + z_only / kept.sum()
    loss, grad = fastmax.softmax_cross_entropy_with_grad(x, t, **kw)
    np.testing.assert_allclose(grad, per_sample, rtol=tol["rtol"], atol=tol["atol"])
    np.testing.assert_allclose(loss, ref.cross_entropy(x, t, **kw), **tol)
    np.testing.assert_allclose(
        fastmax.softmax_cross_entropy_backward(x, t, **kw), grad, rtol=tol["rtol"], atol=tol["atol"]
    )
    x[2 * rows_per_block + 1, 1] = np.nan
    x[3 * rows_per_block + 4, :] = -np.inf
    with np.errstate(invalid="ignore"):
        expected = ref.cross_entropy(x, t, **kw)
    loss, grad = fastmax.softmax_cross_entropy_with_grad(x, t, **kw)
    np.testing.assert_allclose(loss, expected, **tol)
    np.testing.assert_allclose(fastmax.softmax_cross_entropy(x, t, **kw), expected, **tol)
    assert np.isnan(grad[2 * rows_per_block + 1]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_cols", [2, 8, 16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_short_rows_check_their_targets_in_the_pass(dtype, n_cols, reduction, rng):
    """The common call (no weight, smoothing or z-loss) on short rows: one
    kernel pass that also checks the targets and counts the kept ones (or,
    with "none", writes each sample's loss in the logits' dtype).  The
    loss against the reference, with ignored samples in full blocks and in
    the rows after them, an ``ignore_index`` that is a class, and blocks on
    each path (direct, shifted, row kernels)."""
    if not short.fits(n_cols, np.dtype(dtype).itemsize):
        pytest.skip("rows longer than a vector")
    rows_per_block = short.BLOCK_ELEMENTS // n_cols
    n = 4 * rows_per_block + 3
    x, t = _problem(rng, (n, n_cols), -1, dtype, "index")
    t[rows_per_block : rows_per_block + 7] = -100
    x[2 * rows_per_block + 2, 0] = 95.0  # past the direct path's bound of 80
    tol = dict(rtol=2e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for ignore in (-100, 1):
        ti = np.where(t == -100, ignore, t)
        expected = ref.cross_entropy(x, ti, ignore_index=ignore, reduction=reduction)
        got = fastmax.softmax_cross_entropy(x, ti, ignore_index=ignore, reduction=reduction)
        assert got.dtype == dtype and got.shape == (() if reduction != "none" else (n,))
        np.testing.assert_allclose(got, expected, **tol)
        if reduction == "none":  # the ignored samples' losses are 0
            assert (got[ti == ignore] == 0).all()
    x[3 * rows_per_block + 4, :] = -np.inf
    with np.errstate(invalid="ignore"):
        expected = ref.cross_entropy(x, t, reduction=reduction)
    got = fastmax.softmax_cross_entropy(x, t, reduction=reduction)
    np.testing.assert_allclose(got, expected, **tol)
    t[:] = -100
    all_ignored = fastmax.softmax_cross_entropy(x, t, reduction=reduction)
    assert np.isnan(all_ignored) if reduction == "mean" else (all_ignored == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_cols", [2, 4, 8, 16])
def test_reduced_short_rows_sum_their_logs_as_one(dtype, n_cols, rng):
    """A reduced loss of unit weights on short rows takes one log per block
    (of the product of its rows' sums, split into mantissas and exponents):
    logits spread over the whole range of the direct path (up to the bound
    of 80, float64 700, where the sums' exponents go far from 0), ignored
    samples, a block all ignored, and more rows than the last full block
    holds; the loss against the reference, with no weight and with weights
    of 1 (the per-row parts), and the per-sample losses summed."""
    if not short.fits(n_cols, np.dtype(dtype).itemsize):
        pytest.skip("rows longer than a vector")
    bound = 79.0 if dtype == np.float32 else 690.0
    rows_per_block = short.BLOCK_ELEMENTS // n_cols
    n = 6 * rows_per_block + 5
    x = rng.uniform(-bound, bound, (n, n_cols)).astype(dtype)
    x[: 2 * rows_per_block] = np.sign(x[: 2 * rows_per_block]) * bound  # sums near the extremes
    t = rng.integers(0, n_cols, size=n)
    t[rng.random(n) < 0.2] = -100
    t[3 * rows_per_block : 4 * rows_per_block] = -100
    tol = dict(rtol=2e-6, atol=0) if dtype == np.float32 else dict(rtol=1e-13, atol=0)
    for reduction in ("mean", "sum"):
        expected = ref.cross_entropy(x, t, reduction=reduction)
        got = fastmax.softmax_cross_entropy(x, t, reduction=reduction)
        np.testing.assert_allclose(got, expected, **tol)
        weighted = fastmax.softmax_cross_entropy(
            x, t, reduction=reduction, weight=np.ones(n_cols, dtype)
        )
        np.testing.assert_allclose(got, weighted, **tol)
    per_sample = fastmax.softmax_cross_entropy(x, t, reduction="none").astype(np.float64)
    np.testing.assert_allclose(
        fastmax.softmax_cross_entropy(x, t, reduction="sum"), per_sample.sum(), **tol
    )


@pytest.mark.parametrize("bad", [8, -1, 2**40, -(2**40), 10**18])
@pytest.mark.parametrize("where", ["first block", "last full block", "after the blocks"])
def test_bad_targets_on_short_rows_raise(bad, where, rng):
    """Targets checked inside the short-row pass: a bad one anywhere raises
    the error of the separate check (its value and index), and reads
    nothing outside the logits (the values are past any row and past the
    address space)."""
    rows_per_block = short.BLOCK_ELEMENTS // 8
    n = 3 * rows_per_block + 5
    x = rng.standard_normal((n, 8)).astype(np.float32)
    t = rng.integers(0, 8, size=n)
    i = {"first block": 3, "last full block": 3 * rows_per_block - 1, "after the blocks": n - 2}
    t[i[where]] = bad
    for reduction in ("mean", "sum", "none"):
        with pytest.raises(ValueError, match=f"target {bad} at index \\({i[where]},\\)"):
            fastmax.softmax_cross_entropy(x, t, reduction=reduction)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_few_long_rows_split_across_threads(dtype, smoothing, rng):
    """Rows split over the threads (2 threads) against the row kernel (1 thread)."""
    x, t = _problem(rng, (3, 2 * schedule.SPLIT_CHUNK + 17), -1, dtype, "index")
    t[1] = -100
    w = (rng.random(x.shape[1]) + 0.5).astype(dtype)
    g = rng.standard_normal(3)
    kw = dict(weight=w, reduction="none", label_smoothing=smoothing, z_loss=1e-3)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-15)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        loss1 = fastmax.softmax_cross_entropy(x, t, **kw)
        grad1 = fastmax.softmax_cross_entropy_backward(x, t, g, **kw)
        numba.set_num_threads(max(2, before))
        assert schedule.split_rows(*x.shape)
        loss2 = fastmax.softmax_cross_entropy(x, t, **kw)
        grad2 = fastmax.softmax_cross_entropy_backward(x, t, g, **kw)
        y = x.copy()
        loss3, _ = fastmax.softmax_cross_entropy_with_grad(y, t, out=y, **kw)
        _, grad3 = fastmax.softmax_cross_entropy_with_grad(x, t, **kw)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_allclose(loss2, ref.cross_entropy(x, t, **kw), **tol)
    np.testing.assert_allclose(loss2, loss1, **tol)
    np.testing.assert_allclose(grad2, grad1, **tol)
    np.testing.assert_allclose(loss3, loss2, **tol)
    np.testing.assert_allclose(y, grad3, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_class_axis_first_column_kernels(dtype, rng):
    """Classes on axis 0 (samples contiguous): the column path against the same
    problem laid out with classes last."""
    x, t = _problem(rng, (50, 3000), 0, dtype, "index")
    x[:, 7] = -np.inf
    x[3, 9] = np.nan
    w = (rng.random(50) + 0.5).astype(dtype)
    g = rng.standard_normal(3000)
    kw = dict(weight=w, reduction="none", z_loss=1e-3)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    rows = np.ascontiguousarray(x.T)
    loss = fastmax.softmax_cross_entropy(x, t, axis=0, **kw)
    np.testing.assert_allclose(loss, fastmax.softmax_cross_entropy(rows, t, **kw), **tol)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(loss, ref.cross_entropy(x, t, axis=0, **kw), **tol)
    grad = fastmax.softmax_cross_entropy_backward(x, t, g, axis=0, **kw)
    expected = fastmax.softmax_cross_entropy_backward(rows, t, g, **kw).T
    np.testing.assert_allclose(grad, expected, **tol)
    y = x.copy()
    loss_in_place, _ = fastmax.softmax_cross_entropy_with_grad(y, t, axis=0, out=y, **kw)
    _, grad1 = fastmax.softmax_cross_entropy_with_grad(rows, t, **kw)
    np.testing.assert_allclose(loss_in_place, loss, **tol)
    np.testing.assert_allclose(y, grad1.T, **tol)


def test_class_axis_first_forward_by_direct_sums(rng):
    """float32 forward with classes on axis 0: chunks of classes whose sums of
    ``exp(x)`` are taken with no shift (all finite and in range), merged
    with chunks shifted for an overflowing logit, a NaN or tiny logits, in
    one tile and across tiles; per-sample losses (and their z-loss, which
    takes the logsumexp) against the reference and the same problem with
    classes last."""
    n_classes, n = 1000, 2100  # 8 chunks of 125 classes; two tiles of samples
    assert schedule.column_chunks(n_classes) == schedule.COLUMN_CHUNKS
    x, t = _problem(rng, (n_classes, n), 0, np.float32, "index")
    x *= 3
    x[130, 5] = 100.0  # chunk 1: its exponential overflows in float32
    x[400, 2080] = np.nan  # chunk 3, second tile
    x[900:1000, 17] = -120.0  # chunk 7: tiny exponentials
    x[10, 40] = -np.inf  # a direct chunk
    for kw in ({}, {"z_loss": 1e-3}):
        loss = fastmax.softmax_cross_entropy(x, t, axis=0, reduction="none", **kw)
        rows = np.ascontiguousarray(x.T)
        tol = dict(rtol=2e-5, atol=1e-6)
        same = fastmax.softmax_cross_entropy(rows, t, reduction="none", **kw)
        np.testing.assert_allclose(loss, same, equal_nan=True, **tol)
        with np.errstate(invalid="ignore"):
            expected = ref.cross_entropy(x, t, axis=0, reduction="none", **kw)
        finite = np.arange(n) != 40  # the reference makes the -inf one's loss NaN
        np.testing.assert_allclose(loss[finite], expected[finite], equal_nan=True, **tol)
        assert np.isnan(loss[2080]) and np.isfinite(np.delete(loss, 2080)).all()


def test_class_axis_first_and_middle(rng):
    x, t = _problem(rng, (4, 7, 3, 2), 1, np.float64, "index")
    np.testing.assert_allclose(
        fastmax.softmax_cross_entropy(x, t, axis=1, reduction="none"),
        ref.cross_entropy(x, t, axis=1, reduction="none"),
        rtol=1e-12,
    )
    x, t = _problem(rng, (7, 30), 0, np.float64, "index")
    np.testing.assert_allclose(
        fastmax.softmax_cross_entropy(x, t, axis=0), ref.cross_entropy(x, t, axis=0), rtol=1e-12
    )


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_results_do_not_depend_on_thread_count(smoothing, weighted, rng):
    x, t = _problem(rng, (20_000, 50), -1, np.float32, "index")
    kw = dict(label_smoothing=smoothing)
    if weighted:
        kw["weight"] = (rng.random(50) + 0.5).astype(np.float32)
    before = numba.get_num_threads()
    try:
        for reduction in ("mean", "none"):
            numba.set_num_threads(1)
            one = fastmax.softmax_cross_entropy_with_grad(x, t, reduction=reduction, **kw)
            numba.set_num_threads(max(2, before))
            many = fastmax.softmax_cross_entropy_with_grad(x, t, reduction=reduction, **kw)
            np.testing.assert_array_equal(one[0], many[0], err_msg=reduction)
            np.testing.assert_array_equal(one[1], many[1], err_msg=reduction)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_no_full_size_temporaries(kind, rng):
    x, t = _problem(rng, (16384, 512), -1, np.float32, kind)  # 32 MiB of logits
    fastmax.softmax_cross_entropy(x, t)  # compile both first
    fastmax.softmax_cross_entropy_with_grad(x.copy(), t, out=None)
    buf = x.copy()
    fastmax.softmax_cross_entropy_with_grad(buf, t, out=buf)
    for fn in ("forward", "fused"):
        buf = x.copy()
        tracemalloc.start()
        if fn == "forward":
            fastmax.softmax_cross_entropy(buf, t)
        else:
            fastmax.softmax_cross_entropy_with_grad(buf, t, out=buf)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < x.nbytes // 32, (fn, peak)


@pytest.mark.parametrize("bad", [5, -1, 2**40, -(2**40), 10**18])
@pytest.mark.parametrize(
    "fn",
    [
        fastmax.softmax_cross_entropy,
        fastmax.softmax_cross_entropy_backward,
        fastmax.softmax_cross_entropy_with_grad,
    ],
)
@pytest.mark.parametrize(
    "shape", [(4, 5), (8192, 5), (8192, 4)], ids=["small", "cached rows", "short rows"]
)
def test_bad_targets_raise_and_touch_nothing(bad, fn, shape, rng):
    n_rows = shape[0]
    x = rng.standard_normal(shape)
    before = x.copy()
    t = np.full(n_rows, 2, dtype=np.int64)
    t[:3] = [0, 1, bad]
    with pytest.raises(ValueError, match=f"target {bad} at index \\(2,\\)"):
        fn(x, t)
    np.testing.assert_array_equal(x, before)
    if fn is fastmax.softmax_cross_entropy_with_grad:  # the gradient over the logits
        with pytest.raises(ValueError, match=f"target {bad} at index \\(2,\\)"):
            fn(x, t, out=x)
        np.testing.assert_array_equal(x, before)


def test_other_errors(rng):
    x = rng.standard_normal((4, 5))
    t = np.array([0, 1, 2, 3])
    f = fastmax.softmax_cross_entropy
    with pytest.raises(ValueError, match="shape"):
        f(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="probabilities has shape"):
        f(x, np.ones((4, 4)) / 4)
    with pytest.raises(ValueError, match="weight has shape"):
        f(x, t, weight=np.ones(4))
    for eps in (-0.1, 1.5, np.nan):
        with pytest.raises(ValueError, match="label_smoothing"):
            f(x, t, label_smoothing=eps)
    with pytest.raises(ValueError, match="reduction"):
        f(x, t, reduction="avg")
    with pytest.raises(ValueError, match="z_loss"):
        f(x, t, z_loss=-1.0)
    with pytest.raises(TypeError, match="bool"):
        f(x, np.array([True, False, True, False]))
    with pytest.raises(TypeError, match="complex"):
        f(x.astype(complex), t)
    with pytest.raises(np.exceptions.AxisError):
        f(x, t, axis=2)
    with pytest.raises(ValueError, match="grad must be a scalar"):
        fastmax.softmax_cross_entropy_backward(x, t, np.ones(4))
    with pytest.raises(ValueError, match="per-sample"):
        fastmax.softmax_cross_entropy_backward(x, t, np.ones(3), reduction="none")
    with pytest.raises(ValueError, match="shape"):
        fastmax.softmax_cross_entropy_with_grad(x, t, out=np.empty((5, 4)))
    # ignore_index with probabilities is fine (it is ignored)
    q = np.full((4, 5), 0.2)
    np.testing.assert_allclose(f(x, q, ignore_index=3), ref.cross_entropy(x, q), rtol=1e-12)
    # a custom ignore_index
    t2 = np.array([0, 7, 2, 7])
    np.testing.assert_allclose(
        f(x, t2, ignore_index=7), ref.cross_entropy(x, t2, ignore_index=7), rtol=1e-12
    )


def _exact_nll(x, t, axis, ignore_index=-100):
    """Each sample's ``lse - x[t]`` in long double, as ``(max - x[t]) + log(sum(
    exp(x - max)))`` (0 for an ignored sample)."""
    v = np.moveaxis(np.asarray(x, np.longdouble), axis, -1)
    m = v.max(axis=-1)
    kept = t != ignore_index
    xt = np.take_along_axis(v, np.where(kept, t, 0)[..., None], axis=-1)[..., 0]
    nll = (m - xt) + np.log(np.exp(v - m[..., None]).sum(axis=-1))
    return np.where(kept, nll, 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape, axis",
    [
        ((3 * short.BLOCK_ELEMENTS // 2 + 5, 2), -1),  # short rows, and rows after the blocks
        ((3 * short.BLOCK_ELEMENTS // 8 + 5, 8), -1),
        ((64, 100), -1),  # small
        ((5000, 100), -1),  # row kernels
        ((6, 40000), -1),  # rows longer than a block
        ((1, 300000), -1),  # one row split over the threads
        ((3000, 50), 0),  # class axis first
    ],
    ids=["short2", "short8", "small", "rows", "long", "split", "axis0"],
)
@pytest.mark.parametrize("offset", [0.0, 1000.0, 1e5], ids=lambda o: f"offset{o:g}")
def test_per_sample_losses_keep_their_precision_far_from_zero(dtype, shape, axis, offset, rng):
    """Per-sample losses of logits far from 0, forward and fused, on every
    path of index targets: within 4 ulps of the loss plus 4 ulps of 1 of an
    exact computation.  A loss taken as ``lse - x[t]`` carries the rounding
    of ``lse`` to an ulp of the largest logit (float64 near 1e5: 32,700 ulps
    of the loss, as SciPy's ``logsumexp(x) - x[t]``)."""
    eps = np.finfo(dtype).eps
    x = (rng.standard_normal(shape) * 3 + offset).astype(dtype)
    n_classes = shape[axis]
    batch = shape[: axis % 2] + shape[axis % 2 + 1 :]
    t = rng.integers(0, n_classes, size=batch)
    t.flat[0] = -100
    expected = _exact_nll(x, t, axis)
    for got in (
        fastmax.softmax_cross_entropy(x, t, axis=axis, reduction="none"),
        fastmax.softmax_cross_entropy_with_grad(x, t, axis=axis, reduction="none")[0],
    ):
        err = np.abs(got - expected) / (eps * (np.abs(expected) + 1))
        assert float(err.max()) <= 4.0, float(err.max())


def _exact_soft_loss(x, q, axis):
    """``-sum(q * log_softmax(x))`` along ``axis`` in long double."""
    v = np.moveaxis(np.asarray(x, np.longdouble), axis, -1)
    shifted = v - v.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -(np.moveaxis(np.asarray(q, np.longdouble), axis, -1) * logp).sum(axis=-1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape, axis",
    [((300, 100), -1), ((6, 40000), -1), ((1, 300000), -1), ((3000, 50), 0)],
    ids=["rows", "long", "split", "axis0"],
)
@pytest.mark.parametrize("kind", ["smoothing", "prob"])
@pytest.mark.parametrize("offset", [0.0, 1000.0, 1e5], ids=lambda o: f"offset{o:g}")
def test_smoothed_and_soft_losses_keep_their_precision_far_from_zero(
    dtype, shape, axis, kind, offset, rng
):
    """Per-sample losses of label smoothing and of probability targets on
    logits far from 0, against an exact computation: within 16 ulps of the
    loss plus 16 ulps of 1, and for probability targets (a float64 sum of C
    terms, of an error that grows with C whatever the offset) ``sqrt(C)``
    more.  ``A * lse - B`` of the unshifted ``B = sum(w q' x)`` cancels
    (float64 logits near 1000: 546-4,700 ulps on these shapes; near 1e5:
    7,000-750,000); the kernels sum ``w q' (x - max)``."""
    eps = np.finfo(dtype).eps
    x = (rng.standard_normal(shape) * 3 + offset).astype(dtype)
    n_classes = shape[axis]
    batch = shape[: axis % 2] + shape[axis % 2 + 1 :]
    if kind == "smoothing":
        t = rng.integers(0, n_classes, size=batch)
        q = np.full(shape, 0.1 / n_classes)
        np.put_along_axis(q, np.expand_dims(t, axis), 0.9 + 0.1 / n_classes, axis=axis)
        kwargs = {"label_smoothing": 0.1}
    else:
        q = rng.random(shape).astype(dtype)
        q /= q.sum(axis=axis, keepdims=True)
        t = q
        kwargs = {}
    expected = _exact_soft_loss(x, q, axis)
    for got in (
        fastmax.softmax_cross_entropy(x, t, axis=axis, reduction="none", **kwargs),
        fastmax.softmax_cross_entropy_with_grad(x, t, axis=axis, reduction="none", **kwargs)[0],
    ):
        err = np.abs(got - expected) / (eps * (np.abs(expected) + 1))
        assert float(err.max()) <= 16.0 + (np.sqrt(n_classes) if kind == "prob" else 0.0)
