"""MPI collective operations on NumPy buffers, with Numba kernels.

All collectives work in place on C-contiguous, writeable NumPy arrays and
take the communicator explicitly; options are keyword-only.
"""

from collectives.allreduce import ALGORITHMS, allreduce, choose_algorithm
from collectives.errors import CollectiveMismatchError, CollectiveTimeoutError
from collectives.mpi import mpi_allreduce
from collectives.nonblocking import AllreduceHandle, iallreduce
from collectives.ring import ring_allreduce
from collectives.tree import tree_allreduce, tree_bcast, tree_reduce

__all__ = [
    "ALGORITHMS",
    "AllreduceHandle",
    "CollectiveMismatchError",
    "CollectiveTimeoutError",
    "allreduce",
    "choose_algorithm",
    "iallreduce",
    "mpi_allreduce",
    "ring_allreduce",
    "tree_allreduce",
    "tree_bcast",
    "tree_reduce",
]
