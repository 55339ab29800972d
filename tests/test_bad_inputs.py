"""A catalogue of bad inputs for every public function: each raises the
documented exception with a message naming the argument, and leaves every
input unchanged."""

from __future__ import annotations

import numpy as np
import pytest

import fastmax

X = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
T = np.array([0, 1, 3])
RO = np.empty((3, 4))
RO.flags.writeable = False
BIG = np.zeros(13)

CASES = [
    # dtypes
    ("softmax complex", lambda: fastmax.softmax(X.astype(complex)), TypeError, "complex128"),
    ("log_softmax object", lambda: fastmax.log_softmax(X.astype(object)), TypeError, "object"),
    ("logsumexp str", lambda: fastmax.logsumexp(np.array(["a", "b"])), TypeError, "<U1"),
    (
        "hardmax datetime",
        lambda: fastmax.hardmax(np.array(["2020-01-01"], "datetime64[D]")),
        TypeError,
        "datetime64",
    ),
    (
        "softmax_jvp complex tangent",
        lambda: fastmax.softmax_jvp(X, X.astype(complex)),
        TypeError,
        "v",
    ),
    (
        "xent complex logits",
        lambda: fastmax.softmax_cross_entropy(X.astype(complex), T),
        TypeError,
        "logits",
    ),
    (
        "xent bool target",
        lambda: fastmax.softmax_cross_entropy(X, np.array([True, False, True])),
        TypeError,
        "target",
    ),
    ("softmax ragged", lambda: fastmax.softmax([[1.0], [1.0, 2.0]]), TypeError, "x could not"),
    # axes
    (
        "softmax axis out of range",
        lambda: fastmax.softmax(X, axis=2),
        np.exceptions.AxisError,
        "axis",
    ),
    (
        "log_softmax axis -3",
        lambda: fastmax.log_softmax(X, axis=-3),
        np.exceptions.AxisError,
        "axis",
    ),
    (
        "logsumexp repeated axis",
        lambda: fastmax.logsumexp(X, axis=(0, -2)),
        ValueError,
        "repeated axis",
    ),
    ("hardmax float axis", lambda: fastmax.hardmax(X, axis=0.5), TypeError, "axis"),
    (
        "softmax_vjp axis",
        lambda: fastmax.softmax_vjp(X, X, axis=5),
        np.exceptions.AxisError,
        "axis",
    ),
    (
        "softmax_jacobian tuple axis",
        lambda: fastmax.softmax_jacobian(X, axis=(0, 1)),
        TypeError,
        "axis",
    ),
    (
        "xent axis",
        lambda: fastmax.softmax_cross_entropy(X, T, axis=3),
        np.exceptions.AxisError,
        "axis",
    ),
    (
        "xent tuple axis",
        lambda: fastmax.softmax_cross_entropy(X, T, axis=(0, 1)),
        TypeError,
        "axis",
    ),
    # out
    (
        "softmax out shape",
        lambda: fastmax.softmax(X, out=np.empty((4, 3))),
        ValueError,
        r"out has shape \(4, 3\)",
    ),
    (
        "log_softmax out dtype",
        lambda: fastmax.log_softmax(X, out=np.empty((3, 4), np.float32)),
        ValueError,
        "out has dtype float32",
    ),
    ("hardmax out read-only", lambda: fastmax.hardmax(X, out=RO), ValueError, "read-only"),
    ("softmax out list", lambda: fastmax.softmax(X, out=[[0.0] * 4] * 3), ValueError, "ndarray"),
    (
        "softmax out overlaps",
        lambda: fastmax.softmax(BIG[:12].reshape(3, 4), out=BIG[1:].reshape(3, 4)),
        ValueError,
        "overlaps x",
    ),
    ("logsumexp out shape", lambda: fastmax.logsumexp(X, out=np.empty(4)), ValueError, "out"),
    (
        "softmax_jvp out overlaps",
        lambda: fastmax.softmax_jvp(X, BIG[:12].reshape(3, 4), out=BIG[1:].reshape(3, 4)),
        ValueError,
        "overlaps v",
    ),
    (
        "xent_with_grad out dtype",
        lambda: fastmax.softmax_cross_entropy_with_grad(X, T, out=np.empty((3, 4), np.float32)),
        ValueError,
        "out has dtype",
    ),
    (
        "xent_backward out read-only",
        lambda: fastmax.softmax_cross_entropy_backward(X, T, out=RO),
        ValueError,
        "read-only",
    ),
    # where
    (
        "softmax where shape",
        lambda: fastmax.softmax(X, where=np.ones(5, bool)),
        ValueError,
        "where",
    ),
    (
        "log_softmax where dtype",
        lambda: fastmax.log_softmax(X, where=np.ones(4)),
        TypeError,
        "where",
    ),
    (
        "logsumexp where shape",
        lambda: fastmax.logsumexp(X, where=np.ones((2, 4), bool)),
        ValueError,
        "where",
    ),
    # temperature
    ("softmax temperature 0", lambda: fastmax.softmax(X, temperature=0), ValueError, "temperature"),
    (
        "softmax temperature nan",
        lambda: fastmax.softmax(X, temperature=np.nan),
        ValueError,
        "temperature",
    ),
    (
        "log_softmax temperature inf",
        lambda: fastmax.log_softmax(X, temperature=np.inf),
        ValueError,
        "temperature",
    ),
    (
        "log_softmax temperature str",
        lambda: fastmax.log_softmax(X, temperature="2"),
        ValueError,
        "temperature",
    ),
    # logsumexp b
    ("logsumexp b shape", lambda: fastmax.logsumexp(X, b=np.ones(5)), ValueError, "b of shape"),
    ("logsumexp b complex", lambda: fastmax.logsumexp(X, b=np.ones(4, complex)), TypeError, "b"),
    # jacobian products
    (
        "softmax_jvp shapes",
        lambda: fastmax.softmax_jvp(X, np.ones((3, 5))),
        ValueError,
        "do not broadcast",
    ),
    (
        "log_softmax_vjp shapes",
        lambda: fastmax.log_softmax_vjp(X, np.ones(3)),
        ValueError,
        "do not broadcast",
    ),
    # cross-entropy targets
    (
        "xent target = C",
        lambda: fastmax.softmax_cross_entropy(X, np.array([0, 4, 1])),
        ValueError,
        r"target 4 at index \(1,\)",
    ),
    (
        "xent target -1",
        lambda: fastmax.softmax_cross_entropy(X, np.array([0, -1, 1])),
        ValueError,
        "target -1",
    ),
    (
        "xent target 2**40",
        lambda: fastmax.softmax_cross_entropy_backward(X, np.array([2**40, 0, 1])),
        ValueError,
        "target 1099511627776",
    ),
    (
        "xent target uint64 max",
        lambda: fastmax.softmax_cross_entropy_with_grad(X, np.array([0, 2**64 - 1, 1], np.uint64)),
        ValueError,
        "target 18446744073709551615",
    ),
    (
        "xent float labels of the wrong shape",
        lambda: fastmax.softmax_cross_entropy(X, np.array([0.0, 1.0, 2.0])),
        ValueError,
        "probabilities has shape",
    ),
    (
        "xent target shape",
        lambda: fastmax.softmax_cross_entropy(X, np.array([0, 1])),
        ValueError,
        "target of class indices has shape",
    ),
    (
        "xent weight length",
        lambda: fastmax.softmax_cross_entropy(X, T, weight=np.ones(3)),
        ValueError,
        "weight has shape",
    ),
    (
        "xent weight complex",
        lambda: fastmax.softmax_cross_entropy(X, T, weight=np.ones(4, complex)),
        TypeError,
        "weight",
    ),
    (
        "xent smoothing",
        lambda: fastmax.softmax_cross_entropy(X, T, label_smoothing=1.5),
        ValueError,
        "label_smoothing",
    ),
    (
        "xent smoothing nan",
        lambda: fastmax.softmax_cross_entropy(X, T, label_smoothing=np.nan),
        ValueError,
        "label_smoothing",
    ),
    (
        "xent reduction",
        lambda: fastmax.softmax_cross_entropy(X, T, reduction="avg"),
        ValueError,
        "reduction",
    ),
    (
        "xent z_loss",
        lambda: fastmax.softmax_cross_entropy(X, T, z_loss=np.inf),
        ValueError,
        "z_loss",
    ),
    (
        "xent ignore_index float",
        lambda: fastmax.softmax_cross_entropy(X, T, ignore_index=1.5),
        TypeError,
        "ignore_index",
    ),
    (
        "xent grad not scalar",
        lambda: fastmax.softmax_cross_entropy_backward(X, T, np.ones(3)),
        ValueError,
        "grad must be a scalar",
    ),
    (
        "xent grad per-sample shape",
        lambda: fastmax.softmax_cross_entropy_backward(X, T, np.ones(2), reduction="none"),
        ValueError,
        "grad of shape",
    ),
    (
        "xent 0-d logits",
        lambda: fastmax.softmax_cross_entropy(np.float64(1.0), T),
        ValueError,
        "logits",
    ),
]

INPUTS = {"X": X, "T": T, "BIG": BIG}


@pytest.mark.parametrize("name, call, exc, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, call, exc, match):
    before = {k: v.copy() for k, v in INPUTS.items()}
    with pytest.raises(exc, match=match):
        call()
    for key, value in INPUTS.items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_catalogue_is_large():
    assert len(CASES) >= 40
