"""Numba kernels against NumPy, every op x dtype, single process."""

import numba as nb
import numpy as np
import pytest

from collectives import _kernels as K
from collectives._ops import kernel_view, resolve_op

NATIVE = ("float32", "float64", "int32", "int64")
UFUNCS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}


def data(dtype, n=1001, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        return rng.integers(-1000, 1000, n).astype(dtype)
    return (rng.standard_normal(n) * 100).astype(dtype)


@pytest.mark.parametrize("op", sorted(UFUNCS))
@pytest.mark.parametrize("dtype", NATIVE)
def test_native_kernels_match_numpy_bitwise(op, dtype):
    a, b = data(dtype, seed=1), data(dtype, seed=2)
    if dtype.startswith("float"):
        a[:3] = [np.nan, 1.0, -0.0]
        b[:3] = [1.0, np.nan, 0.0]
    want = UFUNCS[op](a, b)
    resolve_op(op, dtype).reduce(a, b)
    assert a.tobytes() == want.tobytes()


@pytest.mark.parametrize("op", ("min", "max"))
@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_min_max_keep_numpys_nan_payloads_and_zero_signs(op, dtype):
    # Every pair of specials, long enough for the vector loop: NaNs of two
    # signs and payloads (the kernels return d's NaN as d + s), both zeros.
    quiet = np.array([np.nan, -np.nan, 1.5, -0.0, 0.0, np.inf, -np.inf, -2.0], dtype)
    payload = quiet[:1].view(np.uint32 if dtype == "float32" else np.uint64) | 0x123
    specials = np.concatenate([quiet, payload.view(dtype)])
    a, b = (np.repeat(specials, specials.size), np.tile(specials, specials.size))
    want = UFUNCS[op](a, b)
    resolve_op(op, dtype).reduce(a, b)
    assert a.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_sum_div_fused_matches_two_numpy_passes(dtype):
    a, b = data(dtype, seed=3), data(dtype, seed=4)
    want = (a + b) / np.dtype(dtype).type(3)
    K.sum_div_into(a, b, 3)
    assert a.tobytes() == want.tobytes()
    K.div_inplace(b, 7)
    assert b.tobytes() == (data(dtype, seed=4) / np.dtype(dtype).type(7)).tobytes()


def test_float16_decode_encode_every_bit_pattern():
    bits = np.arange(1 << 16, dtype=np.uint16)
    values = bits.view(np.float16)
    decoded = np.array([K.f16_to_f64(b) for b in bits[::97]])
    np.testing.assert_array_equal(decoded, values[::97].astype(np.float64))
    roundtrip = np.array([K.f64_to_f16(v) for v in values.astype(np.float64)], np.uint16)
    finite = ~np.isnan(values)
    np.testing.assert_array_equal(roundtrip[finite], bits[finite])
    assert np.isnan(roundtrip.view(np.float16)[~finite]).all()
    # Every pattern through a kernel (add -0.0, exact), where the
    # conversions are vectorised: every exponent, both signs.
    got = bits.copy()
    K.sum_into_f16(got, np.full(bits.size, 0x8000, np.uint16))
    np.testing.assert_array_equal(got[finite], bits[finite])
    assert np.isnan(got.view(np.float16)[~finite]).all()


@nb.njit
def _both_ways(a, b):
    # add_f16 / mul_f16 as the kernels use them here, and through float64.
    out = np.empty((4, a.size), np.uint16)
    for i in range(a.size):
        x, y = K.f16_to_f64(a[i]), K.f16_to_f64(b[i])
        out[0, i], out[1, i] = K.add_f16(a[i], b[i]), K.f64_to_f16(x + y)
        out[2, i], out[3, i] = K.mul_f16(a[i], b[i]), K.f64_to_f16(x * y)
    return out


def test_float16_sum_and_product_through_float32_equal_the_exact_ones():
    # Through float32 where the machine converts in one instruction
    # (K.NATIVE_HALF), else exactly through float64: the same bits on
    # every pattern against 64 others of every magnitude, and on 2**20
    # random pairs (all 2**32 pairs were checked once, off the suite).
    bits = np.arange(1 << 16, dtype=np.uint16)
    a = np.concatenate([np.repeat(bits, 64), np.random.default_rng(9).integers(
        0, 1 << 16, 1 << 20).astype(np.uint16)])
    b = np.concatenate([np.tile(bits[::1024], bits.size), np.random.default_rng(10).integers(
        0, 1 << 16, 1 << 20).astype(np.uint16)])
    out = _both_ways(a, b)
    wide_a, wide_b = a.view(np.float16).astype(np.float64), b.view(np.float16).astype(np.float64)
    for fast, exact, ufunc in ((out[0], out[1], np.add), (out[2], out[3], np.multiply)):
        nan = np.isnan(exact.view(np.float16))
        np.testing.assert_array_equal(np.isnan(fast.view(np.float16)), nan)
        np.testing.assert_array_equal(fast[~nan], exact[~nan])
        with np.errstate(over="ignore", invalid="ignore"):  # and as NumPy rounds
            want = ufunc(wide_a, wide_b).astype(np.float16).view(np.uint16)
        np.testing.assert_array_equal(exact[~nan], want[~nan])


def _pattern_pairs(others, *, seed):
    # Every float16 pattern against `others` patterns of every magnitude,
    # then 2**20 random pairs: (dst, src) bits.
    bits = np.arange(1 << 16, dtype=np.uint16)
    rng = np.random.default_rng(seed)
    dst = np.concatenate([np.repeat(bits, others), rng.integers(0, 1 << 16, 1 << 20, np.uint16)])
    src = np.concatenate([np.tile(bits[::(1 << 16) // others], bits.size),
                          rng.integers(0, 1 << 16, 1 << 20, np.uint16)])
    return dst, src


@pytest.mark.parametrize("op", ("min", "max"))
def test_float16_min_max_on_the_bits_compare_the_values(op):
    # Every pattern against 64 others of every magnitude and 2**20 random
    # pairs: the kernel keeps dst's pattern where it is NaN or beats src's
    # value (so src on a tie, -0.0 against 0.0 too), else src's.
    dst, src = _pattern_pairs(64, seed=12)
    a, b = dst.view(np.float16).astype(np.float32), src.view(np.float16).astype(np.float32)
    beats = (a < b) if op == "min" else (a > b)
    want = np.where(beats | np.isnan(a), dst, src)
    getattr(K, f"{op}_into_f16")(dst, src)
    np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize("half_compare", (True, False))
def test_float16_min_max_either_way_compare_the_values(half_compare, monkeypatch):
    # pick_f16 compares as LLVM's half (vcmpph with AVX512-FP16) or on the
    # bits, by K.HALF_COMPARE when it compiles: both ways, whatever this
    # machine has (without FP16 lanes LLVM widens the half compare).
    monkeypatch.setattr(K, "HALF_COMPARE", half_compare)

    @nb.njit
    def both(d, s, low, high):
        for i in range(d.size):
            low[i], high[i] = K.pick_f16(d[i], s[i], True), K.pick_f16(d[i], s[i], False)

    dst, src = _pattern_pairs(64, seed=13)
    low, high = np.empty_like(dst), np.empty_like(dst)
    both(dst, src, low, high)
    a, b = dst.view(np.float16).astype(np.float32), src.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(low, np.where((a < b) | np.isnan(a), dst, src))
    np.testing.assert_array_equal(high, np.where((a > b) | np.isnan(a), dst, src))


@nb.njit
def _rounded_both_ways(x):
    out = np.empty((2, x.size), np.uint16)
    for i in range(x.size):
        out[0, i], out[1, i] = K.round_f16(x[i]), K.f64_to_f16(x[i])
    return out


def test_float16_rounding_through_float32_equals_the_exact_one():
    # round_f16 (round to odd in float32, then to nearest, where
    # K.NATIVE_HALF) against f64_to_f16 on the bits: every midpoint and its
    # neighbours, random values at every scale, averages of pattern pairs.
    rng = np.random.default_rng(11)
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    finite = np.unique(values[np.isfinite(values)])
    mid = (finite[:-1] + finite[1:]) / 2
    pairs = rng.choice(values, (2, 1 << 20))
    with np.errstate(invalid="ignore"):  # inf - inf, NaN: kept, as NaN
        x = np.concatenate([mid, np.nextafter(mid, np.inf), np.nextafter(mid, -np.inf),
                            (pairs[0] + pairs[1]) / 3, values / 7,
                            *(rng.standard_normal(1 << 16) * 10.0 ** e for e in range(-12, 42, 3)),
                            [5e-324, 3.4e38, 3.5e38, 1e300, np.inf, -np.inf, np.nan]])
    fast, exact = _rounded_both_ways(x)
    nan = np.isnan(x)
    np.testing.assert_array_equal(fast[~nan], exact[~nan])
    assert np.isnan(fast[nan].view(np.float16)).all()



def test_float16_encode_rounds_every_midpoint_to_even():
    # The encoder rounds on the bits: each midpoint between two float16
    # values (a tie), and the float64 values either side of it, at every
    # exponent; the edges of the subnormals and of infinity; NaN.
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    finite = np.unique(values[np.isfinite(values)])
    mid = (finite[:-1] + finite[1:]) / 2
    edges = [65504.0, 65519.99, 65520.0, 1e300, 2.0 ** -24, 2.0 ** -25, 2.0 ** -26, 5e-324,
             2.0 ** -14 * (1 - 2.0 ** -12), 2.0 ** -14 * (1 - 2.0 ** -11)]
    x = np.concatenate([mid, np.nextafter(mid, np.inf), np.nextafter(mid, -np.inf), edges])
    x = np.concatenate([x, -x])
    got = np.array([K.f64_to_f16(v) for v in x], np.uint16)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(got, x.astype(np.float16).view(np.uint16))
    assert K.f64_to_f16(np.nan) == 0x7E00


@pytest.mark.parametrize("op", sorted(UFUNCS))
def test_float16_kernels_are_correctly_rounded(op):
    a, b = data("float16", seed=5), data("float16", seed=6)
    a[:4] = [65504, -65504, 6e-8, np.inf]
    b[:4] = [32, -32, 6e-8, 1]
    with np.errstate(over="ignore"):
        want = UFUNCS[op](a.astype(np.float64), b.astype(np.float64)).astype(np.float16)
    got = a.copy()
    resolve_op(op, "float16").reduce(kernel_view(got), kernel_view(b))
    assert got.tobytes() == want.tobytes()


def test_float16_avg_step():
    a, b = data("float16", seed=7), data("float16", seed=8)
    want = ((a.astype(np.float64) + b.astype(np.float64)) / 4).astype(np.float16)
    K.sum_div_into_f16(a.view(np.uint16), b.view(np.uint16), 4.0)
    assert a.tobytes() == want.tobytes()


def _quotient_rounded_once(a, b, divisor):
    # (a + b) / divisor in float64, then to float16: rounding twice is
    # rounding once here (53 >= 2 * 11 + 2 bits); NaN payloads aside.
    with np.errstate(over="ignore", invalid="ignore"):
        wide = a.view(np.float16).astype(np.float64) + b.view(np.float16).astype(np.float64)
        return (wide / divisor).astype(np.float16).view(np.uint16)


def _same_or_both_nan(got, want):
    nan = (got & 0x7FFF > 0x7C00) & (want & 0x7FFF > 0x7C00)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.array_equal(got & 0x7FFF > 0x7C00, want & 0x7FFF > 0x7C00)


@pytest.mark.parametrize("divisor", (1, 2, 3, 5, 7, 12, 4095, 4096, 2.5, 10007))
def test_float16_avg_on_the_bits_is_rounded_once(divisor):
    # Every pattern against 256 others of every magnitude and 2**20 random
    # pairs.  Integer divisors below MULTIPLY_BELOW take average_f16 (a
    # float32 division where the sums are exact, quotient_f16 in a block
    # where one is not), the others divide in float64; ties (a + b = 3 m for
    # a midpoint m) are common and need the exact sign of m * n - (a + b).
    dst, src = _pattern_pairs(256, seed=13)
    want = _quotient_rounded_once(dst, src, divisor)
    K.sum_div_into_f16(dst, src, float(divisor))
    _same_or_both_nan(dst, want)
    bits = np.arange(1 << 16, dtype=np.uint16)
    alone = bits.copy()
    K.div_inplace_f16(alone, float(divisor))
    _same_or_both_nan(alone, _quotient_rounded_once(bits, np.full_like(bits, 0x8000), divisor))


#: (divisor, dst, src): a pair whose float32 sum is inexact and whose
#: float16(sum / divisor) is one float16 ulp off: a block holding it must
#: take the exact path.
_INEXACT_PAIRS = [(3, 0x3C00, 0x07FF), (5, 0x3C00, 0x0401), (6, 0x3C00, 0x07FF),
                  (7, 0x3C01, 0x03FF), (4095, 0x3C03, 0x7B7F)]


@pytest.mark.parametrize("divisor,inexact_dst,inexact_src", _INEXACT_PAIRS)
def test_float16_average_divides_exact_sums_and_redoes_a_block_with_an_inexact_one(
        divisor, inexact_dst, inexact_src):
    # Values within a factor 16 of each other, so every float32 sum is
    # exact and each block takes the division (ties are common: with n = 3,
    # a + b = 3 m for a midpoint m), and one planted pair in block 7.  Not
    # a multiple of AVERAGE_BLOCK, so the tail runs too; in place (dst),
    # and out-of-place and as the folds call it (out is src) through
    # average_f16 itself.
    rng = np.random.default_rng(divisor)
    count = 50 * K.AVERAGE_BLOCK + 17
    signs = rng.choice([-1, 1], (2, count))
    dst, src = (signs * rng.uniform(0.25, 4.0, (2, count))).astype(np.float16).view(np.uint16)
    planted = 7 * K.AVERAGE_BLOCK + 5
    dst[planted], src[planted] = inexact_dst, inexact_src
    want = _quotient_rounded_once(dst, src, divisor)
    pair = [dst[planted:planted + 1].view(np.float16).astype(np.float32),
            src[planted:planted + 1].view(np.float16).astype(np.float32)]
    divided = ((pair[0] + pair[1]) / np.float32(divisor)).astype(np.float16).view(np.uint16)
    assert divided[0] != want[planted]  # the pair needs the exact path
    got = dst.copy()
    K.sum_div_into_f16(got, src, float(divisor))
    _same_or_both_nan(got, want)
    apart = np.empty_like(dst)
    K.average_f16(apart, dst, src, np.float32(divisor))
    _same_or_both_nan(apart, want)
    folded = src.copy()  # out is the second input, as in the folds
    K.average_f16(folded, dst, folded, np.float32(divisor))
    _same_or_both_nan(folded, want)


def test_integer_sum_wraps_like_numpy():
    a = np.array([np.iinfo(np.int32).max], np.int32)
    K.sum_into(a, np.array([1], np.int32))
    assert a[0] == np.iinfo(np.int32).min
