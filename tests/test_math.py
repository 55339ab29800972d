"""The vectorized exp: accuracy against NumPy over the whole range, and packed
SIMD instructions in the compiled loop."""

from __future__ import annotations

import re

import numpy as np
import pytest
from numba import njit

from fastmax._config import EXACT_MATH
from fastmax._kernels._math import exp, exp_nonpos, fmaximum

#: Max error in units in the last place (of NumPy's result) over normal results.
ULP = {np.float32: 6, np.float64: 4}


def _exp_loop(x, out):
    for i in range(x.size):
        out[i] = exp(x[i])


def _exp_nonpos_loop(x, out):
    for i in range(x.size):
        out[i] = exp_nonpos(x[i])


# Not cached: the assembly of cached code cannot be inspected.
exp_loop = njit(fastmath=EXACT_MATH, cache=False)(_exp_loop)
exp_nonpos_loop = njit(fastmath=EXACT_MATH, cache=False)(_exp_nonpos_loop)


def _assert_close_to_np_exp(x, got, dtype):
    info = np.finfo(dtype)
    with np.errstate(over="ignore", under="ignore"):
        ref = np.exp(x)
    special = ~np.isfinite(ref) | (ref == 0)
    np.testing.assert_array_equal(got[special], ref[special])  # inf, 0 and NaN exactly
    normal = np.isfinite(ref) & (ref >= info.tiny)
    ulps = np.abs(got[normal] - ref[normal]) / np.spacing(ref[normal])
    assert ulps.max() <= ULP[dtype], ulps.max()
    sub = (ref < info.tiny) & (ref > 0)
    assert sub.any()
    err = np.abs(got[sub] - ref[sub]) / info.smallest_subnormal
    assert err.max() <= 2, err.max()  # subnormal results: absolute, in subnormal steps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_accuracy_over_the_whole_range(dtype):
    info = np.finfo(dtype)
    lo, hi = (-110.0, 95.0) if dtype == np.float32 else (-760.0, 720.0)
    x = np.concatenate(
        [
            np.linspace(lo, hi, 1_000_001),
            np.random.default_rng(0).uniform(-1, 1, 100_000),
            [
                np.inf,
                -np.inf,
                np.nan,
                0.0,
                -0.0,
                info.max,
                -info.max,
                info.tiny,
                -info.tiny,
                info.smallest_subnormal,
            ],
        ]
    ).astype(dtype)
    got = np.empty_like(x)
    exp_loop(x, got)
    _assert_close_to_np_exp(x, got, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_nonpos_accuracy_over_its_range(dtype):
    """exp_nonpos serves ``v - max(v)``: every value <= 0, -inf, and the small
    positive rounding residues a fused ``x * scale - m`` can leave."""
    info = np.finfo(dtype)
    lo = -110.0 if dtype == np.float32 else -760.0
    x = np.concatenate(
        [
            np.linspace(lo, 0.0, 1_000_001),
            -np.random.default_rng(0).uniform(0, 1, 100_000),
            [-np.inf, 0.0, -0.0, -info.max, -info.tiny, info.eps, 1e-3, 0.5],
        ]
    ).astype(dtype)
    got = np.empty_like(x)
    exp_nonpos_loop(x, got)
    _assert_close_to_np_exp(x, got, dtype)


def test_exp_loop_is_vectorized():
    for loop in (exp_loop, exp_nonpos_loop):
        for dtype in (np.float32, np.float64):
            loop(np.zeros(64, dtype), np.empty(64, dtype))
        for sig in loop.signatures:
            asm = loop.inspect_asm(sig)
            packed = re.findall(r"\tv(?:fmadd|mul|add)\w*p[sd]\s[^\n]*%[yz]mm", asm)
            assert len(packed) >= 8, f"no packed FMA/mul/add in {loop.__name__} for {sig}"


def test_fmaximum_propagates_nan_like_np_max():
    @njit(cache=False)
    def reduce_max(x):
        m = x[0]
        for i in range(1, x.size):
            m = fmaximum(m, x[i])
        return m

    x = np.random.default_rng(1).standard_normal(1000)
    assert reduce_max(x) == x.max()
    x[500] = np.nan
    assert np.isnan(reduce_max(x))
    assert reduce_max(np.array([-np.inf, -np.inf])) == -np.inf
