"""Numeric primitives every kernel is built from.

* :func:`exp` — an exp that LLVM vectorizes (pip's llvmlite has no SVML, so
  ``np.exp`` inside a jitted loop stays a scalar call).  Range reduction
  ``x = n·ln2 + r`` with ``|r| <= ln2/2``, a polynomial for ``e^r`` and
  ``2^n`` built from exponent bits in two halves (so results that underflow
  into the subnormal range are rounded once and ``exp(+inf)``, ``exp(-inf)``
  and ``exp(nan)`` come out as IEEE says).
* :func:`exp_nonpos` — the same exp for arguments ``<= 0`` (``x - max`` in
  every softmax-type kernel): no overflow side, no NaN handling, and ``2^n``
  added straight into the exponent bits, about 35% fewer instructions.
* :func:`exp_sum_max` — sums of :func:`exp_term`'s exponentials with the
  next row's max, in one loop written out in IR for AVX-512 (2^(j/16) from
  a table in registers, a shorter polynomial).
* :func:`log_pos` — a vectorizable natural log of positive normal numbers
  (fdlibm's method; the kernels take logs of sums of exponentials, >= 1).
* :func:`segment_allreduce` — in one 64-byte vector, every lane gets the max
  or the sum of its aligned segment of ``seg`` lanes (a butterfly of
  shuffles): the row reduction of rows shorter than a vector.
* :func:`fmaximum` — ``llvm.maximum``: the NaN-propagating max of ``np.max``;
  unlike a compare-and-select it vectorizes without ``nnan``.
* :func:`like` — a constant in the floating type of another value.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .._config import EXACT_MATH

#: Each type of the bit casts, and the type and LLVM type of its result.
_BIT_CASTS = {
    types.int64: (types.float64, ir.DoubleType()),
    types.int32: (types.float32, ir.FloatType()),
    types.float64: (types.int64, ir.IntType(64)),
    types.float32: (types.int32, ir.IntType(32)),
}


def _bit_cast(value):
    result, llty = _BIT_CASTS[value]

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llty)

    return result(value), codegen


@intrinsic
def bits_to_float(typingctx, bits):
    """Reinterpret an int64 (int32) as the float64 (float32) with those bits."""
    return _bit_cast(bits) if bits in (types.int64, types.int32) else None


@intrinsic
def float_to_bits(typingctx, x):
    """Reinterpret a float64 (float32) as the int64 (int32) with the same bits."""
    return _bit_cast(x) if x in (types.float64, types.float32) else None


@intrinsic
def data_address(typingctx, arr):
    """The address of an array's first element, as an integer.

    Unlike ``arr.ctypes.data`` it touches no reference count (measured 30 ns
    a call there, a cost paid per row by the in-place checks)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(ary.data, context.get_value_type(types.uintp))

    return types.uintp(arr), codegen


def _prefetch_typer(arr, i, write, locality=3):
    if not isinstance(arr, types.Array) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        arrty = signature.args[0]
        ary = context.make_array(arrty)(context, builder, args[0])
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = cgutils.get_item_pointer(context, builder, arrty, ary, [index])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        )
        # read (0) or write (1), temporal locality (3: all levels, prefetcht0;
        # 2: L2 and below, prefetcht1), data cache (1)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(int(write)), i32(locality), i32(1)])
        return context.get_dummy_value()

    return types.none(arr, i), codegen


@intrinsic
def prefetch_line(typingctx, arr, i):
    """Ask the CPU to bring the cache line of ``arr[i]`` into its caches
    (``llvm.prefetch``: a hint, no fault on any address; compiled to nothing
    where the CPU has no prefetch instruction).  ``i`` is not bounds-checked."""
    return _prefetch_typer(arr, i, False)


@intrinsic
def prefetch_line_to_l2(typingctx, arr, i):
    """:func:`prefetch_line` into L2 and below (``prefetcht1`` on x86), for
    lines a loop reads a little later: the loop's own loads bring them to L1."""
    return _prefetch_typer(arr, i, False, 2)


@intrinsic
def prefetch_line_for_write(typingctx, arr, i):
    """:func:`prefetch_line` for a line about to be written (``prefetchw`` on
    x86: the line comes in owned, so the stores do not wait for it)."""
    return _prefetch_typer(arr, i, True)


#: Bytes of a cache line (64 on every x86-64 and most ARM64 CPUs).
CACHE_LINE = 64

#: Whether :func:`stream_copy` uses streaming stores (x86-64: ``movnt*`` and
#: ``sfence``); elsewhere it is a plain copy.
STREAMING = platform.machine().lower() in ("x86_64", "amd64")


