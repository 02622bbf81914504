"""Arrays in shared memory that the all-reduce reduces without copying them in.

:func:`shared_array` allocates an array on every rank of a one-node
communicator inside an MPI-3 shared window (``MPI.Win.Allocate_shared``),
so that every rank can read every rank's array directly: the idea of
``MPI_Alloc_mem`` and of NCCL's registered user buffers.  ``allreduce``
("auto" or "shm") recognises such an array, or a contiguous part of it at
the same place on every rank, and runs the zero-copy algorithm (:func:`run`):

1. arrive: the agreement header exchange, which also says every rank's
   data is ready (each rank wrote its array before it called);
2. reduce and hand out: rank ``r`` folds chunk ``r`` of every rank's
   array, an L1-sized piece at a time, in the ring all-reduce's order, and
   writes each finished piece, still in L1, into every rank's array.  Only
   rank ``r`` reads or writes chunk ``r`` of any array, and it writes a
   piece only after reading it;
3. leave: every rank waits until all have written, so that its array is
   whole and nobody touches it after the call.

A plain buffer must first be copied into shared memory, which is the
largest part of the memory traffic of :mod:`collectives.shared_memory`'s
pipeline; here it is gone, and each chunk of each array is read once and
written once (2p bytes of traffic per byte over all ranks: per rank at 2
ranks, 2 times the buffer; 4 for the pipeline).  Until 2026-11-25 each
rank wrote only its own array and copied the others' finished chunks
from theirs (3p - 1).  The result has the ring's bits, like the
pipeline's.  ``optim.FlatParameters`` (and ``optim.MLP``) keep their
gradient in one when given ``grad_comm=``; ``optim.train --shared-grad``.
"""

import numpy as np
from mpi4py import MPI

from collectives import _combine_kernels as K
from collectives._agree import check_agreement
from collectives._chunks import chunk_bounds
from collectives._lifetime import release_keyval
from collectives._nodes import one_node_layout
from collectives._ops import DTYPES, kernel_view
from collectives._window import OUT, SharedWindow
from collectives.timeline import phase

__all__ = ["shared_array", "find", "run"]

_KEY = release_keyval()  # comm -> its _Arrays


class _Arrays(list):
    """``(start address, window)`` of a communicator's shared arrays, freed with it."""

    def release(self):
        for _, window in self:
            window.release()
        self.clear()


def shared_array(comm, shape, dtype=np.float32):
    """Return a zeroed array of ``shape`` and ``dtype`` in memory that all ranks share.

    Collective over ``comm``, whose ranks must all be on one node
    (``ValueError``) and pass the same size and ``dtype``
    (``CollectiveMismatchError`` on every rank if not).  The memory lives
    until ``comm`` is freed (for ``COMM_WORLD``: until MPI ends).
    ``allreduce(algorithm="auto")`` and ``"shm"`` on this array, or on a
    contiguous slice of it taken at the same place on every rank, skip the
    copy into shared memory.
    """
    dtype = np.dtype(dtype)
    if dtype not in DTYPES:
        raise TypeError(f"shared_array supports dtypes "
                        f"{', '.join(str(d) for d in DTYPES)}, not {dtype}")
    count = int(np.prod(shape, dtype=np.int64))
    if count < 0 or any(int(n) < 0 for n in np.atleast_1d(shape)):
        raise ValueError(f"shape must not be negative, got {shape}")
    # Before the window: segments of different sizes would break its layout.
    check_agreement(comm, "shared_array", [("count", count, count),
                                           ("dtype", DTYPES.index(dtype), str(dtype))])
    one_node_layout(comm, "shared_array")
    window = SharedWindow(comm, count * dtype.itemsize)
    arrays = comm.Get_attr(_KEY)
    if arrays is None:
        arrays = _Arrays()
        comm.Set_attr(_KEY, arrays)
    start = (window.rank * window.stride + window.large_offset()) // dtype.itemsize
    array = window.bytes.view(dtype)[start:start + count].reshape(shape)
    arrays.append((MPI.Get_address(window.bytes) + start * dtype.itemsize, window))
    array[...] = 0
    comm.Barrier()  # nobody reads a peer's array before it is zeroed
    return array


def find(comm, buf):
    """Return ``(window, byte offset)`` of ``buf`` in a shared array of ``comm``, or None."""
    arrays = comm.Get_attr(_KEY)
    if not arrays:
        return None
    address = MPI.Get_address(buf)  # 0.2 us; numpy's ctypes.data takes 1.6
    for start, window in arrays:
        offset = address - start
        if 0 <= offset and offset + buf.nbytes <= window.large_bytes and (
                offset % buf.itemsize == 0):
            return window, offset
    return None


def run(buf, found, reduction, *, timeout, streaming=False):
    """All-reduce ``buf`` in place, found by :func:`find`, after the agreement exchange.

    The exchange (which names the offset, see ``allreduce``) must come
    first: it is the arrival of every rank's data.  ``streaming``: write
    with streaming stores (``_atomics.store_streaming``); same bits.
    """
    window, offset = found
    flat = kernel_view(buf)
    if window.size == 1 or flat.size == 0:
        return buf
    wait = dict(operation="allreduce", timeout=timeout)
    call = window.blocks = window.blocks + 1  # this window's counters count calls
    item, rank, size = flat.itemsize, window.rank, window.size
    typed, stride = window.typed(flat.dtype), window.stride // item
    at = (window.large_offset() + offset) // item  # the array's start in row 0
    starts, sizes = chunk_bounds(flat.size, size)
    with phase(window.comm, "zero-copy all-reduce", bytes=buf.nbytes):
        _reduce_my_chunk(typed, at, stride, starts, sizes, rank, size, reduction, streaming)
        window.publish(OUT, call)
        window.wait(OUT, call, **wait)  # every row is whole, and nobody touches mine now
    return buf


def _reduce_my_chunk(typed, at, stride, starts, sizes, rank, size, reduction, streaming):
    # Chunk `rank` of every row, folded in the ring's order (its chunk
    # `rank` starts at row `rank`) and written back into every row: only
    # this rank reads or writes chunk `rank` of any row, and each piece is
    # read before it is written.
    lo, n = starts[rank], sizes[rank]
    if n:
        code, last = K.CODES[reduction.name]
        K.fold_ring_to_rows(typed, at + lo, stride, n, size, rank, code, last, float(size),
                            streaming)
