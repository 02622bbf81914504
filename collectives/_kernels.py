"""Numba kernels for the elementwise buffer math of the collectives.

Every kernel is a short loop that trusts its input: same length, same
dtype, C-contiguous 1-D arrays.  The Python wrappers in ``_ops`` do all the
checks.  ``_jit`` owns the compile options: each kernel lists its
signatures, which ``_compile.precompile`` caches on disk at install, and
loads the one it is called with on its first call (see ``_compile``).

Numba has no float16 arithmetic on the CPU, so float16 buffers are handled
as ``uint16`` bit patterns: each element is decoded exactly (into float32
where the machine converts float16 in one instruction, ``NATIVE_HALF``,
else into float64), combined, and rounded back to the nearest float16
(ties to even), so these kernels give the correctly rounded float16
result of every single operation: sums and products through float32
round once (24 >= 2 * 11 + 2 bits), and the average's quotient is
exact by construction (``average_f16``, ``quotient_f16``).
"""

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.core.registry import cpu_target
from numba.extending import intrinsic

from collectives._compile import kernel

__all__ = [
    "sum_into", "prod_into", "min_into", "max_into", "sum_div_into",
    "div_inplace",
    "sum_into_f16", "prod_into_f16", "min_into_f16", "max_into_f16",
    "sum_div_into_f16", "div_inplace_f16",
    "f16_to_f64", "f64_to_f16", "add_f16", "mul_f16", "avg_f16", "pick_f16", "f16_value",
    "quotient_f16", "average_f16", "AVERAGE_BLOCK", "by_multiplying", "MULTIPLY_BELOW",
    "fmuladd",
    "round_f16", "NATIVE_HALF", "HALF_COMPARE", "frozen",
]

_TYPES = (nb.float32, nb.float64, nb.int32, nb.int64)
_FLOATS = (nb.float32, nb.float64)


def _jit(types, nargs, *, scalar=False):
    """A kernel for ``nargs`` arrays of each type, plus a scalar of it."""
    sigs = [nb.void(*([t[::1]] * nargs), *([t] if scalar else [])) for t in types]
    return kernel(sigs, nogil=True, boundscheck=False)


@intrinsic
def frozen(typingctx, x):
    """``x`` behind LLVM's ``freeze``: the same value, but not seen as a load."""
    if not isinstance(x, (types.Integer, types.Float)):
        return None

    return x(x), lambda context, builder, sig, args: _freeze(builder, args[0])


def _freeze(builder, value):
    # LLVM's freeze of value; llvmlite's IRBuilder has no freeze of its own.
    freeze = ir.instructions.Instruction(builder.block, value.type, "freeze", [value])
    builder._insert(freeze)
    return freeze


# ---------------------------------------------------------------- native ---

@_jit(_TYPES, 2)
def sum_into(dst, src):
    """Dst += src."""
    for i in range(dst.size):
        dst[i] = dst[i] + src[i]


@_jit(_TYPES, 2)
def prod_into(dst, src):
    """Dst *= src."""
    for i in range(dst.size):
        dst[i] = dst[i] * src[i]


@_jit(_TYPES, 2)
def min_into(dst, src):
    """Dst = min(dst, src), NaN and signed zeros exactly as numpy.minimum."""
    # Written so that no select has dst's own value as an arm: LLVM turns
    # "store d back or store s" into masked vector stores (vmaskmov),
    # microcoded on AMD before Zen 3 (Zen 1 VM, 16 MiB float32: 7.2 ms
    # against NumPy's 3.3).  "d < s ? d : s" is one vminps (s on ties, so
    # min(-0.0, 0.0) is 0.0 as in NumPy); a NaN in d then comes back as
    # d + s, which is d's NaN (x86 and Arm return the first NaN operand).
    # For integers d == d is known true, and without AVX-512's vpminsq an
    # int64 min is a select again: d passes through frozen, which LLVM
    # does not trace back to the load, so it blends and stores whole
    # vectors (AMD Zen 3 VM, 64 MiB int64: 9.6 ms against NumPy's 7.8 with
    # vpmaskmovq).
    for i in range(dst.size):
        d, s = frozen(dst[i]), src[i]
        m = d if d < s else s
        dst[i] = m if d == d else d + s


