"""Point-to-point transport limits: ping-pong latency and Sendrecv exchange.

Ranks 0 and 1 measure; any other ranks wait politely (an ``Ibarrier``
tested with sleeps, so they do not take a core from the two that measure).
*Ping-pong* (OSU ``osu_latency``): rank 0 sends, rank 1 sends back; the
one-way time is half the round trip, and bandwidth is bytes over one-way
time.  *Exchange*: both ranks ``Sendrecv`` the same number of bytes with
each other at once, the step of a ring algorithm; its bandwidth counts the
bytes one rank sends.  *Written*: the same exchange, but each rank first
rewrites the buffer it sends (the time of that write, measured alone, is
subtracted), as a ring step sends what the rank just reduced: on a
virtual machine whose two cores do not share a cache, moving a freshly
written line costs more than moving a clean one.  Raw mpi4py buffer
calls, so the Python overhead is included: it is the floor for any
algorithm written in Python.
"""

import time

import numpy as np
from mpi4py import MPI

from benchmarks._harness import iterations
from benchmarks._output import Column

__all__ = ["COLUMNS", "pingpong_row", "wait_politely"]

COLUMNS = [
    Column("bytes", "bytes", 10), Column("iters", "iters", 6),
    Column("pingpong_us", "one-way us", 11, ".2f"),
    Column("pingpong_GBps", "pp GB/s", 8, ".3f"),
    Column("exchange_us", "sendrecv us", 11, ".2f"),
    Column("exchange_GBps", "sr GB/s", 8, ".3f"),
    Column("written_us", "written us", 10, ".2f"),
]


def wait_politely(comm):
    """Barrier that sleeps between tests instead of spinning on a core."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(0.0005)


def _pingpong(comm, buf, iters):
    # Half the round trip, measured on rank 0.
    rank = comm.Get_rank()
    start = MPI.Wtime()
    for _ in range(iters):
        if rank == 0:
            comm.Send(buf, 1, 5)
            comm.Recv(buf, 1, 5)
        else:
            comm.Recv(buf, 0, 5)
            comm.Send(buf, 0, 5)
    return (MPI.Wtime() - start) / (2 * iters)


def _exchange(comm, buf, incoming, iters):
    # Both ranks send and receive at once, as a ring step does.
    peer = 1 - comm.Get_rank()
    start = MPI.Wtime()
    for _ in range(iters):
        comm.Sendrecv(buf, peer, 6, incoming, peer, 6)
    return (MPI.Wtime() - start) / iters


def _written(comm, buf, incoming, iters):
    # The exchange of data just written, less the time of writing it.
    peer = 1 - comm.Get_rank()
    start = MPI.Wtime()
    for i in range(iters):
        buf.fill(i)
    fill = MPI.Wtime() - start
    comm.Barrier()
    start = MPI.Wtime()
    for i in range(iters):
        buf.fill(i)
        comm.Sendrecv(buf, peer, 7, incoming, peer, 7)
    return (MPI.Wtime() - start - fill) / iters


def _measure(pair, nbytes, warmup, iters, repeats):
    buf, incoming = np.zeros(nbytes, np.uint8), np.zeros(nbytes, np.uint8)
    probes = (lambda n: _pingpong(pair, buf, n),
              lambda n: _exchange(pair, buf, incoming, n),
              lambda n: _written(pair, buf, incoming, n))
    times = [[] for _ in probes]
    for probe in probes:
        probe(warmup)
    for _ in range(repeats):
        for probe, samples in zip(probes, times):
            pair.Barrier()
            samples.append(probe(iters))
    return [float(np.median(t)) for t in times]


def pingpong_row(comm, pair, nbytes, *, warmup, iters, repeats):
    """Measure one size on ranks 0 and 1 (``pair``); return the row on every rank."""
    iters, warmup = iterations(nbytes, iters), iterations(nbytes, warmup, floor=1)
    times = np.zeros(3)
    if pair != MPI.COMM_NULL:
        times[:] = _measure(pair, nbytes, warmup, iters, repeats)
    wait_politely(comm)
    comm.Bcast(times, 0)
    return {"bytes": nbytes, "iters": iters,
            "pingpong_us": times[0] * 1e6, "pingpong_GBps": nbytes / times[0] / 1e9,
            "exchange_us": times[1] * 1e6, "exchange_GBps": nbytes / times[1] / 1e9,
            "written_us": times[2] * 1e6}
