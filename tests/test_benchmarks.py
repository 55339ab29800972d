"""pytest-benchmark comparisons of fastmax, SciPy and PyTorch on a few shapes.

Skipped in the default test run; run them with
``python -m pytest tests/test_benchmarks.py --run-bench``.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastmax import __main__ as report
from fastmax import _bench

pytestmark = pytest.mark.bench

CASES = {"classic": ((8192, 1000), -1), "tall": ((262_144, 8), -1), "axis0": ((8192, 1000), 0)}

try:
    import torch
except ImportError:  # optional
    torch = None


@pytest.mark.parametrize("shape_name", list(CASES))
@pytest.mark.parametrize("op_name", ["softmax", "log_softmax", "logsumexp", "xent_fused"])
@pytest.mark.parametrize("library", ["fastmax", "scipy", "torch"])
def test_compare(benchmark, op_name, shape_name, library):
    op = report.operations(torch)[op_name]
    shape, axis = CASES[shape_name]
    args = op.inputs(_bench.input_array(shape, np.float32), axis)
    if library == "fastmax":
        call = lambda: op.fastmax(*args, axis=axis)  # noqa: E731
    elif library == "scipy" and op.scipy is not None:
        call = lambda: op.scipy(*args, axis=axis)  # noqa: E731
    elif library == "torch" and op.torch is not None:
        targs = [torch.from_numpy(a) for a in args]
        call = lambda: op.torch(*targs, axis)  # noqa: E731
    else:
        pytest.skip(f"{library} has no {op_name}")
    benchmark.group = f"{op_name} {shape_name}"
    call()
    benchmark(call)
