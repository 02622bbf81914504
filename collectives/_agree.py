"""Agreement check: do all ranks pass the same count, dtype, op and root.

One small ``Allreduce(MAX)`` of ``[v, -v]`` per field tells every rank at
once whether all values are equal (``max(v) == -max(-v)``).  Only when they
are not does an ``Allgather`` collect each rank's values for the message,
so every rank raises the same error and none is left waiting.
"""

import numpy as np
from mpi4py import MPI

from collectives.errors import CollectiveMismatchError

__all__ = ["check_comm", "check_agreement"]


def check_comm(comm):
    """Raise ``TypeError`` unless ``comm`` is an mpi4py intracommunicator."""
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError("comm must be an mpi4py intracommunicator "
                        f"(e.g. MPI.COMM_WORLD), got {type(comm).__name__}")
    if comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL")


def check_agreement(comm, operation, fields):
    """Raise ``CollectiveMismatchError`` on every rank if ranks disagree.

    ``fields`` is a sequence of ``(label, code, names)``: an integer value
    per rank, and an optional tuple that turns codes into readable names.
    """
    if comm.Get_size() == 1 or not fields:
        return
    codes = np.array([f[1] for f in fields], dtype=np.int64)
    both = np.concatenate([codes, -codes])
    comm.Allreduce(MPI.IN_PLACE, both, op=MPI.MAX)
    n = len(fields)
    if np.array_equal(both[:n], -both[n:]):
        return
    table = np.empty((comm.Get_size(), n), dtype=np.int64)
    comm.Allgather(codes, table)
    raise CollectiveMismatchError(_describe(operation, fields, table))


def _describe(operation, fields, table):
    parts = []
    for j, (label, _, names) in enumerate(fields):
        column = table[:, j]
        if np.all(column == column[0]):
            continue
        shown = [names[v] if names else int(v) for v in column]
        per_rank = ", ".join(f"rank {r} has {v}" for r, v in enumerate(shown))
        parts.append(f"{label}: {per_rank}")
    return f"{operation}: ranks disagree on " + "; ".join(parts)
