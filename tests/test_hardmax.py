"""hardmax against np.argmax: ties, NaN, ±inf, every axis and layout, in place."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastmax
from fastmax._api import hardmax as hardmax_api
from fastmax._kernels import schedule, short

from . import reference as ref
from .strategies import arrays, axes


@given(data=st.data())
def test_hardmax_matches_argmax(data):
    x = data.draw(arrays())
    axis = data.draw(axes(x.ndim))
    before = x.copy()
    got = fastmax.hardmax(x, axis=axis)
    assert got.dtype == (x.dtype if x.dtype.kind == "f" else np.float64)
    np.testing.assert_array_equal(got, ref.hardmax(x, axis=axis))
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape, axis",
    [((300, 7), -1), ((300, 7), 0), ((64, 2000), -1), ((700, 300), 0), ((3, 4, 5), (0, 2))],
)
def test_ties_nan_and_infinities(dtype, shape, axis, rng):
    x = rng.integers(0, 3, size=shape).astype(dtype)  # many ties
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, 20)] = np.nan
    flat[rng.integers(0, flat.size, 20)] = np.inf
    flat[rng.integers(0, flat.size, 20)] = -np.inf
    np.testing.assert_array_equal(fastmax.hardmax(x, axis=axis), ref.hardmax(x, axis=axis))
    all_neg_inf = np.full(shape, -np.inf, dtype)
    np.testing.assert_array_equal(
        fastmax.hardmax(all_neg_inf, axis=axis), ref.hardmax(all_neg_inf, axis=axis)
    )


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("axis", [-1, 0])
def test_in_place(layout, axis, rng):
    base = rng.standard_normal((200, 50)).astype(np.float32)
    base[5, 7] = np.nan
    x = {"C": base.copy(), "F": np.asfortranarray(base), "strided": base.copy()[:, ::2]}[layout]
    expected = ref.hardmax(x, axis=axis)
    assert fastmax.hardmax(x, axis=axis, out=x) is x
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("axis", [-1, 0])
def test_in_place_allocates_nothing_of_the_input_size(axis, rng):
    x = rng.standard_normal((4096, 512)).astype(np.float32)  # 8 MiB
    fastmax.hardmax(x.copy(), axis=axis, out=None)  # compile outside the measurement
    y = x.copy()
    fastmax.hardmax(y, axis=axis, out=y)
    y = x.copy()
    tracemalloc.start()
    fastmax.hardmax(y, axis=axis, out=y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < x.nbytes // 64, peak
    np.testing.assert_array_equal(y, ref.hardmax(x, axis=axis))


def test_parallel_paths(rng):
    x = rng.standard_normal((schedule.PARALLEL_MIN_ELEMENTS // 10, 40))
    np.testing.assert_array_equal(fastmax.hardmax(x), ref.hardmax(x))
    np.testing.assert_array_equal(fastmax.hardmax(x, axis=0), ref.hardmax(x, axis=0))


def test_errors():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="shape"):
        fastmax.hardmax(x, out=np.empty((3, 2)))
    with pytest.raises(ValueError, match="float32"):
        fastmax.hardmax(x, out=np.empty((2, 3), np.float32))
    with pytest.raises(np.exceptions.AxisError):
        fastmax.hardmax(x, axis=3)
    with pytest.raises(TypeError, match="complex"):
        fastmax.hardmax(np.zeros(3, complex))
    ints = np.arange(6).reshape(2, 3)
    with pytest.raises(ValueError, match="dtype"):
        fastmax.hardmax(ints, out=ints)
    np.testing.assert_array_equal(fastmax.hardmax(ints), [[0, 0, 1], [0, 0, 1]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_rows_split_across_threads(dtype, rng):
    n = 3 * schedule.SPLIT_CHUNK + 123
    x = rng.standard_normal((2, n)).astype(dtype)
    x[0, 5] = x[0, n - 7] = 50  # a tie across chunks: the first wins
    x[1, 2 * schedule.SPLIT_CHUNK + 9] = np.nan
    x[1, n - 1] = np.nan
    np.testing.assert_array_equal(fastmax.hardmax(x), ref.hardmax(x))
    y = x.copy()
    fastmax.hardmax(y, out=y)
    np.testing.assert_array_equal(y, ref.hardmax(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fresh_results_of_long_rows(dtype, rng):
    """Rows of at least ZEROED_ROW_BYTES start from np.zeros and get their
    ones only (row kernel and split rows), NaN and ties as np.argmax."""
    n_cols = hardmax_api.ZEROED_ROW_BYTES // np.dtype(dtype).itemsize + 3
    for shape in [(6, n_cols), (4, 1, n_cols), (1, 2 * schedule.SPLIT_CHUNK + n_cols)]:
        x = rng.standard_normal(shape).astype(dtype)
        assert x.size >= schedule.PARALLEL_MIN_ELEMENTS
        flat = x.reshape(-1, shape[-1])
        flat[0, 1] = flat[0, -1] = 40.0  # a tie: the first wins
        flat[-1, -2] = np.nan
        got = fastmax.hardmax(x)
        np.testing.assert_array_equal(got, ref.hardmax(x))
        assert got.sum() == flat.shape[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_cols", [2, 4, 8, 16])
def test_many_short_rows(dtype, n_cols, rng):
    """Rows reduced inside vectors: ties, NaN, ±inf, all -inf, the rows after
    the last block, and in place.  The first block has NaN (the row rule
    takes it over), the second none (±inf, all -inf and signed zeros go
    through the vector path), the third one NaN in its middle (after
    vectors of the block were written)."""
    n_rows = 3 * short.BLOCK_ELEMENTS // n_cols + 7
    x = rng.integers(-3, 3, (n_rows, n_cols)).astype(dtype)  # many ties
    x[1, -1] = np.nan
    x[2, :] = np.nan
    x[-1, -1] = np.nan
    x[5 * short.BLOCK_ELEMENTS // n_cols // 2, -1] = np.nan
    for r in (3, short.BLOCK_ELEMENTS // n_cols + 3):
        x[r, 0] = np.inf
        x[r + 1, :] = -np.inf
        x[r + 2, 1:] = np.inf
        x[r + 3, :] = 0.0
        x[r + 3, 1::2] = -0.0
    expected = ref.hardmax(x)
    np.testing.assert_array_equal(fastmax.hardmax(x), expected)
    y = x.copy()
    assert fastmax.hardmax(y, out=y) is y
    np.testing.assert_array_equal(y, expected)
