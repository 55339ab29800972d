"""Jacobian-vector products against the explicit Jacobian and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special as sp
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastmax
from fastmax._kernels import short

from . import reference as ref
from .strategies import at_line_offset

KINDS = ["softmax_jvp", "softmax_vjp", "log_softmax_jvp", "log_softmax_vjp"]


def _primal(kind, x, axis):
    return sp.softmax(x, axis=axis) if kind.startswith("softmax") else sp.log_softmax(x, axis=axis)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_matches_formula_on_every_axis_and_layout(kind, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    x = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-20, 20)))
    v = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-5, 5)))
    axis = data.draw(
        st.one_of(
            st.integers(-len(shape), len(shape) - 1), st.none(), st.just(tuple(range(len(shape))))
        )
    )
    p = _primal(kind, x, axis)
    layout = data.draw(st.sampled_from(["C", "F"]))
    if layout == "F":
        p, v = np.asfortranarray(p), np.asfortranarray(v)
    got = getattr(fastmax, kind)(p, v, axis=axis)
    np.testing.assert_allclose(got, ref.jvp(kind, p, v, axis=axis), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("kind", ["softmax_jvp", "softmax_vjp"])
def test_softmax_products_equal_the_explicit_jacobian(kind, axis, rng):
    x = rng.standard_normal((4, 5, 6))
    y = sp.softmax(x, axis=axis)
    v = rng.standard_normal(x.shape)
    jac = fastmax.softmax_jacobian(y, axis=axis)  # y with axis last, plus (C,)
    np.testing.assert_allclose(jac, ref.softmax_jacobian(y, axis=axis), rtol=1e-12, atol=1e-15)
    expected = np.moveaxis(np.einsum("...ij,...j->...i", jac, np.moveaxis(v, axis, -1)), -1, axis)
    np.testing.assert_allclose(
        getattr(fastmax, kind)(y, v, axis=axis), expected, rtol=1e-10, atol=1e-13
    )


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_central_finite_differences(kind, axis, rng):
    x = rng.standard_normal((3, 4, 5))
    v = rng.standard_normal(x.shape)
    f = sp.softmax if kind.startswith("softmax") else sp.log_softmax
    p = f(x, axis=axis)
    h = 1e-6
    if kind.endswith("jvp"):
        fd = (f(x + h * v, axis=axis) - f(x - h * v, axis=axis)) / (2 * h)
        np.testing.assert_allclose(
            getattr(fastmax, kind)(p, v, axis=axis), fd, rtol=1e-6, atol=1e-8
        )
    else:
        # <g, J v> = <J^T g, v>: the VJP paired with v equals the directional
        # derivative paired with g.
        g = rng.standard_normal(x.shape)
        dir_deriv = (f(x + h * v, axis=axis) - f(x - h * v, axis=axis)) / (2 * h)
        lhs = np.sum(getattr(fastmax, kind)(p, g, axis=axis) * v)
        np.testing.assert_allclose(lhs, np.sum(g * dir_deriv), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_stacked_tangents_broadcast(kind, rng):
    y = _primal(kind, rng.standard_normal((6, 10)), -1)
    v = rng.standard_normal((4, 6, 10))
    got = getattr(fastmax, kind)(y, v)
    assert got.shape == (4, 6, 10)
    for k in range(4):
        np.testing.assert_allclose(got[k], getattr(fastmax, kind)(y, v[k]), rtol=1e-13, atol=1e-15)
    # and the other way round: one tangent for a stack of primals, on a non-last axis
    ys = _primal(kind, rng.standard_normal((3, 6, 10)), 1)
    got = getattr(fastmax, kind)(ys, v[0], axis=1)
    np.testing.assert_allclose(got, ref.jvp(kind, ys, v[0], axis=1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_cols", [37, 2, 8, 16])  # 2-16: the short-row kernel
def test_big_parallel_paths_and_in_place(kind, dtype, n_cols, rng):
    if n_cols != 37:  # rows in several blocks and a tail after the last one
        assert short.fits(n_cols, np.dtype(dtype).itemsize) == (
            n_cols * np.dtype(dtype).itemsize <= 64
        )
    n_rows = 3 * short.BLOCK_ELEMENTS // n_cols + 5 if n_cols != 37 else 3000
    y = _primal(kind, rng.standard_normal((n_rows, n_cols)), -1).astype(dtype)
    v = rng.standard_normal(y.shape).astype(dtype)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-14}
    expected = ref.jvp(kind, y, v)
    np.testing.assert_allclose(getattr(fastmax, kind)(y, v), expected, **tol)
    yt = np.ascontiguousarray(y.T)
    vt = np.ascontiguousarray(v.T)
    np.testing.assert_allclose(getattr(fastmax, kind)(yt, vt, axis=0), expected.T, **tol)
    v_in = v.copy()
    assert getattr(fastmax, kind)(y, v_in, out=v_in) is v_in
    np.testing.assert_allclose(v_in, expected, **tol)
    y_in = y.copy()
    getattr(fastmax, kind)(y_in, v, out=y_in)
    np.testing.assert_allclose(y_in, expected, **tol)


def test_errors():
    y = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="do not broadcast"):
        fastmax.softmax_jvp(y, np.ones((2, 4)))
    with pytest.raises(ValueError, match="shape"):
        fastmax.softmax_vjp(y, y, out=np.empty((3, 2)))
    with pytest.raises(ValueError, match="dtype"):
        fastmax.log_softmax_jvp(y, y, out=np.empty((2, 3), np.float32))
    ro = np.empty((2, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastmax.log_softmax_vjp(y, y, out=ro)
    with pytest.raises(TypeError, match="complex"):
        fastmax.softmax_jvp(y, np.ones((2, 3), complex))
    with pytest.raises(np.exceptions.AxisError):
        fastmax.softmax_jvp(y, y, axis=2)
    with pytest.raises(TypeError, match="axis"):
        fastmax.softmax_jacobian(y, axis=(0, 1))
    big = np.zeros(7)
    with pytest.raises(ValueError, match="overlaps"):
        fastmax.softmax_jvp(big[:6].reshape(2, 3), y, out=big[1:].reshape(2, 3))
    assert fastmax.softmax_jvp(np.empty((0, 3)), np.empty((0, 3))).shape == (0, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_long_rows_split_across_threads(kind, rng):
    from fastmax._kernels import schedule

    x = rng.standard_normal((2, 3 * schedule.SPLIT_CHUNK + 5))
    p = _primal(kind, x, -1)
    v = rng.standard_normal(x.shape)
    np.testing.assert_allclose(
        getattr(fastmax, kind)(p, v), ref.jvp(kind, p, v), rtol=1e-10, atol=1e-14
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_big_outputs_written_by_streaming_stores(kind, dtype, rng):
    """Outputs over ``STREAM_MIN_BYTES`` into a third array are streamed from a
    stack buffer: right values on the row, split-row, short-row and column
    paths, into an ``out`` off a cache line, and nothing written around it."""
    from fastmax._kernels import schedule

    n = -(-schedule.STREAM_MIN_BYTES // np.dtype(dtype).itemsize)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-14}
    for shape, axis in [
        ((n // 1000 + 1, 1000), -1),
        ((2, n // 2 + 5), -1),
        ((n // 8 + 3, 8), -1),
        ((n // 1000 + 1, 1000), 0),
    ]:
        p = _primal(kind, rng.standard_normal(shape), axis).astype(dtype)
        v = rng.standard_normal(shape).astype(dtype)
        backing = np.full(p.size + 2, 5.0, dtype)
        out = backing[1:-1].reshape(shape)
        assert schedule.streams(out)
        assert getattr(fastmax, kind)(p, v, axis=axis, out=out) is out
        np.testing.assert_allclose(out, ref.jvp(kind, p, v, axis=axis), **tol)
        assert backing[0] == 5.0 and backing[-1] == 5.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_vjp_is_the_same_wherever_its_arrays_start(dtype):
    """Rows read by aligned loads where they start inside a cache line (and
    written from ``out``'s first vector boundary): the same bits at any
    offsets of the primal, the cotangent and ``out``, and right."""
    rng = np.random.default_rng(11)
    y0 = sp.softmax(rng.standard_normal((6, 1003)) * 4, axis=-1).astype(dtype)
    g0 = rng.standard_normal((6, 1003)).astype(dtype)
    expected = fastmax.softmax_vjp(np.ascontiguousarray(y0), np.ascontiguousarray(g0))
    ref.assert_matches(expected, ref.jvp("softmax_vjp", y0, g0), dtype)
    size = np.dtype(dtype).itemsize
    for oy, og, oo in [(16, 16, 16), (0, 48, 16), (32, 0, 0), (size, 2 * size, 0), (16, 16, 0)]:
        y, g = at_line_offset(y0, oy), at_line_offset(g0, og)
        out = at_line_offset(np.zeros_like(y0), oo)
        fastmax.softmax_vjp(y, g, out=out)
        np.testing.assert_array_equal(out, expected, err_msg=str((oy, og, oo)))
        np.testing.assert_array_equal(fastmax.softmax_vjp(y, g), expected)
