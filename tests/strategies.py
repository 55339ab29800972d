"""Hypothesis strategies: arrays in every dtype and layout, with edge values, and axes."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOAT_DTYPES = [np.float16, np.float32, np.float64]
ALL_DTYPES = FLOAT_DTYPES + [np.int32, np.int64, np.uint8, np.bool_]


def _elements(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        big = float(np.finfo(dtype).max)
        edge = st.sampled_from(
            [np.nan, np.inf, -np.inf, 0.0, -0.0, big, -big, 1e38 if dtype != np.float16 else 6e4]
        )
        normal = st.floats(-50, 50, width=dtype.itemsize * 8)
        return st.one_of(normal, normal, normal, edge)
    return hnp.from_dtype(dtype)


@st.composite
def arrays(draw, dtypes=ALL_DTYPES, max_dims=3, max_side=6, min_side=0):
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = draw(
        hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=min_side, max_side=max_side)
    )
    x = draw(hnp.arrays(dtype, shape, elements=_elements(dtype)))
    layout = draw(st.sampled_from(["C", "F", "strided", "transposed"]))
    if layout == "F":
        x = np.asfortranarray(x)
    elif layout == "strided":
        big = np.zeros(tuple(2 * n for n in shape), dtype)
        view = big[tuple(slice(None, None, 2) for _ in shape)]
        view[...] = x
        x = view
    elif layout == "transposed":
        x = np.ascontiguousarray(x.T).T
    return x


@st.composite
def axes(draw, ndim):
    kind = draw(st.sampled_from(["int", "neg", "tuple", "none"]))
    if kind == "int":
        return draw(st.integers(0, ndim - 1))
    if kind == "neg":
        return draw(st.integers(-ndim, -1))
    if kind == "none":
        return None
    picked = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return tuple(picked)


def rows_past_the_exp_bound(dtype, rng, shape=(64, 3000)) -> np.ndarray:
    """Logits of rows kept in cache (of more than one run of the kernels' sums)
    where some rows spread past the clamp-free exponential's bound (80 for
    float32, 700 for float64; see ``_math.exp_bounded``) among ordinary
    rows: a masked entry, a -inf, a subnormal result in the second run of a
    row, a whole row spread over twice the bound."""
    bound = 80.0 if np.dtype(dtype) == np.float32 else 700.0
    x = rng.standard_normal(shape) * 3
    x[3, 10] = -1e4
    x[4, -1] = -np.inf
    x[5, shape[1] - 5] = x[5].max() - (bound + 25.0)
    x[6] -= np.linspace(0.0, 2.0 * bound, shape[1])
    x[7, 0] = x[7].max() + bound + 1.0
    return x.astype(dtype)


def short_rows_at_the_edges(dtype, rng, n_cols) -> np.ndarray:
    """Logits of rows of ``n_cols`` for the short-row kernels (several
    blocks) where some rows' sums of ``exp(x)`` with no shift leave the
    normal range or sit at its edges among ordinary rows: every entry near
    the overflow (each term finite, the sum not), beyond the old clamp-free
    bound but finite, every term subnormal, one entry's term subnormal
    beside normal ones, entries of magnitude 1e30 and beyond, ±inf, NaN."""
    info = np.finfo(dtype)
    top = float(np.log(info.max))  # 88.7 (float32), 709.8
    low = float(np.log(info.tiny))  # -87.3, -708.4
    x = rng.standard_normal((4096 // n_cols * 3 + 3, n_cols)) * 3
    rows = {
        10: top - 0.2,  # each exp finite, the sum of n_cols > 1 overflows
        30: top - np.log(2 * n_cols),  # the sum finite, past the old bound
        50: low - 8.0,  # every term subnormal: the sum is not normal
        70: low + 30.0,  # normal terms far below 1
        90: -1e30,
        110: 1e30,
        130: -float(info.max),
    }
    for r, value in rows.items():
        x[r] = value
    x[150, 0] = low - 8.0  # one subnormal term beside normal ones
    x[170, -1] = -float(np.finfo(dtype).max) / 2
    x[190, -1] = float(info.max) / 2
    x[210, 0], x[230, 0], x[250, 0] = np.inf, -np.inf, np.nan
    x[270] = low - 100.0  # every term 0
    x[-1] = 1e30
    return x.astype(dtype)


def at_line_offset(a: np.ndarray, offset: int) -> np.ndarray:
    """A C-contiguous copy of ``a`` starting ``offset`` bytes past a 64-byte
    boundary (a cache line; NumPy gives big arrays 16 bytes past one)."""
    a = np.ascontiguousarray(a)
    buf = np.zeros(a.nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = buf[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out
