import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")
    parser.addoption(
        "--run-bench", action="store_true", help="run the pytest-benchmark comparisons"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """The suite runs on pytest-xdist's workers (``-n auto`` in pyproject.toml:
    most of a cold run is compiling, one core per worker); benchmarks
    (``--run-bench``) run in one process, as pytest-benchmark requires."""
    if config.getoption("--run-bench") and getattr(config.option, "numprocesses", None):
        config.option.numprocesses = 0


def pytest_collection_modifyitems(config, items):
    skips = {
        "slow": (config.getoption("--runslow"), "slow: use --runslow"),
        "bench": (config.getoption("--run-bench"), "benchmark: use --run-bench"),
    }
    for item in items:
        for marker, (enabled, reason) in skips.items():
            if marker in item.keywords and not enabled:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
