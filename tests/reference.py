"""Plain NumPy/SciPy references for every fastmax function (slow, obviously right)."""

from __future__ import annotations

import numpy as np
import scipy.special as sp


def as_reference_input(x) -> np.ndarray:
    """The input the reference sees: float64, or float32 values for float16 input."""
    x = np.asarray(x)
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    return x.astype(np.float64)


def _axis_any(mask: np.ndarray, axis) -> np.ndarray:
    return np.any(mask, axis=axis, keepdims=True)


def softmax(x, axis=-1, where=None, temperature=1.0, log=False) -> np.ndarray:
    """SciPy's softmax/log_softmax of ``x / temperature`` over the entries where ``where``."""
    x = as_reference_input(x)
    if x.size == 0:  # SciPy's np.max raises here; there is nothing to compute
        return np.empty_like(x)
    if temperature != 1.0:
        x = x / temperature
    fn = sp.log_softmax if log else sp.softmax
    fill = -np.inf if log else 0.0
    with np.errstate(all="ignore"):
        if where is None:
            return fn(x, axis=axis)
        mask = np.broadcast_to(where, x.shape)
        res = fn(np.where(mask, x, -np.inf), axis=axis)
        res = np.where(_axis_any(mask, axis), res, fill)
        return np.where(mask, res, fill)


def logsumexp(x, axis=-1, b=None, keepdims=False, return_sign=False, where=None):
    """SciPy's logsumexp over the entries where ``where``."""
    x = as_reference_input(x)
    if where is not None:
        mask = np.broadcast_to(
            where, np.broadcast_shapes(x.shape, np.shape(b) if b is not None else ())
        )
        x = np.where(mask, x, -np.inf)
        if b is not None:
            b = np.where(mask, b, 0.0)
    if x.size == 0:  # SciPy fails on some empty inputs with a tuple axis; its rule is -inf, sign -1
        axes = tuple(range(x.ndim)) if axis is None else np.atleast_1d(axis) % x.ndim
        shape = tuple(
            1 if i in axes else n for i, n in enumerate(x.shape) if keepdims or i not in axes
        )
        res = np.full(shape, -np.inf)
        return (res, np.full(shape, -1.0)) if return_sign else res
    with np.errstate(all="ignore"):
        return sp.logsumexp(x, axis=axis, b=b, keepdims=keepdims, return_sign=return_sign)


def tolerance(dtype) -> dict:
    """Tolerances of the contract: float64 rtol 1e-12, float32 (and float16) 2e-5."""
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        return {"rtol": 2e-3, "atol": 1e-4}
    if dtype == np.float32:
        return {"rtol": 2e-5, "atol": 1e-6}
    return {"rtol": 1e-12, "atol": 1e-14}


def assert_matches(actual, expected, dtype, *, scale=1.0, context=""):
    """Elementwise comparison with NaN and ±inf in the same places.

    ``scale`` widens the absolute tolerance for outputs whose size follows the
    input's magnitude (log_softmax, logsumexp), where cancellation near zero
    makes a relative tolerance meaningless.
    """
    dtype = np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.dtype(np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    # Round the float64 reference to the result dtype (overflow included).
    with np.errstate(over="ignore"):
        expected = np.asarray(expected).astype(dtype).astype(np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape, context)
    tol = tolerance(dtype)
    np.testing.assert_array_equal(
        np.isnan(actual), np.isnan(expected), err_msg=f"NaN places {context}"
    )
    inf_a = np.isinf(actual)
    np.testing.assert_array_equal(inf_a, np.isinf(expected), err_msg=f"inf places {context}")
    np.testing.assert_array_equal(actual[inf_a], expected[inf_a], err_msg=f"inf signs {context}")
    fin = np.isfinite(expected)
    np.testing.assert_allclose(
        actual[fin],
        expected[fin],
        rtol=tol["rtol"],
        atol=tol["atol"] * max(1.0, scale),
        err_msg=context,
    )


def magnitude(x) -> float:
    """Largest finite |x| (1.0 if none), for :func:`assert_matches`'s ``scale``."""
    x = as_reference_input(x)
    fin = np.abs(x[np.isfinite(x)])
    return float(fin.max()) if fin.size else 1.0


def hardmax(x, axis=-1) -> np.ndarray:
    """One-hot of ``np.argmax`` along ``axis`` (an int, a tuple or None)."""
    x = as_reference_input(x)
    # Several axes: "first" in row-major order of the reduced axes, in array order.
    axes = (
        tuple(range(x.ndim))
        if axis is None
        else tuple(sorted(np.atleast_1d(axis) % max(x.ndim, 1)))
    )
    out = np.zeros_like(x)
    if x.size == 0:
        return out
    batch = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, batch + list(axes))
    flat = moved.reshape(int(np.prod([x.shape[a] for a in batch])), -1)
    hot = np.zeros_like(flat)
    hot[np.arange(flat.shape[0]), np.argmax(flat, axis=1)] = 1
    return np.transpose(hot.reshape(moved.shape), np.argsort(batch + list(axes)))


def softmax_jacobian(y, axis=-1) -> np.ndarray:
    y = np.moveaxis(np.asarray(y, np.float64), axis, -1)
    return np.einsum("...i,ij->...ij", y, np.eye(y.shape[-1])) - y[..., :, None] * y[..., None, :]


def jvp(kind: str, primal, tangent, axis=-1) -> np.ndarray:
    """The contract's formulas, written with NumPy broadcasting."""
    p, t = np.broadcast_arrays(np.asarray(primal, np.float64), np.asarray(tangent, np.float64))
    if kind in ("softmax_jvp", "softmax_vjp"):
        return p * (t - np.sum(p * t, axis=axis, keepdims=True))
    if kind == "log_softmax_jvp":
        return t - np.sum(np.exp(p) * t, axis=axis, keepdims=True)
    return t - np.exp(p) * np.sum(t, axis=axis, keepdims=True)


def cross_entropy(
    x,
    target,
    axis=-1,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
):
    """PyTorch's F.cross_entropy (+ z-loss) written in NumPy, float64."""
    x = np.moveaxis(as_reference_input(x), axis, -1)
    n_classes = x.shape[-1]
    w = np.ones(n_classes) if weight is None else np.asarray(weight, np.float64)
    logp = sp.log_softmax(x, axis=-1)
    lse = sp.logsumexp(x, axis=-1)
    eps = label_smoothing
    target = np.asarray(target)
    if target.dtype.kind == "f":
        q = np.moveaxis(target.astype(np.float64), axis, -1) * (1 - eps) + eps / n_classes
        per = -(w * q * logp).sum(-1) + z_loss * lse**2
        if reduction == "none":
            return per
        return per.sum() / (per.size if reduction == "mean" else 1)
    keep = target != ignore_index
    t = np.where(keep, target, 0)
    wt = np.where(keep, w[t], 0.0)
    nll = -wt * np.take_along_axis(logp, t[..., None], -1)[..., 0]
    smooth = np.where(keep, -(w * logp).sum(-1), 0.0)
    z = np.where(keep, lse**2, 0.0)
    if reduction == "none":
        return (1 - eps) * nll + eps / n_classes * smooth + z_loss * z
    if reduction == "sum":
        return (1 - eps) * nll.sum() + eps / n_classes * smooth.sum() + z_loss * z.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (
            (1 - eps) * nll.sum() + eps / n_classes * smooth.sum()
        ) / wt.sum() + z_loss * z.sum() / keep.sum()
