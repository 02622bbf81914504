"""Binomial-tree reduce and broadcast, and all-reduce built from them.

Ranks are numbered relative to the root (``vrank = (rank - root) % size``).
In the reduce, round ``k`` (``mask = 2**k``) pairs each vrank with bit ``k``
set with ``vrank - mask``, which receives and combines; after
``ceil(log2(size))`` rounds the root holds the result.  The broadcast walks
the same tree from the root down.  Latency is ``log2(size)`` messages of
the whole buffer, which suits small messages; the ring suits large ones.

The combination order is fixed by the tree, so results are identical on
every rank and across runs.
"""

from mpi4py import MPI

from collectives._ops import kernel_view
from collectives._prepare import prepare
from collectives._scratch import scratch
from collectives._wait import wait_all
from collectives.timeline import phase

__all__ = ["tree_reduce", "tree_bcast", "tree_allreduce"]


def tree_reduce(buf, comm, *, root=0, op="sum", check=True, timeout=None):
    """Reduce ``buf`` over ``comm`` onto ``root`` with a binomial tree.

    Arguments are those of :func:`collectives.ring_allreduce`, plus ``root``
    (an int rank of ``comm``).  The result lands in ``buf`` on ``root``,
    which gets ``buf`` back; other ranks get ``None`` and their ``buf`` is
    left unchanged.
    """
    reduction = prepare("tree_reduce", buf, comm, op=op, root=root, check=check,
                        timeout=timeout)
    if buf.size:
        link = _Link(comm, "tree_reduce", timeout)
        _reduce(kernel_view(buf), link, root, reduction, keep_input=True)
    return buf if comm.Get_rank() == root else None


def tree_bcast(buf, comm, *, root=0, check=True, timeout=None):
    """Broadcast root's ``buf`` to every rank with a binomial tree.

    Arguments are those of :func:`collectives.ring_allreduce`, with ``root``
    instead of ``op``.  Every rank's ``buf`` holds root's data on return,
    and is returned.
    """
    prepare("tree_bcast", buf, comm, root=root, check=check, timeout=timeout)
    if buf.size:
        _bcast(kernel_view(buf), _Link(comm, "tree_bcast", timeout), root)
    return buf


def tree_allreduce(buf, comm, *, op="sum", check=True, timeout=None):
    """All-reduce ``buf`` in place: tree reduce to rank 0, then tree broadcast.

    Arguments and result are those of :func:`collectives.ring_allreduce`.
    """
    reduction = prepare("tree_allreduce", buf, comm, op=op, check=check,
                        timeout=timeout)
    if buf.size:
        flat = kernel_view(buf)
        link = _Link(comm, "tree_allreduce", timeout)
        with phase(comm, "tree reduce", bytes=buf.nbytes):
            _reduce(flat, link, 0, reduction, keep_input=False)
        with phase(comm, "tree bcast", bytes=buf.nbytes):
            _bcast(flat, link, 0)
    return buf


class _Link:
    """Blocking send and receive with a deadline, named for the operation."""

    def __init__(self, comm, operation, timeout):
        self.comm, self.operation, self.timeout = comm, operation, timeout
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def send(self, flat, dest, tag):
        self._wait(self.comm.Isend([flat, MPI.BYTE], dest, tag), dest)

    def recv(self, flat, source, tag):
        self._wait(self.comm.Irecv([flat, MPI.BYTE], source, tag), source)

    def _wait(self, request, peer):
        wait_all([request], [peer], operation=self.operation, timeout=self.timeout,
                 comm=self.comm)


def _reduce(flat, link, root, reduction, *, keep_input):
    # Children send their partial results up to their parents; a parent
    # combines each child's data as it arrives.
    size = link.size
    vrank = (link.rank - root) % size
    separate = keep_input and vrank != 0
    acc, mask = flat, 1
    while mask < size:
        if vrank & mask:
            link.send(acc, (vrank - mask + root) % size, 2)
            return
        child = vrank | mask
        if child < size:
            last = vrank == 0 and mask * 2 >= size
            acc = _combine_child(acc, flat, link, (child + root) % size,
                                 reduction, separate=separate and acc is flat,
                                 last=last)
        mask <<= 1


def _combine_child(acc, flat, link, source, reduction, *, separate, last):
    # A non-root rank that must keep its input receives its first child's
    # data as the accumulator; the root's last combination also divides
    # for "avg", in the same pass.
    if separate:
        acc = scratch(link.comm, 1, flat.size, flat.dtype)
        link.recv(acc, source, 2)
        reduction.reduce(acc, flat)
        return acc
    incoming = scratch(link.comm, 0, flat.size, flat.dtype)
    link.recv(incoming, source, 2)
    if reduction.average and last:
        reduction.sum_div(acc, incoming, link.size)
    else:
        reduction.reduce(acc, incoming)
    return acc


def _bcast(flat, link, root):
    # Receive from the parent (clear the lowest set bit), then send to
    # children from the farthest subtree down.
    size = link.size
    vrank = (link.rank - root) % size
    mask = 1
    while mask < size:
        if vrank & mask:
            link.recv(flat, (vrank - mask + root) % size, 3)
            break
        mask <<= 1
    mask >>= 1
    while mask > 0:
        if vrank + mask < size:
            link.send(flat, (vrank + mask + root) % size, 3)
        mask >>= 1