@intrinsic
def stream_line(typingctx, dst, i, src, j):
    """Copy the cache line of elements ``src[j:]`` to ``dst[i:]`` by one
    streaming store, which writes the line to memory without reading it into
    the caches first.  ``dst[i]`` must start a cache line; nothing is
    bounds-checked.  Other threads see the line once :func:`stream_fence` ran."""
    if not (
        isinstance(dst, types.Array)
        and isinstance(src, types.Array)
        and dst.dtype == src.dtype
        and dst.dtype in (types.float32, types.float64)
    ):
        return None

    def codegen(context, builder, signature, args):
        dty, ity, sty, jty = signature.args
        elt = context.get_data_type(dty.dtype)
        size = context.get_abi_sizeof(elt)
        vty = ir.VectorType(elt, CACHE_LINE // size)
        d = context.make_array(dty)(context, builder, args[0])
        s = context.make_array(sty)(context, builder, args[2])
        dp = cgutils.get_item_pointer(context, builder, dty, d, [args[1]])
        sp = cgutils.get_item_pointer(context, builder, sty, s, [args[3]])
        line = builder.load(builder.bitcast(sp, vty.as_pointer()), align=size)
        store = builder.store(line, builder.bitcast(dp, vty.as_pointer()), align=CACHE_LINE)
        store.set_metadata(
            "nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        )
        return context.get_dummy_value()

    return types.none(dst, i, src, j), codegen


@intrinsic
def stream_fence(typingctx):
    """``sfence``: the streaming stores before it are visible to other threads
    before any store after it (they are not ordered otherwise)."""

    def codegen(context, builder, signature, args):
        if STREAMING:
            fn = builder.module.declare_intrinsic(
                "llvm.x86.sse.sfence", fnty=ir.FunctionType(ir.VoidType(), [])
            )
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(), codegen


@njit(fastmath=EXACT_MATH, inline="always", cache=True)
def line_offset(arr):
    """Elements of a 1-D contiguous array before its first cache line boundary
    (at most its size)."""
    head = (CACHE_LINE - data_address(arr) % CACHE_LINE) % CACHE_LINE
    return min(arr.size, head // arr.itemsize)


@njit(fastmath=EXACT_MATH, inline="always", cache=True)
def stream_copy(src, dst):
    """``dst[:] = src`` for 1-D contiguous arrays of one size: the whole cache
    lines of ``dst`` by :func:`stream_line`, the partial lines at its ends by
    plain stores (where :data:`STREAMING` is off, all of it).  The caller
    runs :func:`stream_fence` before other threads read ``dst``."""
    n = dst.size
    head = line_offset(dst) if STREAMING else n
    for i in range(head):
        dst[i] = src[i]
    step = CACHE_LINE // dst.itemsize
    i = head
    while i + step <= n:
        stream_line(dst, i, src, i)
        i += step
    for k in range(i, n):
        dst[k] = src[k]


@njit(fastmath=EXACT_MATH, inline="always", cache=True)
def prefetch(arr):
    """:func:`prefetch_line` for every cache line of a 1-D contiguous array:
    rows a loop will read soon, so that their memory reads overlap the
    arithmetic of the rows before them (a few instructions per line)."""
    step = max(1, CACHE_LINE // arr.itemsize)
    for i in range(0, arr.size, step):
        prefetch_line(arr, i)


@njit(fastmath=EXACT_MATH, inline="always", cache=True)
def prefetch_to_l2(arr):
    """:func:`prefetch` by :func:`prefetch_line_to_l2`."""
    step = max(1, CACHE_LINE // arr.itemsize)
    for i in range(0, arr.size, step):
        prefetch_line_to_l2(arr, i)


@njit(fastmath=EXACT_MATH, inline="always", cache=True)
def prefetch_for_write(arr):
    """:func:`prefetch` of lines about to be written (:func:`prefetch_line_for_write`)."""
    step = max(1, CACHE_LINE // arr.itemsize)
    for i in range(0, arr.size, step):
        prefetch_line_for_write(arr, i)


@intrinsic
def magnitude_bits(typingctx, x):
    """The bits of ``|x|`` as an int64 (int32) for a float64 (float32): for
    every ``x``, NaN included, their order is the order of ``|x|`` with NaN
    above +inf.  A running max of them bounds ``|x|`` and catches NaN in two
    integer vector instructions, where a NaN-propagating float max
    (:func:`fmaximum` of ``abs``) takes four."""
    if x not in (types.float64, types.float32):
        return None
    result, llty = _BIT_CASTS[x]

    def codegen(context, builder, signature, args):
        bits = builder.bitcast(args[0], llty)
        return builder.and_(bits, llty((1 << (llty.width - 1)) - 1))

    return result(x), codegen


def magnitude_key(x):  # pragma: no cover - replaced by the overload in jitted code
    return abs(x)


@overload(magnitude_key, inline="always")
def _magnitude_key_overload(x):
    """A key that orders like ``|x|`` with NaN above +inf, for running maxima
    of magnitudes by :func:`max_key`: float32's :func:`magnitude_bits`
    (a running max in two integer vector instructions instead of four),
    float64's ``|x|`` itself, with :func:`fmaximum` (int64 keys measured
    12% slower in the memory-bound 4M x 8 float64 softmax)."""
    if x == types.float32:
        return lambda x: magnitude_bits(x)
    if x == types.float64:
        return lambda x: abs(x)
    return None


def max_key(a, b):  # pragma: no cover - replaced by the overload in jitted code
    return max(a, b)


@overload(max_key, inline="always")
def _max_key_overload(a, b):
    """The larger of two :func:`magnitude_key` keys (NaN's key wins)."""
    if a == types.int32 and b == types.int32:
        return lambda a, b: max(a, b)
    if a == types.float64 and b == types.float64:
        return lambda a, b: fmaximum(a, b)
    return None


@intrinsic
def fmaximum(typingctx, a, b):
    """NaN-propagating maximum of two floats of one type (``llvm.maximum``)."""
    if a != b or not isinstance(a, types.Float):
        return None

    def codegen(context, builder, signature, args):
        llty = args[0].type
        fn = builder.module.declare_intrinsic(
            "llvm.maximum", [llty], ir.FunctionType(llty, [llty, llty])
        )
        return builder.call(fn, args)

    return a(a, b), codegen


def like(value, other):  # pragma: no cover - replaced by the overload in jitted code
    return type(other)(value)


@overload(like, inline="always")
def _like_overload(value, other):
    if isinstance(other, types.Float):
        target = other

        def impl(value, other):
            return target(value)

        return impl
    return None


def at(value, i):  # pragma: no cover - replaced by the overload in jitted code
    return value[i] if isinstance(value, np.ndarray) else value


@overload(at, inline="always")
def _at_overload(value, i):
    """``value[i]`` for an array, ``value`` itself for a scalar: one loop then
    serves a per-row scalar and a per-column array (the column kernels)."""
    if isinstance(value, types.Array):
        return lambda value, i: value[i]
    if isinstance(value, types.Float):
        return lambda value, i: value
    return None


def is_single(arr):  # pragma: no cover - replaced by the overload in jitted code
    return np.asarray(arr).dtype == np.float32


@overload(is_single, inline="always")
def _is_single_overload(arr):
    """Whether an array (or a float) holds float32, as a compile-time constant
    (an array's ``itemsize`` is a run-time field: a branch on it inside a
    loop keeps the loop from vectorizing)."""
    if isinstance(arr, types.Array):
        single = arr.dtype == types.float32
        return lambda arr: single
    if isinstance(arr, types.Float):
        single = arr == types.float32
        return lambda arr: single
    return None


# --- float64 exp -----------------------------------------------------------
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 with trailing zero bits: n*_LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_EXP64_LO = -746.0  # below: exp underflows to +0
_EXP64_HI = 710.0  # above: exp overflows to +inf
# Coefficients of e^r on [-ln2/2, ln2/2] interpolated at Chebyshev nodes
# (computed in 60-digit arithmetic, rounded to float64).
_P64 = (
    1.0,
    1.0000000000000067,
    0.5000000000000006,
    0.16666666666554406,
    0.04166666666657314,
    0.008333333385667782,
    0.0013888888932488599,
    0.00019841170270440067,
    2.4801504346997686e-05,
    2.764018079620985e-06,
    2.7626357241447223e-07,
)


@njit(fastmath=EXACT_MATH, inline="always", cache=True)
def _poly64(r):
    """e^r on [-ln2/2, ln2/2]: degree 10, Estrin (a chain of 4 FMAs).

    Horner's scheme (:func:`_poly64_horner`) runs float64 exponential loops
    8-19% faster, but float64 sums of :func:`exp_nonpos` run in loops that
    LLVM vectorizes in an order of its choosing, and with Horner that order
    was measured to differ between builds of one kernel (serial and
    parallel, compiled in-process and loaded from the cache): results then
    depended on the thread count.  :func:`exp_term`, whose sums are all
    taken in a fixed order, uses Horner."""
    r2 = r * r
    r4 = r2 * r2
    q0 = (_P64[0] + _P64[1] * r) + (_P64[2] + _P64[3] * r) * r2
    q1 = (_P64[4] + _P64[5] * r) + (_P64[6] + _P64[7] * r) * r2
    q2 = (_P64[8] + _P64[9] * r) + _P64[10] * r2
    return (q0 + q1 * r4) + q2 * (r4 * r4)


@njit(fastmath=EXACT_MATH, inline="always", cache=True)
def _poly64_horner(r):
    """:func:`_poly64` by Horner's scheme (10 FMAs), for exponentials whose
    sums are taken in a fixed order (:func:`exp_bounded`, :func:`exp_term`):
    float64 exp-sum loop 0.50 -> 0.41 ns/element (one thread, in cache)."""
    p = _P64[10] * r + _P64[9]
    for c in _P64[8::-1]:
        p = p * r + c
    return p


@njit(fastmath=EXACT_MATH, cache=True)
def _exp64(x):
    # Comparisons are written so that NaN falls through unchanged.
    xc = _EXP64_LO if x < _EXP64_LO else x
    xc = _EXP64_HI if xc > _EXP64_HI else xc
    n = np.floor(xc * _LOG2E + 0.5)
    r = xc - n * _LN2_HI
    r = r - n * _LN2_LO
    # e^r by a degree-10 polynomial interpolating e^r at the Chebyshev nodes of
    # [-ln2/2, ln2/2] (max relative error 3.3e-16).
    p = _poly64(r)
    # 2^n as two normal powers of two; NaN's n is replaced by 0 (p is NaN anyway).
    ni = np.int64(n if n == n else 0.0)
    n1 = ni >> 1
    n2 = ni - n1
    return p * bits_to_float((n1 + 1023) << 52) * bits_to_float((n2 + 1023) << 52)


# --- float32 exp -----------------------------------------------------------
_F32 = np.float32
_LOG2E_F = _F32(1.4426950408889634)
_LN2_HI_F = _F32(0.693359375)  # 9 significant bits: n*_LN2_HI_F is exact
_LN2_LO_F = _F32(-2.12194440e-4)
_LN2_F = _F32(0.6931471805599453)  # ln 2 rounded: 1.9e-9 above
_EXP32_LO = _F32(-104.0)
_EXP32_HI = _F32(89.0)
_HALF_F = _F32(0.5)
# e^r = 1 + r Q(r), Q of degree 4 fitted for relative error (weighted least
# squares at 600 Chebyshev nodes): the constant term is exactly 1, so that
# exp(0) is exactly 1 (a softmax row of one entry gives log_softmax 0, as
# SciPy); max relative error 1.7e-7 in float32 arithmetic.
_P32 = tuple(
    _F32(c)
    for c in (
        1.0,
        0.9999995231628418,
        0.49999141693115234,
        0.16668114066123962,
        0.041898731142282486,
        0.00826153066009283,
    )
)


@njit(fastmath=EXACT_MATH, inline="always", cache=True)
def _poly32(r):
    """e^r on [-ln2/2, ln2/2]: degree 5, Horner (5 FMAs; Estrin took 7
    instructions: exp-sum loop, float32, 0.192 -> 0.177 ns/element)."""
    p = _P32[5] * r + _P32[4]
    p = p * r + _P32[3]
    p = p * r + _P32[2]
    p = p * r + _P32[1]
    return p * r + _P32[0]


@njit(fastmath=EXACT_MATH, cache=True)
def _exp32(x):
    xc = _EXP32_LO if x < _EXP32_LO else x
    xc = _EXP32_HI if xc > _EXP32_HI else xc
    n = np.floor(xc * _LOG2E_F + _HALF_F)
    r = xc - n * _LN2_HI_F
    r = r - n * _LN2_LO_F
    # e^r by the degree-5 polynomial above.
    p = _poly32(r)
    ni = np.int32(n if n == n else _F32(0.0))
    n1 = ni >> np.int32(1)
    n2 = ni - n1
    s1 = bits_to_float(np.int32((n1 + np.int32(127)) << np.int32(23)))
    s2 = bits_to_float(np.int32((n2 + np.int32(127)) << np.int32(23)))
    return p * s1 * s2


# --- exp of non-positive arguments ---------------------------------------
# Rounding x*log2(e) by adding 1.5*2^52 (1.5*2^23) leaves n in the low bits of
# the sum, so 2^n goes into the exponent field of p with one integer add.  The
# add uses 2^(n + _BIAS) (a normal number for every n down to the underflow
# clamp) and one multiply by 2^-_BIAS rounds results in the subnormal range
# once.  Arguments above ~+70 (float32) or ~+900 (float64) would overflow the
# exponent field: callers pass ``v - max(v)``, which is at most a rounding
# residue above 0.
_SHIFT64 = 1.5 * 2.0**52
_SHIFT64_BITS = 0x4338000000000000
_BIAS64 = 60
_SHIFT32 = _F32(1.5 * 2.0**23)
_SHIFT32_BITS = 0x4B400000
_BIAS32 = 24


@njit(fastmath=EXACT_MATH, inline="always", cache=True)
def _reduce_nonpos(x, log2e, shift, ln2_hi, ln2_lo):
    """``x = n ln2 + r``: ``t`` (``n`` in its low bits) and ``r``; ``n * ln2_hi``
    is exact."""
    t = x * log2e + shift
    n = t - shift
    r = x - n * ln2_hi
    return t, r - n * ln2_lo


# Arguments below the underflow bound (masked entries: -inf, -1e4, ...) give
# 0 by a select, and are computed as 0 meanwhile: computing them would make
# subnormal intermediates, and on x86 each vector instruction with a subnormal
# result takes a microcode assist (measured 17x slower when a vector has one
# masked lane).  Results that are subnormal (above the bound) still take it.
@njit(fastmath=EXACT_MATH, cache=True)
def _exp_nonpos64(x):
    return _exp_nonpos64_by(x, _poly64)


@njit(fastmath=EXACT_MATH, cache=True)
def _exp_stored64(x):
    return _exp_nonpos64_by(x, _poly64_horner)


@njit(fastmath=EXACT_MATH, inline="always", cache=True)
def _exp_nonpos64_by(x, poly):
    under = x < _EXP64_LO
    t, r = _reduce_nonpos(0.0 if under else x, _LOG2E, _SHIFT64, _LN2_HI, _LN2_LO)
    p = poly(r)
    k = (float_to_bits(t) - np.int64(_SHIFT64_BITS - _BIAS64)) << np.int64(52)
    e = bits_to_float(float_to_bits(p) + k) * 2.0**-_BIAS64
    return 0.0 if under else e


@njit(fastmath=EXACT_MATH, cache=True)
def _exp_nonpos32(x):
    under = x < _EXP32_LO
    t, r = _reduce_nonpos(_F32(0.0) if under else x, _LOG2E_F, _SHIFT32, _LN2_HI_F, _LN2_LO_F)
    p = _poly32(r)
    k = np.int32((float_to_bits(t) - np.int32(_SHIFT32_BITS - _BIAS32)) << np.int32(23))
    e = bits_to_float(np.int32(float_to_bits(p) + k)) * _F32(2.0**-_BIAS32)
    return _F32(0.0) if under else e


def exp_nonpos(x):  # pragma: no cover - replaced by the overload in jitted code
    return np.exp(x)


@overload(exp_nonpos, inline="always")
def _exp_nonpos_overload(x):
    """``exp(x)`` for ``x <= 0`` (and -inf, giving 0); as accurate as :func:`exp`.
    NaN and large positive ``x`` give unspecified values: callers whose
    shift may be non-finite make the result NaN through the factor."""
    if x == types.float64:
        return lambda x: _exp_nonpos64(x)
    if x == types.float32:
        return lambda x: _exp_nonpos32(x)
    return None


def exp_stored(x):  # pragma: no cover - replaced by the overload in jitted code
    return np.exp(x)


@overload(exp_stored, inline="always")
def _exp_stored_overload(x):
    """:func:`exp_nonpos` for exponentials that are stored, never summed: the
    float64 polynomial by Horner's scheme (see :func:`_poly64`), whose results
    may differ from :func:`exp_nonpos`'s in the last bit (softmax write pass
    of 1 x 32M float64 into another array, two runs each: 0.90-0.92 -> 0.87-0.89
    copy floors)."""
    if x == types.float64:
        return lambda x: _exp_stored64(x)
    if x == types.float32:
        return lambda x: _exp_nonpos32(x)
    return None


# --- exp of the terms of a sum ----------------------------------------------
# A sum of ``exp(v - max(v))`` has a term equal to 1, so terms below 2^-100
# cannot change it.  Clamping the argument at _TERM*_LO keeps every result a
# normal number (no subnormal handling: 2^n is added straight into the exponent
# field, whose bias the rounding constant's bits cancel) and replaces the
# compare-and-select of exp_nonpos by a max: 5 fewer vector instructions of 20
# (float32), measured 16% (float32) and 13% (float64) faster in an exp-sum loop.
_TERM32_LO = _F32(-86.0)  # exp(-86) = 4.5e-38, a normal float32
_TERM64_LO = -700.0  # exp(-700) = 9.9e-305, a normal float64


@njit(fastmath=EXACT_MATH, inline="always", cache=True)
def _exp_reduced64(x, poly):
    t, r = _reduce_nonpos(x, _LOG2E, _SHIFT64, _LN2_HI, _LN2_LO)
    # _SHIFT64_BITS << 52 is 0 modulo 2^64: t's bits shifted are n << 52.
    return bits_to_float(float_to_bits(poly(r)) + (float_to_bits(t) << np.int64(52)))


@njit(fastmath=EXACT_MATH, cache=True)
def _exp_bounded64(x):
    return _exp_reduced64(x, _poly64_horner)


@njit(fastmath=EXACT_MATH, inline="always", cache=True)
def _times_pow2_32(p, t):
    """``p * 2^n`` for ``t``, the sum that rounded ``x / ln2`` to ``n`` with
    :data:`_SHIFT32`: ``_SHIFT32_BITS << 23`` is 0 modulo 2^32, so t's bits
    shifted are ``n << 23``, added straight into p's exponent field."""
    k = np.int32(float_to_bits(t) << np.int32(23))
    return bits_to_float(np.int32(float_to_bits(p) + k))


@njit(fastmath=EXACT_MATH, cache=True)
def _exp_bounded32(x):
    t, r = _reduce_nonpos(x, _LOG2E_F, _SHIFT32, _LN2_HI_F, _LN2_LO_F)
    return _times_pow2_32(_poly32(r), t)


@njit(fastmath=EXACT_MATH, cache=True)
def _exp_term64(x):
    return _exp_reduced64(x if x > _TERM64_LO else _TERM64_LO, _poly64_horner)


@njit(fastmath=EXACT_MATH, cache=True)
def _exp_term32(x):
    # One FMA reduces by ln2 (rounded to float32, 1.9e-9 above ln2) instead
    # of Cody-Waite's two: the term's relative error grows by |n| * 1.9e-9,
    # within 4.6 ulp down to the bound (1.6e-7 above -1), and in a sum with a
    # term 1 a term's error weighs 2^n.  exp-sum loop: 0.177 -> 0.165 ns/element.
    xc = x if x > _TERM32_LO else _TERM32_LO
    t = xc * _LOG2E_F + _SHIFT32
    n = t - _SHIFT32
    r = xc - n * _LN2_F
    return _times_pow2_32(_poly32(r), t)


def exp_term(x):  # pragma: no cover - replaced by the overload in jitted code
    return np.exp(x)


@overload(exp_term, inline="always")
def _exp_term_overload(x):
    """``exp(x)`` for ``x <= 0``, as a term of a sum that has a term 1: as
    accurate as :func:`exp_nonpos` above the bound (-86 for float32, -700 for
    float64); below it (-inf included) the result is ``exp(bound)``, a normal
    number less than 2^-100 that no such sum can notice.  Only for sums: an
    exponential that is stored or multiplied takes :func:`exp_nonpos`."""
    if x == types.float64:
        return lambda x: _exp_term64(x)
    if x == types.float32:
        return lambda x: _exp_term32(x)
    return None


#: The bound of :func:`exp_bounded`'s arguments (float32, float64): the sum
#: of 16 exponentials of arguments up to it is finite, and the exponential of
#: minus it is a normal number.
EXP_BOUND32 = _F32(80.0)
EXP_BOUND64 = 700.0


#: The least sum of :func:`exp_terms_store`'s terms that is as accurate as
#: theirs: a term below the smallest normal number, rounded to an ulp of
#: 2^-149 (float32) or 2^-1074, then weighs less than 2^-45 of the sum.
TERMS_SUM_MIN = 2.0**-100


def exp_bounded(x):  # pragma: no cover - replaced by the overload in jitted code
    return np.exp(x)


@overload(exp_bounded, inline="always")
def _exp_bounded_overload(x):
    """``exp(x)`` for ``|x| <= exp_bound(x)``, as accurate as :func:`exp`, with
    no clamp, compare or select: ``2^n`` goes straight into the exponent
    field.  Other arguments (NaN included) give unspecified values: callers
    check the bound over their arguments and discard the results otherwise."""
    if x == types.float64:
        return lambda x: _exp_bounded64(x)
    if x == types.float32:
        return lambda x: _exp_bounded32(x)
    return None


def exp_bound(x):  # pragma: no cover - replaced by the overload in jitted code
    return EXP_BOUND32 if np.asarray(x).dtype == np.float32 else EXP_BOUND64


@overload(exp_bound, inline="always")
def _exp_bound_overload(x):
    """:func:`exp_bounded`'s bound in the type of ``x`` (a float, or an
    array of them)."""
    if isinstance(x, types.Array):
        x = x.dtype
    if x == types.float64:
        return lambda x: EXP_BOUND64
    if x == types.float32:
        return lambda x: EXP_BOUND32
    return None


def exp(x):  # pragma: no cover - replaced by the overload in jitted code
    return np.exp(x)


@overload(exp, inline="always")
def _exp_overload(x):
    if x == types.float64:
        return lambda x: _exp64(x)
    if x == types.float32:
        return lambda x: _exp32(x)
    return None


# --- log of positive normal numbers ----------------------------------------
# fdlibm's e_log.c: x = 2^k * z with z in [sqrt(2)/2, sqrt(2)), f = z - 1,
# s = f / (2 + f), log(1 + f) = f - hfsq + s * (hfsq + R(s^2)).  Error < 1 ulp.
_LG = (
    6.666666666666735130e-01,
    3.999999999940941908e-01,
    2.857142874366239149e-01,
    2.222219843214978396e-01,
    1.818357216161805012e-01,
    1.531383769920937332e-01,
    1.479819860511658591e-01,
)
_SQRT_HALF_BITS = 0x3FE6A09E00000000  # bits of ~sqrt(2)/2: splits the mantissa range


@njit(fastmath=EXACT_MATH, cache=True, error_model="numpy")
def log_pos(x):
    """``log(x)`` in float64 for a positive, finite, normal float64 ``x``; it
    vectorizes (no libm call).  Other inputs give unspecified values."""
    return log_minus(x, 0.0)


@njit(fastmath=EXACT_MATH, cache=True, error_model="numpy")
def log_minus(x, c):
    """``log(x) - c`` in float64 for a positive, finite, normal float64 ``x``
    and a float64 ``c``: :func:`log_pos` with ``c`` taken from ``k ln2_hi``
    (exact) before the rest is added, so where ``c`` is near ``log(x)`` the
    error is of the order of an ulp of the difference, not of ``log(x)``
    (a row's ``log(sum(exp(v))) - max(v)`` from a sum taken without the
    shift: 5.7e-14 at a log of 700, where this gives 2.2e-16)."""
    bits = float_to_bits(x)
    k = (bits - np.int64(_SQRT_HALF_BITS)) >> np.int64(52)
    f = bits_to_float(bits - (k << np.int64(52))) - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG[1] + w * (_LG[3] + w * _LG[5]))
    t2 = z * (_LG[0] + w * (_LG[2] + w * (_LG[4] + w * _LG[6])))
    dk = np.float64(k)
    return (dk * _LN2_HI - c) - ((hfsq - (s * (hfsq + (t1 + t2)) + dk * _LN2_LO)) - f)


@njit(fastmath=EXACT_MATH, inline="always", cache=True)
def exponent_split(x):
    """``(k, m)`` with ``x = 2^k m`` and ``m`` in ``[1, 2)``, exactly, for a
    positive, finite, normal float64 ``x`` (bit operations: it vectorizes)."""
    bits = float_to_bits(x)
    k = (bits >> np.int64(52)) - np.int64(1023)
    return k, bits_to_float(bits - (k << np.int64(52)))


@njit(fastmath=EXACT_MATH, cache=True, error_model="numpy")
def log_scaled(p, k):
    """``log(p * 2^k)`` in float64 for a positive, finite, normal ``p`` and an
    integer ``|k| < 2^21`` (``k * ln2_hi`` is exact), where ``p * 2^k`` itself
    may be out of float64's range: a sum of logs taken as the log of a
    product of :func:`exponent_split`'s mantissas."""
    dk = np.float64(k)
    return dk * _LN2_HI + (dk * _LN2_LO + log_pos(p))


# log1p(f) = f + f^2 R(f) on [sqrt(1/2) - 1, sqrt(2) - 1]: R by a weighted
# least-squares fit at 400 Chebyshev nodes (relative weight), degree 8; in
# float32 arithmetic log1p comes out within 0.9 ulp.
_LOG32_R = tuple(
    _F32(c)
    for c in (
        -0.49999988079071045,
        0.33333325386047363,
        -0.2500157654285431,
        0.20002056658267975,
        -0.16609276831150055,
        0.14180372655391693,
        -0.13240033388137817,
        0.129122793674469,
        -0.07638198137283325,
    )
)
_SQRT_HALF_BITS32 = 0x3F3504F3  # bits of sqrt(2)/2 in float32


@njit(fastmath=EXACT_MATH, inline="always", cache=True, error_model="numpy")
def _log32_parts(x):
    """``x = 2^k (1 + f)`` with ``1 + f`` in ``[sqrt(2)/2, sqrt(2))``: ``k``
    and ``log(1 + f)`` (float32, within about 1 ulp)."""
    bits = float_to_bits(x)
    k = (bits - np.int32(_SQRT_HALF_BITS32)) >> np.int32(23)
    f = bits_to_float(np.int32(bits - (k << np.int32(23)))) - _F32(1.0)
    r = _LOG32_R[8]
    r = r * f + _LOG32_R[7]
    r = r * f + _LOG32_R[6]
    r = r * f + _LOG32_R[5]
    r = r * f + _LOG32_R[4]
    r = r * f + _LOG32_R[3]
    r = r * f + _LOG32_R[2]
    r = r * f + _LOG32_R[1]
    r = r * f + _LOG32_R[0]
    return k, f + (f * f) * r


@njit(fastmath=EXACT_MATH, cache=True, error_model="numpy")
def log_pos32(x):
    """``log(x)`` in float32 for a positive, finite, normal float32 ``x``,
    within about 1 ulp; no division, so a vector of 16 takes about 18
    instructions (:func:`log_pos` in float64 takes two vectors and a
    division).  Other inputs give unspecified values."""
    k, lg1p = _log32_parts(x)
    dk = _F32(k)
    return dk * _LN2_HI_F + (dk * _LN2_LO_F + lg1p)


@njit(fastmath=EXACT_MATH, cache=True, error_model="numpy")
def log_pos32_wide(x):
    """``log(x)`` as float64 for a positive, finite, normal float32 ``x``,
    with no division: ``k ln2`` in float64 plus :func:`log_pos32`'s
    ``log(1 + f)`` (at most 0.35 in magnitude, within about 1 float32 ulp:
    3e-8), so the error is absolute, about that of ``x``'s own rounding,
    whatever ``log(x)`` is (:func:`log_pos32` alone loses relative
    accuracy: 8e-6 on a log of 80).  For logs of float32 sums that go into
    float64 results (the cross-entropy's parts): :func:`log_pos` of the sum
    took 30% of the short rows' forward (16K x 8 float32, one thread, in
    cache; it divides)."""
    k, lg1p = _log32_parts(x)
    dk = np.float64(k)
    return dk * _LN2_HI + (dk * _LN2_LO + np.float64(lg1p))


def log_positive(x):  # pragma: no cover - replaced by the overload in jitted code
    return np.log(x)


def log_wide(x):  # pragma: no cover - replaced by the overload in jitted code
    return np.log(np.float64(x))


@overload(log_wide, inline="always")
def _log_wide_overload(x):
    """``log(x)`` as float64 of a positive normal number:
    :func:`log_pos32_wide` for float32, :func:`log_pos` for float64."""
    if x == types.float64:
        return lambda x: log_pos(x)
    if x == types.float32:
        return lambda x: log_pos32_wide(x)
    return None


@overload(log_positive, inline="always")
def _log_positive_overload(x):
    """``log(x)`` of a positive normal number in its own type:
    :func:`log_pos32` for float32, :func:`log_pos` for float64."""
    if x == types.float64:
        return lambda x: log_pos(x)
    if x == types.float32:
        return lambda x: log_pos32(x)
    return None


# --- row reductions inside one vector ---------------------------------------
#: Bytes of the vectors :func:`segment_allreduce` works on (an AVX-512
#: register; LLVM splits it on machines with narrower vectors).
VECTOR_BYTES = 64


#: Operations of :func:`segment_allreduce`.
SEGMENT_SUM = 0
#: NaN-propagating max (``llvm.maximum``, as ``np.max``).
SEGMENT_MAX = 1
#: The machine's max (``a > b ? a : b``, one instruction on x86): for data
#: without NaN, or whose NaNs the caller detects otherwise.
SEGMENT_FAST_MAX = 2


def _vector_access(context, builder, aryty, value, width):
    """A function from an element index of a 1-D C-contiguous array to a
    pointer to the vector of ``width`` elements there."""
    vty = ir.VectorType(context.get_data_type(aryty.dtype), width)
    ary = context.make_array(aryty)(context, builder, value)

    def pointer(index):
        return builder.bitcast(builder.gep(ary.data, [index]), vty.as_pointer())

    return pointer, ary


def _block_access(context, builder, signature, args, width, sized=0):
    """Vector access to the two arrays of a segment intrinsic's first two
    arguments (:func:`_vector_access`: ``load_at`` for the first,
    ``store_at`` for the second) and the size of the ``sized`` one."""
    load_at, src_ary = _vector_access(context, builder, signature.args[0], args[0], width)
    store_at, dst_ary = _vector_access(context, builder, signature.args[1], args[1], width)
    size = builder.extract_value((src_ary, dst_ary)[sized].shape, 0)
    return load_at, store_at, size


def _segment_types(src, dst, seg):
    if not isinstance(src, types.Array) or src.dtype not in (types.float32, types.float64):
        return False
    if not isinstance(dst, types.Array) or dst.dtype != src.dtype:
        return False
    return isinstance(seg, types.Integer)


def _fast_max(builder, a, b):
    """The machine's max of two vectors (``a > b ? a : b``: may drop a NaN)."""
    return builder.select(builder.fcmp_ordered(">", a, b), a, b)


def _butterfly(builder, vec, width, s, combine, seg_v=None):
    """Every lane of ``vec`` replaced by the reduction (``combine`` of two
    vectors) over its aligned segment of ``s`` lanes (``s`` known at compile
    time), or of ``seg_v`` lanes (a run-time power of two up to ``s``)."""
    idx_t = ir.VectorType(ir.IntType(32), width)
    step = 1
    while step < s:
        partner = builder.shuffle_vector(
            vec, vec, ir.Constant(idx_t, [i ^ step for i in range(width)])
        )
        both = combine(vec, partner)
        if seg_v is None:
            vec = both
        else:
            inside = builder.icmp_signed("<", ir.Constant(seg_v.type, step), seg_v)
            vec = builder.select(inside, both, vec)
        step *= 2
    return vec


@intrinsic
def segment_allreduce(typingctx, src, dst, start, seg, op):
    """``dst[start : start + VECTOR_BYTES // itemsize]`` = the lanes of
    ``src`` there, each replaced by the reduction (``op``, a literal
    ``SEGMENT_*``) over the aligned segment of ``seg`` lanes it belongs to.
    ``seg`` is a power of two up to the lane count; ``dst`` may be ``src``;
    the caller guarantees the lanes are in bounds."""
    if not _segment_types(src, dst, seg) or not isinstance(start, types.Integer):
        return None
    if not isinstance(op, types.IntegerLiteral):
        return None
    operation = op.literal_value
    width = VECTOR_BYTES // src.dtype.bitwidth * 8

    def codegen(context, builder, signature, args):
        src_v, dst_v, start_v, seg_v, _ = args
        vty = ir.VectorType(context.get_data_type(signature.args[0].dtype), width)
        load_at, _ = _vector_access(context, builder, signature.args[0], src_v, width)
        store_at, _ = _vector_access(context, builder, signature.args[1], dst_v, width)
        vec = builder.load(load_at(start_v), align=1)
        suffix = f"v{width}f{signature.args[0].dtype.bitwidth}"
        maximum = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty]), "llvm.maximum." + suffix
        )
        if operation == SEGMENT_SUM:
            combine = builder.fadd
        elif operation == SEGMENT_MAX:
            combine = lambda a, b: builder.call(maximum, [a, b])  # noqa: E731
        else:
            combine = lambda a, b: _fast_max(builder, a, b)  # noqa: E731
        vec = _butterfly(builder, vec, width, width, combine, seg_v)
        builder.store(vec, store_at(start_v), align=1)
        return context.get_dummy_value()

    return types.none(src, dst, start, seg, op), codegen


def _tree_masks(width, seg):
    """The two shuffles of each level of :func:`segment_rows`: over the 2·width
    lanes of two vectors whose rows are segments of ``s`` lanes (``s`` from
    ``seg`` down to 2), the first halves of the segments in order, and the
    second halves."""
    levels = []
    s = seg
    while s > 1:
        starts = range(0, 2 * width, s)
        first = [j + i for j in starts for i in range(s // 2)]
        second = [j + s // 2 + i for j in starts for i in range(s // 2)]
        levels.append((first, second))
        s //= 2
    return levels


def _segment_loops(builder, seg_v, size, width, body, vectors=None):
    """For each supported segment length ``s`` (powers of two from 2 to
    ``width``): if ``seg_v == s``, ``body(s, chunk)`` for every chunk of
    ``vectors(s)`` vectors (by default ``s``) of ``width`` lanes in ``size``
    elements.  Other lengths do nothing."""
    s = 2
    while s <= width:
        with builder.if_then(builder.icmp_signed("==", seg_v, seg_v.type(s))):
            per_chunk = (s if vectors is None else vectors(s)) * width
            count = builder.sdiv(size, size.type(per_chunk))
            with cgutils.for_range(builder, count) as loop:
                body(s, loop.index)
        s *= 2


def _tree(builder, vecs, width, combine):
    """The tree of :func:`segment_rows` over ``s = len(vecs)`` vectors whose
    rows are segments of ``s`` lanes: one vector, lane ``i`` the reduction
    (``combine`` of two vectors) of row ``i``."""
    idx_t = ir.VectorType(ir.IntType(32), width)
    for first, second in _tree_masks(width, len(vecs)):
        vecs = [
            combine(
                builder.shuffle_vector(vecs[i], vecs[i + 1], ir.Constant(idx_t, first)),
                builder.shuffle_vector(vecs[i], vecs[i + 1], ir.Constant(idx_t, second)),
            )
            for i in range(0, len(vecs), 2)
        ]
    return vecs[0]


def _spread(builder, vals, width, s):
    """The layout of :func:`segment_spread` for one vector: ``s`` vectors,
    lane ``i`` of ``vals`` in all ``s`` lanes of row ``i``."""
    idx_t = ir.VectorType(ir.IntType(32), width)
    return [
        builder.shuffle_vector(
            vals, vals, ir.Constant(idx_t, [(i * width + j) // s for j in range(width)])
        )
        for i in range(s)
    ]


def _vector_index(builder, chunk, stride, width):
    """A function from ``i`` to the element index of vector ``i`` of chunk
    ``chunk`` (chunks of ``stride`` elements, vectors of ``width``)."""
    first = builder.mul(chunk, chunk.type(stride))
    return lambda i: builder.add(first, chunk.type(i * width))


@intrinsic
def segment_rows(typingctx, src, dst, seg, op):
    """Row reductions of a block of rows of ``seg`` elements (a power of two,
    2 up to the lane count; other values do nothing): ``dst[i]`` = the sum
    (``op`` a literal ``SEGMENT_SUM``) or the max (any other ``SEGMENT_*``:
    the machine's max, which may drop a NaN) of row ``i`` of ``src``.
    ``src`` (1-D, C-contiguous) holds a whole number of ``seg`` vectors;
    ``dst`` has ``src.size // seg`` elements.

    A tree over whole vectors, ``seg`` vectors (``lanes`` rows) at a time:
    each level pairs neighbouring vectors and combines the first halves of
    their segments with the second halves (two shuffles and one operation
    per pair), so ``seg`` vectors cost ``seg - 1`` operations and twice
    that in shuffles, where :func:`segment_allreduce` costs ``log2(seg)``
    of each per vector, and the results come out one per lane."""
    if not _segment_types(src, dst, seg) or not isinstance(op, types.IntegerLiteral):
        return None
    width = VECTOR_BYTES // src.dtype.bitwidth * 8
    operation = op.literal_value

    def codegen(context, builder, signature, args):
        seg_v = args[2]
        load_at, store_at, size = _block_access(context, builder, signature, args, width)
        if operation == SEGMENT_SUM:
            combine = builder.fadd
        else:
            combine = lambda a, b: _fast_max(builder, a, b)  # noqa: E731

        def body(s, chunk):
            at = _vector_index(builder, chunk, s * width, width)
            vecs = [builder.load(load_at(at(i)), align=1) for i in range(s)]
            result = _tree(builder, vecs, width, combine)
            builder.store(result, store_at(builder.mul(chunk, chunk.type(width))), align=1)

        _segment_loops(builder, seg_v, size, width, body)
        return context.get_dummy_value()

    return types.none(src, dst, seg, op), codegen


@intrinsic
def segment_spread(typingctx, src, dst, seg):
    """The inverse layout of :func:`segment_rows`: ``src[i]`` goes to all
    ``seg`` elements of row ``i`` of ``dst`` (1-D, C-contiguous, a whole
    number of ``seg`` vectors; ``src`` has ``dst.size // seg`` elements),
    one permutation per vector."""
    if not _segment_types(src, dst, seg):
        return None
    width = VECTOR_BYTES // src.dtype.bitwidth * 8

    def codegen(context, builder, signature, args):
        seg_v = args[2]
        load_at, store_at, size = _block_access(context, builder, signature, args, width, 1)

        def body(s, chunk):
            vals = builder.load(load_at(builder.mul(chunk, chunk.type(width))), align=1)
            at = _vector_index(builder, chunk, s * width, width)
            for i, vec in enumerate(_spread(builder, vals, width, s)):
                builder.store(vec, store_at(at(i)), align=1)

        _segment_loops(builder, seg_v, size, width, body)
        return context.get_dummy_value()

    return types.none(src, dst, seg), codegen


@intrinsic
def segment_one_hot(typingctx, src, dst, seg):
    """``dst`` = the one-hot of each row's first maximum (``np.argmax``) of a
    block of rows of ``seg`` elements (a power of two, 2 up to the lane
    count), all in registers, ``seg`` vectors (``lanes`` rows) at a time.
    ``src`` and ``dst`` (1-D, C-contiguous, the same size: a whole number
    of ``seg`` vectors) may be the same array.  Returns False if a row has
    a NaN: the ``seg`` vectors holding it are then not written.

    Per chunk: the rows' maxima by :func:`segment_rows`' tree and back to
    the rows' lanes as :func:`segment_spread` does; each entry equal to its
    row's max takes ``seg`` minus its position in the row (the first
    position the largest), the others 0; a second tree and spread of these
    give each row's first maximum."""
    if not _segment_types(src, dst, seg):
        return None
    width = VECTOR_BYTES // src.dtype.bitwidth * 8

    def codegen(context, builder, signature, args):
        seg_v = args[2]
        load_at, store_at, size = _block_access(context, builder, signature, args, width)
        elt = context.get_data_type(signature.args[0].dtype)
        vty = ir.VectorType(elt, width)
        zero = ir.Constant(vty, [elt(0.0)] * width)
        one = ir.Constant(vty, [elt(1.0)] * width)
        finite = cgutils.alloca_once_value(builder, ir.IntType(1)(1))

        def fast_max(a, b):
            return _fast_max(builder, a, b)

        def body(s, chunk):
            at = _vector_index(builder, chunk, s * width, width)
            vecs = [builder.load(load_at(at(i)), align=1) for i in range(s)]
            maxima = _spread(builder, _tree(builder, vecs, width, fast_max), width, s)
            position = ir.Constant(vty, [elt(float(s - j % s)) for j in range(width)])
            firsts = [
                builder.select(builder.fcmp_ordered("==", v, m), position, zero)
                for v, m in zip(vecs, maxima, strict=True)
            ]
            chosen = _spread(builder, _tree(builder, firsts, width, fast_max), width, s)
            unordered = [builder.fcmp_unordered("uno", v, v) for v in vecs]
            any_nan = unordered[0]
            for u in unordered[1:]:
                any_nan = builder.or_(any_nan, u)
            bits = builder.bitcast(any_nan, ir.IntType(width))
            has_nan = builder.icmp_unsigned("!=", bits, bits.type(0))
            with builder.if_else(has_nan) as (then, otherwise):
                with then:
                    builder.store(ir.IntType(1)(0), finite)
                with otherwise:
                    for i, (f, c) in enumerate(zip(firsts, chosen, strict=True)):
                        hot = builder.select(builder.fcmp_ordered("==", f, c), one, zero)
                        builder.store(hot, store_at(at(i)), align=1)

        _segment_loops(builder, seg_v, size, width, body)
        return builder.load(finite)

    return types.boolean(src, dst, seg), codegen


@intrinsic
def segment_softmax_jvp(typingctx, y, v, out, seg):
    """``out = y * (v - s)``, ``s`` the sum of ``y * v`` over each row of
    ``seg`` elements (a power of two, 2 up to the lane count), one vector at
    a time in registers: the product of ``jacobian``'s softmax mode for a
    block of short rows.  ``y``, ``v`` and ``out`` are 1-D, C-contiguous,
    of one size (a whole number of vectors); ``out`` may be ``y`` or ``v``.
    The rows' sums are in the data's type, added as :func:`segment_allreduce`
    adds them."""
    if not _segment_types(y, v, seg) or not _segment_types(y, out, seg):
        return None
    width = VECTOR_BYTES // y.dtype.bitwidth * 8

    def codegen(context, builder, signature, args):
        y_v, v_v, out_v, seg_v = args
        load_y, y_ary = _vector_access(context, builder, signature.args[0], y_v, width)
        load_v, _ = _vector_access(context, builder, signature.args[1], v_v, width)
        store_at, _ = _vector_access(context, builder, signature.args[2], out_v, width)
        size = builder.extract_value(y_ary.shape, 0)

        def body(s, chunk):
            at = builder.mul(chunk, chunk.type(width))
            yv = builder.load(load_y(at), align=1)
            vv = builder.load(load_v(at), align=1)
            total = _butterfly(builder, builder.fmul(yv, vv), width, s, builder.fadd)
            result = builder.fmul(yv, builder.fsub(vv, total))
            builder.store(result, store_at(at), align=1)

        _segment_loops(builder, seg_v, size, width, body, lambda s: 1)
        return context.get_dummy_value()

    return types.none(y, v, out, seg), codegen


#: Operations of :func:`segment_spread_write`: ``dst = src * spread(hi)``.
SPREAD_SCALE = 0
#: ``dst = (src * scale - spread(hi)) - spread(lo)``, in this order.
SPREAD_SHIFT = 1


@intrinsic
def segment_spread_write(typingctx, src, hi, lo, dst, scale, seg, op):
    """The write pass of a block of rows of ``seg`` elements (a power of two,
    2 up to the lane count) with per-row values ``hi`` and ``lo`` (one per
    row, laid out as :func:`segment_rows` leaves them), ``op`` a literal
    ``SPREAD_*``: each row's values go to its lanes as :func:`segment_spread`
    puts them, in registers, one vector of them per ``seg`` vectors of
    ``src``.  ``src`` and ``dst`` (1-D, C-contiguous, of one size: a whole
    number of ``seg`` vectors) may be one array; ``lo`` is read only by
    ``SPREAD_SHIFT``; ``scale`` has the data's type."""
    arrays = (dst, hi, lo)
    if not all(_segment_types(src, a, seg) for a in arrays) or scale != src.dtype:
        return None
    if not isinstance(op, types.IntegerLiteral):
        return None
    operation, width = op.literal_value, VECTOR_BYTES // src.dtype.bitwidth * 8

    def codegen(context, builder, signature, args):
        src_v, hi_v, lo_v, dst_v, scale_v, seg_v, _ = args
        load_at, src_ary = _vector_access(context, builder, signature.args[0], src_v, width)
        load_hi, _ = _vector_access(context, builder, signature.args[1], hi_v, width)
        load_lo, _ = _vector_access(context, builder, signature.args[2], lo_v, width)
        store_at, _ = _vector_access(context, builder, signature.args[3], dst_v, width)
        size = builder.extract_value(src_ary.shape, 0)
        factor = _splat(builder, scale_v, width)

        def body(s, chunk):
            row_at = builder.mul(chunk, chunk.type(width))
            at = _vector_index(builder, chunk, s * width, width)
            highs = _spread(builder, builder.load(load_hi(row_at), align=1), width, s)
            if operation == SPREAD_SHIFT:
                lows = _spread(builder, builder.load(load_lo(row_at), align=1), width, s)
            for i in range(s):
                vec = builder.load(load_at(at(i)), align=1)
                if operation == SPREAD_SHIFT:
                    vec = _fsub_in_order(builder, builder.fmul(vec, factor), highs[i])
                    vec = _fsub_in_order(builder, vec, lows[i])
                else:
                    vec = builder.fmul(vec, highs[i])
                builder.store(vec, store_at(at(i)), align=1)

        _segment_loops(builder, seg_v, size, width, body)
        return context.get_dummy_value()

    return types.none(src, hi, lo, dst, scale, seg, op), codegen


@intrinsic
def stack_array(typingctx, size, like_value):
    """A 1-D array of ``size`` (a literal int) elements of ``like_value``'s
    type on the stack of the function it is called in: scratch for loops,
    without Numba's allocator.  Uninitialized; it must not outlive the call."""
    if not isinstance(size, types.IntegerLiteral) or like_value not in (
        types.float32,
        types.float64,
    ):
        return None
    count = size.literal_value
    arrty = types.Array(like_value, 1, "C")

    def codegen(context, builder, signature, args):
        elt = context.get_data_type(like_value)
        intp = context.get_value_type(types.intp)
        itemsize = context.get_abi_sizeof(elt)
        data = cgutils.alloca_once(builder, elt, size=count)
        data.align = VECTOR_BYTES  # whole vectors never straddle cache lines
        ary = context.make_array(arrty)(context, builder)
        context.populate_array(
            ary,
            data=data,
            shape=[intp(count)],
            strides=[intp(itemsize)],
            itemsize=intp(itemsize),
            meminfo=None,
        )
        return ary._getvalue()

    return arrty(size, like_value), codegen


@intrinsic
def flat_view(typingctx, arr):
    """A 1-D C-contiguous view of all elements of an array of any layout,
    for arrays the caller has checked are C-contiguous at run time (see
    :func:`is_c_contiguous`).  No reference is taken: it must not outlive
    ``arr``."""
    if not isinstance(arr, types.Array) or arr.dtype not in (types.float32, types.float64):
        return None
    flat = types.Array(arr.dtype, 1, "C")

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        intp = context.get_value_type(types.intp)
        size = intp(1)
        for k in range(signature.args[0].ndim):
            size = builder.mul(size, builder.extract_value(src.shape, k))
        itemsize = context.get_abi_sizeof(context.get_data_type(arr.dtype))
        ary = context.make_array(flat)(context, builder)
        context.populate_array(
            ary,
            data=src.data,
            shape=[size],
            strides=[intp(itemsize)],
            itemsize=intp(itemsize),
            meminfo=None,
        )
        return ary._getvalue()

    return flat(arr), codegen


@njit(fastmath=EXACT_MATH, cache=True)
def is_c_contiguous(x):
    """Whether a 2-D array's rows follow each other in memory (run time; an
    array's ``flags`` need Numba's reference counting)."""
    return x.strides[1] == x.itemsize and x.strides[0] == x.shape[1] * x.itemsize


#: Lanes of :func:`ordered_sum`'s accumulators (fixed: the order of the sum
#: must not depend on the machine or on how LLVM compiled the caller).
SUM_LANES = 16
#: Independent accumulators of :func:`ordered_sum`'s main loop (hides the
#: latency of the adds).
SUM_ACCUMULATORS = 4


def _vector_suffix(vty):
    """The LLVM intrinsics' name suffix of a float vector type (``v16f32``)."""
    return f"v{vty.count}f{64 if isinstance(vty.element, ir.DoubleType) else 32}"


def _splat(builder, value, lanes):
    """A vector of ``lanes`` copies of a scalar IR value."""
    i32 = ir.IntType(32)
    vec = builder.insert_element(
        ir.Constant(ir.VectorType(value.type, lanes), ir.Undefined), value, i32(0)
    )
    return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))


def _lane_mask(builder, count, lanes):
    """The mask of the first ``count`` (an integer IR value below ``lanes``) lanes."""
    i32 = ir.IntType(32)
    limit = _splat(builder, builder.trunc(count, i32), lanes)
    return builder.icmp_signed(
        "<", ir.Constant(ir.VectorType(i32, lanes), list(range(lanes))), limit
    )


def _masked_load(builder, ptr, mask):
    """The masked lanes of the vector at ``ptr``, zeros in the others; the
    other lanes' memory is not accessed."""
    vty = ptr.type.pointee
    i32 = ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vty, [ptr.type, i32, mask.type, vty]),
        f"llvm.masked.load.{_vector_suffix(vty)}.p0",
    )
    return builder.call(fn, [ptr, i32(1), mask, ir.Constant(vty, [0.0] * vty.count)])


def _masked_store(builder, value, ptr, mask):
    """Store the masked lanes of ``value`` at ``ptr``; the others are untouched."""
    i32 = ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(ir.VoidType(), [value.type, ptr.type, i32, mask.type]),
        f"llvm.masked.store.{_vector_suffix(value.type)}.p0",
    )
    builder.call(fn, [value, ptr, i32(1), mask])


def _vector_ptr(builder, arr, i, vty):
    """Pointer to the vector of type ``vty`` at element ``i`` of a 1-D array
    of unit stride (``arr`` the array's struct)."""
    return builder.bitcast(builder.gep(arr.data, [i]), vty.as_pointer())


def _load_vector(builder, arr, i, vty, mask=None):
    """The vector at element ``i``; with ``mask``, its masked lanes only
    (the others 0, their memory not read)."""
    if mask is None:
        return builder.load(_vector_ptr(builder, arr, i, vty), align=1)
    return _masked_load(builder, _vector_ptr(builder, arr, i, vty), mask)


def _store_vector(builder, value, arr, i, mask=None):
    """Store ``value`` at element ``i``; with ``mask``, its masked lanes only."""
    if mask is None:
        builder.store(value, _vector_ptr(builder, arr, i, value.type), align=1)
    else:
        _masked_store(builder, value, _vector_ptr(builder, arr, i, value.type), mask)


def _fma(builder, a, b, c):
    """``a * b + c`` rounded once (vectors of one type)."""
    fn = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(a.type, [a.type] * 3),
        f"llvm.fma.{_vector_suffix(a.type)}",
    )
    return builder.call(fn, [a, b, c])


class _Realigner:
    """How to read a unit-stride array by aligned vector loads: ``base``, the
    array's start rounded down to ``VECTOR_BYTES`` (an ``i8*``); ``step``,
    the bytes from one aligned vector to the next (0 if the array is
    aligned: then the first vector is all it takes); ``index``, the lanes
    of the two that make up the array's vector (``off, off + 1, ...``);
    ``ok``, whether the start is a whole number of elements past ``base``."""

    def __init__(self, base, step, index, ok, offset):
        self.base, self.step, self.index, self.ok, self.offset = base, step, index, ok, offset


def _realigner(builder, byte_ptr, elt):
    """The :class:`_Realigner` of the array starting at ``byte_ptr`` (``i8*``)."""
    intp = ir.IntType(64)
    size = 8 if isinstance(elt, ir.DoubleType) else 4
    lanes = VECTOR_BYTES // size
    offset = builder.and_(builder.ptrtoint(byte_ptr, intp), intp(VECTOR_BYTES - 1))
    base = builder.gep(byte_ptr, [builder.neg(offset)])
    step = builder.select(builder.icmp_unsigned("!=", offset, intp(0)), intp(VECTOR_BYTES), intp(0))
    ok = builder.icmp_unsigned("==", builder.and_(offset, intp(size - 1)), intp(0))
    ity = ir.IntType(8 * size)
    first = builder.trunc(builder.udiv(offset, intp(size)), ity)
    index = builder.add(
        _splat(builder, first, lanes), ir.Constant(ir.VectorType(ity, lanes), list(range(lanes)))
    )
    return _Realigner(base, step, index, ok, offset)


def _worth_realigning(builder, realigners):
    """Whether to read by :func:`_realigned_load`: every array's start a whole
    number of elements into a vector, and none at a vector's start (an
    aligned array would take the permutes for nothing: softmax_vjp of 1024 x
    1000 float64 with the primal 16 bytes past a line and the cotangent on
    one ran 5% slower realigned than as it was)."""
    worth = cgutils.true_bit
    for r in realigners:
        off = builder.icmp_unsigned("!=", r.offset, r.offset.type(0))
        worth = builder.and_(worth, builder.and_(r.ok, off))
    return worth


def _realigned_load(builder, realigner, byte_offset, width):
    """The ``width`` elements from ``byte_offset`` bytes into an array, read by
    aligned vector loads (the vector there and the next, two-source permutes).
    A load misaligned with the cache lines touches two lines; on AMD Zen 5,
    softmax_vjp of 1024 x 1000 float64 (in L3, one thread) ran 1.5x slower
    with its arrays 16 bytes past a line than on lines.  The second vector's line
    holds the last element wanted, so no load leaves the array's lines."""
    ity = realigner.index.type
    lanes = ity.count
    fty = ir.DoubleType() if ity.element.width == 64 else ir.FloatType()
    vty = ir.VectorType(fty, lanes)
    permute = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vty, [vty, ity, vty]),
        f"llvm.x86.avx512.vpermi2var.{'pd' if fty == ir.DoubleType() else 'ps'}.512",
    )
    parts = []
    for j in range(width // lanes):
        at = builder.gep(
            realigner.base, [builder.add(byte_offset, byte_offset.type(j * VECTOR_BYTES))]
        )
        first = builder.load(builder.bitcast(at, vty.as_pointer()), align=VECTOR_BYTES)
        nxt = builder.gep(at, [realigner.step])
        second = builder.load(builder.bitcast(nxt, vty.as_pointer()), align=VECTOR_BYTES)
        parts.append(builder.call(permute, [first, realigner.index, second]))
    while len(parts) > 1:  # concatenated in order
        i32 = ir.IntType(32)
        size = parts[0].type.count
        mask = ir.Constant(ir.VectorType(i32, 2 * size), list(range(2 * size)))
        parts = [
            builder.shuffle_vector(parts[k], parts[k + 1], mask) for k in range(0, len(parts), 2)
        ]
    return parts[0]


def _ordered_codegen(n_arrays):
    """Code for :func:`ordered_sum` (one array) and :func:`ordered_dot` (two:
    each product added to its lane by a fused multiply-add).  Unit-stride rows
    of at least two wide steps that start inside a vector are read by
    :func:`_realigned_load`: the same lanes, so the same order and bits.  The
    adds are flagged (:func:`_fadd_in_order`) so that a fast-math caller
    cannot reorder them."""
    lanes = SUM_LANES
    wide = SUM_LANES * SUM_ACCUMULATORS

    def codegen(context, builder, signature, args):
        arytys = signature.args
        arys = [
            context.make_array(t)(context, builder, a) for t, a in zip(arytys, args, strict=True)
        ]
        elt = context.get_data_type(arytys[0].dtype)
        f64 = ir.DoubleType()
        i32 = ir.IntType(32)
        n = builder.extract_value(arys[0].shape, 0)
        strides = [builder.extract_value(a.strides, 0) for a in arys]
        byte_ptrs = [builder.bitcast(a.data, ir.IntType(8).as_pointer()) for a in arys]
        intp = n.type
        itemsize = intp(context.get_abi_sizeof(elt))

        def element_ptr(k, index):
            offset = builder.mul(index, strides[k])
            return builder.bitcast(builder.gep(byte_ptrs[k], [offset]), elt.as_pointer())

        def vector_ptr(k, index, width):
            return builder.bitcast(element_ptr(k, index), ir.VectorType(elt, width).as_pointer())

        def add_terms(acc, chunks):  # one chunk of each array
            if n_arrays == 1:
                return _fadd_in_order(builder, acc, chunks[0])
            return _fma(builder, chunks[0], chunks[1], acc)

        def load_chunk(k, start, width, contiguous):
            if contiguous == "realigned":
                return _realigned_load(builder, realigned[k], builder.mul(start, itemsize), width)
            if contiguous:
                return builder.load(vector_ptr(k, start, width), align=1)
            chunk = ir.Constant(ir.VectorType(elt, width), ir.Undefined)
            for j in range(width):
                v = builder.load(element_ptr(k, builder.add(start, intp(j))))
                chunk = builder.insert_element(chunk, v, i32(j))
            return chunk

        def accumulate(acc, start, stop, width, contiguous):
            with cgutils.for_range_slice(builder, start, stop, intp(width)) as (i, _):
                chunks = [load_chunk(k, i, width, contiguous) for k in range(n_arrays)]
                builder.store(add_terms(builder.load(acc), chunks), acc)

        def whole(width):  # n rounded down to a multiple of width
            return builder.mul(builder.sdiv(n, intp(width)), intp(width))

        n_wide, n_lanes = whole(wide), whole(lanes)
        zeros = ir.Constant(ir.VectorType(elt, wide), [0.0] * wide)
        acc_wide = cgutils.alloca_once_value(builder, zeros)
        acc = cgutils.alloca_once(builder, ir.VectorType(elt, lanes))

        def lane_sums(contiguous):
            accumulate(acc_wide, intp(0), n_wide, wide, contiguous)
            vec = builder.load(acc_wide)
            quarter = ir.VectorType(i32, lanes)
            parts = [
                builder.shuffle_vector(vec, vec, ir.Constant(quarter, list(range(k, k + lanes))))
                for k in range(0, wide, lanes)
            ]
            while len(parts) > 1:  # a fixed tree
                parts = [
                    _fadd_in_order(builder, parts[k], parts[k + 1]) for k in range(0, len(parts), 2)
                ]
            builder.store(parts[0], acc)
            accumulate(acc, n_wide, n_lanes, lanes, contiguous)

        realigned = []

        def unit_stride_sums():
            if not TABLE_EXP:
                lane_sums(True)
                return
            # Rows of at least two wide steps: the realigners of every row
            # cost 64 x 100 float32 calls 0.1-0.2 us.
            long_row = builder.icmp_signed(">=", n, intp(2 * wide))
            with builder.if_else(long_row) as (long, short):
                with long:
                    realigned[:] = [_realigner(builder, p, elt) for p in byte_ptrs]
                    with builder.if_else(_worth_realigning(builder, realigned)) as (
                        then,
                        otherwise,
                    ):
                        with then:
                            lane_sums("realigned")
                        with otherwise:
                            lane_sums(True)
                with short:
                    lane_sums(True)

        all_c = all(t.layout == "C" for t in arytys)
        if all_c:
            unit_stride_sums()
        else:
            unit = cgutils.true_bit
            for stride in strides:
                unit = builder.and_(unit, builder.icmp_signed("==", stride, itemsize))
            with builder.if_else(unit, likely=True) as (then, otherwise):
                with then:
                    unit_stride_sums()
                with otherwise:
                    lane_sums(False)
        # The last n % SUM_LANES elements go to the first lanes (the others 0).
        zero = ir.Constant(elt, 0.0)

        def gathered_tail(k):
            tail = ir.Constant(ir.VectorType(elt, lanes), [0.0] * lanes)
            last = builder.sub(n, intp(1))
            for j in range(lanes):
                index = builder.add(n_lanes, intp(j))
                inside = builder.icmp_signed("<", index, n)
                v = builder.load(element_ptr(k, builder.select(inside, index, last)))
                tail = builder.insert_element(tail, builder.select(inside, v, zero), i32(j))
            return tail

        with builder.if_then(builder.icmp_signed("<", n_lanes, n)):
            if all_c:  # one masked load per array (no access past the end)
                mask = _lane_mask(builder, builder.sub(n, n_lanes), lanes)
                tails = [
                    _masked_load(builder, vector_ptr(k, n_lanes, lanes), mask)
                    for k in range(n_arrays)
                ]
            else:
                tails = [gathered_tail(k) for k in range(n_arrays)]
            builder.store(add_terms(builder.load(acc), tails), acc)
        vec = builder.load(acc)
        if elt != f64:
            vec = builder.fpext(vec, ir.VectorType(f64, lanes))
        # A fixed tree: halves added lane by lane, in float64.
        return _lane_halves(builder, vec, lambda a, b: _fadd_in_order(builder, a, b))

    return codegen


def _float_vector(arr):
    return (
        isinstance(arr, types.Array)
        and arr.ndim == 1
        and arr.dtype in (types.float32, types.float64)
    )


@intrinsic
def ordered_sum(typingctx, arr):
    """Sum of a 1-D float array as float64, in an order fixed by this code.

    Chunks of ``SUM_LANES * SUM_ACCUMULATORS`` elements are added lane by
    lane into that many accumulators (in the array's type); the accumulators
    are added into one in a fixed tree, which then takes the remaining whole
    chunks of ``SUM_LANES`` and, in its first lanes, the last
    ``size % SUM_LANES`` elements; its lanes are then added in float64 by
    halves (lanes ``j`` and ``j + half``) down to one.

    A vectorized reduction in a jitted loop runs in whatever order LLVM's
    vectorizer picks for the function it is compiled into, which was measured
    to differ between a kernel compiled in-process and the same kernel loaded
    from the compile cache.  This one is written out in IR, without
    reassociation, so every compiled copy gives the same bits."""
    if not _float_vector(arr):
        return None
    return types.float64(arr), _ordered_codegen(1)


@intrinsic
def ordered_dot(typingctx, a, b):
    """The sum of ``a * b`` for two 1-D arrays of one float type, ``b`` at
    least as long as ``a`` (not checked), in :func:`ordered_sum`'s order:
    each product is added to its lane by a fused multiply-add (one rounding;
    an explicit FMA, so a caller compiled with fast math cannot fuse some
    products and not others), with no array of products."""
    if not (_float_vector(a) and _float_vector(b) and a.dtype == b.dtype):
        return None
    return types.float64(a, b), _ordered_codegen(2)


#: Vectors per iteration of the row writes' main loop.
ROW_WRITE_UNROLL = 4


def _row_write_codegen(n_arrays, expr):
    """Code for an intrinsic ``f(*arrays, out, *scalars)``: ``out[i] =
    expr(builder, [arrays' vectors], [scalars' splats])``, for 1-D arrays of
    one float type with unit strides (not checked) and scalars of that type,
    a vector register (``VECTOR_BYTES``) a step, unrolled.  A loop for this
    runs its remainder one element at a time: on rows of a few dozen
    elements, most of the work.  The last elements are one more whole vector
    ending at the row's end, over elements already written (the same values
    again), where ``out`` is none of the arrays and the row holds a vector;
    else masked loads and stores (on AMD Zen a masked store is slow:
    softmax_vjp of 64 x 100 float32, one thread, same-process pairs, 2.56 ->
    2.13 us a call).  ``out`` may be one of the arrays: each step loads
    before it stores.  (In place, the masked store at a row's end blocks
    loads of the next row from its cache line until it completes: a row
    kernel in place is better off with a loop.)  On AVX-512, rows of at least
    two unrolled steps into an output apart from the inputs store aligned,
    from ``out``'s first vector boundary on, and read the inputs by
    :func:`_realigned_load` where all are off a vector boundary there
    (softmax_vjp of 1024 x 1000, two threads, inputs and output 16 bytes past
    a line, with the ordered sums' loads, same-process rounds: float64 164 ->
    115 us, float32 90 -> 73)."""

    def codegen(context, builder, signature, args):
        arys = [
            context.make_array(t)(context, builder, a)
            for t, a in zip(signature.args[: n_arrays + 1], args[: n_arrays + 1], strict=True)
        ]
        elt = context.get_data_type(signature.args[n_arrays].dtype)
        lanes = VECTOR_BYTES // context.get_abi_sizeof(elt)
        vty = ir.VectorType(elt, lanes)
        n = builder.extract_value(arys[n_arrays].shape, 0)
        intp = n.type
        scalars = [_splat(builder, a, lanes) for a in args[n_arrays + 1 :]]

        def ptr(k, index):
            return builder.bitcast(builder.gep(arys[k].data, [index]), vty.as_pointer())

        def steps_at(starts, realigned=None, head=None, align=1):
            # All loads first, then the stores: a store does not wait on the
            # next vector's loads (which the hardware may think it aliases).
            def load(k, i):
                if realigned is None:
                    return builder.load(ptr(k, i), align=1)
                offset = builder.mul(builder.sub(i, head), itemsize)
                return _realigned_load(builder, realigned[k], offset, lanes)

            values = [expr(builder, [load(k, i) for k in range(n_arrays)], scalars) for i in starts]
            for i, value in zip(starts, values, strict=True):
                builder.store(value, ptr(n_arrays, i), align=align)

        def loops(start, realigned=None, align=1):
            # [start, n) by unrolled steps, then single ones (stores aligned to
            # ``align`` bytes): returns where they stopped.
            rest = builder.sub(n, start)
            unrolled = builder.add(start, builder.mul(builder.sdiv(rest, intp(width)), intp(width)))
            steps = builder.add(start, builder.mul(builder.sdiv(rest, intp(lanes)), intp(lanes)))
            with cgutils.for_range_slice(builder, start, unrolled, intp(width)) as (i, _):
                at = [builder.add(i, intp(u * lanes)) for u in range(ROW_WRITE_UNROLL)]
                steps_at(at, realigned, start, align)
            with cgutils.for_range_slice(builder, unrolled, steps, intp(lanes)) as (i, _):
                steps_at([i], realigned, start, align)
            return steps

        width = ROW_WRITE_UNROLL * lanes
        itemsize = intp(context.get_abi_sizeof(elt))
        out_data = builder.ptrtoint(arys[n_arrays].data, intp)
        apart = builder.icmp_signed(">=", n, intp(lanes))
        for k in range(n_arrays):
            other = builder.ptrtoint(arys[k].data, intp)
            apart = builder.and_(apart, builder.icmp_unsigned("!=", other, out_data))

        def realigned_loops():
            # If ``out`` starts a whole number of elements into a vector: one
            # vector at the row's start (unaligned), then from the first
            # element of ``out`` on a vector boundary, aligned stores, and the
            # inputs read by _realigned_load if each is off a boundary there.
            out_bytes = builder.bitcast(arys[n_arrays].data, ir.IntType(8).as_pointer())
            start = _realigner(builder, out_bytes, elt)
            head = builder.udiv(
                builder.and_(builder.sub(intp(VECTOR_BYTES), start.offset), intp(VECTOR_BYTES - 1)),
                itemsize,
            )
            sources = [
                _realigner(builder, builder.bitcast(ptr(k, head), ir.IntType(8).as_pointer()), elt)
                for k in range(n_arrays)
            ]
            with builder.if_else(start.ok) as (then, otherwise):
                with then:
                    steps_at([intp(0)])
                    realign = _worth_realigning(builder, sources)
                    with builder.if_else(realign) as (permuted, direct):
                        with permuted:
                            builder.store(loops(head, sources, VECTOR_BYTES), stopped)
                        with direct:
                            builder.store(loops(head, None, VECTOR_BYTES), stopped)
                with otherwise:
                    builder.store(loops(intp(0)), stopped)

        stopped = cgutils.alloca_once_value(builder, intp(0))
        if TABLE_EXP:  # long rows into a separate output
            long_row = builder.and_(apart, builder.icmp_signed(">=", n, intp(2 * width)))
            with builder.if_else(long_row) as (long, short):
                with long:
                    realigned_loops()
                with short:
                    builder.store(loops(intp(0)), stopped)
        else:
            builder.store(loops(intp(0)), stopped)
        steps = builder.load(stopped)
        with builder.if_then(builder.icmp_signed("<", steps, n)):
            with builder.if_else(apart) as (overlap, masked):
                with overlap:
                    steps_at([builder.sub(n, intp(lanes))])
                with masked:
                    mask = _lane_mask(builder, builder.sub(n, steps), lanes)
                    vectors = [_masked_load(builder, ptr(k, steps), mask) for k in range(n_arrays)]
                    _masked_store(
                        builder, expr(builder, vectors, scalars), ptr(n_arrays, steps), mask
                    )
        return context.get_dummy_value()

    return codegen


def _row_write_types(arrays, scalars):
    out = arrays[-1]
    return all(_float_vector(a) and a.dtype == out.dtype for a in arrays) and all(
        s == out.dtype for s in scalars
    )


@intrinsic
def scaled_difference(typingctx, y, v, out, s):
    """``out = y * (v - s)``, written as :func:`_row_write_codegen` says
    (unit strides; ``out`` may be ``y`` or ``v``)."""
    if not _row_write_types((y, v, out), (s,)):
        return None
    return types.none(y, v, out, s), _row_write_codegen(
        2, lambda b, vec, sc: b.fmul(vec[0], b.fsub(vec[1], sc[0]))
    )


@intrinsic
def shifted_row(typingctx, x, out, scale, hi, lo):
    """``out = (x * scale - hi) - lo``, in this order (flagged so that LLVM
    cannot make it ``x * scale - (hi + lo)``), written as
    :func:`_row_write_codegen` says (unit strides; ``out`` may be ``x``)."""
    if not _row_write_types((x, out), (scale, hi, lo)):
        return None

    def shifted(b, vec, sc):
        return _fsub_in_order(b, _fsub_in_order(b, b.fmul(vec[0], sc[0]), sc[1]), sc[2])

    return types.none(x, out, scale, hi, lo), _row_write_codegen(1, shifted)


# --- sums of exponentials: an explicit AVX-512 loop ------------------------
# exp_term's float64 polynomial takes 10 FMAs of the 14 its loop spends on
# each vector, and the sums of logsumexp and the cross-entropy forward wait
# on them (their floor is a read alone).  With 2^(j/16) from a table of 16
# (float64: two registers and a vpermt2pd; float32: one and a vpermps) the
# reduced argument is within ln2/32 and a polynomial of degree 6 (float32:
# 3) is as accurate (the sums' float32 one: a table of 32, degree 2; see
# _Q32_SUM).  LLVM makes no permute of a scalar table lookup (it
# gathers, slower than the polynomial it saves), so this loop is written
# out in IR, where its sum also takes a fixed order and needs no buffer.
# logsumexp's row loop (64 x 1000 float64, one thread, in cache) took 0.64
# -> 0.51 ns per element; over memory on two threads (same-process runs,
# read floors) 32768 x 1000 took 1.89 -> 1.58 and 2048 x 32000 1.95 -> 1.64.


def _target_has_avx512() -> bool:
    """Whether Numba compiles for a CPU with AVX-512F (the host, unless a CPU
    name or features were chosen; then only if those features name it)."""
    import numba
    from llvmlite import binding

    if numba.config.CPU_NAME not in (None, "host"):
        return False
    features = numba.config.CPU_FEATURES or binding.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


#: Whether :func:`exp_sum_max` takes its AVX-512 loop (unit stride).
TABLE_EXP = _target_has_avx512()

# e^r on [-ln2/32, ln2/32] interpolated at Chebyshev nodes (computed in
# 50-digit arithmetic, rounded): max relative error 7.6e-18 (float64, degree
# 6) and 2.3e-9 (float32, degree 3).  The constant terms are exactly 1.
_Q64 = (
    1.0,
    1.0000000000000022,
    0.5000000000000003,
    0.16666666662844726,
    0.04166666666188925,
    0.008333496248686918,
    0.0013889092532749104,
)
_Q32 = (1.0, 1.0, 0.5000195503234863, 0.16667057573795319)
# 2^(j/16), correctly rounded to float64.
_POW2_SIXTEENTHS = (
    1.0,
    1.0442737824274138,
    1.0905077326652577,
    1.1387886347566916,
    1.189207115002721,
    1.241857812073484,
    1.2968395546510096,
    1.3542555469368927,
    1.4142135623730951,
    1.4768261459394993,
    1.5422108254079407,
    1.6104903319492543,
    1.681792830507429,
    1.7562521603732995,
    1.8340080864093424,
    1.9152065613971474,
)
#: Vectors per iteration of :func:`exp_sum_max`'s main loop.
EXP_SUM_UNROLL = 2


# The sums' float32 exponential (logsumexp, the cross-entropy forward): a
# table of 32, so that |r| <= ln2/64 and e^r = 1 + c1 r + c2 r^2 within
# 5.3e-8 (fitted for relative error at Chebyshev nodes, c0 exactly 1), and
# one FMA reduces by ln2 rounded to float32 (exp_term32's reduction: the
# term's error grows by |v| * 2.7e-9, 2.3e-7 at the -86 bound).  Two FMAs
# and a Cody-Waite step fewer than the stored exponentials' table (with
# 2^k by vscalef, not added into the exponent field: one instruction for
# three).  One thread, in cache, ns per element: exp_sum_max 0.165 ->
# 0.135; exp(x) into a buffer 0.140 -> 0.112 (exp_terms_store against
# exp_bounded_store, which also takes each argument's bound key).
_Q32_SUM = (1.0, 1.0000146627426147, 0.4999999701976776)
# 2^(j/32), correctly rounded to float32.
_POW2_32NDS = tuple(float(np.float32(2.0 ** (j / 32))) for j in range(32))


class _TableExp:
    """The constants and instructions of the table exponential of one type:
    ``v = (N k + j) ln2/N + r`` for a table of ``N = size`` entries (``2^(j/N)``),
    the rounding constant leaving ``N k + j`` in the low bits of ``t``;
    ``ln2_lo`` None for a reduction by one FMA, else Cody-Waite's two
    (``n * ln2_hi`` exact)."""

    def __init__(self, bits, lanes, shift, lo, ln2_hi, ln2_lo, poly, permute, tables):
        self.bits, self.lanes, self.shift, self.lo = bits, lanes, shift, lo
        self.size = sum(len(tab) for tab in tables)
        self.log2e = self.size * _LOG2E
        self.ln2_hi, self.ln2_lo = ln2_hi, ln2_lo
        self.poly, self.permute, self.tables = poly, permute, tables

    def float_type(self):
        return ir.DoubleType() if self.bits == 64 else ir.FloatType()


_TABLE_EXP64 = _TableExp(
    64, 8, _SHIFT64, _TERM64_LO, _LN2_HI, _LN2_LO, _Q64,
    "llvm.x86.avx512.vpermi2var.pd.512", (_POW2_SIXTEENTHS[:8], _POW2_SIXTEENTHS[8:]),
)  # fmt: skip
#: The table exponentials that are stored (softmax): as accurate as exp.
_TABLE_EXPS = {
    types.float64: _TABLE_EXP64,
    types.float32: _TableExp(
        32, 16, float(_SHIFT32), float(_TERM32_LO), float(_LN2_HI_F), float(_LN2_LO_F), _Q32,
        "llvm.x86.avx512.permvar.sf.512", (_POW2_SIXTEENTHS,),
    ),
}  # fmt: skip
#: The table exponentials of the terms of sums (as exp_term's): float32's
#: is cheaper (see _Q32_SUM).
_TABLE_SUM_EXPS = {
    types.float64: _TABLE_EXP64,
    types.float32: _TableExp(
        32, 16, float(_SHIFT32), float(_TERM32_LO), float(_LN2_F), None, _Q32_SUM,
        "llvm.x86.avx512.vpermi2var.ps.512", (_POW2_32NDS[:16], _POW2_32NDS[16:]),
    ),
}  # fmt: skip


def _table_exp_term(builder, spec, v, clamp=True, keep_nan=False):
    """IR of ``exp(max(v, lo))`` for a vector (``exp_term``'s contract, lo
    -700 or -86; with ``keep_nan`` a NaN argument stays NaN, where otherwise
    it gives ``exp(lo)``), or without ``clamp`` of ``exp(v)``: ``e^r`` by the
    polynomial, times ``2^(j/N)`` (a permute of the table's registers),
    times ``2^k`` by ``vscalef`` (which takes the floor of ``m = k + j/N``
    itself, and rounds once where the result is subnormal).

    Without ``clamp``, for ``|v|`` within :func:`exp_bound` the result is
    as accurate as with it (no over- or underflow); beyond, where ``exp(v)``
    overflows it is +inf, where it is below the smallest normal number
    (subnormal results take a microcode assist) it is that rounded, and
    for arguments of magnitude above about 1e36 (float32; float64 1e306),
    NaN or ±inf included, it is +inf or NaN: a sum of such terms is right
    if it is finite and normal."""
    vty = v.type
    lanes = vty.count
    ity = ir.VectorType(ir.IntType(spec.bits), lanes)

    def splat(c):
        return ir.Constant(vty, [c] * lanes)

    if clamp and keep_nan:
        lo = splat(spec.lo)
        v = builder.select(builder.fcmp_ordered("<", v, lo), lo, v)
    elif clamp:
        lo = splat(spec.lo)
        v = builder.select(builder.fcmp_ordered(">", v, lo), v, lo)
    t = _fma(builder, v, splat(spec.log2e), splat(spec.shift))
    # m = n / N exactly: t - shift is the integer n, and n / N has few bits.
    m = _fma(builder, t, splat(1.0 / spec.size), splat(-spec.shift / spec.size))
    r = _fma(builder, m, splat(-spec.ln2_hi), v)
    if spec.ln2_lo is not None:
        r = _fma(builder, m, splat(-spec.ln2_lo), r)
    p = splat(spec.poly[-1])
    for c in spec.poly[-2::-1]:
        p = _fma(builder, p, r, splat(c))
    # The permutes read the index's low bits only: n's, as the rounding
    # constant's low bits are 0.
    index = builder.bitcast(t, ity)
    tables = [ir.Constant(vty, list(tab)) for tab in spec.tables]
    operands = [tables[0], index, *tables[1:]]
    permute = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [o.type for o in operands]), spec.permute
    )
    p = builder.fmul(p, builder.call(permute, operands))
    mask_ty = ir.IntType(lanes)
    scalef = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vty, [vty, vty, vty, mask_ty, ir.IntType(32)]),
        f"llvm.x86.avx512.mask.scalef.{'pd' if spec.bits == 64 else 'ps'}.512",
    )
    # All lanes (mask -1), current rounding (4).
    return builder.call(scalef, [p, m, p, mask_ty(-1), ir.IntType(32)(4)])


