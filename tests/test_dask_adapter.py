"""fastmax.dask: lazy, chunked along the reduced axis, on a dask.distributed cluster."""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="dask is an optional test dependency")
distributed = pytest.importorskip("distributed", reason="dask.distributed is optional")

import fastmax  # noqa: E402
import fastmax.dask as fd  # noqa: E402

from . import reference as ref  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture
def data(rng):
    x = rng.standard_normal((40, 300)) * 4
    x[3, 17] = np.nan
    x[5, :] = -np.inf
    x[7, 250] = np.inf
    return x


def test_lazy_and_split_over_chunks(client, data):
    dx = da.from_array(data, chunks=(15, 64))  # the class axis in 5 chunks
    assert dx.numblocks[1] == 5
    lazy = fd.softmax(dx)
    assert isinstance(lazy, da.Array)  # nothing computed yet
    ref.assert_matches(lazy.compute(), fastmax.softmax(data), np.float64)
    ref.assert_matches(
        fd.log_softmax(dx).compute(), fastmax.log_softmax(data), np.float64, scale=50
    )
    ref.assert_matches(fd.logsumexp(dx).compute(), fastmax.logsumexp(data), np.float64, scale=50)
    ref.assert_matches(
        fd.logsumexp(dx, axis=0).compute(), fastmax.logsumexp(data, axis=0), np.float64, scale=50
    )
    np.testing.assert_array_equal(fd.hardmax(dx).compute(), fastmax.hardmax(data))
    np.testing.assert_array_equal(fd.hardmax(dx, axis=0).compute(), fastmax.hardmax(data, axis=0))


def test_where_and_temperature(client, data, rng):
    finite = np.nan_to_num(data, nan=0.0, posinf=5.0, neginf=-5.0)
    where = rng.random(finite.shape) > 0.5
    where[2] = False
    dx = da.from_array(finite, chunks=(20, 50))
    for name in ("softmax", "log_softmax"):
        got = getattr(fd, name)(dx, where=where, temperature=2.0).compute()
        ref.assert_matches(
            got, getattr(fastmax, name)(finite, where=where, temperature=2.0), np.float64, scale=50
        )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(client, rng, reduction):
    x = rng.standard_normal((50, 120)).astype(np.float32)
    t = rng.integers(0, 120, 50)
    t[4] = -100
    w = rng.random(120).astype(np.float32)
    dx = da.from_array(x, chunks=(25, 40))
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.1, z_loss=1e-3)
    got = fd.softmax_cross_entropy(dx, da.from_array(t, chunks=10), **kw).compute()
    np.testing.assert_allclose(got, fastmax.softmax_cross_entropy(x, t, **kw), rtol=2e-5, atol=1e-6)
    q = rng.random(x.shape).astype(np.float32)
    q /= q.sum(1, keepdims=True)
    got = fd.softmax_cross_entropy(
        dx, da.from_array(q, chunks=(25, 40)), reduction=reduction
    ).compute()
    np.testing.assert_allclose(
        got, fastmax.softmax_cross_entropy(x, q, reduction=reduction), rtol=2e-5, atol=1e-6
    )


def test_bad_targets_raise_at_compute(client, rng):
    dx = da.from_array(rng.standard_normal((6, 5)), chunks=(3, 2))
    loss = fd.softmax_cross_entropy(dx, da.from_array(np.array([0, 1, 7, 2, 3, 4]), chunks=3))
    with pytest.raises(ValueError, match="target 7"):
        loss.compute()


def test_rows_far_from_zero_keep_their_precision(client, rng):
    """Rows near 1e4 in float32: the chunks' logsumexp is taken of the rows
    shifted by their max, so log_softmax, softmax and the per-sample
    cross-entropy are as accurate as fastmax's in-memory kernels (a
    logsumexp rounded to an ulp of 1e4, 5e-4, took their low bits)."""
    x = (rng.standard_normal((40, 300)) * 3 + 1e4).astype(np.float32)
    x[5, :] = -np.inf  # rows without a finite max keep SciPy's answers
    x[7, 250] = np.inf
    x[9, 3] = np.nan
    dx = da.from_array(x, chunks=(20, 64))
    ref.assert_matches(fd.log_softmax(dx).compute(), fastmax.log_softmax(x), np.float32, scale=50)
    ref.assert_matches(fd.softmax(dx).compute(), fastmax.softmax(x), np.float32)
    finite = x[10:]
    t = rng.integers(0, 300, finite.shape[0])
    got = fd.softmax_cross_entropy(
        da.from_array(finite, chunks=(15, 64)), da.from_array(t, chunks=10), reduction="none"
    ).compute()
    np.testing.assert_allclose(
        got, fastmax.softmax_cross_entropy(finite, t, reduction="none"), rtol=2e-5, atol=1e-6
    )
