"""Partial reduce with groups formed on the fly: the first ranks ready average.

Each :meth:`PartialReducer.reduce` call joins a group of the first
``group_size`` ranks to arrive; only that group averages, so no rank waits
for the slowest one (P-Reduce, Miao et al., SIGMOD 2021; Prague's partial
all-reduce, ASPLOS 2020).

Design of the group generator
-----------------------------
Who decides.  One controller, on rank 0.  The reducer duplicates the
communicator twice: group control on one, data on the other, so neither
meets the user's own messages.  The controller keeps the set of *live*
ranks (not yet closed) and a first-in, first-out queue of the ranks
waiting in ``reduce``.  Whenever ``min(group_size, live)`` ranks wait, the
first ones in the queue form a group.

Which messages.  A ``reduce`` call posts a receive for its assignment,
sends rank 0 one READY message of six numbers (call count, step, weight,
element count, dtype) and waits.  The controller sends every member of a
new group the same assignment: a sequence number, the members in
ascending order and their weights, counts and dtypes.  The members check
that counts and dtypes agree, then run :func:`collectives.partial_reduce`
among themselves, ring or tree.  ``close()`` sends a LEAVE message.  So a
call costs two small messages with rank 0; the data flows only among the
members.

Who serves.  With ``MPI_THREAD_MULTIPLE`` (mpi4py asks for it; the MPICH
and Open MPI wheels provide it) a thread on rank 0 does nothing but serve
the controller: it tests for messages and sleeps up to 1 ms when idle, so
groups form while rank 0 computes between its calls (if rank 0 runs pure
Python code, the thread gets the GIL within Python's switch interval, 5 ms
by default; NumPy, Numba kernels and MPI calls release it).  Rank 0's own
calls are ordinary members (their READY is a message to itself).  Without that
thread level, or with ``thread=False``, rank 0 serves the controller
inside its own ``reduce`` and ``close`` calls, while it waits; the other
ranks then wait for rank 0's next call when their group is not full yet.

Why it cannot deadlock.  (1) A waiting rank waits for one message, its
assignment, and the controller never waits on anyone (it only tests), so
no cycle of waits passes through it.  (2) A rank sends READY only after
its previous group has finished, so when group ``g`` is announced each of
its members is done with every earlier group: the members of ``g`` wait
only on one another, every message among them belongs to ``g`` (MPI
matches messages between two ranks in order, and both have drained their
earlier common groups), and each group's reduce completes on its own.
(3) Liveness: the queue is first in, first out, so the oldest waiter is in
the next group formed and a straggler waits for at most ``group_size - 1``
later arrivals, never starved.  While at least ``group_size`` ranks keep
calling, every caller is grouped; with fewer live ranks a group forms once
all of them wait, and each live rank either calls or closes.  With
``group_timeout``, the controller also closes a group early, with every
rank waiting, once the oldest has waited that long and at least
``min_group_size`` wait.

Isolation guard.  With ``full_sync_every=K``, after K groups the next group
is every live rank: the controller forms no other group until all live
ranks wait (each one calls or closes, so this ends; the group timeout does
not apply to it).  With ``connect_within=M``, the same happens when the
graph of who has mixed with whom, accumulated since it was last connected,
has stayed disconnected over the live ranks for M groups.  Both are off
by default; either bounds how long a subset can drift apart.

Shutdown.  ``close()`` sends LEAVE; the controller drops the rank from the
live set, so groups shrink to the ranks still there (reason "shutdown")
and the last rank's calls return alone: a group of one, its buffer
unchanged.  Rank 0 hosts the controller, so its ``close()`` waits (within
``timeout``) until every other rank has closed, then stops the thread and
frees the communicators.  Every rank must close its reducer (or use
``with``).  A rank waiting in ``reduce`` takes part in nothing else, so
do not enter a collective that needs every rank (a ``Barrier``, an
``allreduce``) while another rank may still wait for a group: close the
reducer first.  After a timeout the reducer is broken on that rank, and
the other members of its group time out too.

Weights and staleness.  Each call passes a weight > 0 and a step (default:
its call count).  The controller weights member ``i`` of a group by
``weight_i * (1 + lag_i) ** -staleness``, with ``lag_i`` how many steps it
is behind the group's most advanced member; the members average with
these weights normalised to sum 1.  ``staleness=0`` (the default) ignores
steps; ``staleness=1`` halves the weight of a member one step behind.

Scale: the controller handles two messages per call and each assignment
carries ``4 * size`` numbers, which is fine for hundreds of ranks.
"""

import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from collectives._agree import check_comm
from collectives._groups import (
    LEAVE,
    READY,
    TAG_DOWN,
    TAG_UP,
    GroupController,
    decode_down,
    down_length,
    serve,
    up_message,
)
from collectives._numbers import check_count, check_positive
from collectives._ops import DTYPES, check_buffer, resolve_op
from collectives._wait import Deadline, resolve_timeout, wait_all
from collectives.errors import CollectiveMismatchError
from collectives.partial import partial_reduce
from collectives.timeline import phase