def _lane_halves(builder, vec, combine):
    """Lane 0 of ``vec`` combined with all its other lanes by halves (lanes
    ``j`` and ``j + half``, ``combine(low, high)``): a fixed tree."""
    i32 = ir.IntType(32)
    width = vec.type.count
    while width > 1:
        half = width // 2
        low = ir.Constant(ir.VectorType(i32, half), list(range(half)))
        high = ir.Constant(ir.VectorType(i32, half), list(range(half, width)))
        vec = combine(builder.shuffle_vector(vec, vec, low), builder.shuffle_vector(vec, vec, high))
        width = half
    return builder.extract_element(vec, i32(0))


def _greater(builder, a, b):
    """The lanewise larger of two float vectors (``a > b ? a : b``)."""
    return builder.select(builder.fcmp_ordered(">", a, b), a, b)


def _nan_if_flagged(builder, nans, value):
    """NaN (in ``value``'s type) if any lane of the ``<lanes x i1>`` at
    ``nans`` is set, else ``value``."""
    lanes = nans.type.pointee.count
    flags = builder.bitcast(builder.load(nans), ir.IntType(lanes))
    any_nan = builder.icmp_unsigned("!=", flags, ir.Constant(ir.IntType(lanes), 0))
    return builder.select(any_nan, ir.Constant(value.type, np.nan), value)


