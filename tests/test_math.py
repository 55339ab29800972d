"""The numeric primitives: the vectorized exp (accuracy against NumPy over the
whole range, packed SIMD instructions in the compiled loop), the ordered sum,
stack scratch arrays and the in-vector segment reductions."""

from __future__ import annotations

import math
import platform
import re

import numpy as np
import pytest
from numba import njit

from fastmax._config import EXACT_MATH, FASTMATH
from fastmax._kernels._math import (
    SEGMENT_FAST_MAX,
    SEGMENT_MAX,
    SEGMENT_SUM,
    SPREAD_SCALE,
    SPREAD_SHIFT,
    SUM_ACCUMULATORS,
    SUM_LANES,
    TABLE_EXP,
    TERMS_SUM_MIN,
    VECTOR_BYTES,
    column_exp_add,
    data_address,
    exp,
    exp_bound,
    exp_bounded,
    exp_bounded_store,
    exp_nonpos,
    exp_store_sum_max,
    exp_stored,
    exp_sum_max,
    exp_term,
    exp_terms_store,
    exp_write,
    fmaximum,
    is_single,
    log_minus,
    log_pos,
    log_pos32,
    log_pos32_wide,
    magnitude_bits,
    magnitude_key,
    ordered_dot,
    ordered_sum,
    prefetch,
    prefetch_to_l2,
    scaled_difference,
    segment_allreduce,
    segment_rows,
    segment_spread,
    segment_spread_write,
    shifted_row,
    stack_array,
    stream_copy,
    stream_fence,
)

from .strategies import at_line_offset

#: Max error in units in the last place (of NumPy's result) over normal results.
ULP = {np.float32: 6, np.float64: 4}


def _exp_loop(x, out):
    for i in range(x.size):
        out[i] = exp(x[i])


def _exp_nonpos_loop(x, out):
    for i in range(x.size):
        out[i] = exp_nonpos(x[i])


def _exp_term_loop(x, out):
    for i in range(x.size):
        out[i] = exp_term(x[i])


def _exp_bounded_loop(x, out):
    for i in range(x.size):
        out[i] = exp_bounded(x[i])


def _log_loop(x, out):
    for i in range(x.size):
        out[i] = log_pos32(x[i]) if is_single(x) else log_pos(x[i])


# Not cached: the assembly of cached code cannot be inspected.
exp_loop = njit(fastmath=EXACT_MATH, cache=False)(_exp_loop)
exp_nonpos_loop = njit(fastmath=EXACT_MATH, cache=False)(_exp_nonpos_loop)
# exp_term serves sums in fast-math loops: tested in one.
exp_term_loop = njit(fastmath=FASTMATH, cache=False)(_exp_term_loop)
exp_bounded_loop = njit(fastmath=FASTMATH, cache=False)(_exp_bounded_loop)
log_loop = njit(fastmath=FASTMATH, cache=False, error_model="numpy")(_log_loop)


def _assert_close_to_np_exp(x, got, dtype):
    info = np.finfo(dtype)
    with np.errstate(over="ignore", under="ignore"):
        ref = np.exp(x)
    special = ~np.isfinite(ref) | (ref == 0)
    np.testing.assert_array_equal(got[special], ref[special])  # inf, 0 and NaN exactly
    normal = np.isfinite(ref) & (ref >= info.tiny)
    ulps = np.abs(got[normal] - ref[normal]) / np.spacing(ref[normal])
    assert ulps.max() <= ULP[dtype], ulps.max()
    sub = (ref < info.tiny) & (ref > 0)
    assert sub.any()
    err = np.abs(got[sub] - ref[sub]) / info.smallest_subnormal
    assert err.max() <= 2, err.max()  # subnormal results: absolute, in subnormal steps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_accuracy_over_the_whole_range(dtype):
    info = np.finfo(dtype)
    lo, hi = (-110.0, 95.0) if dtype == np.float32 else (-760.0, 720.0)
    x = np.concatenate(
        [
            np.linspace(lo, hi, 1_000_001),
            np.random.default_rng(0).uniform(-1, 1, 100_000),
            [
                np.inf,
                -np.inf,
                np.nan,
                0.0,
                -0.0,
                info.max,
                -info.max,
                info.tiny,
                -info.tiny,
                info.smallest_subnormal,
            ],
        ]
    ).astype(dtype)
    got = np.empty_like(x)
    exp_loop(x, got)
    _assert_close_to_np_exp(x, got, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_nonpos_accuracy_over_its_range(dtype):
    """exp_nonpos serves ``v - max(v)``: every value <= 0, -inf, and the small
    positive rounding residues a fused ``x * scale - m`` can leave."""
    info = np.finfo(dtype)
    lo = -110.0 if dtype == np.float32 else -760.0
    x = np.concatenate(
        [
            np.linspace(lo, 0.0, 1_000_001),
            -np.random.default_rng(0).uniform(0, 1, 100_000),
            [-np.inf, 0.0, -0.0, -info.max, -info.tiny, info.eps, 1e-3, 0.5],
        ]
    ).astype(dtype)
    got = np.empty_like(x)
    exp_nonpos_loop(x, got)
    _assert_close_to_np_exp(x, got, dtype)


def _assert_exp_within_ulp(loop, span, uniform, extra, dtype):
    """``loop``'s exp over a grid of ``span``, random values in ``uniform``
    and ``extra`` values: within ULP of NumPy's.  Returns the results."""
    x = np.concatenate(
        [
            np.linspace(*span, 1_000_001),
            np.random.default_rng(0).uniform(*uniform, 100_000),
            extra,
        ]
    ).astype(dtype)
    got = np.empty_like(x)
    loop(x, got)
    ref = np.exp(x)
    ulps = np.abs(got - ref) / np.spacing(ref)
    assert ulps.max() <= ULP[dtype], ulps.max()
    return got


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_term_accuracy_and_its_floor(dtype):
    """exp_term serves the terms of a sum with a term 1: as exact as exp_nonpos
    down to its bound, and below it (-inf included) a normal number < 2^-100
    (never 0, NaN or a subnormal)."""
    info = np.finfo(dtype)
    bound = -86.0 if dtype == np.float32 else -700.0
    _assert_exp_within_ulp(
        exp_term_loop, (bound, 0.0), (-1.0, 0.0), [0.0, -0.0, -info.tiny, info.eps], dtype
    )
    below = np.array([bound - 1e-3, bound - 20, -np.inf, -info.max], dtype)
    low = np.empty_like(below)
    exp_term_loop(below, low)
    assert np.all(low >= info.tiny) and np.all(low < 2.0**-100), low


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_bounded_accuracy_within_its_bound(dtype):
    """exp_bounded serves blocks whose every value is within its bound: as
    exact as exp there, positive arguments included, all results normal,
    and a sum of 16 at the bound finite."""
    bound = float(exp_bound(dtype(0)))
    assert bound == (80.0 if dtype == np.float32 else 700.0)
    got = _assert_exp_within_ulp(
        exp_bounded_loop, (-bound, bound), (-1.0, 1.0), [0.0, -0.0, bound, -bound], dtype
    )
    assert got.min() >= np.finfo(dtype).tiny
    assert np.isfinite(dtype(16) * got.max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_pos_accuracy_over_the_normal_range(dtype):
    """log_pos (float64) and log_pos32 (float32) over the positive normal
    numbers: within 1 ulp of the correctly rounded log."""
    info = np.finfo(dtype)
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            np.exp(rng.uniform(np.log(info.tiny), np.log(info.max), 300_000)),
            rng.uniform(0.5, 2.0, 300_000),  # around 1, where log is small
            1.0 + np.arange(1, 2000) * info.eps,
            [info.tiny, info.max, 1.0, 2.0, 0.5],
        ]
    ).astype(dtype)
    x = x[np.isfinite(x) & (x >= info.tiny)]
    got = np.empty_like(x)
    log_loop(x, got)
    ref = np.log(x.astype(np.longdouble))
    nonzero = ref != 0
    ulps = np.abs(got[nonzero] - ref[nonzero]) / np.spacing(np.abs(ref[nonzero]).astype(dtype))
    assert ulps.max() <= 1.0, ulps.max()
    assert got[x == 1.0].tolist() == [0.0]


