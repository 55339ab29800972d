"""Safety under threads and fork, for every threading layer available here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("concurrency_scenarios.py")
LAYERS = ["default", "tbb", "omp", "workqueue"]


def _layer_available(layer: str) -> bool:
    if layer == "default":
        return True
    code = (
        "import fastmax, numba, numpy as np\n"
        "from fastmax import _bench\n"
        "_bench.parallel_read(np.zeros(4))\n"
        f"assert numba.threading_layer() == {layer!r}\n"
    )
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    return (
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=120
        ).returncode
        == 0
    )


AVAILABLE = {layer: _layer_available(layer) for layer in LAYERS}


@pytest.mark.parametrize("scenario", ["threads", "fork", "spawn"])
@pytest.mark.parametrize("layer", LAYERS)
def test_scenario(layer, scenario):
    if not AVAILABLE[layer]:
        pytest.skip(f"threading layer {layer} is not available here")
    env = dict(os.environ)
    if layer != "default":
        env["NUMBA_THREADING_LAYER"] = layer
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), scenario],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=SCRIPT.parent,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert proc.stdout.startswith("OK")


def test_default_layer_is_known():
    assert any(AVAILABLE.values())


_COMPUTE = (
    "import numpy as np, fastmax\n"
    "x = np.random.default_rng(0).standard_normal((300, 200))\n"
    "t = np.random.default_rng(1).integers(0, 200, 300)\n"
    "for dt in (np.float32, np.float64):\n"
    "    y = x.astype(dt)\n"
    "    res = [fastmax.softmax(y), fastmax.log_softmax(y), fastmax.logsumexp(y),\n"
    "           fastmax.softmax_cross_entropy_with_grad(y, t)[1], fastmax.softmax(y, axis=0)]\n"
    "    np.save(OUT + dt.__name__ + '.npy', np.concatenate([r.ravel() for r in res]))\n"
    "    assert abs(fastmax.logsumexp(np.zeros(1000, dt)) - np.log(1000)) < 1e-5\n"
    "print('OK')\n"
)


#: A lighter workload (logsumexp only: a cold compile of it takes a sixth of
#: :data:`_COMPUTE`'s), for tests about the cache rather than the kernels.
_COMPUTE_LIGHT = (
    "import numpy as np, fastmax\n"
    "x = np.random.default_rng(0).standard_normal((300, 200))\n"
    "for dt in (np.float32, np.float64):\n"
    "    np.save(OUT + dt.__name__ + '.npy', fastmax.logsumexp(x.astype(dt)))\n"
    "print('OK')\n"
)


def _run_compute(tmp_path, tag, env, cwd=None, compute=_COMPUTE):
    code = f"OUT = {str(tmp_path / tag)!r}\n" + compute
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_compiling_into_one_empty_cache(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    procs = [_run_compute(tmp_path, tag, env) for tag in ("a", "b")]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
    import numpy as np

    for dt in ("float32", "float64"):
        np.testing.assert_array_equal(
            np.load(tmp_path / f"a{dt}.npy"), np.load(tmp_path / f"b{dt}.npy")
        )
    # and a third process reads what they cached.  A kernel loaded from the
    # cache may order a vectorized float64 sum differently from the same kernel
    # compiled in-process (a last-bit difference); float32 results, whose sums
    # run in float64, are the same bits.
    proc = _run_compute(tmp_path, "c", env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    _assert_same_results(tmp_path, "a", "c")


def _assert_same_results(tmp_path, first, second):
    import numpy as np

    a32, b32 = (np.load(tmp_path / f"{tag}float32.npy") for tag in (first, second))
    np.testing.assert_array_equal(a32, b32)
    a64, b64 = (np.load(tmp_path / f"{tag}float64.npy") for tag in (first, second))
    np.testing.assert_allclose(a64, b64, rtol=1e-15, atol=1e-300)


def test_unwritable_cache_location(tmp_path):
    """An install whose cache cannot be written (here even for root: the cache
    directory would sit below a regular file) still computes correctly."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(blocker / "cache"))
    proc = _run_compute(tmp_path, "ro", env)
    out, err = proc.communicate(timeout=600)
    assert out.startswith("OK"), err[-4000:]


def test_stale_cache_after_an_upgrade(tmp_path):
    """A changed kernel source invalidates the cached machine code."""
    import shutil

    import fastmax

    pkg = tmp_path / "site" / "fastmax"
    shutil.copytree(
        Path(fastmax.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__")
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    env.pop("NUMBA_CACHE_DIR", None)  # cache next to the copied sources
    first = _run_compute(tmp_path, "before", env, cwd=tmp_path, compute=_COMPUTE_LIGHT)
    assert first.communicate(timeout=600)[0].startswith("OK")
    # An "upgrade": a kernel's source changes, so its cached machine code is stale.
    src = pkg / "_kernels" / "softmax.py"
    src.write_text(
        src.read_text().replace(
            "def finish(m, total, log):", "def finish(m, total, log):  # upgraded"
        )
    )
    second = _run_compute(tmp_path, "after", env, cwd=tmp_path, compute=_COMPUTE_LIGHT)
    out, err = second.communicate(timeout=600)
    assert out.startswith("OK"), err[-4000:]
    # The changed file's kernels were compiled again and their cache rewritten.
    changed = src.stat().st_mtime
    indexes = list((pkg / "_kernels" / "__pycache__").glob("softmax.*.nbi"))
    assert indexes and all(p.stat().st_mtime >= changed for p in indexes)
    _assert_same_results(tmp_path, "before", "after")


@pytest.mark.slow
def test_reduction_axis_longer_than_2_31():
    """No int32 index anywhere: a 2**31 + 7 element row (8 GiB of float32)."""
    import numpy as np

    import fastmax

    n = 2**31 + 7
    x = np.zeros(n, np.float32)
    assert abs(fastmax.logsumexp(x) - np.log(n)) < 1e-4
    x[-1] = 1.0
    fastmax.hardmax(x, out=x)
    assert x[-1] == 1.0 and x[: 1 << 20].sum() == 0
    x[:] = 0
    fastmax.softmax(x, out=x)
    assert abs(x[-1] * n - 1) < 1e-4
