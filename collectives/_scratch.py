"""Scratch buffers cached on the communicator and reused across calls.

The buffers live in an MPI attribute of the communicator, so they are freed
with it and two communicators never share one.  A collective asks for the
number of bytes it needs; the buffer only grows.  Calls on one communicator
are not reentrant (as MPI's blocking collectives are not), so one set of
buffers per communicator is enough.
"""

import numpy as np
from mpi4py import MPI

__all__ = ["scratch"]

_KEYVAL = MPI.Comm.Create_keyval()


def scratch(comm, slot, count, dtype):
    """Return a reused 1-D array of ``count`` elements of ``dtype``.

    ``slot`` names one of several independent buffers (an algorithm that
    needs two at once asks for slots 0 and 1).
    """
    pool = comm.Get_attr(_KEYVAL)
    if pool is None:
        pool = {}
        comm.Set_attr(_KEYVAL, pool)
    dtype = np.dtype(dtype)
    nbytes = count * dtype.itemsize
    raw = pool.get(slot)
    if raw is None or raw.size < nbytes:
        raw = np.empty(max(nbytes, 64), dtype=np.uint8)
        pool[slot] = raw
    return raw[:nbytes].view(dtype)
