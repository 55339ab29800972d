"""fastmax.kernels from users' own Numba code, serial and inside prange."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import fastmax
from fastmax.kernels import hardmax_row, log_softmax_row, logsumexp_row, softmax_row


@numba.njit(parallel=True)
def _each_row(x, out, lse, hot):
    for r in numba.prange(x.shape[0]):
        softmax_row(x[r], out[0, r])
        log_softmax_row(x[r], out[1, r])
        hardmax_row(x[r], hot[r])
        lse[r] = logsumexp_row(x[r])


@numba.njit
def _serial(x):
    out = np.empty_like(x)
    softmax_row(x, out)
    return out, logsumexp_row(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_inside_a_users_prange(dtype, rng):
    x = (rng.standard_normal((300, 77)) * 5).astype(dtype)
    x[3, 4] = np.nan
    x[5, :] = -np.inf
    x[6, 1] = np.inf
    out = np.empty((2,) + x.shape, dtype)
    lse = np.empty(300)
    hot = np.empty_like(x)
    _each_row(x, out, lse, hot)
    tol = dict(rtol=2e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(out[0], fastmax.softmax(x), **tol)
    np.testing.assert_allclose(out[1], fastmax.log_softmax(x), **tol)
    np.testing.assert_allclose(lse, fastmax.logsumexp(x), **tol)
    np.testing.assert_array_equal(hot, fastmax.hardmax(x))


def test_kernels_from_a_serial_njit_function(rng):
    x = rng.standard_normal(5000)
    out, lse = _serial(x)
    np.testing.assert_allclose(out, fastmax.softmax(x), rtol=1e-13)
    np.testing.assert_allclose(lse, fastmax.logsumexp(x), rtol=1e-13)
    assert _serial(np.empty(0))[1] == -np.inf


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="size"):
        softmax_row(np.zeros(3), np.zeros(4))
