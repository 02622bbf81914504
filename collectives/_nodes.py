"""Which ranks share a node: node and cross-node communicators, cached.

``comm.Split_type(COMM_TYPE_SHARED)`` groups the ranks that can share
memory.  For tests on one machine a node can be cut smaller: with
``ranks_per_node=k`` (or the environment variable
``MPI_COLLECTIVES_RANKS_PER_NODE``) each shared-memory group is split into
"nodes" of ``k`` consecutive ranks, so 4 ranks on one machine behave as
2 nodes of 2.  The cross communicator joins the ranks with the same rank
on their node, one per node, in node order.

Splitting is a blocking MPI collective with no deadline, so before it
every rank sends an empty message to every other and waits for theirs
politely, with the caller's timeout: a rank that never makes the call
(or makes another one) is named in a :class:`CollectiveTimeoutError`
instead of hanging the others.  Once per communicator, so O(p) empty
messages per rank are cheap.
"""

import os

from mpi4py import MPI

from collectives._lifetime import cached, release_keyval
from collectives._wait import wait_all

__all__ = ["NodeLayout", "node_layout", "one_node_layout", "ranks_per_node_from_env"]

_ENV = "MPI_COLLECTIVES_RANKS_PER_NODE"
_ARRIVE_TAG = 79


def ranks_per_node_from_env():
    """Return the forced ranks per node from the environment, 0 if unset."""
    text = os.environ.get(_ENV, "").strip()
    if not text:
        return 0
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"environment variable {_ENV}={text!r} must be a positive "
                         "number of ranks")
    return int(text)


class NodeLayout:
    """The node communicator, the cross communicator and the node counts."""

    def __init__(self, comm, ranks_per_node, *, operation="node layout", timeout=None):
        _all_arrived(comm, operation, timeout)
        shared = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
        if ranks_per_node:
            self.node = shared.Split(shared.Get_rank() // ranks_per_node,
                                     shared.Get_rank())
            shared.Free()
        else:
            self.node = shared
        self.node_rank, self.node_size = self.node.Get_rank(), self.node.Get_size()
        self.cross = comm.Split(self.node_rank, comm.Get_rank())
        # Setup only, once per communicator: pickling collectives are fine.
        self.nodes = comm.allreduce(int(self.node_rank == 0))
        self.smallest = comm.allreduce(self.node_size, op=MPI.MIN)
        self.total = comm.Get_size()

    def release(self):
        self.cross.Free()
        self.node.Free()


def _all_arrived(comm, operation, timeout):
    # An empty message to and from every other rank, waited for politely.
    rank, size = comm.Get_rank(), comm.Get_size()
    others = [q for q in range(size) if q != rank]
    requests = [comm.Irecv([None, 0, MPI.BYTE], q, _ARRIVE_TAG) for q in others]
    requests += [comm.Isend([None, 0, MPI.BYTE], q, _ARRIVE_TAG) for q in others]
    wait_all(requests, others + others, operation=operation, timeout=timeout, comm=comm)


class _Layouts(dict):
    def release(self):
        for layout in {id(v): v for v in self.values()}.values():
            layout.release()
        self.clear()


_KEY = release_keyval()


def node_layout(comm, *, ranks_per_node=None, operation="node layout", timeout=None):
    """Return ``comm``'s :class:`NodeLayout` (collective the first time).

    ``ranks_per_node``: None takes the environment variable, 0 the real
    shared-memory nodes, ``k`` nodes of at most ``k`` ranks.  The first
    call raises :class:`CollectiveTimeoutError` (naming ``operation``) if
    a rank does not make it within ``timeout``.
    """
    layouts = comm.Get_attr(_KEY)
    layout = None if layouts is None else layouts.get(ranks_per_node)
    if layout is not None:  # the common case: cached, None read the environment once
        return layout
    wanted = ranks_per_node_from_env() if ranks_per_node is None else ranks_per_node
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 0:
        raise ValueError(f"ranks_per_node must be a positive int (or 0 / None), "
                         f"got {ranks_per_node!r}")
    layouts = cached(comm, _KEY, _Layouts)
    layout = layouts.get(wanted) or NodeLayout(comm, wanted, operation=operation,
                                                  timeout=timeout)
    layouts[wanted] = layouts[ranks_per_node] = layout
    return layout


def one_node_layout(comm, operation, *, timeout=None, hint=""):
    """Return ``comm``'s real node layout; ``ValueError`` unless all ranks share one node.

    For the algorithms that need shared memory or each other's memory;
    ``hint`` (say, "; use algorithm 'hierarchical'") ends the message.
    """
    layout = node_layout(comm, ranks_per_node=0, operation=operation, timeout=timeout)
    if layout.nodes > 1:
        raise ValueError(f"{operation} needs all ranks on one node, but the "
                         f"{comm.Get_size()} ranks span {layout.nodes} nodes{hint}")
    return layout