def _running_max(builder, vty):
    """IR of a NaN-propagating max over vectors of type ``vty``: ``add(v,
    mask)`` takes a vector (with ``mask``, its masked lanes only) and
    ``result()`` gives the max of every lane taken (NaN if one was NaN,
    -inf if none was taken)."""
    lanes = vty.count
    neg_inf = ir.Constant(vty, [-np.inf] * lanes)
    top = cgutils.alloca_once_value(builder, neg_inf)
    nans = cgutils.alloca_once_value(
        builder, ir.Constant(ir.VectorType(ir.IntType(1), lanes), [0] * lanes)
    )

    def add(v, mask):
        if mask is not None:
            v = builder.select(mask, v, neg_inf)
        builder.store(_greater(builder, v, builder.load(top)), top)
        builder.store(builder.or_(builder.load(nans), builder.fcmp_unordered("uno", v, v)), nans)

    def result():
        value = _lane_halves(builder, builder.load(top), lambda a, b: _greater(builder, a, b))
        return _nan_if_flagged(builder, nans, value)

    return add, result


def _table_loops(builder, n, lanes, scale, body, unroll=EXP_SUM_UNROLL):
    """The loops of the table kernels over ``n`` elements: vectors of
    ``lanes`` by ``unroll`` at a time, then one at a time, then
    the last ``n % lanes`` by a masked vector; each emitted by ``body(starts,
    mask, scaled)`` (the vectors' first indices; ``mask`` None but for the
    last).  Twice: ``scaled`` False where ``scale`` (a float IR value) is 1
    (no temperature: the callers then skip the multiply, off the FMA units
    the exponentials keep busy), True otherwise."""
    intp = n.type

    def whole(width):  # n rounded down to a multiple of width
        return builder.mul(builder.sdiv(n, intp(width)), intp(width))

    step = unroll * lanes
    wide, single = whole(step), whole(lanes)

    def loops(scaled):
        with cgutils.for_range_slice(builder, intp(0), wide, intp(step)) as (i, _):
            body([builder.add(i, intp(u * lanes)) for u in range(unroll)], None, scaled)
        if unroll > 1:
            with cgutils.for_range_slice(builder, wide, single, intp(lanes)) as (i, _):
                body([i], None, scaled)
        with builder.if_then(builder.icmp_signed("<", single, n)):
            body([single], _lane_mask(builder, builder.sub(n, single), lanes), scaled)

    unscaled = builder.fcmp_ordered("==", scale, ir.Constant(scale.type, 1.0))
    with builder.if_else(unscaled, likely=True) as (then, otherwise):
        with then:
            loops(False)
        with otherwise:
            loops(True)


