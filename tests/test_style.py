"""Project rules checked in CI: one source of fastmath flags, none that assume
away NaN or infinities, and a clean ruff run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastmax import _config

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fastmax"


def test_kernels_take_fastmath_flags_from_the_config():
    assert any(PACKAGE.rglob("*.py"))
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for flags in re.findall(r"fastmath\s*=\s*([^,)\s]+)", line):
                if flags not in ("FASTMATH", "EXACT_MATH", "ORDERED_MATH"):
                    offenders.append(f"{path.name}:{lineno}: fastmath={flags}")
    assert not offenders, offenders


def test_no_flag_assumes_away_nan_or_inf():
    for flags in (_config.FASTMATH, _config.EXACT_MATH, _config.ORDERED_MATH):
        assert not {"nnan", "ninf", "fast"} & set(flags)
    assert "reassoc" not in _config.ORDERED_MATH | _config.EXACT_MATH


def test_ruff_is_clean():
    pytest.importorskip("ruff", reason="ruff is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "src", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
