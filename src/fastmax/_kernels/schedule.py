"""The scheduler: which driver runs a call, serial or parallel, across rows
or within them.  Thresholds were measured on a 2-core AVX-512 Xeon.

It also keeps parallel launches safe whatever Numba's threading layer:

* ``workqueue`` aborts the process when two threads launch parallel kernels at
  once: launches take a lock, and a caller that finds it taken runs the
  serial variant instead of waiting (same results, bit for bit);
* GNU OpenMP (``omp``) kills a forked child that launches threads after the
  parent did: in such a child every call runs serially;
* ``tbb`` is safe for both and needs nothing.
"""

from __future__ import annotations

import os
import threading
import types as _pytypes
from collections.abc import Callable
from dataclasses import dataclass

import numba
from numba import njit

from .._config import FASTMATH, JIT, JIT_ALLOC
from ._math import STREAMING

#: Below this many elements a parallel launch costs more than it saves.
PARALLEL_MIN_ELEMENTS = 1 << 15
#: Rows up to this size (bytes) are kept in cache between passes.
CACHED_ROW_BYTES = 1 << 20
#: log_softmax of an array of at least :data:`STREAM_MIN_BYTES` keeps rows up
#: to this size (bytes) in cache between passes; longer rows take the long
#: rows' two passes (online max and sum, then the streamed write).  Over
#: memory, the cached rows' pipelined loop (one row's write, the next row's
#: exponentials and the max of the one after) ran slower on such rows:
#: two threads, same-process rounds, copy floors, 8192 x 2000 float64 1.56
#: -> 1.15, 4096 x 8000 float32 1.45 -> 1.14, 2048 x 32000 float64 1.58
#: -> 1.05; on rows of 8 KiB and less it ran faster (16384 x 2000 float32:
#: 0.95 against 1.06; 32768 x 1000 float64: 1.03 against 1.16).  In cache,
#: the pipelined loop was as fast or faster on every row length tried.
LOG_CACHED_ROW_BYTES = 1 << 13
#: Elements per task when a row is split across threads.
SPLIT_CHUNK = 1 << 16
#: Rows of at least ``2 * SPLIT_CHUNK`` elements are split across threads
#: when there are fewer than this many (two per thread on the 2-core machine
#: the thresholds were measured on).  A constant, not a multiple of the
#: thread count: a split row's statistics are merged from fixed chunks, a
#: whole row's are not, and the two differ in the last bits, so the choice
#: must not depend on the thread count.
SPLIT_ROWS = 4
#: The column kernels (reduction over a non-last axis) split the reduced axis
#: into this many chunks of whole rows: each thread then streams memory
#: sequentially (splitting columns instead, each thread would read part of
#: every row and defeat the hardware prefetchers: measured 3x slower).  Fixed,
#: so that results do not depend on the number of threads.
COLUMN_CHUNKS = 8
#: Bytes of rows per block of the column kernels' online max+sum (stays in L2).
COLUMN_BLOCK_BYTES = 1 << 18
#: The column kernels take rows longer than this (bytes) in tiles of columns
#: of at most this width, each through all of a chunk's rows: a tile's
#: per-column statistics (or shift and factor) stay in L1 beside its rows.
#: Without tiles, along axis 0 of 2048 x 16384 float32 the statistics pass
#: took 3.04 read floors and the write pass 1.44 copy floors, against 1.54
#: and 0.90 for 32768 x 1000.
COLUMN_TILE_BYTES = 1 << 13
#: Outputs of at least this many bytes (far more than the caches keep) are
#: written by streaming stores (see ``softmax.write_row_streamed``).
STREAM_MIN_BYTES = 1 << 25
#: The most rows of the small-input kernels (their per-row scratch is on the stack).
SMALL_ROWS = 2048


def _renamed(fn: Callable, suffix: str) -> Callable:
    """A copy of ``fn`` under another name, so each jitted variant caches apart."""
    clone = _pytypes.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__
    )
    clone.__qualname__ = fn.__qualname__ + suffix
    clone.__doc__ = fn.__doc__
    return clone


class _LaunchGuard:
    """Decides whether a parallel launch is safe now (see the module docstring)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.forked = False
        self.layer: str | None = None

    def after_fork_in_child(self) -> None:
        self.forked = True
        self.lock = threading.Lock()  # another thread may have held it at fork time

    def threading_layer(self) -> str | None:
        """Numba's layer, known once a parallel kernel has run in this process."""
        if self.layer is None:
            try:
                self.layer = numba.threading_layer()
            except ValueError:
                return None
        return self.layer

    def run(self, parallel: Callable, serial: Callable, args) -> object:
        layer = self.threading_layer()
        if layer == "tbb":
            return parallel(*args)
        if layer == "omp":
            return serial(*args) if self.forked else parallel(*args)
        # workqueue, or not yet known: one launch at a time.
        if not self.lock.acquire(blocking=False):
            return serial(*args)
        try:
            return parallel(*args)
        finally:
            self.lock.release()