def _exp_sum_max_codegen(context, builder, signature, args):
    xty, nty = signature.args[:2]
    spec = _TABLE_SUM_EXPS[xty.dtype]
    xa = context.make_array(xty)(context, builder, args[0])
    na = context.make_array(nty)(context, builder, args[1])
    elt = spec.float_type()
    lanes = spec.lanes
    vty = ir.VectorType(elt, lanes)
    n = builder.extract_value(xa.shape, 0)
    scale = _splat(builder, args[2], lanes)
    neg_shift = _splat(builder, builder.fneg(args[3]), lanes)
    zeros = ir.Constant(vty, [0.0] * lanes)

    # One accumulator of each: the loop is bound by the exponentials'
    # arithmetic, not by the latency of the adds (and more of them took
    # registers the constants need).
    acc = cgutils.alloca_once_value(builder, zeros)
    take_max, next_max = _running_max(builder, vty)

    def body(starts, mask, scaled):
        for start in starts:
            xv = _load_vector(builder, xa, start, vty, mask)
            v = _fma(builder, xv, scale, neg_shift) if scaled else builder.fadd(xv, neg_shift)
            e = _table_exp_term(builder, spec, v)
            if mask is not None:  # the other lanes: no term, no max
                e = builder.select(mask, e, zeros)
            builder.store(builder.fadd(builder.load(acc), e), acc)
            take_max(_load_vector(builder, na, start, vty, mask), mask)

    _table_loops(builder, n, lanes, args[2], body)
    # The lanes, added by halves in float64 (a fixed tree).
    vec = builder.load(acc)
    if elt != ir.DoubleType():
        vec = builder.fpext(vec, ir.VectorType(ir.DoubleType(), lanes))
    total = _lane_halves(builder, vec, builder.fadd)
    return context.make_tuple(builder, signature.return_type, [total, next_max()])


