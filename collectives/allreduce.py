"""One all-reduce entry point that picks the algorithm."""

from collectives._agree import check_comm
from collectives._ops import check_buffer
from collectives.mpi import mpi_allreduce
from collectives.ring import ring_allreduce
from collectives.tree import tree_allreduce

__all__ = ["allreduce", "ALGORITHMS", "choose_algorithm"]

#: algorithm names accepted by :func:`allreduce`.
ALGORITHMS = ("auto", "ring", "tree", "mpi")

_IMPLEMENTATIONS = {"ring": ring_allreduce, "tree": tree_allreduce,
                    "mpi": mpi_allreduce}

# Below this many bytes the tree (log2(size) whole-buffer messages) beats
# the ring (2 (size - 1) chunk messages): see BENCHMARKS.md, "auto".
TREE_MAX_BYTES = 16 * 1024


def choose_algorithm(nbytes, size):
    """Return the algorithm "auto" uses for ``nbytes`` over ``size`` ranks."""
    if size <= 2 or nbytes <= TREE_MAX_BYTES:
        return "tree"
    return "ring"


def allreduce(buf, comm, *, op="sum", algorithm="auto", check=True, timeout=None):
    """All-reduce ``buf`` in place with the chosen algorithm.

    Arguments and result are those of :func:`collectives.ring_allreduce`,
    plus ``algorithm``: "ring", "tree", "mpi" (the MPI library's own
    ``Allreduce``, as a baseline) or "auto" (by message size and
    communicator size, see :func:`choose_algorithm`).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; use one of "
                         + ", ".join(repr(a) for a in ALGORITHMS))
    if algorithm == "auto":
        check_comm(comm)
        check_buffer(buf)
        algorithm = choose_algorithm(buf.nbytes, comm.Get_size())
    return _IMPLEMENTATIONS[algorithm](buf, comm, op=op, check=check, timeout=timeout)
