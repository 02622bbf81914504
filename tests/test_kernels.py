"""Numba kernels against NumPy, every op x dtype, single process."""

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
    # Every pattern through a kernel (decode, add -0.0 exactly, encode):
    # the table lookups that replaced math.ldexp, for every exponent.
    got = bits.copy()
    K.sum_into_f16(got, np.full(bits.size, 0x8000, np.uint16))
    np.testing.assert_array_equal(got[finite], bits[finite])
    assert (got[~finite] == 0x7E00).all()


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


def test_integer_sum_wraps_like_numpy():
    a = np.array([np.iinfo(np.int32).max], np.int32)
    K.sum_into(a, np.array([1], np.int32))
    assert a[0] == np.iinfo(np.int32).min