@intrinsic
def _exp_sum_max_avx512(typingctx, x, nxt, scale, shift):
    if not (table_exp_type(x) and table_exp_type(nxt) and x.dtype == nxt.dtype):
        return None
    if not (scale == x.dtype and shift == x.dtype):
        return None
    return types.Tuple((types.float64, x.dtype))(x, nxt, scale, shift), _exp_sum_max_codegen


def _exp_bounded_store_codegen(context, builder, signature, args):
    xty, _, oty = signature.args
    spec = _TABLE_EXPS[xty.dtype]
    xa = context.make_array(xty)(context, builder, args[0])
    oa = context.make_array(oty)(context, builder, args[2])
    elt = spec.float_type()
    lanes = spec.lanes
    vty = ir.VectorType(elt, lanes)
    ity = ir.VectorType(ir.IntType(spec.bits), lanes)
    bty = ir.VectorType(ir.IntType(1), lanes)
    n = builder.extract_value(xa.shape, 0)
    scale = _splat(builder, args[1], lanes)
    single_key = spec.bits == 32
    zero_key = ir.Constant(ity, [0] * lanes) if single_key else ir.Constant(vty, [0.0] * lanes)
    worst = cgutils.alloca_once_value(builder, zero_key)
    nans = cgutils.alloca_once_value(builder, ir.Constant(bty, [0] * lanes))
    magnitude = ir.Constant(ity, [(1 << (spec.bits - 1)) - 1] * lanes)

    def larger_key(a, b):
        if single_key:  # NaN's bits are above +inf's
            return builder.select(builder.icmp_signed(">", a, b), a, b)
        return _greater(builder, a, b)

    def step(xv, scaled):
        v = builder.fmul(xv, scale) if scaled else xv
        key = builder.and_(builder.bitcast(v, ity), magnitude)  # |v|'s bits
        if not single_key:
            key = builder.bitcast(key, vty)
            nan = builder.fcmp_unordered("uno", v, v)
            builder.store(builder.or_(builder.load(nans), nan), nans)
        builder.store(larger_key(key, builder.load(worst)), worst)
        return _table_exp_term(builder, spec, v, clamp=False)

    def body(starts, mask, scaled):
        # All loads, then the stores; a masked vector's other lanes have
        # arguments 0 (key 0) and are not stored.
        values = [step(_load_vector(builder, xa, k, vty, mask), scaled) for k in starts]
        for k, value in zip(starts, values, strict=True):
            _store_vector(builder, value, oa, k, mask)

    _table_loops(builder, n, lanes, args[1], body)
    top = _lane_halves(builder, builder.load(worst), larger_key)
    return top if single_key else _nan_if_flagged(builder, nans, top)


