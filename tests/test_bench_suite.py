"""The asv suite imports, and every benchmark's setup and body run on tiny shapes."""

from __future__ import annotations

import importlib
import itertools
import math
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


def test_cross_entropy_per_sample_benchmark_runs(suite):
    for combo in itertools.product(*suite.CrossEntropyPerSample.params):
        bench = suite.CrossEntropyPerSample()
        bench.setup(*combo)
        losses = bench.none()
        assert losses.shape == (suite.SHAPES[combo[1]][0][0],)  # one loss per sample
        assert bench.mean().shape == ()
        assert bench.track_none_over_mean(*combo) > 0


class FakeClock:
    """A stand-in for the ``time`` module in ``fastmax._bench``: calls made
    through :meth:`taking` advance it by the given durations, so the timing
    logic is tested without real sleeps (which overshoot on a loaded machine)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def taking(self, durations):
        def call():
            self.now += next(durations)

        return call


@pytest.fixture
def clock(monkeypatch):
    from fastmax import _bench

    fake = FakeClock()
    monkeypatch.setattr(_bench, "time", fake)
    return fake


def test_paired_time_takes_the_median_of_per_round_ratios(clock):
    """The CLI's floor ratio: each round times the op and then the floor; the
    ratio is the median of the rounds' ratios, not a ratio of medians."""
    from fastmax import _bench

    # A warm-up call of each, then rounds (op, floor) with ratios 6, 1 and 1.
    call = clock.taking(iter([0.002, 0.002, 0.012, 0.002, 0.002, 0.002, 0.004, 0.004]))
    paired = _bench.paired_time(call, [call], repeat=3, min_sample=0.0)
    assert paired.ratio == pytest.approx(1.0)  # the ratio of the medians would be 2
    assert paired.time == pytest.approx(0.004)
    assert paired.floor == pytest.approx(0.002)


def test_paired_time_settles_each_sample_when_asked(clock):
    """With ``settle`` (the CLI's PyTorch comparison), each sample follows
    calls of its own for at least WARM_UP_SECONDS, so another library's
    spinning threads have stopped before it is timed."""
    from fastmax import _bench

    log = []

    def make(name):
        def call():
            log.append(name)
            clock.now += 2.0**-6  # exact in binary: the clock's sums are too

        return call

    op, other = make("op"), make("other")
    _bench.paired_time(op, [other], repeat=2, min_sample=0.0, settle=True)
    assert log[:2] == ["op", "other"]  # the calls that size the batches
    # Each sample (one call) follows WARM_UP_SECONDS of calls of its own.
    warm = math.ceil(_bench.WARM_UP_SECONDS / 2.0**-6)
    assert log[2:] == (["op"] * (warm + 1) + ["other"] * (warm + 1)) * 2


def test_warm_up_calls_until_the_time_stops_falling(clock):
    from fastmax import _bench

    calls = []
    durations = iter([0.012, 0.008, 0.003, 0.003, 0.001, 0.001])

    def call():
        calls.append(1)
        clock.now += next(durations)

    _bench.warm_up(call, min_seconds=0.0)
    assert len(calls) == 4  # 12, 8, 3 ms fall; the 4th (3 ms) does not
    calls.clear()
    durations = iter([0.001] * 10)
    _bench.warm_up(call, max_calls=3, min_seconds=0.0)
    assert len(calls) == 2
    calls.clear()
    durations = iter([0.064, 0.032, 0.016, 0.008, 0.004, 0.002, 0.001])
    _bench.warm_up(call, min_seconds=0.0)
    assert len(calls) == 6  # each half the one before: stops at max_calls
    calls.clear()
    durations = iter([0.010, 0.009, 0.001, 0.001])
    _bench.warm_up(call, min_seconds=0.0)
    assert len(calls) == 2  # 9 ms is within 0.8 of 10 ms: settled


def test_warm_up_runs_short_calls_for_a_minimum_time(clock):
    """Short calls go on for ``min_seconds`` even once settled (the library
    timed before may still be spinning its threads), long ones stop as before."""
    from fastmax import _bench

    calls = []
    durations = iter([0.001] * 100)

    def call():
        calls.append(1)
        clock.now += next(durations)

    _bench.warm_up(call, min_seconds=0.0305)
    assert len(calls) == 31  # settled after 2 calls, then on until 31 ms
    calls.clear()
    durations = iter([0.040, 0.039, 0.001])
    _bench.warm_up(call, min_seconds=0.03)
    assert len(calls) == 2  # settled, and past the minimum time
