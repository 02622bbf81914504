"""Numba kernels that read and write another process's memory (Linux cross-memory attach).

``process_vm_readv(2)`` copies bytes from another process's address space
into ours in one kernel copy, as MPICH's and Open MPI's "CMA" transports do
for large messages on one node; ``process_vm_writev(2)`` copies ours into
theirs.  The kernels call them through an ``ExternalFunction`` (the symbol
is resolved by name when the kernel is compiled, so, unlike a ctypes
pointer, the compiled kernel can be cached); on a system without the
calls they list no signatures, so nothing here compiles, and
``single_copy`` never calls them (``SUPPORTED`` is False).  They trust their inputs;
``single_copy`` checks.  Each returns the first rank whose memory it could
not read or write, or -1.
"""

import ctypes
import sys

import numba as nb
import numpy as np

from collectives._combine_kernels import _I64, _TYPES, fold_ring_in_place
from collectives._compile import kernel

__all__ = ["SUPPORTED", "pull", "push", "reduce_chunk"]

_LIBC = ctypes.CDLL(None)
#: Whether this system has ``process_vm_readv`` and ``process_vm_writev``
#: (Linux >= 3.2, glibc >= 2.15).
SUPPORTED = sys.platform.startswith("linux") and all(
    hasattr(_LIBC, name) for name in ("process_vm_readv", "process_vm_writev"))

_IOV_CALL = nb.int64(nb.int32, nb.uint64, nb.uint64, nb.uint64, nb.uint64, nb.uint64)
_readv = nb.types.ExternalFunction("process_vm_readv", _IOV_CALL)
_writev = nb.types.ExternalFunction("process_vm_writev", _IOV_CALL)
_OPTIONS = dict(nogil=True, boundscheck=False)


def _jit(signatures):
    # Signatures (so precompiled) only where the calls exist.
    return kernel(signatures if SUPPORTED else [], **_OPTIONS)


@nb.njit(nogil=True, inline="always")
def _move(pid, local, address, iov, write):
    # One kernel copy between `local` and local.nbytes bytes at `address`
    # (an int64: user addresses are below 2**63) in process `pid`: into
    # theirs if `write`, else into `local`; True if all bytes moved.
    nbytes = local.nbytes
    if nbytes == 0:
        return True
    iov[0], iov[1] = local.ctypes.data, nbytes  # local iovec
    iov[2], iov[3] = address, nbytes  # remote iovec
    base = np.uint64(iov.ctypes.data)
    call = _writev if write else _readv
    return call(np.int32(pid), base, 1, base + np.uint64(16), 1, 0) == nbytes


@_jit([nb.boolean(nb.int64, _I64, nb.int64)])
def pull(pid, out, address):
    """Fill ``out`` from ``address`` in process ``pid``; return whether all bytes came."""
    return _move(pid, out, address, np.empty(4, np.uint64), False)


@_jit([nb.boolean(nb.int64, _I64, nb.int64)])
def push(pid, data, address):
    """Copy ``data`` to ``address`` in process ``pid``; return whether all bytes went."""
    return _move(pid, data, address, np.empty(4, np.uint64), True)


@_jit([nb.int64(t[::1], _I64, _I64, nb.int64, t[::1], nb.int64, nb.int64, nb.int64, nb.float64)
      for t in _TYPES])
def reduce_chunk(mine, pids, addresses, rank, scratch, piece, code, last, divisor):
    """Fold every rank's copy of my chunk into ``mine``, in the ring's order, and hand it out.

    Rank ``q``'s copy starts at ``addresses[q]`` in process ``pids[q]``.
    Piece by piece (``piece`` elements), the other ranks' parts are read
    into rows of ``scratch`` (row ``q`` at ``q * piece``), where they stay
    in cache for ``fold_ring_in_place``, which folds them into ``mine`` (row
    ``rank``: the ring's chunk ``rank`` starts there) in the ring's order; then
    the finished piece, still in cache, is written over every other rank's
    copy (which only this rank reads, and has just read).
    """
    size, item = pids.size, mine.itemsize
    iov = np.empty(4, np.uint64)
    for at in range(0, mine.size, piece):
        m = min(piece, mine.size - at)
        for q in range(size):
            row = scratch[q * piece:q * piece + m]
            if q != rank and not _move(pids[q], row, addresses[q] + at * item, iov, False):
                return q
        part = mine[at:at + m]
        fold_ring_in_place(part, scratch, 0, piece, size, rank, code, last, divisor)
        for q in range(size):
            if q != rank and not _move(pids[q], part, addresses[q] + at * item, iov, True):
                return q
    return -1
