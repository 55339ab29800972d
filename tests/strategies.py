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
