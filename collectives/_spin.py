"""Complete requests fast: spin briefly, then wait politely with the deadline.

A small message is usually there after a few tests, so sleeping at once
would cost more than the message.  When the ranks on this machine
outnumber its cores, a spinning rank may hold the core its peer needs, so
it yields the core between tests from the start; otherwise it spins like
MPI's own waits.  After ``SPIN`` tests a :class:`collectives._wait.Deadline`
paces the tests (growing pauses) and raises the timeout that names the
late peers.  Unlike :func:`collectives._wait.wait_all` this also serves
persistent requests, which stay allocated (inactive) once complete.
"""

import os

from mpi4py import MPI

from collectives._wait import Deadline
from collectives.errors import CollectiveTimeoutError

__all__ = ["SPIN", "yield_after", "complete"]

SPIN = 2000


def yield_after(ranks_here):
    """Tests before yielding the core, for ``ranks_here`` ranks on this machine."""
    return 0 if ranks_here > len(os.sched_getaffinity(0)) else SPIN


def complete(requests, peers, *, operation, timeout, comm, polite):
    """Complete ``requests`` (``peers[i]`` serves ``requests[i]``).

    ``polite`` is the number of tests after which each test yields the
    core.  On timeout the unfinished requests are cancelled.
    """
    testall = MPI.Request.Testall
    for i in range(SPIN):
        if testall(requests):
            return
        if i >= polite:
            os.sched_yield()
    _wait_politely(requests, peers, operation, timeout, comm)


def _wait_politely(requests, peers, operation, timeout, comm):
    done = [False] * len(requests)
    deadline = Deadline(operation, timeout=timeout, comm=comm)
    while True:
        for i in MPI.Request.Testsome(requests) or ():
            done[i] = True
        if all(done):
            return
        try:
            deadline.pause(sorted({peers[i] for i, d in enumerate(done) if not d}))
        except CollectiveTimeoutError:
            for request, finished in zip(requests, done):
                if not finished:
                    request.Cancel()
            raise