@njit(fastmath=FASTMATH, cache=False, error_model="numpy")
def log_minus_loop(x, c, out):
    for i in range(x.size):
        out[i] = log_minus(x[i], c[i])


def test_log_minus_error_is_of_the_difference():
    """log_minus(x, c) = log(x) - c for c near log(x) (a row's max against
    the log of its sum of exponentials), over the positive normal float64
    numbers: within 2 ulps of the difference plus 1, where log_pos(x) - c
    rounds log(x) first and is off by up to half an ulp of log(x) (2^-44 at
    700).  log_minus(x, 0) is log_pos(x)."""
    info = np.finfo(np.float64)
    rng = np.random.default_rng(3)
    # Mantissas and exponents drawn apart: exp of a float64 would have a log
    # within 1e-16 of that float64, and log(x) rounded no error to find.
    x = np.ldexp(rng.uniform(1.0, 2.0, 300_000), rng.integers(-1022, 1024, 300_000))
    c = np.log(x) - rng.uniform(0.0, 3.0, x.size)  # log(x) - c in [0, 3]
    got, logs = np.empty_like(x), np.empty_like(x)
    log_minus_loop(x, c, got)
    log_loop(x, logs)
    naive = logs - c
    ref = np.log(x.astype(np.longdouble)) - c.astype(np.longdouble)
    err = (np.abs(got - ref) / (info.eps * (np.abs(ref) + 1))).astype(np.float64)
    assert err.max() <= 2.0, err.max()
    naive_err = (np.abs(naive - ref) / (info.eps * (np.abs(ref) + 1))).astype(np.float64)
    assert naive_err.max() > 50 * err.max()  # what the shift taken first saves
    log_minus_loop(x, np.zeros_like(x), got)
    np.testing.assert_array_equal(got, logs)


@njit(fastmath=FASTMATH, cache=False)
def _spread_write(src, hi, lo, dst, scale, seg, shift):
    if shift:
        segment_spread_write(src, hi, lo, dst, scale, seg, SPREAD_SHIFT)
    else:
        segment_spread_write(src, hi, lo, dst, scale, seg, SPREAD_SCALE)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seg", [2, 8])
def test_segment_spread_write_keeps_its_order_in_fast_math(dtype, seg):
    """segment_spread_write from a fast-math caller: SPREAD_SHIFT gives
    exactly ``(src - hi) - lo`` in that order, with ``lo`` below an ulp of
    ``hi`` (``src - (hi + lo)``, which reassociation would allow, rounds
    ``lo`` away), and SPREAD_SCALE exactly ``src * hi``; in place too."""
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    if seg > lanes:
        pytest.skip("segment wider than a vector")
    rng = np.random.default_rng(seg)
    src = (1e5 + rng.standard_normal(3 * seg * lanes) * 4).astype(dtype)
    hi = src.reshape(-1, seg).max(1)
    lo = (rng.uniform(0.2, 0.4, hi.size) * (1 + np.finfo(dtype).eps)).astype(dtype)
    one = dtype(1.0)
    expected = (src - np.repeat(hi, seg)) - np.repeat(lo, seg)
    assert not np.array_equal(expected, src - np.repeat(hi + lo, seg))
    dst = np.empty_like(src)
    _spread_write(src, hi, lo, dst, one, seg, True)
    np.testing.assert_array_equal(dst, expected)
    y = src.copy()
    _spread_write(y, hi, lo, y, one, seg, True)
    np.testing.assert_array_equal(y, expected)
    _spread_write(src, lo, lo, dst, one, seg, False)
    np.testing.assert_array_equal(dst, src * np.repeat(lo, seg))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_of_zero_is_exactly_one(dtype):
    """Every exp variant gives exactly 1 at 0 (so a row of one entry has
    softmax 1 and log_softmax 0, as SciPy)."""
    zeros = np.zeros(64, dtype)
    for loop in (exp_loop, exp_nonpos_loop, exp_term_loop, exp_bounded_loop):
        got = np.empty_like(zeros)
        loop(zeros, got)
        np.testing.assert_array_equal(got, 1.0)


