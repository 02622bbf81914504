"""The MPI library's own collectives, behind the same interface, as a baseline."""

import numpy as np
from mpi4py import MPI

from collectives._prepare import prepare

__all__ = ["mpi_allreduce"]


def mpi_allreduce(buf, comm, *, op="sum", check=True, timeout=None):
    """All-reduce ``buf`` in place with the MPI library's ``MPI_Allreduce``.

    Arguments and result are those of :func:`collectives.ring_allreduce`.
    float16 is not supported (MPI has no standard float16 type) and raises
    ``TypeError``; "avg" is a sum followed by a division.  ``timeout``
    bounds the agreement check only: MPI's own ``Allreduce`` cannot be
    interrupted.
    """
    if isinstance(buf, np.ndarray) and buf.dtype == np.float16:
        raise TypeError("algorithm 'mpi' does not support float16: MPI has no "
                        "standard float16 type; use 'ring' or 'tree'")
    reduction = prepare("mpi_allreduce", buf, comm, op=op, check=check,
                        timeout=timeout)
    if buf.size:
        comm.Allreduce(MPI.IN_PLACE, buf.reshape(-1), op=reduction.mpi or MPI.SUM)
        if reduction.average and comm.Get_size() > 1:
            reduction.div(buf.reshape(-1), comm.Get_size())
    return buf