__all__ = ["PartialReducer", "GroupRecord"]

_SPIN = 0.001  # spin this long before sleeping: waits for a group are long


@dataclass(frozen=True)
class GroupRecord:
    """The group one :meth:`PartialReducer.reduce` call joined.

    ``sequence`` numbers the groups from 0 in the order the controller
    formed them (the same on every member); ``members`` are ranks of the
    communicator, ascending; ``weights`` their normalised weights;
    ``reason`` is "ready", "timeout", "shutdown" or "sync" (see
    :mod:`collectives.reducer`); ``wait`` is the seconds this rank waited
    for the group to form.
    """

    sequence: int
    members: tuple
    weights: tuple
    reason: str
    wait: float

    @property
    def size(self):
        return len(self.members)


class PartialReducer:
    """Average buffers in groups of the first ``group_size`` ranks ready.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The ranks that may group; every rank of it constructs the reducer
        (collective: it duplicates ``comm`` twice).
    group_size : int
        Ranks per group, 1 to ``comm.size``.
    min_group_size : int, default 1
        The fewest ranks a group closed by ``group_timeout`` may have.
    group_timeout : float, optional
        Seconds the first waiting rank waits for a full group before the
        controller closes the group with the ranks waiting (at least
        ``min_group_size``).  ``None``: wait for a full group.
    full_sync_every : int, optional
        Make every ``full_sync_every + 1``-th group one of all live ranks.
    connect_within : int, optional
        Make the next group one of all live ranks when the mixing graph
        has stayed disconnected for this many groups.
    staleness : float, default 0
        Exponent of the staleness weighting (module docstring).
    thread : bool, optional
        Serve the controller from a thread on rank 0; default: when MPI
        gives ``MPI_THREAD_MULTIPLE``.
    timeout : float, optional
        Seconds any one wait may last before ``CollectiveTimeoutError``;
        ``None`` takes ``MPI_COLLECTIVES_TIMEOUT`` (default 300).

    Attributes
    ----------
    calls : int
        This rank's reduce calls.
    groups_formed : int
        Groups formed over all ranks, as of this rank's latest group.
    mean_group_size : float
        Mean size of those groups.
    wait_times : list of float
        Seconds each of this rank's calls waited for its group to form.

    Examples
    --------
    >>> with PartialReducer(comm, 2) as reducer:
    ...     for step in range(steps):
    ...         grad = compute()
    ...         group = reducer.reduce(grad, step=step)  # averaged with group.members

    """

    def __init__(self, comm, group_size, *, min_group_size=1, group_timeout=None,
                 full_sync_every=None, connect_within=None, staleness=0.0, thread=None,
                 timeout=None):
        check_comm(comm)
        self.comm, self.rank, self.size = comm, comm.Get_rank(), comm.Get_size()
        self.group_size = check_count("group_size", group_size, high=self.size)
        options = dict(
            min_group_size=check_count("min_group_size", min_group_size,
                                       high=self.group_size),
            group_timeout=None if group_timeout is None else check_positive(
                "group_timeout", group_timeout),
            full_sync_every=check_count("full_sync_every", full_sync_every,
                                        allow_none=True),
            connect_within=check_count("connect_within", connect_within,
                                       allow_none=True),
            staleness=check_positive("staleness", staleness, zero=True))
        threaded = _thread_mode(thread)
        resolve_timeout(timeout)
        self.timeout = timeout
        self.calls, self.groups_formed, self.wait_times = 0, 0, []
        self._grouped, self._closed, self._broken = 0, False, None
        self._control, self._data = comm.Dup(), comm.Dup()
        self._controller = self._server = None
        if self.rank == 0:
            self._controller = GroupController(self._control, self.group_size, **options)
            if threaded:
                self._server = _Server(self, self._controller)

    # ------------------------------------------------------------ public ---

    def reduce(self, buf, *, weight=1.0, step=None):
        """Average ``buf`` in place with the group this call joins; return its record.

        Parameters
        ----------
        buf : numpy.ndarray
            C-contiguous, writeable, floating dtype (float16, float32,
            float64); every member of a group passes the same count and dtype.
        weight : float, default 1
            This rank's weight in the group's average, finite and > 0.
        step : int, optional
            This rank's step count, for staleness weighting; default: the
            number of reduce calls it made before.

        Returns
        -------
        GroupRecord
            Members, sequence number, weights, reason and wait time.

        Raises
        ------
        TypeError, ValueError
            Bad buffer, weight or step, before any message is sent.
        RuntimeError
            The reducer is closed, or broken by an earlier error.
        CollectiveMismatchError
            On every member, when members pass different counts or dtypes.
        CollectiveTimeoutError
            When no group forms, or a member is late, within ``timeout``.

        """
        self._check_usable()
        check_buffer(buf)
        resolve_op("avg", buf.dtype)
        weight = check_positive("weight", weight)
        step = self.calls if step is None else check_count("step", step, low=0)
        start = time.monotonic()
        try:
            with phase(self.comm, "partial group wait"):
                group = self._join(up_message(READY, self.calls, step, weight, buf.size,
                                              DTYPES.index(buf.dtype)))
            waited = time.monotonic() - start
            _check_group(group)
            with phase(self.comm, "partial reduce", bytes=buf.nbytes, group=group.sequence):
                partial_reduce(buf, self._data, group.members, weights=group.weights,
                               check=False, timeout=self.timeout)
        except CollectiveMismatchError:
            self._count(group, waited)
            raise
        except BaseException as error:
            self._broken = error
            raise
        return self._count(group, waited)

    def close(self):
        """Leave: the controller groups this rank no more (rank 0: after all leave).

        Idempotent.  On rank 0 it waits until every rank has closed, since
        rank 0 serves the controller.
        """
        if self._closed:
            return
        self._closed = True
        request = self._control.Isend(up_message(LEAVE, self.calls), 0, TAG_UP)
        if self._controller is not None:
            self._await(lambda: self._controller.finished, "PartialReducer.close",
                        lambda: sorted(self._controller.live))
            if self._server is not None:
                self._server.stop()
            self._controller.stop(timeout=self.timeout)
        wait_all([request], [0], operation="PartialReducer.close", timeout=self.timeout,
                 comm=self.comm)
        self._control.Free()
        self._data.Free()

    @property
    def closed(self):
        return self._closed

    @property
    def mean_group_size(self):
        return self._grouped / self.groups_formed if self.groups_formed else 0.0

    @property
    def mean_wait(self):
        """Mean seconds this rank's calls waited for their groups."""
        return float(np.mean(self.wait_times)) if self.wait_times else 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------- helpers ---

    def _check_usable(self):
        if self._closed:
            raise RuntimeError(f"PartialReducer on rank {self.rank} is closed")
        if self._broken is not None:
            raise RuntimeError(f"PartialReducer on rank {self.rank} is broken by an "
                               f"earlier error: {self._broken!r}")

    def _join(self, message):
        # Post the receive for the assignment, send READY, wait for the group.
        down = np.empty(down_length(self.size))
        requests = [self._control.Irecv(down, 0, TAG_DOWN),
                    self._control.Isend(message, 0, TAG_UP)]
        try:
            self._await(lambda: MPI.Request.Testall(requests),
                        f"PartialReducer.reduce (group of {self.group_size})", [0])
        except BaseException:
            for request in requests:
                if request != MPI.REQUEST_NULL:
                    request.Cancel()
            raise
        return decode_down(down, self.size)

    def _await(self, done, operation, peers):
        # Poll the controller here when no thread serves it; wait politely.
        deadline = Deadline(operation, timeout=self.timeout, comm=self.comm, spin=_SPIN)
        while True:
            if self._controller is not None and self._server is None:
                self._controller.poll()
            if done():
                return
            if self._controller is not None and self._controller.error is not None:
                raise RuntimeError("the group controller on rank 0 failed") from (
                    self._controller.error)
            deadline.pause(peers)

    def _count(self, group, waited):
        self.calls += 1
        self.groups_formed = group.sequence + 1
        self._grouped = group.grouped
        self.wait_times.append(waited)
        total = sum(group.weights)
        return GroupRecord(group.sequence, group.members,
                           tuple(w / total for w in group.weights), group.reason, waited)


