"""One place for the numeric and runtime configuration of every kernel.

* ``FASTMATH`` is given to every kernel.  It allows reassociation (so LLVM can
  vectorize sums), contraction into FMA and the like, but *not* ``nnan`` or
  ``ninf``: the kernels must keep IEEE semantics for NaN and ±inf.
* ``EXACT_MATH`` is given to the exp primitive, whose range reduction relies
  on the exact order of operations, and to the elementwise write passes
  (``(v - max) - log(sum)`` must not become ``v - (max + log(sum))``).
* ``JIT`` holds the options shared by every ``njit`` in the package.  It
  turns off Numba's reference counting (``_nrt``): kernels never allocate,
  and the atomic increments and decrements it puts around every row view
  passed to a helper cost 60-90 ns per row (5x on rows of 100 elements).
  ``JIT_ALLOC`` keeps it for the few drivers that allocate scratch arrays.

Importing this module also lets LLVM use 512-bit vectors and makes the TBB
threading layer loadable (see the two functions below).
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

import numba
from llvmlite import binding

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
EXACT_MATH = {"contract"}
#: FASTMATH without reassociation: loops whose expressions must keep their
#: order (``(v - shift) - log_sum``) and whose sums go to ``ordered_sum``.
ORDERED_MATH = FASTMATH - {"reassoc"}

JIT_ALLOC = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}
JIT = {**JIT_ALLOC, "_nrt": False}


def _prefer_512_bit_vectors() -> None:
    """Let LLVM use 512-bit vectors on AVX-512 machines.

    LLVM's tuning for many AVX-512 CPUs prefers 256-bit vectors; for fastmax's
    exp-heavy loops 512-bit ones were measured ~35% faster.  Applied only if
    the user has not chosen CPU features (``NUMBA_CPU_FEATURES``) and
    ``FASTMAX_VECTOR_WIDTH`` is not ``256``; it takes effect for code compiled
    after fastmax is imported.
    """
    if os.environ.get("NUMBA_CPU_FEATURES") or numba.config.CPU_FEATURES:
        return
    if os.environ.get("FASTMAX_VECTOR_WIDTH", "512") == "256":
        return
    features = binding.get_host_cpu_features().flatten()
    if "+avx512f" in features.split(","):
        numba.config.CPU_FEATURES = features + ",-prefer-256-bit"


def _make_tbb_loadable() -> None:
    """Load the ``tbb`` wheel's library, if installed, so Numba can use its
    thread- and fork-safe TBB threading layer.

    In a plain virtual environment ``libtbb.so.12`` is not on the loader's
    path and Numba reports TBB missing; loading it first (``RTLD_GLOBAL``)
    fixes that.  Set ``FASTMAX_LOAD_TBB=0`` to leave Numba's choice alone.
    """
    if os.environ.get("FASTMAX_LOAD_TBB", "1") == "0":
        return
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for path in sorted(glob.glob(os.path.join(prefix, "lib", "libtbb.so.12*"))):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:
                continue


_prefer_512_bit_vectors()
_make_tbb_loadable()
