"""MPI collective operations on NumPy buffers, with Numba kernels.

All collectives work in place on C-contiguous, writeable NumPy arrays and
take the communicator explicitly; options are keyword-only.
"""

from collectives.allreduce import (
    ALGORITHMS,
    TUNE_BYTES_PER_RANK,
    TUNE_MIN_BYTES,
    allreduce,
    auto_choice,
    choose_algorithm,
    tuned_from,
)
from collectives.errors import CollectiveMismatchError, CollectiveTimeoutError
from collectives.hierarchical import hierarchical_allreduce
from collectives.mpi import mpi_allreduce
from collectives.nonblocking import AllreduceHandle, iallreduce
from collectives.partial import PARTIAL_ALGORITHMS, partial_reduce
from collectives.pipelined_ring import pipelined_ring_allreduce
from collectives.recursive_doubling import rd_allreduce
from collectives.reducer import GroupRecord, PartialReducer
from collectives.ring import ring_allreduce
from collectives.shared_arrays import shared_array
from collectives.shared_memory import shm_allreduce
from collectives.single_copy import cma_allreduce
from collectives.tree import tree_allreduce, tree_bcast, tree_reduce

__all__ = [
    "ALGORITHMS",
    "AllreduceHandle",
    "CollectiveMismatchError",
    "CollectiveTimeoutError",
    "GroupRecord",
    "PARTIAL_ALGORITHMS",
    "PartialReducer",
    "TUNE_BYTES_PER_RANK",
    "TUNE_MIN_BYTES",
    "allreduce",
    "auto_choice",
    "choose_algorithm",
    "cma_allreduce",
    "hierarchical_allreduce",
    "iallreduce",
    "mpi_allreduce",
    "partial_reduce",
    "pipelined_ring_allreduce",
    "rd_allreduce",
    "ring_allreduce",
    "shared_array",
    "shm_allreduce",
    "tree_allreduce",
    "tree_bcast",
    "tree_reduce",
    "tuned_from",
]
