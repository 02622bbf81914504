"""Reduction operators, supported dtypes and argument checks.

An ``op`` is given by name ("sum", "prod", "min", "max", "avg") or as an
MPI handle (``MPI.SUM``, ``MPI.PROD``, ``MPI.MIN``, ``MPI.MAX``).  MPI
handles are not hashable, so the dispatch is an explicit table compared
with ``==``.  Everything here is local: no message is sent.
"""

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from collectives import _kernels as K

__all__ = [
    "OPS", "DTYPES", "Op", "resolve_op", "check_buffer", "check_root",
    "kernel_view",
]

#: dtypes every collective accepts.
DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64),
          np.dtype(np.int32), np.dtype(np.int64))
_SUPPORTED = frozenset(DTYPES)  # a hash lookup: 3x faster than the tuple's scan

# (name, MPI handle, kernel for native dtypes, kernel for float16 bits)
_TABLE = (
    ("sum", MPI.SUM, K.sum_into, K.sum_into_f16),
    ("prod", MPI.PROD, K.prod_into, K.prod_into_f16),
    ("min", MPI.MIN, K.min_into, K.min_into_f16),
    ("max", MPI.MAX, K.max_into, K.max_into_f16),
    ("avg", None, K.sum_into, K.sum_into_f16),
)

#: op names accepted as strings.
OPS = tuple(row[0] for row in _TABLE)


@dataclass(frozen=True)
class Op:
    """A resolved reduction: name, MPI handle and the kernels for one dtype.

    ``reduce(dst, src)`` computes ``dst = dst op src``; ``finish(dst, src, n)``
    is the last reduction step of an "avg" (sum, then divide by ``n``) fused
    into one pass; ``code`` is a small integer used by the agreement check.
    """

    name: str
    code: int
    mpi: object
    reduce: object
    sum_div: object
    div: object

    @property
    def average(self):
        return self.name == "avg"


def _lookup(op):
    for code, (name, handle, kernel, kernel16) in enumerate(_TABLE):
        if (isinstance(op, str) and op == name) or (
                isinstance(op, MPI.Op) and handle is not None and op == handle):
            return code, name, handle, kernel, kernel16
    allowed = ", ".join(repr(n) for n in OPS)
    raise ValueError(f"unsupported op {op!r}; use one of {allowed} "
                     "or MPI.SUM, MPI.PROD, MPI.MIN, MPI.MAX")


def resolve_op(op, dtype):
    """Return the :class:`Op` for ``op`` on buffers of ``dtype``.

    Raises ``ValueError`` for an unknown op and ``TypeError`` for "avg" on
    an integer dtype.
    """
    code, name, handle, kernel, kernel16 = _lookup(op)
    dtype = np.dtype(dtype)
    if name == "avg" and dtype.kind != "f":
        raise TypeError(f"op 'avg' needs a floating dtype, got {dtype}; "
                        "use 'sum' and divide, or cast to float first")
    if dtype == np.float16:
        return Op(name, code, handle, kernel16, *_DIVIDE[np.float16])
    return Op(name, code, handle, kernel, *_DIVIDE.get(dtype.type, _NO_DIVIDE))


def _divisor_as(scalar, kernel):
    # The kernel with its last argument (the divisor: callers pass the
    # rank count, an int) as `scalar`, its type in the kernel's signature:
    # a kernel converts other types only on its slow path (see _compile).
    def call(*args):
        return kernel(*args[:-1], scalar(args[-1]))
    call.__name__ = kernel.__name__
    return call


#: dtype -> (sum_div, div) of the Op ("avg" only: floating dtypes).
_DIVIDE = {
    np.float16: (_divisor_as(float, K.sum_div_into_f16), _divisor_as(float, K.div_inplace_f16)),
    **{t: (_divisor_as(t, K.sum_div_into), _divisor_as(t, K.div_inplace))
       for t in (np.float32, np.float64)},
}
_NO_DIVIDE = (K.sum_div_into, K.div_inplace)  # integer dtypes: never called


def check_buffer(buf, *, writeable=True):
    """Raise unless ``buf`` is a C-contiguous ndarray of a supported dtype."""
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"buffer must be a numpy.ndarray, got {type(buf).__name__}")
    if buf.dtype not in _SUPPORTED:
        allowed = ", ".join(str(d) for d in DTYPES)
        raise TypeError(f"unsupported dtype {buf.dtype}; use one of {allowed}")
    flags = buf.flags
    if not flags.c_contiguous:
        raise ValueError(f"buffer of shape {buf.shape} and strides {buf.strides} "
                         "is not C-contiguous; pass np.ascontiguousarray(buf) "
                         "and copy the result back")
    if writeable and not flags.writeable:
        raise ValueError("buffer is read-only; collectives work in place "
                         "and need a writeable array")


def check_root(root, comm):
    """Raise unless ``root`` is an int rank of ``comm``."""
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)):
        raise TypeError(f"root must be an int, got {type(root).__name__}")
    if not 0 <= root < comm.Get_size():
        raise ValueError(f"root {root} is out of range for a communicator "
                         f"of size {comm.Get_size()} (0..{comm.Get_size() - 1})")


def kernel_view(buf):
    """Return a flat view of ``buf`` in the dtype its kernels take."""
    flat = buf.reshape(-1)
    return flat.view(np.uint16) if flat.dtype == np.float16 else flat
