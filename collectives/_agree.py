"""Agreement check: do all ranks pass the same count, dtype, op and root.

Each rank packs its values as ``[v, -v]`` and the ranks compute the
elementwise maximum by dissemination (round ``k`` sends to ``rank + 2**k``
and receives from ``rank - 2**k``; MAX is idempotent, so overlaps do no
harm): after ``ceil(log2(size))`` rounds every rank knows whether all
values are equal (``max(v) == -max(-v)``).  The messages are point to
point with a deadline, so a rank that never arrives gives a timeout error
naming the rank waited for instead of a hang.  Only when values differ
does an ``allgather`` collect each rank's values for the message, so every
rank raises the same error and none is left waiting.

The fast all-reduces carry the same ``[v, -v]`` vector as a header on
their own messages instead (:func:`agreement_header`,
``_combine_kernels.merge_header``) and call :func:`raise_disagreement`
once every rank has seen that the merged values differ.
"""

import numpy as np
from mpi4py import MPI

from collectives._wait import wait_all
from collectives.errors import CollectiveMismatchError

__all__ = ["check_comm", "check_agreement", "agreement_header", "raise_disagreement"]

_TAG = 77


def check_comm(comm):
    """Raise ``TypeError`` unless ``comm`` is an mpi4py intracommunicator."""
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError("comm must be an mpi4py intracommunicator "
                        f"(e.g. MPI.COMM_WORLD), got {type(comm).__name__}")
    if comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL")


def check_agreement(comm, operation, fields, *, timeout=None):
    """Raise ``CollectiveMismatchError`` on every rank if ranks disagree.

    ``fields`` is a sequence of ``(label, code, shown)``: an integer to
    compare and the value to show in the error message.
    """
    if comm.Get_size() == 1 or not fields:
        return
    both = agreement_header(fields)
    _max_allreduce(both, comm, operation, timeout)
    if np.array_equal(both[:len(fields)], -both[len(fields):]):
        return
    raise_disagreement(comm, operation, fields)


def agreement_header(fields):
    """Return the int64 vector ``[v, -v]`` of the fields' codes."""
    codes = np.array([f[1] for f in fields], dtype=np.int64)
    return np.concatenate([codes, -codes])


def raise_disagreement(comm, operation, fields):
    """Gather every rank's values and raise ``CollectiveMismatchError`` (collective).

    Call on every rank once all know that the ranks disagree.
    """
    table = comm.allgather([f[2] for f in fields])  # error path only
    raise CollectiveMismatchError(_describe(operation, fields, table))


def _max_allreduce(vec, comm, operation, timeout):
    # Dissemination: after round k each rank holds the max over 2**(k+1) ranks.
    rank, size = comm.Get_rank(), comm.Get_size()
    incoming = np.empty_like(vec)
    distance = 1
    while distance < size:
        source, dest = (rank - distance) % size, (rank + distance) % size
        requests = [comm.Irecv(incoming, source, _TAG), comm.Isend(vec, dest, _TAG)]
        wait_all(requests, [source, dest], operation=operation, timeout=timeout,
                 comm=comm)
        np.maximum(vec, incoming, out=vec)
        distance <<= 1


def _describe(operation, fields, table):
    parts = []
    for j, (label, _, _) in enumerate(fields):
        column = [row[j] for row in table]
        if all(v == column[0] for v in column):
            continue
        per_rank = ", ".join(f"rank {r} has {v}" for r, v in enumerate(column))
        parts.append(f"{label}: {per_rank}")
    return f"{operation}: ranks disagree on " + "; ".join(parts)