@_jit(_TYPES, 2)
def max_into(dst, src):
    """Dst = max(dst, src), NaN and signed zeros exactly as numpy.maximum."""
    for i in range(dst.size):  # written as min_into is, for the same reasons
        d, s = frozen(dst[i]), src[i]
        m = d if d > s else s
        dst[i] = m if d == d else d + s


@_jit(_FLOATS, 2, scalar=True)
def sum_div_into(dst, src, divisor):
    """Dst = (dst + src) / divisor, one memory pass for the last avg step."""
    for i in range(dst.size):
        dst[i] = (dst[i] + src[i]) / divisor


@_jit(_FLOATS, 1, scalar=True)
def div_inplace(dst, divisor):
    """Dst /= divisor."""
    for i in range(dst.size):
        dst[i] = dst[i] / divisor


# --------------------------------------------------------------- float16 ---

def _bitcast(source, target):
    """An intrinsic that reads a ``source`` value's bits as a ``target`` (same width)."""
    @intrinsic
    def bitcast(typingctx, x):
        if x != source:
            return None
        return target(source), lambda context, builder, sig, args: builder.bitcast(
            args[0], context.get_value_type(target))
    return bitcast


_f64_bits, _bits_f64 = _bitcast(types.float64, types.int64), _bitcast(types.int64, types.float64)
_f32_bits, _bits_f32 = _bitcast(types.float32, types.int32), _bitcast(types.int32, types.float32)


