"""softmax / log_softmax / logsumexp against SciPy, on every axis, dtype and layout."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastmax
from fastmax._kernels import reduce, schedule, short
from fastmax._kernels import softmax as K
from fastmax._kernels._math import TABLE_EXP

from . import reference as ref
from .strategies import (
    FLOAT_DTYPES,
    arrays,
    axes,
    rows_past_the_exp_bound,
    short_rows_at_the_edges,
)

SOFTMAXES = [(fastmax.softmax, False), (fastmax.log_softmax, True)]


def _result_dtype(dtype):
    dtype = np.dtype(dtype)
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


@pytest.mark.parametrize("fn, log", SOFTMAXES, ids=["softmax", "log_softmax"])
@given(data=st.data())
def test_softmax_family_matches_scipy(fn, log, data):
    x = data.draw(arrays())
    axis = data.draw(axes(x.ndim))
    before = x.copy()
    out = fn(x, axis=axis)
    assert out.dtype == _result_dtype(x.dtype)
    assert out.shape == x.shape
    expected = ref.softmax(x, axis=axis, log=log)
    ref.assert_matches(
        out, expected, x.dtype, scale=ref.magnitude(x) if log else 1.0, context=f"axis={axis}"
    )
    np.testing.assert_array_equal(x, before)


@given(data=st.data())
def test_logsumexp_matches_scipy(data):
    x = data.draw(arrays())
    axis = data.draw(axes(x.ndim))
    keepdims = data.draw(st.booleans())
    before = x.copy()
    out, sign = fastmax.logsumexp(x, axis=axis, keepdims=keepdims, return_sign=True)
    exp_out, exp_sign = ref.logsumexp(x, axis=axis, keepdims=keepdims, return_sign=True)
    assert np.asarray(out).dtype == _result_dtype(x.dtype)
    ref.assert_matches(out, exp_out, x.dtype, scale=ref.magnitude(x), context=f"axis={axis}")
    np.testing.assert_array_equal(sign, exp_sign)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("fn, log", SOFTMAXES, ids=["softmax", "log_softmax"])
@given(data=st.data())
def test_where_mask(fn, log, data):
    x = data.draw(arrays(dtypes=FLOAT_DTYPES, min_side=1))
    axis = data.draw(axes(x.ndim))
    # A mask over the last axis only (broadcast) or over the whole array.
    full = data.draw(st.booleans())
    mshape = x.shape if full else x.shape[-1:]
    where = data.draw(
        st.lists(st.booleans(), min_size=int(np.prod(mshape)), max_size=int(np.prod(mshape)))
    )
    where = np.array(where, dtype=bool).reshape(mshape)
    out = fn(x, axis=axis, where=where)
    expected = ref.softmax(x, axis=axis, where=where, log=log)
    ref.assert_matches(out, expected, x.dtype, scale=ref.magnitude(x) if log else 1.0)
    assert not np.isnan(out[~np.broadcast_to(where, x.shape)]).any()


@given(data=st.data())
def test_logsumexp_where_and_b(data):
    x = data.draw(arrays(dtypes=[np.float32, np.float64], min_side=1, max_dims=2))
    axis = data.draw(axes(x.ndim))
    where = data.draw(
        st.one_of(
            st.none(),
            st.lists(st.booleans(), min_size=x.shape[-1], max_size=x.shape[-1]).map(np.array),
        )
    )
    b = data.draw(
        st.one_of(
            st.none(),
            st.lists(
                st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0]),
                min_size=x.shape[-1],
                max_size=x.shape[-1],
            ).map(np.array),
        )
    )
    return_sign = data.draw(st.booleans())
    got = fastmax.logsumexp(x, axis=axis, b=b, where=where, return_sign=return_sign)
    exp = ref.logsumexp(x, axis=axis, b=b, where=where, return_sign=return_sign)
    dtype = x.dtype if b is None else np.float64
    if return_sign:
        ref.assert_matches(got[0], exp[0], dtype, scale=ref.magnitude(x))
        np.testing.assert_array_equal(got[1], exp[1])
    else:
        ref.assert_matches(got, exp, dtype, scale=ref.magnitude(x))


def test_all_masked_slices_are_zero_or_minus_inf():
    x = np.array([[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]])
    where = np.array([[False, False, False], [True, False, True]])
    s = fastmax.softmax(x, where=where)
    np.testing.assert_array_equal(s[0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(s[1], [1 / (1 + np.e**2), 0.0, np.e**2 / (1 + np.e**2)])
    ls = fastmax.log_softmax(x, where=where)
    np.testing.assert_array_equal(ls[0], [-np.inf] * 3)
    assert ls[1, 1] == -np.inf
    np.testing.assert_array_equal(fastmax.logsumexp(x, where=where)[0], -np.inf)
    np.testing.assert_allclose(fastmax.logsumexp(x, where=where)[1], np.logaddexp(4.0, 6.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("temperature", [0.25, 1.0, 3.0])
def test_temperature(dtype, temperature, rng):
    x = rng.standard_normal((7, 33)).astype(dtype) * 4
    for fn, log in SOFTMAXES:
        got = fn(x, temperature=temperature)
        ref.assert_matches(got, ref.softmax(x, temperature=temperature, log=log), dtype, scale=20)


@pytest.mark.parametrize("fn, log", SOFTMAXES, ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_and_in_place(fn, log, dtype, rng):
    x = rng.standard_normal((9, 40)).astype(dtype)
    expected = fn(x)
    out = np.empty_like(x)
    assert fn(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    y = x.copy()
    assert fn(y, out=y) is y  # in place: vectorized with another summation order
    np.testing.assert_allclose(y, expected, rtol=8 * np.finfo(dtype).eps, atol=1e-30)
    # in place along a non-last axis and on an F-ordered array
    z = np.asfortranarray(x)
    fn(z, axis=0, out=z)  # row kernel here, column kernel for x: equal to rounding
    np.testing.assert_allclose(z, fn(x, axis=0), rtol=8 * np.finfo(dtype).eps, atol=1e-30)
    # out with a layout different from x
    o = np.empty(x.shape[::-1], dtype).T
    fn(x, out=o)  # strided writes: a different summation order, equal to rounding
    np.testing.assert_allclose(o, expected, rtol=8 * np.finfo(dtype).eps, atol=1e-30)


def test_logsumexp_out_keepdims_and_scalars(rng):
    x = rng.standard_normal((4, 5, 6))
    out = np.empty((4, 1, 6))
    assert fastmax.logsumexp(x, axis=1, keepdims=True, out=out) is out
    ref.assert_matches(out, ref.logsumexp(x, axis=1, keepdims=True), np.float64)
    s = fastmax.logsumexp(x, axis=None)
    assert np.ndim(s) == 0
    ref.assert_matches(s, ref.logsumexp(x, axis=None), np.float64)
    assert np.ndim(fastmax.softmax(np.float64(3.0), axis=None)) == 0
    assert fastmax.softmax(np.float64(3.0), axis=None) == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (3, 40), (2, 3, 3000)])
def test_logsumexp_into_out_over_the_last_axis(dtype, shape, rng):
    """The common call with ``out``: written in place, the same values as
    the allocating call; an ``out`` of another layout takes the general path."""
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    expected = fastmax.logsumexp(x)
    out = np.full(shape[:-1], np.nan, dtype)
    assert fastmax.logsumexp(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    ref.assert_matches(out, ref.logsumexp(x), dtype, scale=50)
    if len(shape) > 1:
        other = np.empty(shape[:-1][::-1], dtype).T  # not C-contiguous
        assert fastmax.logsumexp(x, out=other) is other
        np.testing.assert_array_equal(other, expected)


def test_empty_inputs():
    x = np.empty((3, 0))
    assert fastmax.softmax(x).shape == (3, 0)
    assert fastmax.log_softmax(x, axis=0).shape == (3, 0)
    np.testing.assert_array_equal(fastmax.logsumexp(x), [-np.inf] * 3)
    res, sign = fastmax.logsumexp(x, return_sign=True)
    exp_res, exp_sign = ref.logsumexp(x, return_sign=True)
    np.testing.assert_array_equal(sign, exp_sign)
    assert fastmax.logsumexp(np.empty((0, 4))).shape == (0,)
    assert fastmax.logsumexp(np.empty((0, 4)), axis=0).tolist() == [-np.inf] * 4


def test_array_likes_and_dtype_policy():
    assert fastmax.softmax([1, 2, 3]).dtype == np.float64
    assert fastmax.softmax(np.array([True, False])).dtype == np.float64
    h = fastmax.softmax(np.array([1.0, 2.0], np.float16))
    assert h.dtype == np.float16
    np.testing.assert_allclose(h, ref.softmax(np.array([1.0, 2.0])), rtol=1e-3)
    big_endian = np.array([1.0, 2.0, 3.0], ">f8")
    np.testing.assert_allclose(fastmax.softmax(big_endian), ref.softmax(big_endian), rtol=1e-12)
    assert fastmax.logsumexp(np.arange(5)).dtype == np.float64


def test_no_copy_for_suitable_input(rng):
    x = rng.standard_normal((16, 64)).astype(np.float32)
    x.flags.writeable = False  # a copy would not be needed to read it
    assert fastmax.softmax(x).dtype == np.float32


# --- the kernel paths the scheduler picks ------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape, axis",
    [
        ((3, 2 * schedule.SPLIT_CHUNK + 17), -1),  # few long rows: split across threads
        ((5, schedule.CACHED_ROW_BYTES // 4 + 3), -1),  # rows too long to stay cached
        ((300, 9), 0),  # column kernel, several column blocks
        ((2001, 600), 0),  # column kernel: row chunks and blocks
        ((40_000, 3), -1),  # many short rows, parallel
    ],
)
def test_kernel_paths(dtype, shape, axis, rng):
    x = (rng.standard_normal(shape) * 10).astype(dtype)
    x.flat[7] = -np.inf
    x.flat[x.size // 2] = np.nan
    x.flat[x.size // 3] = np.inf
    for fn, log in SOFTMAXES:
        got = fn(x, axis=axis)
        ref.assert_matches(
            got, ref.softmax(x, axis=axis, log=log), dtype, scale=50, context=fn.__name__
        )
    got = fastmax.logsumexp(x, axis=axis)
    ref.assert_matches(got, ref.logsumexp(x, axis=axis), dtype, scale=50)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("view", [False, True])
@pytest.mark.parametrize("n_cols", [600, 2500])
def test_column_kernel_takes_every_rows_max(dtype, view, n_cols, rng):
    """Along axis 0 the column kernels take each block's max in a pass of
    its own or beside the block before it, rows in groups: a NaN, and a
    value far above the rest, in each position of a group, in every row
    chunk, still decide their column.  Contiguous and of strided rows (a
    view: float64's kernel without the table's exponentials); rows of one
    tile and of several (``schedule.column_tile``), the columns set apart
    in every tile."""
    itemsize = np.dtype(dtype).itemsize
    tile = schedule.column_tile(n_cols, itemsize)
    assert (tile < n_cols) == (n_cols * itemsize > schedule.COLUMN_TILE_BYTES)
    wide = (rng.standard_normal((2001, n_cols + 100 if view else n_cols))).astype(dtype)
    x = wide[:, :n_cols]
    for j in range(16):
        col = j + (j % 4) * (n_cols // 4)  # spread over the tiles
        for chunk_start in range(0, 1900, 250):
            row = chunk_start + 60 + j
            if j < 8:
                x[row, col] = np.nan
            else:
                x[row, col] = 80.0 + j  # beyond the exp bound above the others
    for fn, log in SOFTMAXES:
        got = fn(x, axis=0)
        ref.assert_matches(got, ref.softmax(x, axis=0, log=log), dtype, scale=50)
    ref.assert_matches(fastmax.logsumexp(x, axis=0), ref.logsumexp(x, axis=0), dtype, scale=50)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsumexp_along_axis_0_by_direct_sums_and_their_fallback(dtype, rng):
    """logsumexp along axis 0 takes each row chunk's column sums of
    ``exp(x)`` with no shift where they are right, else the shifted
    statistics: both kinds of chunk in one array, merged, against SciPy
    (chunks with an entry whose exponential overflows, a column of tiny
    exponentials, a NaN, +inf; -inf entries in the direct chunks), and
    results near zero refined about the column's max (to their relative
    precision, which an absolute tolerance would not see).  Then columns
    that no chunk can take directly (tiny exponentials, all -inf)."""
    n = 1024
    assert schedule.column_chunks(n) == schedule.COLUMN_CHUNKS  # chunks of 128 rows
    x = (rng.standard_normal((n, 37)) * 3).astype(dtype)
    big, tiny = (100.0, -120.0) if dtype == np.float32 else (800.0, -800.0)
    x[300, 3] = big  # chunk 2
    x[640:768, 4] = tiny  # chunk 5
    x[800, 7] = np.nan  # chunk 6
    x[5, 11] = np.inf  # chunk 0
    x[130, 8] = x[900, 8] = -np.inf  # chunks 1 and 7, direct
    x[:, 9] = np.log(1 / n)
    x[:, 12] = rng.standard_normal(n) * 1e-3 - np.log(n)
    m, _ = K.column_stats_chunked(
        x.size, x, dtype(1.0), schedule.COLUMN_CHUNKS, schedule.column_block_rows(37, x.itemsize),
        True,
    )  # fmt: skip
    # Where every shifted chunk's max is negative, the merge keeps the direct
    # chunks' reference 0 (and the near-zero refinement needs the max).
    assert (m[[9, 12]] == 0).all() == bool(TABLE_EXP)
    got = fastmax.logsumexp(x, axis=0)
    expected = ref.logsumexp(x.astype(np.float64), axis=0)
    ref.assert_matches(got, expected, dtype, scale=50)
    near = [9, 12]  # exact in any precision; float32's own exponentials' error
    assert np.all(np.abs(expected[near]) < reduce.NEAR_ZERO)
    rtols = (1e-6, 1e-3) if dtype == np.float32 else (1e-12, 1e-12)
    for j, rtol in zip(near, rtols, strict=True):
        np.testing.assert_allclose(got[j], expected[j], rtol=rtol, atol=0, err_msg=str(j))
    x[:, 5] = tiny - 30
    x[:, 10] = -np.inf
    x[:, 13] = np.log(1 / n)  # near zero with every chunk shifted
    got = fastmax.logsumexp(x, axis=0)
    expected = ref.logsumexp(x.astype(np.float64), axis=0)
    ref.assert_matches(got, expected, dtype, scale=50)
    np.testing.assert_allclose(got[[9, 13]], expected[[9, 13]], rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_column_stats_are_right_or_say_so(dtype, rng):
    """``K.direct_column_stats`` (on AVX-512 targets, where logsumexp along
    axis 0 takes it): statistics whose ``m + log(total)`` is each column's
    logsumexp, by sums with no shift, and from a block with a NaN, +inf or
    an overflowing exponential on (the first block, a middle one, the last
    one), shifted; False where a column's sum is too small to keep about 0
    (tiny exponentials, all -inf)."""
    if not TABLE_EXP:
        pytest.skip("no AVX-512: logsumexp takes no direct sums")
    one = np.dtype(dtype).type(1.0)
    n, n_cols = 300, 40  # blocks of 64 rows: the last one short

    def stats(x):
        m, shift, block_max, part = np.empty((4, n_cols), dtype)
        total = np.empty(n_cols)
        ok = K.direct_column_stats(x, one, 0, n, 64, m, total, shift, block_max, part, 0, n_cols)
        with np.errstate(divide="ignore", invalid="ignore"):
            return ok, m.astype(np.float64) + np.log(total)

    x = (rng.standard_normal((n, n_cols)) * 4).astype(dtype)
    x[7, 2] = -np.inf
    big, tiny = (100.0, -120.0) if dtype == np.float32 else (800.0, -800.0)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    for value, row, col in (
        (None, 0, 0),
        (np.nan, 150, 3),
        (np.inf, 10, 5),
        (big, 290, 39),
        (big, 0, 20),
        (big, 130, 21),
    ):
        y = x.copy()
        if value is not None:
            y[row, col] = value
        ok, lse = stats(y)
        assert ok, value
        expected = ref.logsumexp(y.astype(np.float64), axis=0)
        ref.assert_matches(lse, expected, dtype, scale=50)
        finite = np.isfinite(lse)
        np.testing.assert_allclose(lse[finite], expected[finite], rtol=rtol)
    for column in (np.full(n, tiny), np.full(n, -np.inf)):
        y = x.copy()
        y[:, 11] = column
        assert not stats(y)[0]


def _streamed_shapes(itemsize: int) -> list[tuple[tuple[int, int], int]]:
    """Shapes whose outputs are just over the streaming threshold, one for
    each of the kernels' paths (the rows kept in cache are written by plain
    stores)."""
    n = -(-schedule.STREAM_MIN_BYTES // itemsize)
    long_row = schedule.CACHED_ROW_BYTES // itemsize + 3
    log_long_row = schedule.LOG_CACHED_ROW_BYTES // itemsize + 3
    return [
        ((2, n // 2 + 5), -1),  # few long rows: split across threads
        (((n // long_row) + 1, long_row), -1),  # rows too long to stay cached
        ((n // 1000 + 1, 1000), -1),  # rows kept in cache between passes
        # kept in cache by softmax, too long to be by log_softmax
        ((n // log_long_row + 1, log_long_row), -1),
        ((n // 1000 + 1, 1000), 0),  # the column kernel
        ((n // 8 + 1, 8), -1),  # many short rows, in blocks
    ]


def test_log_softmax_keeps_shorter_rows_in_cache_over_memory():
    """Over the streaming threshold, log_softmax keeps rows of at most
    ``LOG_CACHED_ROW_BYTES`` in cache between passes and softmax rows of at
    most ``CACHED_ROW_BYTES``; under it, both keep the longer ones."""
    big = schedule.STREAM_MIN_BYTES
    for itemsize in (4, 8):
        short_row = schedule.LOG_CACHED_ROW_BYTES // itemsize
        assert schedule.cached_rows(short_row, itemsize, True, big)
        assert not schedule.cached_rows(short_row + 1, itemsize, True, big)
        assert schedule.cached_rows(short_row + 1, itemsize, False, big)
        assert schedule.cached_rows(short_row + 1, itemsize, True, big - 1)
        long_row = schedule.CACHED_ROW_BYTES // itemsize
        assert schedule.cached_rows(long_row, itemsize, False, big)
        assert not schedule.cached_rows(long_row + 1, itemsize, False, big)
        assert not schedule.cached_rows(long_row + 1, itemsize, True, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_big_outputs_written_by_streaming_stores(dtype, rng):
    """Outputs over ``STREAM_MIN_BYTES`` into another array go through a
    stack buffer and streaming stores: right values on every path, into an
    ``out`` that starts off a cache line (partial lines at the ends of every
    row), and nothing written around it; in place as before."""
    itemsize = np.dtype(dtype).itemsize
    for shape, axis in _streamed_shapes(itemsize):
        x = (rng.standard_normal(shape) * 10).astype(dtype)
        x.flat[7] = -np.inf
        x.flat[x.size // 2] = np.nan
        backing = np.full(x.size + 2, 5.0, dtype)
        out = backing[1:-1].reshape(shape)
        assert schedule.streams(out)
        for fn, log in SOFTMAXES:
            expected = ref.softmax(x, axis=axis, log=log)
            context = f"{fn.__name__} {shape} axis {axis}"
            assert fn(x, axis=axis, out=out) is out
            ref.assert_matches(out, expected, dtype, scale=50, context=context)
            assert backing[0] == 5.0 and backing[-1] == 5.0, context
            ref.assert_matches(fn(x, axis=axis), expected, dtype, scale=50, context=context)
        y = x.copy()
        fastmax.log_softmax(y, axis=axis, out=y)
        ref.assert_matches(y, ref.softmax(x, axis=axis, log=True), dtype, scale=50)
    # An out whose rows are strided is written by plain stores.
    x = (rng.standard_normal(_streamed_shapes(itemsize)[1][0]) * 10).astype(dtype)
    wide = np.zeros((x.shape[0], 2 * x.shape[1]), dtype)
    assert not schedule.streams(wide[:, ::2])
    for fn, log in SOFTMAXES:
        wide[:] = 0.0
        fn(x, out=wide[:, ::2])
        ref.assert_matches(wide[:, ::2], ref.softmax(x, log=log), dtype, scale=50)
        assert (wide[:, 1::2] == 0.0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_big_reads_prefetch_far_ahead_in_parts(dtype, rng):
    """logsumexp and the cross-entropy forward of arrays over
    ``PREFETCH_MIN_BYTES`` with rows over ``FAR_PART_BYTES`` read each row
    while prefetching the row two after the next; rows longer than three
    blocks, the block two ahead.  Right values on every row (the last rows
    of each task, whose far row is their own last), with non-finite rows
    and ignored targets."""
    itemsize = np.dtype(dtype).itemsize
    n_cols = 1000
    n_rows = -(-reduce.PREFETCH_MIN_BYTES // (n_cols * itemsize)) + 3
    x = (rng.standard_normal((n_rows, n_cols)) * 10).astype(dtype)
    assert reduce.far_rows(x) and not reduce.far_rows(x[:, :400])
    x[5, 3] = np.nan
    x[-2] = -np.inf
    target = rng.integers(0, n_cols, n_rows)
    target[::7] = -100
    ref.assert_matches(
        fastmax.softmax_cross_entropy(x, target, reduction="none"),
        ref.cross_entropy(x, target, reduction="none"),
        dtype,
        scale=50,
    )
    x[-1, 0] = np.inf
    ref.assert_matches(fastmax.logsumexp(x, axis=-1), ref.logsumexp(x, axis=-1), dtype, scale=50)
    long = (rng.standard_normal((3, 7 * reduce.BLOCK + 5)) * 10).astype(dtype)
    long[1, -3] = np.nan
    ref.assert_matches(
        fastmax.logsumexp(long, axis=-1), ref.logsumexp(long, axis=-1), dtype, scale=50
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_cols", [2, 4, 8, 16])
def test_short_rows_reduced_inside_vectors(dtype, n_cols, rng):
    """Rows of 2-16 classes: whole blocks, the rows after the last block, and
    blocks with NaN, +inf, -inf rows handed to the row kernels."""
    n_rows = 3 * short.BLOCK_ELEMENTS // n_cols + 5
    assert short.fits(n_cols, np.dtype(dtype).itemsize) == (n_cols * np.dtype(dtype).itemsize <= 64)
    x = (rng.standard_normal((n_rows, n_cols)) * 8).astype(dtype)
    x[3, 0] = np.nan
    x[n_rows // 2, :] = -np.inf
    x[n_rows // 2 + 1, -1] = np.inf
    x[-2, 0] = np.inf
    x[n_rows // 3, :] = [1e-3] + [-30.0] * (n_cols - 1)  # logsumexp near 0
    x[n_rows // 3 + 1, :] = -80.0  # underflow-prone, shifted by its max
    for fn, log in SOFTMAXES:
        expected = ref.softmax(x, log=log)
        ref.assert_matches(fn(x), expected, dtype, scale=50, context=fn.__name__)
        for temperature in (0.5, 2.0):
            ref.assert_matches(
                fn(x, temperature=temperature),
                ref.softmax(x / temperature, log=log),
                dtype,
                scale=100,
                context=f"{fn.__name__} T={temperature}",
            )
        y = x.copy()
        assert fn(y, out=y) is y  # in place
        ref.assert_matches(y, expected, dtype, scale=50, context=f"{fn.__name__} in place")
    ref.assert_matches(fastmax.logsumexp(x), ref.logsumexp(x), dtype, scale=50)
    finite = x[np.isfinite(x).all(axis=1)]
    np.testing.assert_allclose(
        fastmax.softmax(finite), ref.softmax(finite), rtol=1e-5 if dtype == np.float32 else 1e-14
    )
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = [fastmax.softmax(x), fastmax.log_softmax(x), fastmax.logsumexp(x)]
    finally:
        numba.set_num_threads(before)
    again = [fastmax.softmax(x), fastmax.log_softmax(x), fastmax.logsumexp(x)]
    for a, b in zip(one, again, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_cols", [2, 8, 16])
def test_short_rows_logsumexp_at_the_edges_of_the_sums(dtype, n_cols, rng):
    """logsumexp of short rows whose sums of exp(x) without a shift leave
    the normal range, or nearly (see short_rows_at_the_edges): the blocks'
    direct sums are kept only where they are right, the rest shifted."""
    x = short_rows_at_the_edges(dtype, rng, n_cols)
    if not short.fits(n_cols, np.dtype(dtype).itemsize):
        pytest.skip("rows wider than a vector")
    with np.errstate(over="ignore", invalid="ignore"):
        ref.assert_matches(fastmax.logsumexp(x, axis=-1), ref.logsumexp(x), dtype, scale=50)
        for scale in (0.5, 4.0):  # the kernel's scaled loops (no public caller)
            res = np.empty(x.shape[0], dtype)
            tasks = schedule.row_blocks(x.shape[0])
            short.logsumexp_short_rows(x.size, x, dtype(scale), res, tasks)
            expected = ref.logsumexp(x.astype(np.float64) * scale)
            ref.assert_matches(res, expected, dtype, scale=200, context=f"scale {scale}")


def _exact_log_softmax(x, temperature):
    v = np.asarray(x, np.longdouble) / temperature
    shifted = v - v.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_cols", [2, 8])
@pytest.mark.parametrize("offset", [0.0, 50.0, 600.0, 1e5], ids=lambda o: f"offset{o:g}")
def test_short_rows_log_softmax_keeps_the_low_bits_of_its_log(dtype, n_cols, offset, rng):
    """log_softmax of many short rows far from 0 (blocks within the direct
    path's bound and past it), to another array and in place, with and
    without a temperature: within 4 ulps of the result plus 4 ulps of 1
    against an exact computation, as SciPy is; a log rounded to an ulp of
    ``v`` (``v - (max + log(sum))``) is off by up to ``offset`` ulps."""
    eps = np.finfo(dtype).eps
    n_rows = 3 * short.BLOCK_ELEMENTS // n_cols
    assert short.fits(n_cols, np.dtype(dtype).itemsize)
    x = (rng.standard_normal((n_rows, n_cols)) * 3 + offset).astype(dtype)
    x[::2] *= -1
    if dtype == np.float32 and offset == 600.0:
        x = np.clip(x, -700, 700)  # past float32's bound either way
    for temperature in (1.0, 2.0):
        expected = _exact_log_softmax(x, temperature)
        for got in (
            fastmax.log_softmax(x, temperature=temperature),
            fastmax.log_softmax(y := x.copy(), out=y, temperature=temperature),
        ):
            err = np.abs(got - expected) / (eps * (np.abs(expected) + 1))
            assert float(err.max()) <= 4.0, (temperature, float(err.max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 100), (200, 30), (1000, 8), (16, 3000)])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "where"])
@pytest.mark.parametrize("offset", [40.0, 1e4], ids=lambda o: f"offset{o:g}")
def test_log_softmax_keeps_the_low_bits_of_its_log(dtype, shape, masked, offset, rng):
    """log_softmax of rows far from 0 on the small arrays' direct path
    (within the exp bound: the row's log in two floats), the masked rows'
    kernel and the row kernels: within 4 ulps of the result plus 4 ulps of 1
    against an exact computation (a log rounded to an ulp of the row's max
    is off by up to ``offset`` ulps)."""
    eps = np.finfo(dtype).eps
    x = (rng.standard_normal(shape) * 3 + offset).astype(dtype)
    mask = rng.random(shape) < 0.8 if masked else np.ones(shape, bool)
    mask[:, 0] = True
    expected = _exact_log_softmax(np.where(mask, x, -np.inf), 1.0)
    got = fastmax.log_softmax(x, where=mask) if masked else fastmax.log_softmax(x)
    assert np.isneginf(got[~mask]).all()
    err = np.abs(got[mask] - expected[mask]) / (eps * (np.abs(expected[mask]) + 1))
    assert float(err.max()) <= 4.0, float(err.max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_log_softmax_rows_written_in_chunks(dtype, rng):
    """log_softmax rows long enough for the chunked, prefetching write pass
    (a partial last chunk): to a new array, to out=, in place, and from a
    strided view."""
    n = 9 * K.WRITE_CHUNK + 5
    x = (rng.standard_normal((3, 2 * n)) * 10).astype(dtype)
    for src in (x[:, :n], x[:, ::2]):
        expected = ref.softmax(src, log=True)
        ref.assert_matches(fastmax.log_softmax(src), expected, dtype, scale=50)
        out = np.empty(src.shape, dtype)
        assert fastmax.log_softmax(src, out=out) is out
        ref.assert_matches(out, expected, dtype, scale=50)
        y = src.copy()
        fastmax.log_softmax(y, out=y)
        ref.assert_matches(y, expected, dtype, scale=50)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 3000), (16, 300)], ids=["cached rows", "small"])
def test_exp_store_pass_past_the_bound(dtype, shape, rng):
    """softmax's exp-store pass takes the clamp-free exponential on runs whose
    arguments are within its bound and the exact one on runs that are not:
    SciPy's answers on rows past the bound among ordinary ones, into another
    array and in place, on the pipelined rows and on the small kernel."""
    x = rows_past_the_exp_bound(dtype, rng, shape)
    expected = ref.softmax(x)
    ref.assert_matches(fastmax.softmax(x), expected, dtype)
    y = x.copy()
    fastmax.softmax(y, out=y)
    ref.assert_matches(y, expected, dtype, context="in place")


#: Row lengths of :func:`test_write_pass_past_the_bound`: rows too long for
#: cache; with 8 rows, outputs of more than 32 MiB (streaming stores).
_LONG_ROW = 300_000
_STREAMED_ROW = {np.float32: 1_100_000, np.float64: 600_000}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "case", ["long rows", "split rows", "streamed", "axis 0", "axis 0 streamed"]
)
def test_write_pass_past_the_bound(dtype, case, rng):
    """softmax's write pass takes the clamp-free exponential on parts whose
    arguments are within its bound and the exact one on parts that are not:
    SciPy's answers on rows (or columns) past the bound among ordinary ones,
    into another array and in place, on rows too long for cache, rows split
    across threads, outputs written by streaming stores, and along axis 0
    (into a small output, and into one written by streaming stores)."""
    axis = -1
    if case.startswith("axis 0"):
        n = 3000 if case == "axis 0" else _STREAMED_ROW[dtype] // 8
        x = np.ascontiguousarray(rows_past_the_exp_bound(dtype, rng, (64, n)).T)
        assert schedule.streams(x) == (case == "axis 0 streamed")
        axis = 0
    elif case == "streamed":
        x = rows_past_the_exp_bound(dtype, rng, (8, _STREAMED_ROW[dtype]))
    else:
        x = rows_past_the_exp_bound(dtype, rng, (8, _LONG_ROW))
        if case == "split rows":
            x = x[5:8]
    expected = ref.softmax(x, axis=axis)
    ref.assert_matches(fastmax.softmax(x, axis=axis), expected, dtype)
    y = x.copy()
    fastmax.softmax(y, axis=axis, out=y)
    ref.assert_matches(y, expected, dtype, context="in place")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_inputs_without_a_max_pass(dtype, rng):
    """Small C-contiguous inputs take the flat path without a max pass when
    every value is within the exp bound: it agrees with the shifted path
    (a strided view of the same values), and the cases it hands back to it
    (a value past the bound, a NaN, rows of one, log_softmax in place)
    give SciPy's answers."""
    x = (rng.standard_normal((64, 100)) * 8).astype(dtype)
    strided = np.empty((64, 200), dtype)[:, ::2]
    strided[...] = x
    for fn, log in SOFTMAXES:
        expected = ref.softmax(x, log=log)
        flat, shifted = fn(x), fn(strided)
        ref.assert_matches(flat, expected, dtype, scale=50, context=fn.__name__)
        ref.assert_matches(shifted, expected, dtype, scale=50, context=fn.__name__)
        y = x.copy()
        fn(y, out=y)
        ref.assert_matches(y, expected, dtype, scale=50, context=f"{fn.__name__} in place")
        for bad in (95.0, np.nan, -np.inf):
            z = x.copy()
            z[5, 7] = bad
            with np.errstate(invalid="ignore"):
                ref.assert_matches(fn(z), ref.softmax(z, log=log), dtype, scale=50)
        single = x[:, :1].copy()
        np.testing.assert_array_equal(fn(single), 0.0 if log else 1.0)
    np.testing.assert_allclose(fastmax.softmax(x).sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("n_rows", [schedule.SMALL_ROWS, schedule.SMALL_ROWS + 1])
def test_small_inputs_at_the_row_limit(n_rows, rng):
    """The small kernel keeps its per-row scratch on the stack, for at most
    SMALL_ROWS rows: at the limit it takes them all (rows 0 and last
    included), past it the input goes to the row kernels."""
    x = rng.standard_normal((n_rows, 15)) * 4  # float64: rows longer than a vector
    assert x.size < schedule.PARALLEL_MIN_ELEMENTS
    z = x.copy()
    z[-1, 3] = 800.0  # past the exp bound: the shifted passes
    for fn, log in SOFTMAXES:
        for a in (x, z, z[:, :14]):
            ref.assert_matches(fn(a), ref.softmax(a, log=log), np.float64, scale=50)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_logsumexp_keeps_relative_accuracy_near_zero(dtype, rng):
    """The small kernel's rows (unshifted exponentials within the bound,
    shifted ones past it): results near 0 are refined from the row's max, so
    they keep their relative accuracy; NaN, ±inf and all -inf rows pass."""
    x = (rng.standard_normal((40, 100)) * 3).astype(dtype)
    x[5] = -30.0
    x[5, 7] = 1e-5  # logsumexp 1e-5 + 99 exp(-30)
    x[6] = -25.0
    x[6, 0] = -2e-9  # logsumexp -2e-9 + log1p(99 exp(-25)), about -6e-10
    x[7, 3] = np.nan
    x[8, 9] = np.inf
    x[9] = -np.inf
    assert x.size < schedule.PARALLEL_MIN_ELEMENTS
    past = x.copy()
    past[-1, 0] = 800.0 if dtype == np.float64 else 90.0  # past the exp bound
    for a in (x, past):
        got = fastmax.logsumexp(a)
        ref.assert_matches(got, ref.logsumexp(a), dtype, scale=50)
        rows = [5, 6]
        np.testing.assert_allclose(
            got[rows], ref.logsumexp(a)[rows], rtol=2e-6 if dtype == np.float32 else 1e-13
        )


def test_leading_minus_inf_blocks_do_not_poison_the_sum(rng):
    # -inf for the first blocks of a long row (and of a column), then finite values.
    x = rng.standard_normal(5 * 2048 + 11)
    x[: 3 * 2048] = -np.inf
    for fn, log in SOFTMAXES:
        ref.assert_matches(fn(x), ref.softmax(x, log=log), np.float64, scale=10)
        col = np.repeat(x[:, None], 3, axis=1)
        ref.assert_matches(fn(col, axis=0), ref.softmax(col, axis=0, log=log), np.float64, scale=10)
    ref.assert_matches(fastmax.logsumexp(x), ref.logsumexp(x), np.float64, scale=10)


def test_float32_accuracy_on_a_4m_row(rng):
    x = rng.standard_normal(4 * 1024 * 1024).astype(np.float32) * 3
    exact = ref.softmax(x)
    got = fastmax.softmax(x)
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=0)
    np.testing.assert_allclose(fastmax.logsumexp(x), ref.logsumexp(x), rtol=1e-6)
    big = x.reshape(1, -1)
    np.testing.assert_allclose(fastmax.softmax(big, axis=-1)[0], exact, rtol=1e-5, atol=0)


def _thread_count_inputs(rng, dtype):
    return {
        "split": rng.standard_normal((2, 3 * schedule.SPLIT_CHUNK + 5)).astype(dtype),
        "columns": rng.standard_normal((20_000, 50)).astype(dtype),
        # Blocks of rows (a few per thread): each block's first row starts its
        # pipeline, so a row is first or not depending on the thread count.
        "rows": rng.standard_normal((300, 1500)).astype(dtype),
    }


def _thread_count_results(inputs):
    x, y, z = inputs["split"], inputs["columns"], inputs["rows"]
    labels = np.arange(z.shape[0]) % z.shape[1]
    return [
        fastmax.softmax(x),
        fastmax.logsumexp(x),
        fastmax.softmax(y, axis=0),
        fastmax.softmax(z),
        fastmax.log_softmax(z),
        fastmax.logsumexp(z, axis=-1),
        fastmax.softmax_vjp(fastmax.softmax(z), z),
        *fastmax.softmax_cross_entropy_with_grad(z, labels),
    ]


@pytest.mark.parametrize("seed", range(4))
def test_few_long_rows_do_not_depend_on_thread_count(seed):
    """Few long rows are split across threads or not by a rule that does not
    look at the thread count (a split row's statistics are merged from
    chunks, and differ from a whole row's in the last bits)."""
    x = np.random.default_rng(seed).standard_normal((3, 2 * schedule.SPLIT_CHUNK + 7))
    labels = np.array([0, 5, x.shape[1] - 1])
    before = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, 2, before}):
            numba.set_num_threads(threads)
            results.append(
                [
                    fastmax.softmax(x),
                    fastmax.log_softmax(x),
                    fastmax.logsumexp(x),
                    *fastmax.softmax_cross_entropy_with_grad(x, labels),
                ]
            )
    finally:
        numba.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_thread_count(dtype, rng):
    inputs = _thread_count_inputs(rng, dtype)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _thread_count_results(inputs)
        numba.set_num_threads(max(2, before))
        many = _thread_count_results(inputs)
    finally:
        numba.set_num_threads(before)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)
