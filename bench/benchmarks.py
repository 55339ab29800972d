"""asv benchmarks: op × dtype × shape class × library, peak memory, and the
ratio to the copy floor (so the history shows closeness to the limit).

Shapes are the classes of PERF.md at a quicker size by default; set
``FASTMAX_BENCH_FULL=1`` for the full sizes (about 2 GiB of memory).
Inputs are seeded and cached; compilation and warm-up happen in ``setup``.
"""

from __future__ import annotations

import os

import numpy as np

from fastmax import __main__ as report
from fastmax import _bench

#: name -> (shape, axis); tests shrink these to check that every setup runs.
SHAPES = dict(_bench.SHAPES_FULL if os.environ.get("FASTMAX_BENCH_FULL") else _bench.SHAPES_DEFAULT)
OPS = ["softmax", "log_softmax", "logsumexp", "hardmax", "softmax_vjp", "xent", "xent_fused"]
DTYPES = ["float32", "float64"]
LIBRARIES = ["fastmax", "scipy", "numpy", "torch"]

_data: dict = {}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _input(shape_name: str, dtype: str) -> tuple[np.ndarray, int]:
    key = (shape_name, dtype, SHAPES[shape_name])
    if key not in _data:
        _data.clear()  # keep one input in memory at a time
        shape, axis = SHAPES[shape_name]
        _data[key] = (_bench.input_array(shape, dtype), axis)
    return _data[key]


def _callable(op_name: str, library: str, shape_name: str, dtype: str):
    """A zero-argument call of ``op`` by ``library``, or NotImplementedError."""
    torch = _torch() if library == "torch" else None
    if library == "torch" and torch is None:
        raise NotImplementedError("torch is not installed")
    op = report.operations(torch)[op_name]
    x, axis = _input(shape_name, dtype)
    args = op.inputs(x, axis)
    if library == "fastmax":
        return lambda: op.fastmax(*args, axis=axis)
    fn = {"scipy": op.scipy, "numpy": op.numpy, "torch": op.torch}[library]
    if fn is None:
        raise NotImplementedError(f"{library} has no {op_name}")
    if library == "torch":
        targs = [torch.from_numpy(a) for a in args]
        return lambda: fn(*targs, axis)
    return lambda: fn(*args, axis=axis)


class TimeOps:
    """Wall time of each library's allocating call."""

    params = (OPS, DTYPES, list(SHAPES), LIBRARIES)
    param_names = ["op", "dtype", "shape", "library"]
    timeout = 300

    def setup(self, op, dtype, shape, library):
        self.call = _callable(op, library, shape, dtype)
        with np.errstate(all="ignore"):
            self.call()  # compile and warm up outside the timing

    def time_op(self, op, dtype, shape, library):
        with np.errstate(all="ignore"):
            self.call()


class PeakMemory:
    """Peak memory of one call: fastmax allocates only its output."""

    params = (OPS, DTYPES, list(SHAPES), ["fastmax", "scipy"])
    param_names = ["op", "dtype", "shape", "library"]
    timeout = 300

    def setup(self, op, dtype, shape, library):
        self.call = _callable(op, library, shape, dtype)
        with np.errstate(all="ignore"):
            self.call()

    def peakmem_op(self, op, dtype, shape, library):
        with np.errstate(all="ignore"):
            self.call()


class FloorRatio:
    """fastmax's time (with ``out=`` or in place) over the copy or read floor,
    measured in the same process, interleaved (PERF.md)."""

    params = (OPS, DTYPES, list(SHAPES))
    param_names = ["op", "dtype", "shape"]
    unit = "ratio"
    timeout = 300

    def setup(self, op, dtype, shape):
        self.op = report.operations(None)[op]
        self.x, self.axis = _input(shape, dtype)
        self.args = self.op.inputs(self.x, self.axis)
        self.out = (
            self.op.out_array(self.x, self.args, self.axis)
            if self.op.fastmax_out is not None
            else None
        )
        self.run()

    def run(self):
        if self.out is not None:
            return self.op.fastmax_out(self.args, self.axis, self.out)
        return self.op.fastmax(*self.args, axis=self.axis)

    def track_floor_ratio(self, op, dtype, shape):
        floors = _bench.floors(self.x, 7)
        floor = (floors.copy if self.op.floor == "copy" else floors.read) * self.op.floor_factor
        return _bench.median_time(self.run, 7) / floor


class MaskedInputs:
    """Masked entries (-inf, or a large negative fill such as -1e4) cost what
    ordinary ones do: time with 10% of the entries masked over the time on the
    same array unmasked, measured in one process (1.0 means no penalty)."""

    params = (["softmax", "log_softmax", "logsumexp"], DTYPES, ["-inf", "-1e4"])
    param_names = ["op", "dtype", "fill"]
    unit = "ratio"
    timeout = 300

    def setup(self, op, dtype, fill):
        import fastmax

        self.fn = getattr(fastmax, op)
        x, _ = _input("classic", dtype)
        self.plain = x
        self.masked = x.copy()
        self.masked[:, ::10] = float(fill)
        self.fn(self.plain)
        self.fn(self.masked)

    def track_masked_over_plain(self, op, dtype, fill):
        return _bench.median_time(lambda: self.fn(self.masked), 7) / _bench.median_time(
            lambda: self.fn(self.plain), 7
        )


class CrossEntropyPerSample:
    """The per-sample losses (``reduction="none"``) cost about what their mean
    does: time with "none" over the time with "mean" on the same logits and
    targets, measured in one process (1.0: the losses cost no more than
    their sum; many short rows are where an array of losses costs most)."""

    params = (DTYPES, ["tall", "classic"])
    param_names = ["dtype", "shape"]
    unit = "ratio"
    timeout = 300

    def setup(self, dtype, shape):
        import fastmax

        x, axis = _input(shape, dtype)
        _, target = report.operations()["xent"].inputs(x, axis)
        self.none = lambda: fastmax.softmax_cross_entropy(x, target, axis=axis, reduction="none")
        self.mean = lambda: fastmax.softmax_cross_entropy(x, target, axis=axis)
        self.none()
        self.mean()

    def track_none_over_mean(self, dtype, shape):
        return _bench.median_time(self.none, 7) / _bench.median_time(self.mean, 7)
