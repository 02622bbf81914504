"""Pipelined (segmented) ring all-reduce.

The ring of :mod:`collectives.ring`, with each chunk cut into segments of
``SEGMENT_BYTES``.  Receives are posted ``DEPTH`` segments ahead into
rotating buffers, so while a rank reduces segment ``k`` the next ones are
already arriving; and a reduced segment is sent on to the right at once,
so the next rank starts on it while this one works on segment ``k + 1``
(the classic pipelined ring: the ``size - 1`` steps overlap instead of
running one after the other).  The all-gather forwards each segment as
soon as it lands in the user's buffer.

Segments travel in order on one tag, and MPI never reorders messages
between two ranks on one tag, so receives match sends without per-segment
tags.  Each chunk is reduced once, in ring order, then copied: the result
is identical on every rank, and equal to :func:`collectives.ring_allreduce`'s.
"""

from mpi4py import MPI

from collectives._chunks import chunk_bounds
from collectives._ops import kernel_view
from collectives._prepare import prepare
from collectives._scratch import scratch
from collectives._spin import complete, yield_after
from collectives._wait import wait_all
from collectives.timeline import phase

__all__ = ["pipelined_ring_allreduce", "SEGMENT_BYTES", "DEPTH"]

#: Bytes per pipelined segment (tuned by measurement, see allreduce.py).
SEGMENT_BYTES = 256 * 1024
#: Receives posted ahead (receive buffers in rotation).
DEPTH = 2
_TAG_REDUCE, _TAG_GATHER = 11, 12


def pipelined_ring_allreduce(buf, comm, *, op="sum", check=True, timeout=None,
                             segment_bytes=None):
    """All-reduce ``buf`` in place with the pipelined ring.

    Arguments and result are those of :func:`collectives.ring_allreduce`,
    plus ``segment_bytes`` (default ``SEGMENT_BYTES``).
    """
    reduction = prepare("pipelined_ring_allreduce", buf, comm, op=op, check=check,
                        timeout=timeout)
    segment = SEGMENT_BYTES if segment_bytes is None else segment_bytes
    if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
        raise ValueError(f"segment_bytes must be a positive int, got {segment!r}")
    size = comm.Get_size()
    if size == 1 or buf.size == 0:
        return buf
    flat = kernel_view(buf)
    starts, sizes = chunk_bounds(flat.size, size)
    ring = _Ring(comm, flat, starts, sizes, max(1, segment // flat.itemsize), timeout)
    with phase(comm, "pipelined reduce-scatter", bytes=buf.nbytes):
        ring.reduce_scatter(reduction)
    with phase(comm, "pipelined all-gather", bytes=buf.nbytes):
        ring.allgather()
    return buf


class _Ring:
    """Segments, neighbours and pending sends of one pipelined ring call."""

    def __init__(self, comm, flat, starts, sizes, segment, timeout):
        self.comm, self.timeout = comm, timeout
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.left, self.right = (self.rank - 1) % self.size, (self.rank + 1) % self.size
        self.chunks = [flat[s:s + n] for s, n in zip(starts, sizes)]
        self.segment = segment
        self.sends = []
        self.polite = yield_after(self.size)
        self.buffers = [scratch(comm, ("pipelined", i), segment, flat.dtype)
                        for i in range(DEPTH)]

    def segments(self, chunk):
        return [chunk[i:i + self.segment] for i in range(0, chunk.size, self.segment)]

    def send(self, piece, tag):
        self.sends.append(self.comm.Isend([piece, MPI.BYTE], self.right, tag))
        if len(self.sends) > 4 * DEPTH:  # free the finished ones now and then
            MPI.Request.Testsome(self.sends)
            self.sends = [r for r in self.sends if r != MPI.REQUEST_NULL]

    def finish_sends(self):
        wait_all(self.sends, [self.right] * len(self.sends),
                 operation="pipelined_ring_allreduce", timeout=self.timeout,
                 comm=self.comm)
        self.sends = []

    def receive(self, pieces, into, tag, each):
        # Receive the pieces in order, DEPTH ahead; call each(k, data).
        pending = {}
        for k in range(min(DEPTH, len(pieces))):
            pending[k] = self._post(pieces, into, k, tag)
        for k in range(len(pieces)):
            request, data = pending.pop(k)
            complete([request], [self.left], operation="pipelined_ring_allreduce",
                     timeout=self.timeout, comm=self.comm, polite=self.polite)
            each(k, data)
            if k + DEPTH < len(pieces):
                pending[k + DEPTH] = self._post(pieces, into, k + DEPTH, tag)

    def _post(self, pieces, into, k, tag):
        data = self.buffers[k % DEPTH][:pieces[k].size] if into is None else pieces[k]
        return self.comm.Irecv([data, MPI.BYTE], self.left, tag), data

    def reduce_scatter(self, reduction):
        # Step s: reduce the left's partial chunk (rank - s - 1) into mine
        # segment by segment, sending each on to the right for step s + 1.
        rank, size = self.rank, self.size
        for piece in self.segments(self.chunks[rank]):
            self.send(piece, _TAG_REDUCE)
        for step in range(size - 1):
            mine = self.segments(self.chunks[(rank - step - 1) % size])
            last = step == size - 2

            def each(k, data, mine=mine, last=last):
                if reduction.average and last:
                    reduction.sum_div(mine[k], data, size)
                else:
                    reduction.reduce(mine[k], data)
                if not last:
                    self.send(mine[k], _TAG_REDUCE)

            self.receive(mine, None, _TAG_REDUCE, each)
        self.finish_sends()

    def allgather(self):
        # Send my finished chunk; receive each other chunk into place and
        # forward it, segment by segment.
        rank, size = self.rank, self.size
        for piece in self.segments(self.chunks[(rank + 1) % size]):
            self.send(piece, _TAG_GATHER)
        for step in range(size - 1):
            pieces = self.segments(self.chunks[(rank - step) % size])
            last = step == size - 2

            def each(k, data, last=last):
                if not last:
                    self.send(data, _TAG_GATHER)

            self.receive(pieces, pieces, _TAG_GATHER, each)
        self.finish_sends()