def _table_store_types(x, scale, out):
    """Whether the table stores take ``(x, scale, out)``: arrays of one
    dtype that :func:`table_exp_type` takes, ``scale`` of that dtype."""
    return table_exp_type(x) and table_exp_type(out) and x.dtype == out.dtype == scale


@intrinsic
def _exp_bounded_store_avx512(typingctx, x, scale, out):
    if not _table_store_types(x, scale, out):
        return None
    key = types.int32 if x.dtype == types.float32 else types.float64
    return key(x, scale, out), _exp_bounded_store_codegen


def exp_bounded_store(x, scale, out):  # pragma: no cover - replaced by the overload
    out[:] = np.exp(x * scale)
    return np.abs(x * scale).max()


@overload(exp_bounded_store, inline="always")
def _exp_bounded_store_overload(x, scale, out):
    """``out = exp_bounded(x * scale)`` by the table (``out`` as long as
    ``x``, another array), returning the max of the :func:`magnitude_key`
    of every ``x * scale`` (0 for none): the exponentials mean nothing
    unless it is within :func:`exp_bound`.  For arrays
    :func:`table_exp_type` takes (callers test it first)."""
    if table_exp_type(x):
        dt = x.dtype
        return lambda x, scale, out: _exp_bounded_store_avx512(x, dt(scale), out[: x.size])
    return None


def _exp_terms_store_codegen(context, builder, signature, args):
    xty, _, oty = signature.args
    spec = _TABLE_SUM_EXPS[xty.dtype]
    xa = context.make_array(xty)(context, builder, args[0])
    oa = context.make_array(oty)(context, builder, args[2])
    vty = ir.VectorType(spec.float_type(), spec.lanes)
    scale = _splat(builder, args[1], spec.lanes)

    def body(starts, mask, scaled):
        values = []
        for k in starts:  # all loads, then the stores
            xv = _load_vector(builder, xa, k, vty, mask)
            v = builder.fmul(xv, scale) if scaled else xv
            values.append(_table_exp_term(builder, spec, v, clamp=False))
        for k, value in zip(starts, values, strict=True):
            _store_vector(builder, value, oa, k, mask)

    _table_loops(builder, builder.extract_value(xa.shape, 0), spec.lanes, args[1], body)
    return context.get_dummy_value()


@intrinsic
def _exp_terms_store_avx512(typingctx, x, scale, out):
    if not _table_store_types(x, scale, out):
        return None
    return types.none(x, scale, out), _exp_terms_store_codegen


def exp_terms_store(x, scale, out):  # pragma: no cover - replaced by the overload
    with np.errstate(over="ignore", invalid="ignore"):
        out[:] = np.exp(x * scale)


@overload(exp_terms_store, inline="always")
def _exp_terms_store_overload(x, scale, out):
    """``out = exp(x * scale)`` (``out`` as long as ``x``, another array) as
    terms of sums, by the sums' table (:data:`_TABLE_SUM_EXPS`: float32's
    error grows by ``|x * scale| * 2.7e-9``) with no bound and no clamp:
    where a result overflows it is +inf or NaN, where it is below the
    smallest normal number it is that number rounded, or for arguments
    beyond about 1e36 in magnitude (float32; NaN and ±inf included) +inf or
    NaN (see :func:`_table_exp_term`).  A sum of these terms that is finite
    and at least :data:`TERMS_SUM_MIN` is then as accurate as one of
    :func:`exp_bounded`'s: callers test the sums, not each argument (the
    test of :func:`exp_bounded_store` took 2 of its 14 instructions a
    vector).  For arrays :func:`table_exp_type` takes (callers test it
    first)."""
    if table_exp_type(x):
        dt = x.dtype
        return lambda x, scale, out: _exp_terms_store_avx512(x, dt(scale), out[: x.size])
    return None


def _fadd_in_order(builder, a, b):
    """``a + b`` that LLVM may not reassociate: flagged ``contract`` (which
    no add here can use), since Numba's fastmath pass gives its flags, and
    with them ``reassoc``, to the float instructions that have none."""
    return builder.fadd(a, b, flags=("contract",))


def _fsub_in_order(builder, a, b):
    """``a - b`` that LLVM may not reassociate (see :func:`_fadd_in_order`):
    ``(v - hi) - lo`` must not become ``v - (hi + lo)``, which rounds
    ``hi + lo`` to the precision of ``hi``."""
    return builder.fsub(a, b, flags=("contract",))


def _column_exp_add_codegen(context, builder, signature, args):
    rows_ty, nexts_ty, _, shift_ty, part_ty, top_ty = signature.args
    spec = _TABLE_SUM_EXPS[part_ty.dtype]
    elt = spec.float_type()
    lanes = spec.lanes
    vty = ir.VectorType(elt, lanes)

    def arrays(tuple_ty, value):
        return [
            context.make_array(ty)(context, builder, a)
            for ty, a in zip(tuple_ty, cgutils.unpack_tuple(builder, value), strict=True)
        ]

    rows, nexts = arrays(rows_ty, args[0]), arrays(nexts_ty, args[1])
    shift_a = context.make_array(shift_ty)(context, builder, args[3])
    part_a = context.make_array(part_ty)(context, builder, args[4])
    top_a = context.make_array(top_ty)(context, builder, args[5])
    n = builder.extract_value(part_a.shape, 0)
    scale = _splat(builder, args[2], lanes)

    def pairwise(values, combine):  # (a + b) + (c + d): the scalar loops' order
        while len(values) > 1:
            values = [combine(values[k], values[k + 1]) for k in range(0, len(values), 2)]
        return values[0]

    maximum = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty, vty]), f"llvm.maximum.{_vector_suffix(vty)}"
    )

    def body(starts, mask, scaled):
        for start in starts:
            neg_shift = builder.fneg(_load_vector(builder, shift_a, start, vty, mask))
            terms = []
            for row in rows:
                xv = _load_vector(builder, row, start, vty, mask)
                v = _fma(builder, xv, scale, neg_shift) if scaled else builder.fadd(xv, neg_shift)
                terms.append(_table_exp_term(builder, spec, v))
            total = pairwise(terms, lambda a, b: _fadd_in_order(builder, a, b))
            total = _fadd_in_order(builder, _load_vector(builder, part_a, start, vty, mask), total)
            _store_vector(builder, total, part_a, start, mask)
            if nexts:
                values = [_load_vector(builder, a, start, vty, mask) for a in nexts]
                top = pairwise(values, lambda a, b: builder.call(maximum, [a, b]))
                top = builder.call(maximum, [_load_vector(builder, top_a, start, vty, mask), top])
                _store_vector(builder, top, top_a, start, mask)

    _table_loops(builder, n, lanes, args[2], body, unroll=1 if len(rows) > 2 else 2)
    return context.get_dummy_value()