def test_exp_loop_is_vectorized():
    for loop in (exp_loop, exp_nonpos_loop, exp_term_loop, exp_bounded_loop, log_loop):
        for dtype in (np.float32, np.float64):
            loop(np.zeros(64, dtype), np.empty(64, dtype))
        for sig in loop.signatures:
            asm = loop.inspect_asm(sig)
            packed = re.findall(r"\tv(?:fn?m(?:add|sub)|mul|add|sub)\w*p[sd]\s[^\n]*%[yz]mm", asm)
            assert len(packed) >= 8, f"no packed FMA/mul/add in {loop.__name__} for {sig}"


def test_fmaximum_propagates_nan_like_np_max():
    @njit(cache=False)
    def reduce_max(x):
        m = x[0]
        for i in range(1, x.size):
            m = fmaximum(m, x[i])
        return m

    x = np.random.default_rng(1).standard_normal(1000)
    assert reduce_max(x) == x.max()
    x[500] = np.nan
    assert np.isnan(reduce_max(x))
    assert reduce_max(np.array([-np.inf, -np.inf])) == -np.inf


@njit(cache=False)
def _ordered_sum(x):
    return ordered_sum(x)


def _ordered_sum_reference(x):
    """The documented order, in NumPy: lanes in the array's type, then float64."""
    n = x.size
    wide = SUM_LANES * SUM_ACCUMULATORS
    n_wide = n // wide * wide
    n_lanes = n // SUM_LANES * SUM_LANES
    acc = np.zeros(wide, x.dtype)
    for i in range(0, n_wide, wide):
        acc += x[i : i + wide]
    parts = [acc[k : k + SUM_LANES] for k in range(0, wide, SUM_LANES)]
    while len(parts) > 1:
        parts = [parts[k] + parts[k + 1] for k in range(0, len(parts), 2)]
    lanes = parts[0]
    for i in range(n_wide, n_lanes, SUM_LANES):
        lanes = lanes + x[i : i + SUM_LANES]
    tail = np.zeros(SUM_LANES, x.dtype)
    tail[: n - n_lanes] = x[n_lanes:]
    lanes = (lanes + tail).astype(np.float64)
    while lanes.size > 1:
        half = lanes.size // 2
        lanes = lanes[:half] + lanes[half:]
    return float(lanes[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 63, 64, 65, 100, 1000, 1024, 4099])
def test_ordered_sum_is_the_documented_order(dtype, n):
    rng = np.random.default_rng(n)
    x = (rng.random(n) * 2.0 ** rng.integers(-20, 20, n)).astype(dtype)  # order matters
    assert _ordered_sum(x) == _ordered_sum_reference(x)  # bit for bit
    # Strided views take the element-by-element path: the same order and bits.
    wide = np.zeros(3 * n, dtype)
    wide[::3] = x
    assert _ordered_sum(wide[::3]) == _ordered_sum(x)


def test_ordered_sum_is_the_same_inside_a_fast_math_loop():
    """Compiled into callers with reassociation allowed, the order stays put."""

    @njit(fastmath=FASTMATH, cache=False)
    def per_run(x, run):
        total = 0.0
        for i0 in range(0, x.size, run):
            total += ordered_sum(x[i0 : i0 + run])
        return total

    x = np.random.default_rng(3).standard_normal(10_000).astype(np.float32) ** 2
    expected = sum(_ordered_sum(x[i : i + 1000]) for i in range(0, x.size, 1000))
    assert per_run(x, 1000) == expected


@njit(cache=False)
def _ordered_dot(a, b):
    return ordered_dot(a, b)


@njit(fastmath=FASTMATH, cache=False)
def _ordered_dot_fast_math(a, b, scale):
    # A caller whose own products and sums may be fused or reordered.
    return ordered_dot(a, b) * scale + 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 63, 64, 65, 100, 1000, 4099])
