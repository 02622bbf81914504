"""The group generator behind :class:`collectives.PartialReducer`.

The design (who decides, which messages, why it cannot deadlock) is in
:mod:`collectives.reducer`'s docstring; this module holds the controller
that runs on rank 0 of the reducer's control communicator, the small
messages it exchanges, and the loop that serves it from a thread.

Messages are float64 vectors (integers in them are exact below 2**53):

- up (tag ``TAG_UP``, any rank to rank 0): ``[kind, calls, step, weight,
  count, dtype]`` with kind ``READY`` (a reduce call waits for a group)
  or ``LEAVE`` (the rank has closed its reducer).
- down (tag ``TAG_DOWN``, rank 0 to each member): ``[sequence, n, reason,
  grouped, members[size], weights[size], counts[size], dtypes[size]]``,
  of which the first ``n`` entries of each section are used; ``grouped``
  is the number of calls grouped so far, over all ranks.
"""

import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from collectives._wait import wait_all

__all__ = [
    "TAG_UP", "TAG_DOWN", "READY", "LEAVE", "REASONS", "Assignment",
    "GroupController", "up_message", "down_length", "decode_down", "serve",
]

TAG_UP, TAG_DOWN = 1, 2
READY, LEAVE = 1.0, 2.0
#: why a group was closed: the first ``group_size`` ready ranks; the wait
#: deadline passed; fewer ranks than ``group_size`` are left; the isolation
#: guard's synchronisation of every rank still there.
REASONS = ("ready", "timeout", "shutdown", "sync")
_UP_LENGTH = 6
_MIN_PAUSE, _MAX_PAUSE = 2e-5, 1e-3  # the serving thread's sleeps when idle


def up_message(kind, calls=0, step=0, weight=0.0, count=0, dtype=0):
    """Return the message a rank sends to the controller."""
    return np.array([kind, calls, step, weight, count, dtype], dtype=np.float64)


def down_length(size):
    """Return the length of a group assignment on a communicator of ``size``."""
    return 4 + 4 * size


@dataclass(frozen=True)
class Assignment:
    """A group assignment, decoded: members ascending, the rest aligned with them."""

    sequence: int
    reason: str
    grouped: int
    members: tuple
    weights: tuple
    counts: tuple
    dtypes: tuple


def decode_down(message, size):
    """Return the :class:`Assignment` in a received down message."""
    n = int(message[1])
    section = [message[4 + k * size:4 + k * size + n] for k in range(4)]
    as_ints = [tuple(int(v) for v in s) for s in section]
    return Assignment(int(message[0]), REASONS[int(message[2])], int(message[3]),
                      as_ints[0], tuple(float(v) for v in section[1]), as_ints[2],
                      as_ints[3])


@dataclass
class _Waiter:
    rank: int
    step: float
    weight: float
    count: int
    dtype: int
    arrival: float