@intrinsic
def _column_exp_add_avx512(typingctx, rows, nexts, scale, shift, part, top):
    if not (isinstance(rows, types.UniTuple) and isinstance(nexts, types.BaseTuple)):
        return None
    arrays = [*rows, *nexts, shift, part, top]
    if not all(table_exp_type(a) and a.dtype == part.dtype for a in arrays):
        return None
    if len(nexts) not in (0, len(rows)) or len(rows) & (len(rows) - 1) or scale != part.dtype:
        return None
    return types.none(rows, nexts, scale, shift, part, top), _column_exp_add_codegen


def column_exp_add(rows, nexts, scale, shift, part, top):  # pragma: no cover - the overload
    part += sum(np.exp(r * scale - shift) for r in rows)
    for r in nexts:
        np.fmax(top, r, out=top)


@overload(column_exp_add, inline="always")
def _column_exp_add_overload(rows, nexts, scale, shift, part, top):
    """For each column ``j < part.size``: ``part[j] +=`` the sum of
    ``exp_term(row[j] * scale - shift[j])`` over the ``rows`` (a tuple of
    1, 2 or 4 arrays; pairs added first, as ``(a + b) + (c + d)``) and
    ``top[j]`` = the NaN-propagating max of itself and the ``nexts``'
    ``[j]`` (an empty tuple, or as many arrays as ``rows``), by the table
    exponential across columns.  Every array at least ``part.size`` long
    (not checked).  For arrays :func:`table_exp_type` takes (callers test
    it first); the column kernels' sums of exponentials."""
    if table_exp_type(part):
        dt = part.dtype
        return lambda rows, nexts, scale, shift, part, top: _column_exp_add_avx512(
            rows, nexts, dt(scale), shift, part, top
        )
    return None


def _column_terms_add_codegen(context, builder, signature, args):
    row_ty, _, part_ty = signature.args
    spec = _TABLE_SUM_EXPS[part_ty.dtype]
    vty = ir.VectorType(spec.float_type(), spec.lanes)
    row = context.make_array(row_ty)(context, builder, args[0])
    part_a = context.make_array(part_ty)(context, builder, args[2])
    n = builder.extract_value(part_a.shape, 0)
    scale = _splat(builder, args[1], spec.lanes)

    def body(starts, mask, scaled):
        for start in starts:
            xv = _load_vector(builder, row, start, vty, mask)
            v = builder.fmul(xv, scale) if scaled else xv
            term = _table_exp_term(builder, spec, v, keep_nan=True)
            total = _fadd_in_order(builder, _load_vector(builder, part_a, start, vty, mask), term)
            _store_vector(builder, total, part_a, start, mask)

    _table_loops(builder, n, spec.lanes, args[1], body, unroll=2)
    return context.get_dummy_value()


@intrinsic
def _column_terms_add_avx512(typingctx, row, scale, part):
    if not (table_exp_type(row) and table_exp_type(part) and row.dtype == part.dtype):
        return None
    if scale != part.dtype:
        return None
    return types.none(row, scale, part), _column_terms_add_codegen


def column_terms_add(row, scale, part):  # pragma: no cover - replaced by the overload
    part += np.exp(row[: part.size] * scale)


@overload(column_terms_add, inline="always")
def _column_terms_add_overload(row, scale, part):
    """``part[j] += exp(max(row[j] * scale, lo))`` for every ``j < part.size``
    (``row`` at least as long, not checked; ``lo`` -86 for float32, -700
    for float64), NaN kept: the terms of a column sum with no shift, by the
    table's exponential across columns.  Where ``row[j] * scale`` is NaN,
    +inf or so large that its exponential overflows, ``part[j]`` becomes NaN
    or +inf; a term clamped at ``lo`` (-inf included) is at most 2^-124
    (float32; float64 2^-1009).  For arrays :func:`table_exp_type` takes;
    others (never called with them: see ``softmax.direct_column_stats``)
    take :func:`exp` element by element."""
    if table_exp_type(row) and table_exp_type(part):
        dt = part.dtype
        return lambda row, scale, part: _column_terms_add_avx512(row, dt(scale), part)

    def impl(row, scale, part):
        for j in range(part.size):
            part[j] += exp(row[j] * scale)

    return impl


def _table_exp_stored(context, builder, dtype):
    """A function emitting :func:`exp_stored` of a vector of ``dtype`` (its
    arguments <= 0 or NaN) by the table's exponential, and for a vector
    with some argument below the table's range (-700, float32 -86) by
    :func:`exp_stored` lane by lane."""
    spec = _TABLE_EXPS[dtype]
    lanes = spec.lanes
    vty = ir.VectorType(spec.float_type(), lanes)
    lo = ir.Constant(vty, [spec.lo] * lanes)
    i32 = ir.IntType(32)
    sig = dtype(dtype)
    result = cgutils.alloca_once(builder, vty)

    def exact(v):  # exp_stored of each lane: below the table's range
        out = v
        for lane in range(lanes):
            e = context.compile_internal(
                builder, lambda v: exp_stored(v), sig, [builder.extract_element(v, i32(lane))]
            )
            out = builder.insert_element(out, e, i32(lane))
        return out

    def stored(v):
        builder.store(_table_exp_term(builder, spec, v, clamp=False), result)
        below = builder.fcmp_ordered("<", v, lo)
        any_below = builder.icmp_unsigned(
            "!=", builder.bitcast(below, ir.IntType(lanes)), ir.IntType(lanes)(0)
        )
        with builder.if_then(any_below, likely=False):
            e = builder.load(result)
            builder.store(builder.select(below, exact(v), e), result)
        return builder.load(result)

    return stored


def _exp_store_sum_max_codegen(context, builder, signature, args):
    xty, oty, nty = signature.args[:3]
    spec = _TABLE_EXPS[xty.dtype]
    elt = spec.float_type()
    lanes = spec.lanes
    vty = ir.VectorType(elt, lanes)
    xa, oa, na = (
        context.make_array(t)(context, builder, a)
        for t, a in zip((xty, oty, nty), args[:3], strict=True)
    )
    n = builder.extract_value(xa.shape, 0)
    scale = _splat(builder, args[3], lanes)
    neg_shift = _splat(builder, builder.fneg(args[4]), lanes)
    zeros = ir.Constant(vty, [0.0] * lanes)
    stored = _table_exp_stored(context, builder, xty.dtype)
    # An accumulator per vector of the unrolled loop (64 terms a lane at most
    # in a run of ACC_RUN float32), added in a fixed order at the end.
    accs = [cgutils.alloca_once_value(builder, zeros) for _ in range(EXP_SUM_UNROLL)]
    take_max, next_max = _running_max(builder, vty)

    def body(starts, mask, scaled):
        values = []
        for start in starts:  # all loads (x may be out, nxt may be either), then the stores
            xv = _load_vector(builder, xa, start, vty, mask)
            take_max(_load_vector(builder, na, start, vty, mask), mask)
            v = _fma(builder, xv, scale, neg_shift) if scaled else builder.fadd(xv, neg_shift)
            e = stored(v)
            # The other lanes of a masked vector: no term (nor max, above).
            values.append(e if mask is None else builder.select(mask, e, zeros))
        for start, acc, e in zip(starts, accs, values, strict=False):
            _store_vector(builder, e, oa, start, mask)
            builder.store(_fadd_in_order(builder, builder.load(acc), e), acc)

    _table_loops(builder, n, lanes, args[3], body)
    vec = builder.load(accs[0])
    for acc in accs[1:]:
        vec = _fadd_in_order(builder, vec, builder.load(acc))
    if elt != ir.DoubleType():
        vec = builder.fpext(vec, ir.VectorType(ir.DoubleType(), lanes))
    total = _lane_halves(builder, vec, lambda a, b: _fadd_in_order(builder, a, b))
    return context.make_tuple(builder, signature.return_type, [total, next_max()])


@intrinsic
def _exp_store_sum_max_avx512(typingctx, x, out, nxt, scale, shift):
    if not all(table_exp_type(a) and a.dtype == x.dtype for a in (x, out, nxt)):
        return None
    if not (scale == x.dtype and shift == x.dtype):
        return None
    sig = types.Tuple((types.float64, x.dtype))(x, out, nxt, scale, shift)
    return sig, _exp_store_sum_max_codegen


def exp_store_sum_max(x, out, nxt, scale, shift):  # pragma: no cover - replaced by the overload
    out[: x.size] = np.exp(x * scale - shift)
    return float(out[: x.size].sum()), nxt[: x.size].max()


@overload(exp_store_sum_max, inline="always")
def _exp_store_sum_max_overload(x, out, nxt, scale, shift):
    """``out = exp_stored(x * scale - shift)`` as :func:`exp_write` writes it
    (``out`` may be ``x``), the sum of what it stored (float64; lanes added
    in a fixed order), and the NaN-propagating max of ``nxt`` (which may be
    ``x`` or ``out``: every vector is loaded before any is stored), in one
    loop.  ``out`` and ``nxt`` at least as long as ``x`` (not checked).  For
    arrays :func:`table_exp_type` takes (callers test it first)."""
    if table_exp_type(x) and table_exp_type(out) and table_exp_type(nxt):
        dt = x.dtype
        return lambda x, out, nxt, scale, shift: _exp_store_sum_max_avx512(
            x, out[: x.size], nxt[: x.size], dt(scale), dt(shift)
        )
    return None


def _exp_write_codegen(context, builder, signature, args):
    xty, oty = signature.args[:2]
    spec = _TABLE_EXPS[xty.dtype]
    elt = spec.float_type()
    lanes = spec.lanes
    vty = ir.VectorType(elt, lanes)
    xa = context.make_array(xty)(context, builder, args[0])
    oa = context.make_array(oty)(context, builder, args[1])
    n = builder.extract_value(xa.shape, 0)
    scale = _splat(builder, args[2], lanes)
    neg_shift = _splat(builder, builder.fneg(args[3]), lanes)
    factor = _splat(builder, args[4], lanes)
    stored = _table_exp_stored(context, builder, xty.dtype)

    def term(start, mask, scaled):
        xv = _load_vector(builder, xa, start, vty, mask)
        v = _fma(builder, xv, scale, neg_shift) if scaled else builder.fadd(xv, neg_shift)
        return builder.fmul(stored(v), factor)

    def body(starts, mask, scaled):
        values = [term(k, mask, scaled) for k in starts]  # all loads, then the stores
        for k, value in zip(starts, values, strict=True):
            _store_vector(builder, value, oa, k, mask)

    _table_loops(builder, n, lanes, args[2], body)
    return context.get_dummy_value()


@intrinsic
def _exp_write_avx512(typingctx, x, out, scale, shift, factor):
    if not (table_exp_type(x) and table_exp_type(out) and x.dtype == out.dtype):
        return None
    if not (scale == x.dtype and shift == x.dtype and factor == x.dtype):
        return None
    return types.none(x, out, scale, shift, factor), _exp_write_codegen


def exp_write(x, out, scale, shift, factor):  # pragma: no cover - replaced by the overload
    out[:] = np.exp(x * scale - shift) * factor


@overload(exp_write, inline="always")
def _exp_write_overload(x, out, scale, shift, factor):
    """``out = exp_stored(x * scale - shift) * factor`` (arguments <= 0 or
    NaN, as :func:`exp_stored`'s; ``shift`` and ``factor`` scalars) by the
    table's exponential, and for a vector with some argument below the
    table's range (-700, float32 -86) by :func:`exp_stored` lane by lane.
    ``out`` may be ``x`` (each vector is loaded before it is stored).  For
    arrays :func:`table_exp_type` takes (callers test it first)."""
    if table_exp_type(x) and table_exp_type(out):
        dt = x.dtype
        return lambda x, out, scale, shift, factor: _exp_write_avx512(
            x, out[: x.size], dt(scale), dt(shift), dt(factor)
        )
    return None


def table_exp_type(ty) -> bool:
    """Whether :func:`exp_sum_max` and :func:`exp_bounded_store` take arrays
    of the Numba type ``ty`` (1-D float32 or float64 of unit stride) on this
    target (AVX-512): for overloads choosing their implementation."""
    return (
        TABLE_EXP
        and isinstance(ty, types.Array)
        and ty.ndim == 1
        and ty.dtype in _TABLE_EXPS
        and ty.layout == "C"
    )


def exp_sum_max(x, nxt, scale, shift):  # pragma: no cover - replaced by the overload
    return np.exp(x * scale - shift).sum(), nxt[: x.size].max()


@overload(exp_sum_max, inline="always")
def _exp_sum_max_overload(x, nxt, scale, shift):
    """``(sum of exp_term(x * scale - shift) as float64, max of nxt[:x.size])``
    for arrays :func:`table_exp_type` takes: ``x * scale - shift`` by one FMA
    (an add when ``scale`` is 1), the exponentials by the table, added lane
    by lane into one vector (the masked last vector's other lanes add 0),
    then its lanes by halves in float64: the same bits from every compiled
    copy.  float32 lanes sum in float32: callers pass parts of at most
    :data:`reduce.FAR_PART_BYTES`, 32 terms a lane.  The max propagates NaN
    (as ``np.max``); ``nxt`` must be at least as long as ``x`` (not
    checked).  Other arrays have no implementation (callers test
    :func:`table_exp_type` first)."""
    if table_exp_type(x):
        dt = x.dtype

        def impl(x, nxt, scale, shift):
            return _exp_sum_max_avx512(x, nxt[: x.size], dt(scale), dt(shift))

        return impl
    return None