def test_ordered_dot_is_the_documented_order(dtype, n):
    rng = np.random.default_rng(n)
    # Products of at most 12 significant bits are exact in either type, so
    # each fused multiply-add rounds like the sum of the products.
    a = (rng.integers(-64, 65, n) * 2.0 ** rng.integers(-20, 20, n)).astype(dtype)
    b = rng.integers(-64, 65, n).astype(dtype)
    assert _ordered_dot(a, b) == _ordered_sum_reference(a * b)  # bit for bit
    wide = np.zeros((2, 3 * n), dtype)
    wide[0, ::3], wide[1, 1::3] = a, b
    assert _ordered_dot(wide[0, ::3], wide[1, 1::3]) == _ordered_dot(a, b)  # strided
    assert _ordered_dot(a, b[::-1][::-1]) == _ordered_dot(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ordered_dot_rounds_once_per_product_in_any_caller(dtype):
    """Each product is fused with its add in every compiled copy, also where
    the caller lets LLVM fuse what it likes: the same bits, and close to the
    float64 (or longdouble) dot product."""
    rng = np.random.default_rng(7)
    for n in (5, 100, 2048):
        a = rng.standard_normal(n).astype(dtype)
        b = rng.standard_normal(n).astype(dtype)
        got = _ordered_dot(a, b)
        assert _ordered_dot_fast_math(a, b, 1.0) == got
        exact = float(np.dot(a.astype(np.longdouble), b.astype(np.longdouble)))
        bound = np.finfo(dtype).eps * float(np.abs(a * b).sum()) * 8
        assert abs(got - exact) <= bound


@njit(cache=False)
def _scaled_difference(y, v, out, s):
    scaled_difference(y, v, out, s)


@njit(cache=False)
def _shifted_row(x, out, scale, hi, lo):
    shifted_row(x, out, scale, hi, lo)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_writes_write_each_element_and_no_other(dtype):
    """The vector-step row writes, against NumPy in the same type (the same
    roundings): out of place (the last elements by a whole vector over some
    already written) and in place (by a masked tail)."""
    rng = np.random.default_rng(5)
    for n in [*range(40), 100, 1001]:
        y, v = (rng.standard_normal(n).astype(dtype) for _ in range(2))
        s, hi, lo = (dtype(rng.standard_normal()) for _ in range(3))
        one = dtype(1.0)
        cases = [  # (kernel, inputs, scalars, expected, which inputs may be out)
            (_scaled_difference, (y, v), (s,), y * (v - s), (0, 1)),
            (_shifted_row, (y,), (one, hi, lo), (y - hi) - lo, (0,)),
        ]
        for kernel, inputs, scalars, expected, in_place in cases:
            buf = np.full(n + 20, 7.0, dtype)
            kernel(*inputs, buf[3 : 3 + n], *scalars)
            np.testing.assert_array_equal(buf[3 : 3 + n], expected)
            assert (buf[:3] == 7.0).all() and (buf[3 + n :] == 7.0).all()
            for k in in_place:
                arrays = [a.copy() for a in inputs]
                kernel(*arrays, arrays[k], *scalars)
                np.testing.assert_array_equal(arrays[k], expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_writes_are_the_same_at_every_alignment(dtype):
    """Rows long enough that the writes store aligned (a first vector
    unaligned, then from ``out``'s first vector boundary, the inputs read by
    aligned loads and permutes): every element right, no other written,
    whatever each array's offset in its cache line, also offsets that are
    not a whole number of elements (read element by element's way)."""
    rng = np.random.default_rng(6)
    size = np.dtype(dtype).itemsize
    offsets = [*range(0, 64, size), size // 2]
    for n in [128, 129, 200, 1001, 4099]:
        y0, v0 = (rng.standard_normal(n).astype(dtype) for _ in range(2))
        s, hi, lo = (dtype(rng.standard_normal()) for _ in range(3))
        expected = {"scaled": y0 * (v0 - s), "shifted": (y0 - hi) - lo}
        others = offsets[3:] + offsets[:3]
        for k, (oy, ov, oo) in enumerate(zip(offsets, others, offsets[::-1], strict=True)):
            y, v = at_line_offset(y0, oy), at_line_offset(v0, ov)
            guarded = at_line_offset(np.full(n + 2 * k + 2, 7.0, dtype), oo)
            out = guarded[k + 1 : k + 1 + n]
            for name in expected:
                if name == "scaled":
                    _scaled_difference(y, v, out, s)
                else:
                    _shifted_row(y, out, dtype(1.0), hi, lo)
                np.testing.assert_array_equal(
                    out, expected[name], err_msg=f"{name} {n} {oy, ov, oo}"
                )
                assert (guarded[: k + 1] == 7.0).all() and (guarded[k + 1 + n :] == 7.0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 17, 64, 65, 100, 1000, 4099])
def test_ordered_sums_are_the_same_at_every_alignment(dtype, n):
    """Read by aligned loads and permutes where an array starts inside a
    cache line: the documented order still, wherever each array starts."""
    rng = np.random.default_rng(n)
    a0 = (rng.integers(-64, 65, n) * 2.0 ** rng.integers(-20, 20, n)).astype(dtype)
    b0 = rng.integers(-64, 65, n).astype(dtype)
    size = np.dtype(dtype).itemsize
    sum_expected, dot_expected = _ordered_sum_reference(a0), _ordered_sum_reference(a0 * b0)
    for oa in [*range(0, 64, size), size // 2]:
        a = at_line_offset(a0, oa)
        assert _ordered_sum(a) == sum_expected, oa
        for ob in (0, 16, 64 - size, size // 2):
            assert _ordered_dot(a, at_line_offset(b0, ob)) == dot_expected, (oa, ob)


def test_stack_array_and_is_single():
    @njit(cache=False)
    def fill(v):
        buf = stack_array(64, v)
        for i in range(buf.size):
            buf[i] = v * i
        return buf.size, buf[63], is_single(buf)

    assert fill(np.float32(2.0)) == (64, 126.0, True)
    assert fill(2.0) == (64, 126.0, False)


def test_stack_arrays_start_on_a_vector_boundary():
    """Scratch whose vectors straddle cache lines costs a split access per
    vector: every stack array starts on a 64-byte boundary, however many
    scalars and other arrays share the frame."""

    @njit(cache=False)
    def addresses(v):
        a = stack_array(3, v)
        b = stack_array(5, v)
        c = stack_array(1024, v)
        a[0] = v
        b[0] = v
        c[0] = v
        return data_address(a), data_address(b), data_address(c)

    for v in (np.float32(1.0), 1.0):
        for address in addresses(v):
            assert address % VECTOR_BYTES == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_magnitude_bits_order_magnitudes_with_nan_above_inf(dtype):
    @njit(cache=False)
    def bits(x, out):
        for i in range(x.size):
            out[i] = magnitude_bits(x[i])

    info = np.finfo(dtype)
    ints = np.int32 if dtype == np.float32 else np.int64
    values = np.array(
        [0.0, -0.0, info.smallest_subnormal, -info.tiny, 1.0, -1.0, 80.0, -700.0]
        + [info.max, -np.inf, np.inf, np.nan, -np.nan],
        dtype,
    )
    out = np.empty(values.size, ints)
    bits(values, out)
    np.testing.assert_array_equal(out, np.abs(values).view(ints))
    magnitudes = np.abs(values[~np.isnan(values)])
    finite_bits = out[~np.isnan(values)]
    assert (np.argsort(finite_bits, kind="stable") == np.argsort(magnitudes, kind="stable")).all()
    assert out[np.isnan(values)].min() > out[np.isinf(values)].max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seg", [1, 2, 4, 8, 16])
def test_segment_allreduce(dtype, seg):
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    if seg > lanes:
        pytest.skip("segment wider than a vector")

    @njit(cache=False)
    def reduce_all(src, dst, seg, op):
        for k in range(0, src.size, lanes):
            if op == 0:
                segment_allreduce(src, dst, k, seg, SEGMENT_SUM)
            elif op == 1:
                segment_allreduce(src, dst, k, seg, SEGMENT_MAX)
            else:
                segment_allreduce(src, dst, k, seg, SEGMENT_FAST_MAX)

    x = np.random.default_rng(seg).standard_normal(4 * lanes).astype(dtype)
    rows = x.reshape(-1, seg)
    for op, ref in [(0, rows.sum(1)), (1, rows.max(1)), (2, rows.max(1))]:
        out = np.empty_like(x)
        reduce_all(x, out, seg, op)
        np.testing.assert_allclose(out.reshape(-1, seg), np.repeat(ref[:, None], seg, 1), rtol=1e-6)
    x[3] = np.nan  # the NaN-propagating max keeps it; the fast max may drop it
    out = np.empty_like(x)
    reduce_all(x, out, seg, 1)
    assert np.isnan(out[(3 // seg) * seg : (3 // seg + 1) * seg]).all()


@njit(cache=False)
def _row_reductions(src, sums, maxima, seg):
    segment_rows(src, sums, seg, SEGMENT_SUM)
    segment_rows(src, maxima, seg, SEGMENT_FAST_MAX)


@njit(cache=False)
def _spread(vals, dst, seg):
    segment_spread(vals, dst, seg)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seg", [2, 4, 8, 16])
def test_segment_rows_and_spread(dtype, seg):
    """segment_rows: one sum / max per row of seg elements, in row order, over
    a block of several trees; segment_spread: the inverse layout.  Other
    segment lengths (1, or over the lane count) leave the output alone."""
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    x = np.random.default_rng(seg).standard_normal(3 * seg * lanes).astype(dtype)
    sums = np.full(x.size // seg, -7, dtype)
    maxima = np.full(x.size // seg, -7, dtype)
    _row_reductions(x, sums, maxima, seg)
    if seg > lanes:
        assert (sums == -7).all() and (maxima == -7).all()
        return
    rows = x.reshape(-1, seg)
    np.testing.assert_allclose(sums, rows.sum(1), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(maxima, rows.max(1))
    spread = np.empty_like(x)
    _spread(maxima, spread, seg)
    np.testing.assert_array_equal(spread.reshape(-1, seg), np.repeat(maxima[:, None], seg, 1))
    untouched = np.full(x.size, -7, dtype)
    _row_reductions(x, untouched[: x.size], untouched[: x.size], 1)
    assert (untouched == -7).all()


def _prefetched_sum(prefetch_fn):
    """A jitted sum of an array that ``prefetch_fn`` prefetches first."""

    @njit(cache=False)
    def prefetched_sum(x):
        prefetch_fn(x)
        total = 0.0
        for i in range(x.size):
            total += x[i]
        return total

    return prefetched_sum


prefetched_sum = _prefetched_sum(prefetch)
prefetched_to_l2_sum = _prefetched_sum(prefetch_to_l2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "kernel, x86_instruction",
    [(prefetched_sum, "prefetcht0"), (prefetched_to_l2_sum, "prefetcht1")],
)
def test_prefetch_is_a_hint_that_changes_nothing(dtype, kernel, x86_instruction):
    """prefetch touches no element (any size, the empty array included) and
    compiles to the CPU's prefetch instruction where there is one (on x86,
    of the level asked for)."""
    for n in (0, 1, 15, 16, 17, 1000):
        x = np.arange(n, dtype=dtype)
        before = x.copy()
        assert kernel(x) == float(before.sum(dtype=np.float64))
        np.testing.assert_array_equal(x, before)
    asm = kernel.inspect_asm(kernel.signatures[0])
    if platform.machine() in ("aarch64", "arm64"):
        assert re.search(r"\tprfm\s", asm), "no prefetch instruction"
    elif platform.machine() in ("x86_64", "AMD64"):
        assert re.search(rf"\t{x86_instruction}\s", asm), f"no {x86_instruction}"


@njit(cache=False)
def _streamed(src, dst):
    stream_copy(src, dst)
    stream_fence()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stream_copy_writes_exactly_its_destination(dtype):
    """stream_copy copies every element, whatever the destination's offset
    from a cache line and its length (partial lines at both ends, none, one
    line or less), and writes nothing around it; on x86 it compiles to
    streaming stores and a fence."""
    itemsize = np.dtype(dtype).itemsize
    lanes = 64 // itemsize
    backing = np.full(8 * lanes + 64, -7.0, dtype)
    start = (-(backing.ctypes.data % 64) % 64) // itemsize  # a line boundary
    for offset in range(lanes + 1):
        for n in (0, 1, lanes - 1, lanes, lanes + 1, 3 * lanes + 5, 5 * lanes):
            backing[:] = -7.0
            src = np.arange(1, n + 1, dtype=dtype)
            lo = start + offset
            _streamed(src, backing[lo : lo + n])
            np.testing.assert_array_equal(backing[lo : lo + n], src)
            assert (backing[:lo] == -7.0).all() and (backing[lo + n :] == -7.0).all()
    asm = _streamed.inspect_asm(_streamed.signatures[-1])
    if platform.machine() in ("x86_64", "AMD64"):
        assert re.search(r"\tvmovnt(p[sd]|dq)\s", asm), "no streaming store"
        assert re.search(r"	sfence", asm), "no fence"


# --- the AVX-512 exp sums ---------------------------------------------------
needs_table_exp = pytest.mark.skipif(not TABLE_EXP, reason="no AVX-512: exp_sum_max unused")


#: The growth of the sums' float32 exponential's relative error with |v|
#: (its reduction by ln2 rounded to float32: 1.9e-9 above ln2).
SUM_EXP_GROWTH = {np.float32: 2.8e-9, np.float64: 0.0}


def _assert_sum_terms_close(got, v, dtype):
    """Terms of the sums' exponential (float32 or float64 ``v``, ``got`` as
    float64): within ULP of NumPy's exp, float32 with SUM_EXP_GROWTH."""
    ref = np.exp(v)
    err = np.abs(np.asarray(got, np.float64) - ref)
    allowed = ULP[dtype] * np.spacing(ref) + SUM_EXP_GROWTH[dtype] * np.abs(v) * ref
    worst = np.argmax(err / allowed)
    assert err[worst] <= allowed[worst], (v[worst], err[worst] / np.spacing(ref[worst]))


@njit(fastmath=FASTMATH, cache=False)
def _exp_sum_max_each(x, scale, shift, out):
    """exp_sum_max of each element alone: its term (a sum of one)."""
    for i in range(x.size):
        total, _ = exp_sum_max(x[i : i + 1], x[i : i + 1], scale, shift)
        out[i] = total


@njit(fastmath=FASTMATH, cache=False)
def _exp_sum_max_call(x, nxt, scale, shift):
    return exp_sum_max(x, nxt, scale, shift)


@needs_table_exp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_exp_sum_max_terms_within_ulp_and_floor(dtype, scale):
    """Each term is exp_term's: within ULP of NumPy's exp down to the bound
    (-700, float32 -86; the table's entries and every reduced argument are
    met on a fine grid), float32 with its reduction's growth
    (:data:`SUM_EXP_GROWTH`), exp(bound) below it and for -inf; unscaled
    and scaled loops alike."""
    bound = -86.0 if dtype == np.float32 else -700.0
    x = np.concatenate(
        [
            np.linspace(bound, 0.0, 1_000_001),
            np.random.default_rng(0).uniform(-1.0, 0.0, 100_000),
            [0.0, -0.0, -1e-30, -np.finfo(dtype).eps],
        ]
    ).astype(dtype)
    arg = (x / dtype(scale)).astype(dtype)
    got = np.empty(x.size)
    _exp_sum_max_each(arg, dtype(scale), dtype(0.0), got)
    v = arg * dtype(scale)
    _assert_sum_terms_close(got, v, dtype)
    assert got[x.size - 4] == 1.0  # exp(0) exactly: a row of one gives log 0
    low = np.empty(4)
    below = np.array([bound - 1e-3, bound - 20, -np.inf, -np.finfo(dtype).max], dtype)
    _exp_sum_max_each(below, dtype(1.0), dtype(0.0), low)
    at_bound = np.empty(1)
    _exp_sum_max_each(np.array([bound], dtype), dtype(1.0), dtype(0.0), at_bound)
    np.testing.assert_array_equal(low, at_bound[0])  # the bound's own term
    _assert_sum_terms_close(at_bound, np.array([bound], dtype), dtype)


@needs_table_exp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 64, 65, 100, 512])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_exp_sum_max_sum_and_next_max(dtype, n, scale):
    """The sum (the unrolled loop, single vectors, the masked tail: each
    element once) against an exact sum, and the max of ``nxt[:n]`` only
    (a larger value after it is not read), NaN-propagating."""
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 3).astype(dtype)
    nxt = np.concatenate([rng.standard_normal(n), [1e30]]).astype(dtype)
    scale = dtype(scale)
    shift = x.max() * scale
    total, top = _exp_sum_max_call(x, nxt, scale, shift)
    exact = math.fsum(np.exp(x.astype(np.float64) * scale - np.float64(shift)))
    tol = 2e-6 if dtype == np.float32 else 4e-16
    assert abs(total - exact) <= tol * exact
    assert top == nxt[:n].max()
    for k in {0, n // 2, n - 1}:
        bad = nxt.copy()
        bad[k] = np.nan
        assert np.isnan(_exp_sum_max_call(x, bad, scale, shift)[1])
    nxt[:n] = -np.inf
    assert _exp_sum_max_call(x, nxt, scale, shift)[1] == -np.inf


@needs_table_exp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_sum_max_order_is_fixed(dtype):
    """The same bits for the same values anywhere in memory (no
    alignment-dependent path), in the documented order."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(1003) * 5).astype(dtype)
    base = np.empty(1100, dtype)
    results = set()
    for offset in range(0, 16):
        y = base[offset : offset + x.size]
        y[:] = x
        results.add(_exp_sum_max_call(y, y, dtype(1.0), dtype(0.0))[0])
    # The documented order, from the kernel's own terms: lane j adds terms
    # j, j + lanes, ... in turn in the data's type (the masked last
    # vector's lanes too), then the lanes by halves in float64.
    terms = np.empty(x.size)
    _exp_sum_max_each(x, dtype(1.0), dtype(0.0), terms)
    terms = terms.astype(dtype)
    width = VECTOR_BYTES // x.itemsize
    lanes = np.zeros(width, dtype)
    for i0 in range(0, x.size, width):
        chunk = terms[i0 : i0 + width]
        lanes[: chunk.size] += chunk
    lanes = lanes.astype(np.float64)
    while lanes.size > 1:
        lanes = lanes[: lanes.size // 2] + lanes[lanes.size // 2 :]
    assert results == {lanes[0]}


@njit(fastmath=FASTMATH, cache=False)
def _exp_store_sum_max_call(x, out, nxt, scale, shift):
    return exp_store_sum_max(x, out, nxt, scale, shift)


@needs_table_exp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 64, 65, 100, 2048])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_exp_store_sum_max_stores_sums_and_takes_the_next_max(dtype, n, scale):
    """exp_store_sum_max (the unrolled loop, single vectors, the masked
    tail) stores exp_write's values (factor 1) bit for bit, below the
    table's range too, and nothing past ``n``; in place the same; the sum
    is the sum of what it stored; the max is of ``nxt[:n]`` only (a larger
    value after it is not read), NaN-propagating."""
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 3).astype(dtype)
    lo = -86.0 if dtype == np.float32 else -700.0
    if n > 9:  # arguments below the table's range beside ones within it
        x[3], x[9] = 4 * lo / scale, -np.inf
    nxt = np.concatenate([rng.standard_normal(n), [1e30]]).astype(dtype)
    scale = dtype(scale)
    shift = x.max() * scale
    out = np.full(n + 5, 7.0, dtype)
    total, top = _exp_store_sum_max_call(x, out, nxt, scale, shift)
    assert np.all(out[n:] == 7.0)
    want = np.empty(n, dtype)
    _exp_write_call(x, want, scale, shift, dtype(1.0))
    np.testing.assert_array_equal(out[:n], want)
    exact = math.fsum(out[:n].astype(np.float64))
    tol = 2e-6 if dtype == np.float32 else 4e-16
    assert abs(total - exact) <= tol * exact
    assert top == nxt[:n].max()
    y = x.copy()
    assert _exp_store_sum_max_call(y, y, y, scale, shift)[0] == total  # in place
    np.testing.assert_array_equal(y, want)
    for k in {0, n // 2, n - 1}:
        bad = nxt.copy()
        bad[k] = np.nan
        assert np.isnan(_exp_store_sum_max_call(x, out, bad, scale, shift)[1])
    nxt[:n] = -np.inf
    assert _exp_store_sum_max_call(x, out, nxt, scale, shift)[1] == -np.inf


@needs_table_exp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_store_sum_max_order_is_fixed(dtype):
    """The same sum for the same values anywhere in memory, in the
    documented order: two accumulators (the unrolled loop's two vectors;
    single vectors and the masked tail go to the first), added, then the
    lanes by halves in float64."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(1003) * 5).astype(dtype)
    base = np.empty(1100, dtype)
    out = np.empty(x.size, dtype)
    results = set()
    for offset in range(0, 16):
        y = base[offset : offset + x.size]
        y[:] = x
        results.add(_exp_store_sum_max_call(y, out, y, dtype(1.0), dtype(0.0))[0])
    width = VECTOR_BYTES // x.itemsize
    accs = np.zeros((2, width), dtype)
    step = 2 * width
    whole = x.size // step * step
    for i0 in range(0, whole, step):
        accs[0] += out[i0 : i0 + width]
        accs[1] += out[i0 + width : i0 + step]
    for i0 in range(whole, x.size, width):
        chunk = out[i0 : i0 + width]
        accs[0, : chunk.size] += chunk
    lanes = (accs[0] + accs[1]).astype(np.float64)
    while lanes.size > 1:
        lanes = lanes[: lanes.size // 2] + lanes[lanes.size // 2 :]
    assert results == {lanes[0]}


@njit(cache=False)
def _log_wide_loop(x, out):
    for i in range(x.size):
        out[i] = log_pos32_wide(x[i])


def test_log_pos32_wide_error_is_absolute_and_small():
    """log_pos32_wide (float32 in, float64 out) over the positive normal
    float32 range: within 4e-8 of the float64 log whatever the log's size
    (the error of log(1 + f) in float32, no more), where log_pos32 is only
    relatively accurate."""
    info = np.finfo(np.float32)
    x = np.concatenate(
        [
            np.geomspace(info.tiny, info.max, 1_000_001, dtype=np.float32),
            np.random.default_rng(0).uniform(0.5, 4.0, 100_000).astype(np.float32),
            np.float32([1.0, 2.0, 0.5, np.sqrt(2), 1 + info.eps, 1 - info.epsneg]),
        ]
    )
    got = np.empty(x.size)
    _log_wide_loop(x, got)
    err = np.abs(got - np.log(x.astype(np.float64)))
    assert err.max() <= 4e-8, err.max()
    assert got[x.size - 6] == 0.0  # log(1) exactly


@njit(fastmath=FASTMATH, cache=False)
def _exp_bounded_store_call(x, scale, out):
    return exp_bounded_store(x, scale, out)


@njit(fastmath=FASTMATH, cache=False)
def _magnitude_keys(x, out):
    for i in range(x.size):
        out[i] = magnitude_key(x[i])


@needs_table_exp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_exp_bounded_store_within_ulp_and_its_key(dtype, scale):
    """The table's exp_bounded: within ULP of NumPy's over the whole bound
    (positive arguments too), every result normal, and the returned key the
    largest magnitude_key of the arguments (NaN's above any bound)."""
    bound = float(exp_bound(dtype(0)))
    x = np.concatenate(
        [
            np.linspace(-bound, bound, 1_000_001),
            np.random.default_rng(0).uniform(-1.0, 1.0, 100_003),
            [0.0, -0.0, bound, -bound],
        ]
    ).astype(dtype)
    arg = (x / dtype(scale)).astype(dtype)
    out = np.full(x.size + 5, 7.0, dtype)
    key = _exp_bounded_store_call(arg, dtype(scale), out)
    assert np.all(out[x.size :] == 7.0)  # nothing written past the end
    got = out[: x.size]
    ref = np.exp(arg * dtype(scale))
    ulps = np.abs(got - ref) / np.spacing(ref)
    assert ulps.max() <= ULP[dtype], ulps.max()
    assert got.min() >= np.finfo(dtype).tiny
    keys = np.empty(x.size, np.int32 if dtype == np.float32 else np.float64)
    _magnitude_keys((arg * dtype(scale)).astype(dtype), keys)
    assert key == keys.max()
    for bad in (np.nan, -np.inf, 2 * bound):
        for k in (0, 17, x.size - 1):
            y = arg.copy()
            y[k] = bad
            k_bad = _exp_bounded_store_call(y, dtype(scale), out)
            expect = np.empty(1, keys.dtype)
            _magnitude_keys(np.array([bad * scale], dtype), expect)
            if dtype == np.float64 and np.isnan(bad):
                assert np.isnan(k_bad)
            else:
                assert k_bad == expect[0]


@njit(fastmath=FASTMATH, cache=False)
def _exp_terms_store_call(x, scale, out):
    exp_terms_store(x, scale, out)


@needs_table_exp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_exp_terms_store_is_right_wherever_it_is_normal(dtype, scale):
    """exp_terms_store: within ULP of NumPy's exp (float32 with
    SUM_EXP_GROWTH) wherever exp is a normal number, positive arguments
    up to the overflow included, nothing written past the end; and for
    every other argument (overflow, underflow, magnitudes up to the
    largest float, ±inf, NaN) a result that is not a finite number of at
    least TERMS_SUM_MIN, so that no sum of them passes for a right one."""
    info = np.finfo(dtype)
    top = float(np.log(info.max))
    low = float(np.log(info.tiny))
    x = np.concatenate(
        [
            np.linspace(low, top, 1_000_001),
            np.random.default_rng(0).uniform(-1.0, 1.0, 100_003),
            [0.0, -0.0],
        ]
    ).astype(dtype)
    arg = (x / dtype(scale)).astype(dtype)
    out = np.full(x.size + 5, 7.0, dtype)
    _exp_terms_store_call(arg, dtype(scale), out)
    assert np.all(out[x.size :] == 7.0)
    v = (arg * dtype(scale)).astype(dtype)
    with np.errstate(over="ignore"):
        normal = (np.exp(v) >= info.tiny) & (np.exp(v) <= info.max)
    assert normal.mean() > 0.99
    _assert_sum_terms_close(out[: x.size][normal], v[normal], dtype)
    with np.errstate(over="ignore"):  # float64's top power rounds past the max
        mags = np.geomspace(-low, float(info.max), 20_000)
    beyond = np.concatenate([mags, -mags, [np.inf, -np.inf, np.nan, info.max, -info.max]]).astype(
        dtype
    )
    beyond = beyond[(beyond > top) | (beyond < low) | ~np.isfinite(beyond)]
    got = np.empty_like(beyond)
    _exp_terms_store_call(beyond, dtype(1.0), got)
    passes = np.isfinite(got) & (got >= TERMS_SUM_MIN)
    assert not passes.any(), beyond[passes]


@njit(fastmath=FASTMATH, cache=False)
def _column_exp_add_call(x, nxt, scale, shift, part, top):
    """column_exp_add of one row or of four (the rows of ``x``), with the
    rows of ``nxt`` (as many, or none when ``nxt`` has no rows)."""
    if x.shape[0] == 1:
        if nxt.shape[0] == 0:
            column_exp_add((x[0],), (), scale, shift, part, top)
        else:
            column_exp_add((x[0],), (nxt[0],), scale, shift, part, top)
    else:
        rows = (x[0], x[1], x[2], x[3])
        column_exp_add(rows, (nxt[0], nxt[1], nxt[2], nxt[3]), scale, shift, part, top)


@needs_table_exp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 17, 33, 100, 1000])
@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("n_rows", [1, 4])
def test_column_exp_add_terms_order_and_max(dtype, n, scale, n_rows):
    """Each column's sum gets exp_sum_max's own terms of its rows (the same
    table exponential), added as (a + b) + (c + d) and then to the column's
    sum, in the data's type: the same bits; its max the NaN-propagating max
    of the next rows.  Nothing past ``part.size`` is read or written."""
    rng = np.random.default_rng(n * n_rows)
    width = n + 5  # rows longer than part: the columns after n are not read
    x = (rng.standard_normal((n_rows, width)) * 4).astype(dtype)
    x[:, n:] = np.nan
    nxt = rng.standard_normal((n_rows, width)).astype(dtype)
    nxt[:, n:] = 1e30
    shift = np.full(width, np.nan, dtype)
    shift[:n] = (x[:, :n].max(axis=0) * dtype(scale)).astype(dtype)
    shift[0] = x[0, 0] * dtype(-scale)  # terms above 1 too
    part = np.full(width, -5.0, dtype)
    part[:n] = rng.uniform(0.0, 3.0, n).astype(dtype)
    top = np.full(width, -7.0, dtype)
    top[:n] = rng.standard_normal(n).astype(dtype)
    terms = np.empty((n_rows, n))
    for r in range(n_rows):
        for j in range(n):
            one = x[r, j : j + 1]
            terms[r, j] = _exp_sum_max_call(one, one, dtype(scale), shift[j])[0]
    terms = terms.astype(dtype)
    added = terms[0] if n_rows == 1 else (terms[0] + terms[1]) + (terms[2] + terms[3])
    expect_part = part.copy()
    expect_part[:n] += added
    expect_top = top.copy()
    expect_top[:n] = np.maximum(top[:n], nxt[:, :n].max(axis=0))
    _column_exp_add_call(x, nxt, dtype(scale), shift[:n], part[:n], top[:n])
    np.testing.assert_array_equal(part, expect_part)
    np.testing.assert_array_equal(top, expect_top)
    for k in {0, n // 2, n - 1}:  # NaN in any of the next rows reaches the max
        bad = nxt.copy()
        bad[n_rows - 1, k] = np.nan
        t = top.copy()
        _column_exp_add_call(x, bad, dtype(scale), shift[:n], part[:n], t[:n])
        assert np.isnan(t[k]) and not np.isnan(np.delete(t[:n], k)).any()
    if n_rows == 1:  # without next rows the max is left alone
        t = top.copy()
        _column_exp_add_call(x, nxt[:0], dtype(scale), shift[:n], part[:n], t[:n])
        np.testing.assert_array_equal(t, top)


@njit(fastmath=FASTMATH, cache=False)
def _exp_write_call(x, out, scale, shift, factor):
    exp_write(x, out, scale, shift, factor)


@njit(fastmath=FASTMATH, cache=False)
def _exp_stored_loop(x, out):
    for i in range(x.size):
        out[i] = exp_stored(x[i])


@needs_table_exp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("shift", [1.25, -3.5])
def test_exp_write_within_ulp_and_exact_below_the_table(dtype, scale, shift):
    """exp_write: within ULP of NumPy over the table's range, and below it
    (subnormal results, 0, -inf) exp_stored's own values, in vectors whose
    other lanes are in range; in place the same values; nothing written past
    the end."""
    info = np.finfo(dtype)
    lo = -86.0 if dtype == np.float32 else -700.0
    rng = np.random.default_rng(0)
    v = np.concatenate(
        [
            np.linspace(lo, 0.0, 1_000_001),
            rng.uniform(-1.0, 0.0, 100_003),
            [0.0, -0.0, lo, -info.eps],
        ]
    )
    # Below the table, each beside arguments within it: a normal result, a
    # subnormal one, one that rounds to 0, -inf.
    low = {5: lo - 3.0, 40: np.log(info.smallest_subnormal) + 0.3, 1000: 2 * lo, 41: -np.inf}
    for k, value in low.items():
        v[k] = value
    n = v.size
    shift, factor = dtype(shift), dtype(0.75)
    x = ((v + shift) / scale).astype(dtype)
    # The kernel's argument: x * scale is exact (scale a power of 2), so its
    # one FMA rounds as this does.
    arg = x * dtype(scale) - shift
    out = np.full(n + 5, 7.0, dtype)
    _exp_write_call(x, out, dtype(scale), shift, factor)
    assert np.all(out[n:] == 7.0)
    got = out[:n]
    below = arg < lo
    assert set(np.flatnonzero(below)) == set(low)
    exact = np.empty(n, dtype)
    _exp_stored_loop(arg, exact)
    np.testing.assert_array_equal(got[below], (exact * factor)[below])
    assert got[41] == 0.0 and 0.0 < got[40] < info.tiny
    ref = np.exp(arg[~below].astype(np.float64)) * factor
    ulps = np.abs(got[~below] - ref) / np.spacing(ref.astype(dtype))
    assert ulps.max() <= ULP[dtype] + 1, ulps.max()
    y = x.copy()
    _exp_write_call(y, y, dtype(scale), shift, factor)
    np.testing.assert_array_equal(y, got)