class GroupController:
    """Rank 0's group generator: queue the ready ranks, form and announce groups.

    :meth:`poll` never blocks: it takes in every message that has arrived,
    forms every group that is ready and returns whether it did anything.
    Options are those of :class:`collectives.PartialReducer`, checked there.
    """

    def __init__(self, comm, group_size, *, min_group_size, group_timeout,
                 full_sync_every, connect_within, staleness):
        self.comm, self.size = comm, comm.Get_size()
        self.group_size, self.min_group_size = group_size, min_group_size
        self.group_timeout, self.staleness = group_timeout, staleness
        self.live = set(range(self.size))
        self.waiting = []  # _Waiter, in arrival order
        self.sequence = 0  # groups formed so far
        self.grouped = 0  # calls grouped so far
        self.error = None  # set by the serving thread if polling failed
        self._guard = _IsolationGuard(self.size, full_sync_every, connect_within)
        self._incoming = np.empty(_UP_LENGTH)
        self._status = MPI.Status()
        self._request = comm.Irecv(self._incoming, MPI.ANY_SOURCE, TAG_UP)
        self._sends = []  # (request, message, rank) until each send completes

    @property
    def finished(self):
        """True once every rank has left."""
        return not self.live

    def poll(self):
        """Take in arrived messages and form the groups that are ready."""
        busy = self._receive()
        group = self._next_group()
        while group is not None:
            self._announce(*group)
            busy = True
            group = self._next_group()
        self._sends = [s for s in self._sends if not s[0].Test()]
        return busy

    def stop(self, *, timeout=None):
        """Cancel the pending receive and finish the sends (once finished)."""
        self._request.Cancel()
        self._request.Wait()
        wait_all([r for r, _, _ in self._sends], [p for _, _, p in self._sends],
                 operation="PartialReducer.close", timeout=timeout, comm=self.comm)
        self._sends = []

    def _receive(self):
        # Every READY joins the queue; a LEAVE removes its rank for good.
        busy = False
        while self.live and self._request.Test(self._status):
            busy = True
            rank, message = self._status.Get_source(), self._incoming.copy()
            self._request = self.comm.Irecv(self._incoming, MPI.ANY_SOURCE, TAG_UP)
            if message[0] == LEAVE:
                self.live.discard(rank)
            else:
                self.waiting.append(_Waiter(rank, message[2], message[3], int(message[4]),
                                            int(message[5]), time.monotonic()))
        return busy

    def _next_group(self):
        # (waiters, reason) of the next group to form, or None to wait on.
        waiting, live = len(self.waiting), len(self.live)
        if not waiting:
            return None
        if self._guard.due():
            return (self._take(waiting), "sync") if waiting == live else None
        need = min(self.group_size, live)
        if waiting >= need:
            return self._take(need), "ready" if need == self.group_size else "shutdown"
        if (self.group_timeout is not None and waiting >= self.min_group_size
                and time.monotonic() - self.waiting[0].arrival >= self.group_timeout):
            return self._take(waiting), "timeout"
        return None

    def _take(self, n):
        taken, self.waiting = self.waiting[:n], self.waiting[n:]
        return sorted(taken, key=lambda w: w.rank)

    def _announce(self, waiters, reason):
        # One message, sent to each member; then the guard's bookkeeping.
        n, size = len(waiters), self.size
        self.sequence += 1
        self.grouped += n
        message = np.zeros(down_length(size))
        message[:4] = self.sequence - 1, n, REASONS.index(reason), self.grouped
        columns = ([w.rank for w in waiters], self._weights(waiters),
                   [w.count for w in waiters], [w.dtype for w in waiters])
        for k, column in enumerate(columns):
            message[4 + k * size:4 + k * size + n] = column
        for w in waiters:
            self._sends.append((self.comm.Isend(message, w.rank, TAG_DOWN), message, w.rank))
        self._guard.record([w.rank for w in waiters], self.live, sync=reason == "sync")

    def _weights(self, waiters):
        # w_i * (1 + lag_i) ** -staleness, lag_i = newest step - step_i.
        newest = max(w.step for w in waiters)
        return [w.weight * (1.0 + newest - w.step) ** -self.staleness for w in waiters]


class _IsolationGuard:
    """Decide when the next group must synchronise every rank still there.

    Due after ``every`` groups since the last synchronisation, or when the
    graph of who has mixed with whom (the union of the groups since it was
    last connected) has stayed disconnected over the live ranks for
    ``within`` groups.
    """

    def __init__(self, size, every, within):
        self.size, self.every, self.within = size, every, within
        self._reset()

    def _reset(self):
        self._parent = list(range(self.size))
        self._since_sync = 0
        self._unmixed = 0

    def due(self):
        return ((self.every is not None and self._since_sync >= self.every)
                or (self.within is not None and self._unmixed >= self.within))

    def record(self, members, live, *, sync):
        if sync:
            self._reset()
            return
        self._since_sync += 1
        for m in members[1:]:
            self._parent[self._find(m)] = self._find(members[0])
        if len({self._find(r) for r in live}) <= 1:
            self._parent = list(range(self.size))
            self._unmixed = 0
        else:
            self._unmixed += 1

    def _find(self, r):
        while self._parent[r] != r:
            self._parent[r] = self._parent[self._parent[r]]
            r = self._parent[r]
        return r


def serve(controller, stop):
    """Poll ``controller`` until every rank has left or ``stop`` is set (a thread's loop).

    Sleeps between idle polls grow to 1 ms, so the thread costs little CPU
    while rank 0 computes; an exception is kept in ``controller.error``.
    """
    pause = 0.0
    try:
        while not (stop.is_set() or controller.finished):
            if controller.poll():
                pause = 0.0
                continue
            pause = min(_MAX_PAUSE, max(2 * pause, _MIN_PAUSE))
            time.sleep(pause)
    except Exception as error:  # handed to rank 0's caller
        controller.error = error