GUARD = _LaunchGuard()
os.register_at_fork(after_in_child=GUARD.after_fork_in_child)


@dataclass(frozen=True)
class Driver:
    """One kernel driver compiled twice: ``prange`` as threads, and as ``range``."""

    parallel: Callable
    serial: Callable

    def __call__(self, n_elements: int, *args):
        if n_elements >= PARALLEL_MIN_ELEMENTS and numba.get_num_threads() > 1:
            return GUARD.run(self.parallel, self.serial, args)
        return self.serial(*args)


def driver(fn: Callable | None = None, *, allocates: bool = False):
    """Decorator: jit a driver written with ``prange`` as a :class:`Driver`.
    ``allocates=True`` for drivers that create scratch arrays (they need
    Numba's reference counting, which the others go without)."""

    def make(fn: Callable) -> Driver:
        options = JIT_ALLOC if allocates else JIT
        return Driver(
            parallel=njit(parallel=True, fastmath=FASTMATH, **options)(_renamed(fn, "_parallel")),
            serial=njit(parallel=False, fastmath=FASTMATH, **options)(_renamed(fn, "_serial")),
        )

    return make if fn is None else make(fn)


@njit(fastmath=FASTMATH, **JIT)
def block_bounds(b, n, n_blocks):
    """Items ``lo:hi`` of block ``b`` when ``n`` items go in ``n_blocks`` blocks."""
    return b * n // n_blocks, (b + 1) * n // n_blocks


@njit(fastmath=FASTMATH, **JIT)
def chunk_of(task, n_chunks, chunk, n_cols):
    """Task ``task`` of a split-row kernel: its row and column bounds ``lo:hi``."""
    r = task // n_chunks
    lo = (task - r * n_chunks) * chunk
    return r, lo, min(lo + chunk, n_cols)


def split_rows(n_rows: int, n_cols: int) -> bool:
    """Split rows across threads when there are too few rows to go round
    (fewer than :data:`SPLIT_ROWS`, whatever the thread count)."""
    return n_cols >= 2 * SPLIT_CHUNK and n_rows < SPLIT_ROWS


def row_blocks(n_rows: int) -> int:
    """Blocks of consecutive rows for the pipelined row kernels (a few per thread)."""
    return max(1, min(n_rows, 4 * numba.get_num_threads()))


def column_chunks(n: int) -> int:
    """Chunks of the reduced axis for the column kernels."""
    return max(1, min(COLUMN_CHUNKS, n // 64))


def column_block_rows(n_cols: int, itemsize: int) -> int:
    """Rows per block of the column kernels' online max+sum (of one tile:
    :func:`column_tile`)."""
    return max(1, COLUMN_BLOCK_BYTES // max(1, column_tile(n_cols, itemsize) * itemsize))


@njit(**JIT)
def column_tile(n_cols: int, itemsize: int) -> int:
    """Columns per tile of the column kernels (:data:`COLUMN_TILE_BYTES`):
    the row in tiles of equal width, each a whole number of cache lines but
    the last; the whole row if it is no wider."""
    if n_cols * itemsize <= COLUMN_TILE_BYTES:
        return max(n_cols, 1)
    n_tiles = (n_cols * itemsize + COLUMN_TILE_BYTES - 1) // COLUMN_TILE_BYTES
    width = (n_cols + n_tiles - 1) // n_tiles
    line = 64 // itemsize
    return (width + line - 1) // line * line


@njit(**JIT)
def streams(out) -> bool:
    """Whether a kernel writes ``out`` (whose rows it streams whole: their
    elements must be adjacent) by streaming stores."""
    return (
        STREAMING
        and out.size * out.itemsize >= STREAM_MIN_BYTES
        and out.strides[-1] == out.itemsize
    )


def cached_rows(n_cols: int, itemsize: int, log: bool = False, nbytes: int = 0) -> bool:
    """Whether a row stays in cache between the passes of the row kernels
    (for log_softmax if ``log``, of an array of ``nbytes``)."""
    if log and nbytes >= STREAM_MIN_BYTES:
        return n_cols * itemsize <= LOG_CACHED_ROW_BYTES
    return n_cols * itemsize <= CACHED_ROW_BYTES
