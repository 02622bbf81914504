"""Numba kernels for the elementwise buffer math of the collectives.

Every kernel is a short loop that trusts its input: same length, same
dtype, C-contiguous 1-D arrays.  The Python wrappers in ``_ops`` do all the
checks.  ``_jit`` owns the compile options: each kernel lists its
signatures, which ``_compile.precompile`` caches on disk at install, and
loads the one it is called with on its first call (see ``_compile``).

Numba has no float16 arithmetic on the CPU, so float16 buffers are handled
as ``uint16`` bit patterns: each element is decoded exactly into float64,
combined, and rounded back to the nearest float16 (ties to even).  The sum
or product of two float16 values is exact in float64, so these kernels give
the correctly rounded float16 result of every single operation.
"""

import math

import numba as nb
import numpy as np

from collectives._compile import kernel

__all__ = [
    "sum_into", "prod_into", "min_into", "max_into", "sum_div_into",
    "div_inplace",
    "sum_into_f16", "prod_into_f16", "min_into_f16", "max_into_f16",
    "sum_div_into_f16", "div_inplace_f16",
    "f16_to_f64", "f64_to_f16",
]

_TYPES = (nb.float32, nb.float64, nb.int32, nb.int64)
_FLOATS = (nb.float32, nb.float64)


def _jit(types, nargs, *, scalar=False):
    """A kernel for ``nargs`` arrays of each type, plus a scalar of it."""
    sigs = [nb.void(*([t[::1]] * nargs), *([t] if scalar else [])) for t in types]
    return kernel(sigs, nogil=True, boundscheck=False)


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
    for i in range(dst.size):
        d, s = dst[i], src[i]
        m = d if d < s else s
        dst[i] = m if d == d else d + s


@_jit(_TYPES, 2)
def max_into(dst, src):
    """Dst = max(dst, src), NaN and signed zeros exactly as numpy.maximum."""
    for i in range(dst.size):  # written as min_into is, for the same reason
        d, s = dst[i], src[i]
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

#: The weight of a float16 significand's last bit, by biased exponent
#: (0: subnormal, as exponent 1).  Looked up, as is ``_F16_SCALE_UP``,
#: rather than computed with ``math.ldexp``, a library call per element:
#: 8 M elements, AMD Zen 4 VM, sum 170 -> 56 ms, prod 162 -> 58, min 159
#: -> 11 (NumPy 48, 48, 75), same bits.
_F16_ULP = np.array([2.0 ** -24] + [2.0 ** (e - 25) for e in range(1, 32)])

#: 2**(11 - e) for e = -13 .. 16: scales a normal float16's value in
#: [2**(e-1), 2**e) to its 11-bit significand (``math.ldexp`` again).
_F16_SCALE_UP = np.array([2.0 ** (11 - e) for e in range(-13, 17)])


@kernel([nb.float64(nb.uint16)], nogil=True, inline="always")
def f16_to_f64(h):
    """Decode float16 bits exactly."""
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 31:
        if mant:
            return np.nan
        return -np.inf if h & 0x8000 else np.inf
    value = (mant + (1024.0 if exp else 0.0)) * _F16_ULP[exp]
    return -value if h & 0x8000 else value


@kernel([nb.uint16(nb.float64)], nogil=True, inline="always")
def f64_to_f16(x):
    """Round to the nearest float16 (ties to even) and return its bits."""
    if x != x:
        return np.uint16(0x7E00)
    sign = 0x8000 if math.copysign(1.0, x) < 0 else 0
    a = abs(x)
    if a >= 65520.0:  # rounds to infinity
        return np.uint16(sign | 0x7C00)
    if a < 6.103515625e-05:  # below 2**-14: subnormal (may round up to normal)
        return np.uint16(sign | int(np.rint(a * 16777216.0)))
    _, e = math.frexp(a)  # a in [2**(e-1), 2**e), e in -13 .. 16
    mant = int(np.rint(a * _F16_SCALE_UP[e + 13]))  # in [1024, 2048]; exact scaling
    return np.uint16(sign | (((e + 14) << 10) + mant - 1024))


_U16 = nb.uint16[::1]


@kernel([nb.void(_U16, _U16)], nogil=True)
def sum_into_f16(dst, src):
    """Dst += src on float16 bit patterns."""
    for i in range(dst.size):
        dst[i] = f64_to_f16(f16_to_f64(dst[i]) + f16_to_f64(src[i]))


@kernel([nb.void(_U16, _U16)], nogil=True)
def prod_into_f16(dst, src):
    """Dst *= src on float16 bit patterns."""
    for i in range(dst.size):
        dst[i] = f64_to_f16(f16_to_f64(dst[i]) * f16_to_f64(src[i]))


@kernel([nb.void(_U16, _U16)], nogil=True)
def min_into_f16(dst, src):
    """Dst = min(dst, src) on float16 bit patterns, as numpy.minimum."""
    for i in range(dst.size):
        d = f16_to_f64(dst[i])
        if not (d < f16_to_f64(src[i]) or d != d):
            dst[i] = src[i]


@kernel([nb.void(_U16, _U16)], nogil=True)
def max_into_f16(dst, src):
    """Dst = max(dst, src) on float16 bit patterns, as numpy.maximum."""
    for i in range(dst.size):
        d = f16_to_f64(dst[i])
        if not (d > f16_to_f64(src[i]) or d != d):
            dst[i] = src[i]


@kernel([nb.void(_U16, _U16, nb.float64)], nogil=True)
def sum_div_into_f16(dst, src, divisor):
    """Dst = (dst + src) / divisor on float16 bits, rounded once."""
    for i in range(dst.size):
        dst[i] = f64_to_f16((f16_to_f64(dst[i]) + f16_to_f64(src[i])) / divisor)


@kernel([nb.void(_U16, nb.float64)], nogil=True)
def div_inplace_f16(dst, divisor):
    """Dst /= divisor on float16 bit patterns."""
    for i in range(dst.size):
        dst[i] = f64_to_f16(f16_to_f64(dst[i]) / divisor)
