"""The asv suite imports, and every benchmark's setup and body run on tiny shapes."""

from __future__ import annotations

import importlib
import itertools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite():
    sys.path.insert(0, str(ROOT))
    try:
        module = importlib.import_module("bench.benchmarks")
    finally:
        sys.path.remove(str(ROOT))
    saved = dict(module.SHAPES)
    module.SHAPES.clear()
    module.SHAPES.update(
        {name: ((6, 5) if axis == -1 else (5, 6), axis) for name, (_, axis) in saved.items()}
    )
    yield module
    module.SHAPES.clear()
    module.SHAPES.update(saved)


def _combinations(cls, suite):
    names = list(suite.SHAPES)
    params = [p if i != cls.param_names.index("shape") else names for i, p in enumerate(cls.params)]
    return itertools.product(*params)


def test_every_benchmark_runs_on_tiny_shapes(suite):
    ran = skipped = 0
    for cls, method in (
        (suite.TimeOps, "time_op"),
        (suite.PeakMemory, "peakmem_op"),
        (suite.FloorRatio, "track_floor_ratio"),
    ):
        for combo in _combinations(cls, suite):
            bench = cls()
            try:
                bench.setup(*combo)
            except NotImplementedError:
                skipped += 1
                continue
            result = getattr(bench, method)(*combo)
            if method.startswith("track"):
                assert result > 0
            ran += 1
    assert ran > 100 and skipped > 0, (ran, skipped)


def test_masked_inputs_benchmark_runs(suite):
    for combo in itertools.product(*suite.MaskedInputs.params):
        bench = suite.MaskedInputs()
        bench.setup(*combo)
        assert bench.masked[0, 0] == float(combo[2])  # the mask is in the timed input
        assert bench.track_masked_over_plain(*combo) > 0


def test_paired_time_takes_the_median_of_per_round_ratios():
    """The CLI's floor ratio: each round times the op and then the floor; the
    ratio is the median of the rounds' ratios, not a ratio of medians."""
    import time

    from fastmax import _bench

    # A warm-up call of each, then rounds (op, floor) with ratios 12, 1 and 1.
    durations = iter([0.002, 0.002, 0.012, 0.001, 0.002, 0.002, 0.004, 0.004])

    def slept():
        time.sleep(next(durations))

    paired = _bench.paired_time(slept, [slept], repeat=3, min_sample=0.0)
    assert 0.8 <= paired.ratio <= 1.3  # the ratio of the medians would be 2
    assert 0.0038 <= paired.time <= 0.0055
    assert 0.0019 <= paired.floor <= 0.0035


def test_warm_up_calls_until_the_time_stops_falling():
    import time

    from fastmax import _bench

    durations = [0.012, 0.008, 0.003, 0.003, 0.001, 0.001]
    calls = []

    def slept():
        calls.append(1)
        time.sleep(durations[len(calls) - 1])

    _bench.warm_up(slept)
    assert len(calls) == 4  # 12, 8, 3 ms fall; the 4th (3 ms) does not
    calls.clear()
    durations[:] = [0.001] * 10
    _bench.warm_up(slept, max_calls=3)
    assert len(calls) == 2
