"""Numba kernels for gradient compression: float16 casts, top-k, scatter-add.

Like ``_kernels``, each kernel is a short loop that trusts its input; the
codecs in ``compression`` check shapes and dtypes.  float16 values are
``uint16`` bit patterns, converted with ``_kernels.f16_to_f64`` /
``f64_to_f16`` (round to nearest even).
"""

import numba as nb
import numpy as np

from collectives._compile import kernel
from collectives._kernels import f16_to_f64, f64_to_f16

__all__ = ["encode_f16", "decode_f16", "select_topk", "scatter_add_f16", "zero"]

_F32 = nb.float32[::1]
_U16 = nb.uint16[::1]
_I32 = nb.int32[::1]
_OPTIONS = dict(nogil=True, boundscheck=False)


@kernel([nb.void(_F32, _U16, nb.float64)], **_OPTIONS)
def encode_f16(src, dst, scale):
    """Dst = float16(src * scale), as bits."""
    for i in range(src.size):
        dst[i] = f64_to_f16(src[i] * scale)


@kernel([nb.void(_U16, _F32, nb.float64)], **_OPTIONS)
def decode_f16(src, dst, scale):
    """Dst = float32(float16 src * scale)."""
    for i in range(src.size):
        dst[i] = f16_to_f64(src[i]) * scale


@kernel([nb.void(_F32, _F32, _I32, _U16)], **_OPTIONS)
def select_topk(acc, work, indices, values):
    """Pick the ``indices.size`` largest |acc| and keep the rest in ``acc``.

    On return ``indices`` (ascending) and ``values`` (float16 bits) hold
    the selection, and ``acc`` holds what was not sent: the unselected
    elements, plus each selected element's float16 rounding error.  That
    remainder is the error-feedback residual for the next step.  ``work``
    is scratch of ``acc.size`` elements.
    """
    k = indices.size
    for i in range(acc.size):
        work[i] = abs(acc[i])
    threshold = np.partition(work, acc.size - k)[acc.size - k]
    above = 0  # elements strictly above the threshold all go in first
    for i in range(acc.size):
        if abs(acc[i]) > threshold:
            above += 1
    ties = k - above
    j = 0
    for i in range(acc.size):
        a = abs(acc[i])
        if a > threshold or (a == threshold and ties > 0):
            if a == threshold:
                ties -= 1
            indices[j] = i
            values[j] = f64_to_f16(acc[i])
            acc[i] = acc[i] - f16_to_f64(values[j])
            j += 1


@kernel([nb.void(_F32, _I32, _U16, nb.float64)], **_OPTIONS)
def scatter_add_f16(dense, indices, values, scale):
    """dense[indices[i]] += float16 values[i] * scale, in order."""
    for i in range(indices.size):
        dense[indices[i]] += f16_to_f64(values[i]) * scale


@kernel([_F32(_F32)], **_OPTIONS)
def zero(dst):
    """dst[:] = 0; return dst."""
    for i in range(dst.size):
        dst[i] = 0.0
    return dst
