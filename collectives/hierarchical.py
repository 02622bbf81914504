"""Hierarchical all-reduce for several nodes: shared memory inside, ring across.

The buffer goes through in pieces of ``PIECE_BYTES``.  For each piece:

1. intra-node reduce-scatter: every rank copies the piece into its slot
   of the node's shared window; node rank ``j`` (for ``j`` below the
   smallest node's size ``m``) folds slice ``j`` of all its node's
   copies, in node-rank order, into its own buffer;
2. inter-node all-reduce: the ranks that hold slice ``j`` on each node
   (node rank ``j``: the cross communicator) run
   :func:`collectives.ring_allreduce` on it;
3. intra-node all-gather: slice owners put the result in their slot and
   every node rank copies the slices it does not own.

Each rank moves ``1/m`` of the data across nodes instead of all of it.
The node split comes from :func:`collectives._nodes.node_layout`, so on
one machine ``ranks_per_node=k`` (or ``MPI_COLLECTIVES_RANKS_PER_NODE``)
makes "nodes" of ``k`` ranks for testing.  Nodes may differ in size.
Results are identical on every rank: each slice is reduced in a fixed
order (node-rank order inside a node, ring order across nodes) and copied.
"""

from collectives import _combine_kernels as K
from collectives._chunks import chunk_bounds
from collectives._nodes import node_layout
from collectives._ops import kernel_view
from collectives._prepare import prepare_local
from collectives._window import IN, OUT, REDUCED, shared_window
from collectives.recursive_doubling import header_agreement
from collectives.ring import ring_allreduce
from collectives.shared_memory import SLOTS, fold_window
from collectives.shared_memory import run as shm_run
from collectives.timeline import phase

__all__ = ["hierarchical_allreduce", "PIECE_BYTES"]

#: Bytes of the buffer handled per round of the three phases.
PIECE_BYTES = 4 << 20


def hierarchical_allreduce(buf, comm, *, op="sum", check=True, timeout=None,
                           ranks_per_node=None):
    """All-reduce ``buf`` in place: shared memory in each node, ring across nodes.

    Arguments and result are those of :func:`collectives.ring_allreduce`,
    plus ``ranks_per_node``: None (the default) takes the environment
    variable ``MPI_COLLECTIVES_RANKS_PER_NODE`` or else the real nodes, an
    int ``k`` cuts each node into "nodes" of ``k`` ranks (for tests).
    The first call on a communicator splits it (collective).
    """
    reduction = prepare_local("hierarchical_allreduce", buf, comm, op=op,
                              timeout=timeout)
    layout = node_layout(comm, ranks_per_node=ranks_per_node,
                         operation="hierarchical_allreduce", timeout=timeout)
    return run(buf, comm, reduction, layout, operation="hierarchical_allreduce",
               check=check, timeout=timeout)


def run(buf, comm, reduction, layout, *, operation, check, timeout):
    """The hierarchical all-reduce after the local checks."""
    if comm.Get_size() == 1:
        return buf
    if check:
        header_agreement(buf, comm, reduction, operation=operation, timeout=timeout)
    if layout.nodes == 1:
        return shm_run(buf, layout.node, reduction, operation=operation, check=False,
                       timeout=timeout)
    flat = kernel_view(buf)
    piece = max(1, min(PIECE_BYTES // flat.itemsize, flat.size))
    window = shared_window(layout.node, SLOTS * piece * flat.itemsize)
    steps = _Steps(window, layout, buf, piece, reduction, operation, timeout)
    with phase(comm, "hierarchical all-reduce", bytes=buf.nbytes):
        first = window.begin_blocks(piece * flat.itemsize, operation=operation,
                                    timeout=timeout)
        for i, start in enumerate(range(0, flat.size, piece)):
            steps.run_piece(first + i, i, start, min(piece, flat.size - start))
    return buf


class _Steps:
    """The three phases for one piece, on the node window."""

    def __init__(self, window, layout, buf, piece, reduction, operation, timeout):
        self.window, self.layout, self.piece = window, layout, piece
        self.flat, self.dtype = kernel_view(buf), buf.dtype
        self.reduction, self.timeout = reduction, timeout
        self.wait = dict(operation=operation, timeout=timeout)
        self.typed = window.typed(self.flat.dtype)
        self.item = self.flat.itemsize
        self.stride = window.stride // self.item
        self.base = window.large_offset() // self.item

    def run_piece(self, g, i, start, length):
        # Piece i of the call, block g of the window.
        slot = self.base + (i % SLOTS) * self.piece
        starts, sizes = chunk_bounds(length, self.layout.smallest)
        self.window.claim_slot(i % SLOTS, g, **self.wait)
        self._copy_in(g, slot, start, length)
        self._reduce_slice(g, slot, start, starts, sizes)
        self._gather(g, slot, start, starts, sizes)

    def _row(self, rank, slot, lo, n):
        at = rank * self.stride + slot + lo
        return self.typed[at:at + n]

    def _copy_in(self, g, slot, start, length):
        # My piece into my slot (claimed: nobody reads its last piece).
        self._row(self.window.rank, slot, 0, length)[:] = self.flat[start:start + length]
        self.window.publish(IN, g + 1)

    def _reduce_slice(self, g, slot, start, starts, sizes):
        # Node rank j < m: fold slice j over the node, ring it across nodes.
        self.window.wait(IN, g + 1, **self.wait)
        j = self.layout.node_rank
        if j < self.layout.smallest and sizes[j]:
            out = self.flat[start + starts[j]:start + starts[j] + sizes[j]]
            average = self.reduction.average  # sums all the way, one division
            fold_window(self.window, out, (slot + starts[j]) * self.item,
                        self.reduction, code=K.SUM if average else None)
            ring_allreduce(out.view(self.dtype), self.layout.cross,
                           op="sum" if average else self.reduction.name, check=False,
                           timeout=self.timeout)
            if average:
                self.reduction.div(out, self.layout.total)
            self._row(self.window.rank, slot, starts[j], sizes[j])[:] = out
        self.window.publish(REDUCED, g + 1)

    def _gather(self, g, slot, start, starts, sizes):
        # Copy the slices owned by the other node ranks out of their slots.
        self.window.wait(REDUCED, g + 1, **self.wait)
        for q in range(self.layout.smallest):
            if q != self.layout.node_rank and sizes[q]:
                at = start + starts[q]
                self.flat[at:at + sizes[q]] = self._row(q, slot, starts[q], sizes[q])
        self.window.publish(OUT, g + 1)
