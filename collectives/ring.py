"""Ring all-reduce: reduce-scatter, then all-gather, around the ring.

The buffer is cut into ``size`` chunks (sizes differ by at most one).  In
``size - 1`` steps of the reduce-scatter each rank sends one partial chunk
to its right neighbour and adds the one from its left, so that at the end
rank ``r`` holds the full reduction of chunk ``(r + 1) % size``.  The
all-gather then passes the finished chunks around the ring, received
straight into the user's buffer.  Each rank sends and receives
``2 (size - 1) / size`` of the buffer: bandwidth-optimal for large messages.

Every chunk is reduced in one fixed order, once, and then copied, so the
result is bitwise identical on all ranks and across runs.
"""

from mpi4py import MPI

from collectives._chunks import chunk_bounds
from collectives._ops import kernel_view
from collectives._prepare import prepare
from collectives._scratch import scratch
from collectives._wait import wait_all
from collectives.timeline import phase

__all__ = ["ring_allreduce"]


def ring_allreduce(buf, comm, *, op="sum", check=True, timeout=None):
    """All-reduce ``buf`` in place over ``comm`` with the ring algorithm.

    Parameters
    ----------
    buf : numpy.ndarray
        C-contiguous, writeable array of any shape; dtype float16, float32,
        float64, int32 or int64.  Holds this rank's input and, on return,
        the reduction over all ranks.
    comm : mpi4py.MPI.Intracomm
        Communicator whose ranks all call this function.
    op : str or mpi4py.MPI.Op
        "sum", "prod", "min", "max", "avg" (floating dtypes only), or
        ``MPI.SUM``, ``MPI.PROD``, ``MPI.MIN``, ``MPI.MAX``.
    check : bool
        Verify that all ranks pass the same count, dtype and op (one small
        extra message).  Leave on unless you have measured a need.
    timeout : float, optional
        Seconds to wait for any one peer before raising
        ``CollectiveTimeoutError``; ``None`` takes ``MPI_COLLECTIVES_TIMEOUT``
        (default 300).

    Returns
    -------
    numpy.ndarray
        ``buf`` itself.

    Raises
    ------
    TypeError, ValueError
        Bad buffer, op or communicator, before any message is sent.
    CollectiveMismatchError
        On every rank, when ranks disagree on count, dtype or op.
    CollectiveTimeoutError
        When a peer does not take part within ``timeout``; names the peer.

    Examples
    --------
    >>> x = np.full(10, comm.rank, dtype=np.float32)
    >>> ring_allreduce(x, comm, op="sum")  # every element is sum(range(size))

    """
    reduction = prepare("ring_allreduce", buf, comm, op=op, check=check,
                        timeout=timeout)
    size = comm.Get_size()
    if size == 1 or buf.size == 0:
        return buf
    flat = kernel_view(buf)
    starts, sizes = chunk_bounds(flat.size, size)
    chunks = [flat[s:s + n] for s, n in zip(starts, sizes)]
    with phase(comm, "ring reduce-scatter", bytes=buf.nbytes):
        _reduce_scatter(chunks, comm, reduction, timeout)
    with phase(comm, "ring all-gather", bytes=buf.nbytes):
        _allgather(chunks, comm, timeout)
    return buf


def _neighbours(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    return rank, size, (rank - 1) % size, (rank + 1) % size


def _exchange(comm, send, right, recv, left, tag, operation, timeout):
    # Sendrecv with a deadline: the error names the neighbour that is late.
    requests = [comm.Irecv([recv, MPI.BYTE], left, tag),
                comm.Isend([send, MPI.BYTE], right, tag)]
    wait_all(requests, [left, right], operation=operation, timeout=timeout, comm=comm)


def _reduce_scatter(chunks, comm, reduction, timeout):
    # Step s: send partial chunk (rank - s), add the left's partial of
    # chunk (rank - s - 1); the last step also divides for "avg".
    rank, size, left, right = _neighbours(comm)
    incoming = scratch(comm, 0, max(c.size for c in chunks), chunks[0].dtype)
    for step in range(size - 1):
        send = chunks[(rank - step) % size]
        mine = chunks[(rank - step - 1) % size]
        recv = incoming[:mine.size]
        _exchange(comm, send, right, recv, left, 0, "ring_allreduce", timeout)
        if reduction.average and step == size - 2:
            reduction.sum_div(mine, recv, size)
        else:
            reduction.reduce(mine, recv)


def _allgather(chunks, comm, timeout):
    # Step s: pass on finished chunk (rank + 1 - s), receive chunk
    # (rank - s) from the left straight into the buffer.
    rank, size, left, right = _neighbours(comm)
    for step in range(size - 1):
        send = chunks[(rank + 1 - step) % size]
        recv = chunks[(rank - step) % size]
        _exchange(comm, send, right, recv, left, 1, "ring_allreduce", timeout)
