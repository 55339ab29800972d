"""Every error of the contract for softmax / log_softmax / logsumexp, and inputs left unchanged."""

from __future__ import annotations

import numpy as np
import pytest

import fastmax

FUNCS = [fastmax.softmax, fastmax.log_softmax, fastmax.logsumexp]
NAMES = [f.__name__ for f in FUNCS]


@pytest.mark.parametrize("fn", FUNCS, ids=NAMES)
@pytest.mark.parametrize(
    "bad, dtype_name",
    [
        (np.array([1 + 2j, 3j]), "complex128"),
        (np.array([1, "a"], dtype=object), "object"),
        (np.array(["a", "b"]), "<U1"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "datetime64"),
        (np.array([1], dtype="timedelta64[s]"), "timedelta64"),
    ],
)
def test_bad_dtype_is_a_type_error_naming_it(fn, bad, dtype_name):
    with pytest.raises(TypeError, match=dtype_name.replace("[", r"\[")):
        fn(bad)


@pytest.mark.parametrize("fn", FUNCS, ids=NAMES)
def test_axis_errors(fn):
    x = np.zeros((2, 3))
    with pytest.raises(np.exceptions.AxisError):
        fn(x, axis=2)
    with pytest.raises(np.exceptions.AxisError):
        fn(x, axis=-3)
    with pytest.raises(np.exceptions.AxisError):
        fn(x, axis=(0, 5))
    with pytest.raises(ValueError, match="repeated axis"):
        fn(x, axis=(0, 0))
    with pytest.raises(ValueError, match="repeated axis"):
        fn(x, axis=(1, -1))
    with pytest.raises(TypeError, match="axis"):
        fn(x, axis=1.5)
    with pytest.raises(np.exceptions.AxisError):
        fn(np.float64(1.0))  # axis=-1 of a 0-d array


@pytest.mark.parametrize("fn", [fastmax.softmax, fastmax.log_softmax])
@pytest.mark.parametrize("temperature", [0.0, -1.0, np.nan, np.inf, "hot", None])
def test_bad_temperature(fn, temperature):
    with pytest.raises(ValueError, match="temperature"):
        fn(np.zeros(3), temperature=temperature)


@pytest.mark.parametrize("fn", [fastmax.softmax, fastmax.log_softmax])
def test_bad_out(fn):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        fn(x, out=np.empty((3, 2)))
    with pytest.raises(ValueError, match="float32"):
        fn(x, out=np.empty((2, 3), np.float32))
    ro = np.empty((2, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fn(x, out=ro)
    with pytest.raises(ValueError, match="ndarray"):
        fn(x, out=[[0.0] * 3] * 2)
    big = np.zeros(7)
    with pytest.raises(ValueError, match="overlaps"):
        fn(big[:6].reshape(2, 3), out=big[1:].reshape(2, 3))


def test_bad_out_logsumexp():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="shape"):
        fastmax.logsumexp(x, out=np.empty(3))
    with pytest.raises(ValueError, match="dtype"):
        fastmax.logsumexp(x, out=np.empty(2, np.float32))
    with pytest.raises(ValueError, match="shape"):
        fastmax.logsumexp(x, keepdims=True, out=np.empty(2))


@pytest.mark.parametrize("fn", FUNCS, ids=NAMES)
def test_bad_where(fn):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="where"):
        fn(x, where=np.ones(4, bool))
    with pytest.raises(TypeError, match="where"):
        fn(x, where=np.ones(3))


def test_bad_b():
    with pytest.raises(ValueError, match="b of shape"):
        fastmax.logsumexp(np.zeros((2, 3)), b=np.ones(4))
    with pytest.raises(TypeError, match="complex"):
        fastmax.logsumexp(np.zeros(3), b=np.ones(3, complex))


def test_ragged_input():
    with pytest.raises(TypeError, match="x could not be converted"):
        fastmax.softmax([[1.0, 2.0], [3.0]])


@pytest.mark.parametrize("fn", FUNCS, ids=NAMES)
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_inputs_are_not_modified(fn, layout, rng):
    base = rng.standard_normal((6, 50)) * 30
    base[0, 3] = np.nan
    base[1, :] = -np.inf
    base[2, 4] = np.inf
    x = {"C": base.copy(), "F": np.asfortranarray(base), "strided": base.copy()[:, ::2]}[layout]
    before = x.copy()
    where = rng.random(x.shape) > 0.3
    where_before = where.copy()
    for axis in (-1, 0, None, (0, 1)):
        fn(x, axis=axis)
        fn(x, axis=axis, where=where)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(where, where_before)
    if fn is fastmax.logsumexp:
        b = rng.standard_normal(x.shape)
        b_before = b.copy()
        fn(x, b=b, return_sign=True)
        np.testing.assert_array_equal(b, b_before)
        np.testing.assert_array_equal(x, before)