def _check_group(group):
    # Members must agree on count and dtype (the controller sent them all).
    parts = []
    for label, values, show in (("count", group.counts, str),
                                ("dtype", group.dtypes, lambda c: str(DTYPES[c]))):
        if len(set(values)) > 1:
            parts.append(f"{label}: " + ", ".join(
                f"rank {r} has {show(v)}" for r, v in zip(group.members, values)))
    if parts:
        raise CollectiveMismatchError(f"PartialReducer.reduce: members of group "
                                      f"{group.sequence} disagree on " + "; ".join(parts))


def _thread_mode(thread):
    available = MPI.Query_thread() >= MPI.THREAD_MULTIPLE
    if thread is None:
        return available
    if thread and not available:
        raise RuntimeError("thread=True needs MPI_THREAD_MULTIPLE; the MPI library gave "
                           f"thread level {MPI.Query_thread()}; use thread=False")
    return bool(thread)


class _Server:
    """The thread that serves rank 0's controller, stopped at close or at exit."""

    def __init__(self, owner, controller):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=serve, args=(controller, self._stop),
                                        name="collectives-partial-groups", daemon=True)
        self._thread.start()
        # Stop the thread before MPI finalizes, should the owner never close.
        self._finalizer = weakref.finalize(owner, _stop, self._stop, self._thread)

    def stop(self):
        self._finalizer()


def _stop(event, thread):
    event.set()
    thread.join()