@intrinsic
def fmuladd(typingctx, a, b, c):
    """A * b + c, fused or not as the target prefers (LLVM's fmuladd): for exact products."""
    if not (a == b == c and isinstance(a, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(sig.return_type)
        f = builder.module.declare_intrinsic("llvm.fmuladd", [ty], ir.FunctionType(ty, [ty] * 3))
        return builder.call(f, args)
    return a(a, a, a), codegen


# Both conversions work on the bits, with no branch, no table and no
# library call, so that LLVM vectorises the loops they are in.  Their
# first versions called math.ldexp and math.frexp per element.  8 M
# elements, AMD EPYC Zen 3 VM (AVX2): sum 145 -> 26 ms, min 102 -> 5.5
# (NumPy's float16 add 60); the same bits on every pattern, every
# midpoint and its neighbours, and random values at ten scales.  Where
# the machine converts float16 in one instruction (``NATIVE_HALF``), sums
# and products go through float32 instead (below); min and max compare
# the bits themselves (``pick_f16``).

@kernel([nb.float64(nb.uint16)], nogil=True, inline="always")
def f16_to_f64(h):
    """Decode float16 bits exactly (NaN payloads kept)."""
    h = np.int64(h)
    exp, mant = (h >> 10) & 0x1F, h & 0x3FF
    sign = (h & 0x8000) << 48
    # Normal, infinite or NaN: move the fields; subnormal: mant * 2**-24.
    wide = np.int64(0x7FF) if exp == 0x1F else exp + (1023 - 15)
    normal = sign | (wide << 52) | (mant << 42)
    tiny = sign | _f64_bits(np.float64(mant) * 5.9604644775390625e-08)
    return _bits_f64(tiny if exp == 0 else normal)


@kernel([nb.uint16(nb.float64)], nogil=True, inline="always")
def f64_to_f16(x):
    """Round to the nearest float16 (ties to even) and return its bits (NaN: 0x7E00)."""
    b = _f64_bits(np.float64(x))  # inlined, x keeps its caller's type (float32 too)
    sign = (b >> 48) & 0x8000
    a = b & 0x7FFFFFFFFFFFFFFF  # |x|'s bits, ordered as |x|
    # Normal: keep the top 10 of 52 significand bits and round on the other
    # 42: up past the half, on the half only to an even h (a carry runs on
    # into the exponent, as it must).
    frac = a & 0xFFFFFFFFFFFFF
    h = (((a >> 52) - (1023 - 15)) << 10) | (frac >> 42)
    rest, half = frac & 0x3FFFFFFFFFF, np.int64(1) << 41
    h += np.int64(rest > half) | (np.int64(rest == half) & h)
    # Below 2**-14: rint(|x| * 2**24), rounded by adding 2**52 (ties to even).
    tiny = _f64_bits(_bits_f64(a) * 16777216.0 + 4503599627370496.0) - 0x4330000000000000
    out = sign | (tiny if a < 0x3F10000000000000 else h)
    out = (sign | 0x7C00) if a >= 0x40EFFE0000000000 else out  # 65520 on: infinity
    return np.uint16(0x7E00 if a > 0x7FF0000000000000 else out)  # NaN


def _target():
    # Numba's own target (which NUMBA_CPU_NAME / NUMBA_CPU_FEATURES may
    # change): whether it is AArch64, whether x86-64, and its features.
    triple, _, features = cpu_target.target_context.codegen().magic_tuple()
    return (triple.startswith(("aarch64", "arm64")), triple.startswith("x86_64"),
            features.split(","))


def _native_half():
    # Whether the code Numba makes here converts float16 <-> float32 in one
    # instruction: F16C on x86 (every x86 since 2012), any AArch64.
    arm, x86, features = _target()
    return arm or (x86 and "+f16c" in features)


#: Whether float16 sums and products go through float32 (see ``add_f16``).
NATIVE_HALF = _native_half()


@intrinsic
def _f16_to_f32(typingctx, h):
    """Float16 bits to float32, exactly (LLVM's half: vcvtph2ps with F16C)."""
    if h != types.uint16:
        return None
    return types.float32(types.uint16), lambda context, builder, sig, args: builder.fpext(
        builder.bitcast(args[0], ir.HalfType()), ir.FloatType())


@intrinsic
def _f32_to_f16(typingctx, x):
    """Float32 to the nearest float16 (ties to even), as bits (vcvtps2ph)."""
    if x != types.float32:
        return None
    return types.uint16(types.float32), lambda context, builder, sig, args: builder.bitcast(
        builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))


@nb.njit(inline="always")
def _round_f16_half(x):
    # Float64 to float16 through float32: rounded to odd in float32 (toward
    # zero, then the last bit set if inexact), then to nearest even by
    # vcvtps2ph.  Rounding to odd with at least 2 more bits, then to
    # nearest, is rounding once (Boldo and Melquiond, IEEE TC 2008); 24 >=
    # 11 + 2.  Checked: 40 M values at ten scales, every midpoint and its
    # neighbours, and all 2**32 sums of two patterns over 2, 3, 5 and 7.
    r = np.float32(x)
    back = np.float64(r)
    bits = (_f32_bits(r) - np.int32(abs(back) > abs(x))) | np.int32(back != x)
    return _f32_to_f16(_bits_f32(np.int32(bits)))


#: The value of float16 bits, exactly (float32 or float64).
f16_value = _f16_to_f32 if NATIVE_HALF else f16_to_f64
#: Float64 to the nearest float16's bits, as ``f64_to_f16``, in fewer steps.
round_f16 = _round_f16_half if NATIVE_HALF else f64_to_f16
#: ``f16_value``'s type back to float16 bits (from float32: one rounding).
_narrow_f16 = _f32_to_f16 if NATIVE_HALF else f64_to_f16


# The sum and the product of two float16 values, correctly rounded.  In
# float32 when the machine converts in one instruction: rounding first to
# float32 and then to float16 is then the same as rounding once, since
# float32's 24 bits are at least 2 * 11 + 2 (Figueroa, "When is double
# rounding innocuous?", 1995); checked for all 2**32 pairs of patterns
# (equal bits; NaN stays NaN, its payload may differ).  8 M elements, AMD
# EPYC Zen 3 VM: sum 26 ms through float64, 1.9 ms through float32.  Not
# the average's division: its operand, the sum, would already be rounded.

@nb.njit(inline="always")
def add_f16(a, b):
    """The float16 bits of a + b, rounded once."""
    return _narrow_f16(f16_value(a) + f16_value(b))


@nb.njit(inline="always")
def mul_f16(a, b):
    """The float16 bits of a * b, rounded once."""
    return _narrow_f16(f16_value(a) * f16_value(b))


@nb.njit(inline="always")
def avg_f16(a, b, divisor):
    """The float16 bits of (a + b) / divisor: the exact sum, then one float64 quotient."""
    return round_f16((np.float64(f16_value(a)) + np.float64(f16_value(b))) / divisor)


#: Divisors below this (integers) ``quotient_f16`` takes: its m * n must be
#: exact in float32, 12 bits of m and 12 of n.
MULTIPLY_BELOW = 4096


@nb.njit(inline="always")
def by_multiplying(divisor):
    """Whether ``average_f16`` gives (a + b) / divisor here (else ``avg_f16``)."""
    return (NATIVE_HALF and divisor >= 1.0 and divisor < MULTIPLY_BELOW
            and divisor == np.floor(divisor))


_SIGN = np.int32(-0x80000000)


@nb.njit(inline="always")
def quotient_f16(a, b, n, recip):
    """The float16 bits of (a + b) / n, rounded once, with no division.

    a, b: float16 bits; n: an integer below MULTIPLY_BELOW as float32;
    recip: float32(1) / n.  The same bits as ``avg_f16``'s float64
    quotient on all 2**32 pairs for n = 1-17 and other n up to 4095 (NaN
    payloads aside), in 0.6-0.75 of its time (the float64 division and
    conversions bound that one; see BENCHMARKS.md).
    """
    a, b = _f16_to_f32(a), _f16_to_f32(b)
    s = a + b
    bs = s - a
    e = (a - (s - bs)) + (b - bs)  # a + b = s + e exactly (TwoSum)
    q = s * recip  # within 2 float32 ulps of x = (a + b) / n
    qbits = _f32_bits(q)
    sign = qbits & _SIGN
    # The float16 step at q (2**-24 below 2**-14) and q rounded to it: the
    # float32 adder rounds q + 2**13 steps (with q's sign) to whole steps.
    step = max(np.int32((qbits & np.int32(0x7F800000)) - np.int32(10 << 23)), np.int32(0x33800000))
    half = np.int32(step - np.int32(1 << 23))  # bits of half a step
    big = _bits_f32(np.int32((step + np.int32(23 << 23)) | sign))
    near = (q + big) - big
    # x rounds to one of the two float16s either side of the midpoint next
    # to `near` on q's side.  m * n and m * n - s are exact (Sterbenz), so
    # t has the sign of m - x.
    m = near + _bits_f32(np.int32(half | (_f32_bits(q - near) & _SIGN)))
    t = fmuladd(m, n, -s) - e
    toward = _bits_f32(np.int32(half | (~_f32_bits(t) & _SIGN)))  # half a step toward x
    r = m + (toward if t != 0 else np.float32(0.0))  # a tie: m, which rounds to even
    return _f32_to_f16(_bits_f32(np.int32(_f32_bits(r) | sign)))  # a zero keeps x's sign


#: Elements per block of ``average_f16``: a block with an inexact float32
#: sum is redone by ``quotient_f16``.
AVERAGE_BLOCK = 64


@intrinsic
def _divide_block(typingctx, out, a, b, start, n):
    # Out[start:start + AVERAGE_BLOCK] = float16((a + b) / n) in float32,
    # stored only if every float32 sum a + b is exact (s - a == b and
    # s - b == a; False: nothing stored).  Written as vector IR, both
    # blocks loaded before the store, so out may be a or b: through a
    # stack buffer, LLVM split the loop into 256-bit vectors and
    # speculated quotient_f16 into it (64 MiB: 0.21 against 0.22-0.34 ns
    # an element, AMD Zen 4 VM).
    arrays = (out, a, b)
    if not (all(isinstance(x, types.Array) and x.dtype == types.uint16 and x.layout == "C"
                and x.ndim == 1 for x in arrays)
            and isinstance(start, types.Integer) and n == types.float32):
        return None

    def codegen(context, builder, sig, args):
        halves = ir.VectorType(ir.HalfType(), AVERAGE_BLOCK)
        floats = ir.VectorType(ir.FloatType(), AVERAGE_BLOCK)
        bits = ir.VectorType(ir.IntType(16), AVERAGE_BLOCK)

        def address(array, arg):
            data = context.make_array(array)(context, builder, arg).data
            return builder.bitcast(builder.gep(data, [args[3]]), bits.as_pointer())

        def load(array, arg):
            block = builder.load(address(array, arg))
            block.align = 2
            return builder.fpext(builder.bitcast(block, halves), floats)

        x, y = load(sig.args[1], args[1]), load(sig.args[2], args[2])
        s = builder.fadd(x, y)
        lost = builder.or_(builder.fcmp_unordered("!=", builder.fsub(s, x), y),
                           builder.fcmp_unordered("!=", builder.fsub(s, y), x))
        exact = builder.icmp_unsigned("==", builder.bitcast(lost, ir.IntType(AVERAGE_BLOCK)),
                                      ir.Constant(ir.IntType(AVERAGE_BLOCK), 0))
        n = builder.insert_element(ir.Constant(floats, ir.Undefined), args[4],
                                   ir.Constant(ir.IntType(32), 0))
        n = builder.shuffle_vector(n, ir.Constant(floats, ir.Undefined),
                                   ir.Constant(ir.VectorType(ir.IntType(32), AVERAGE_BLOCK),
                                               [0] * AVERAGE_BLOCK))
        quotient = builder.bitcast(builder.fptrunc(builder.fdiv(s, n), halves), bits)
        with builder.if_then(exact, likely=True):
            builder.store(quotient, address(sig.args[0], args[0])).align = 2
        return exact
    return types.boolean(out, a, b, start, n), codegen


@nb.njit(inline="always")
def average_f16(out, a, b, n):
    """Out = (a + b) / n on float16 bits, rounded once; n an integer below MULTIPLY_BELOW.

    Where a + b is exact in float32 (s), float16(s / n) with float32's
    correctly rounded division is the answer: s and m * n, for a float16
    midpoint m, are both multiples of s's float32 ulp, so s / n is either
    m or more than half a float32 ulp from it, and float32 rounding can
    put it on no midpoint it was not on.  The same bits as the float64
    path on all 2**32 pairs with exact sums, n = 1-17, 24, 31, 63, 100,
    127, 255, 256, 1000, 2047, 3000 and 4095.  A block where some sum is
    inexact (the two exponents 13 or more apart, or an infinity or NaN)
    takes quotient_f16 instead.  Out may be a or b.
    """
    recip = np.float32(1.0) / n
    full = out.size - out.size % AVERAGE_BLOCK
    for start in range(0, full, AVERAGE_BLOCK):
        if not _divide_block(out, a, b, start, n):
            for i in range(start, start + AVERAGE_BLOCK):
                out[i] = quotient_f16(a[i], b[i], n, recip)
    for i in range(full, out.size):
        out[i] = quotient_f16(a[i], b[i], n, recip)


def _half_compare():
    # Whether the machine compares float16 in vector lanes of its own
    # (AVX512-FP16's vcmpph, AArch64's FP16), so that LLVM's half compare
    # needs no widening to float32.
    arm, _, features = _target()
    return ("+fullfp16" if arm else "+avx512fp16") in features


#: Whether ``pick_f16`` compares float16 values directly (see there).
HALF_COMPARE = _half_compare()


@intrinsic
def pick_f16(typingctx, d, s, smaller):
    """D where it is NaN, or where it beats s (smaller, or larger); else s.

    Where the machine compares float16 itself (``HALF_COMPARE``): "d is
    NaN, or d < s" (ordered, so a NaN s loses; -0 and +0 tie), as LLVM
    half compares.  Elsewhere on the bits, in 16-bit lanes: each pattern
    maps to +-its magnitude, which orders as the values do (-0 and +0
    tie), and NaN is a magnitude above infinity's.  Through float32
    (vcvtph2ps) the compare, the NaN test and narrowing the 32-bit masks
    back took twice the time of a float16 sum on data in cache, and 1.3x
    it at 64 MiB (AMD Zen 3).  With AVX512-FP16 the half compare took the
    sum's time in cache (Intel Xeon VM: 0.051 ns an element, the bits'
    way 0.083).  Both arms pass through ``freeze`` so that LLVM does not
    see the select as "store d back or store s", which it makes a masked
    store (vmovdqu16 {k}): 64 MiB, 0.32 against 0.30 ns an element.  Both
    ways give the same bits as the comparison of the values on all 2**32
    pairs, min and max.
    """
    if d != types.uint16 or s != types.uint16 or not isinstance(smaller, types.Boolean):
        return None

    def codegen(context, builder, sig, args):
        half = ir.IntType(16)
        d, s, smaller = (_freeze(builder, args[0]), _freeze(builder, args[1]), args[2])
        if HALF_COMPARE:
            hd, hs = builder.bitcast(d, ir.HalfType()), builder.bitcast(s, ir.HalfType())
            wins = builder.select(smaller, builder.fcmp_ordered("<", hd, hs),
                                  builder.fcmp_ordered(">", hd, hs))
            return builder.select(builder.or_(builder.fcmp_unordered("uno", hd, hd), wins), d, s)

        def key(x):  # (x's magnitude ^ sign) - sign, sign 0 or -1
            sign = builder.ashr(x, half(15))
            return builder.sub(builder.xor(builder.and_(x, half(0x7FFF)), sign), sign)

        def nan(x):
            return builder.icmp_unsigned(">", builder.and_(x, half(0x7FFF)), half(0x7C00))

        kd, ks = key(d), key(s)
        wins = builder.select(smaller, builder.icmp_signed("<", kd, ks),
                              builder.icmp_signed(">", kd, ks))
        beats = builder.and_(wins, builder.not_(nan(s)))
        return builder.select(builder.or_(nan(d), beats), d, s)
    return types.uint16(types.uint16, types.uint16, types.boolean), codegen


_U16 = nb.uint16[::1]


@kernel([nb.void(_U16, _U16)], nogil=True)
def sum_into_f16(dst, src):
    """Dst += src on float16 bit patterns."""
    for i in range(dst.size):
        dst[i] = add_f16(dst[i], src[i])


@kernel([nb.void(_U16, _U16)], nogil=True)
def prod_into_f16(dst, src):
    """Dst *= src on float16 bit patterns."""
    for i in range(dst.size):
        dst[i] = mul_f16(dst[i], src[i])


@kernel([nb.void(_U16, _U16)], nogil=True)
def min_into_f16(dst, src):
    """Dst = min(dst, src) on float16 bit patterns: NaNs as numpy.minimum, src on a tie.

    (So min(0.0, -0.0) is -0.0, as numpy.minimum gives for float32; for
    float16 NumPy returns the first of the two.)
    """
    for i in range(dst.size):
        dst[i] = pick_f16(dst[i], src[i], True)


@kernel([nb.void(_U16, _U16)], nogil=True)
def max_into_f16(dst, src):
    """Dst = max(dst, src) on float16 bit patterns: NaNs as numpy.maximum, src on a tie."""
    for i in range(dst.size):
        dst[i] = pick_f16(dst[i], src[i], False)


@kernel([nb.void(_U16, _U16, nb.float64)], nogil=True)
def sum_div_into_f16(dst, src, divisor):
    """Dst = (dst + src) / divisor on float16 bits, rounded once."""
    if by_multiplying(divisor):
        average_f16(dst, dst, src, np.float32(divisor))
    else:
        for i in range(dst.size):
            dst[i] = avg_f16(dst[i], src[i], divisor)


@kernel([nb.void(_U16, nb.float64)], nogil=True)
def div_inplace_f16(dst, divisor):
    """Dst /= divisor on float16 bit patterns."""
    if by_multiplying(divisor):
        n = np.float32(divisor)
        for i in range(dst.size):  # a sum with nothing lost: see average_f16
            dst[i] = _f32_to_f16(_f16_to_f32(dst[i]) / n)
    else:
        for i in range(dst.size):
            dst[i] = round_f16(np.float64(f16_value(dst[i])) / divisor)
