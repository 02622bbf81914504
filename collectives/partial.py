"""Partial all-reduce: only the ranks named in ``members`` reduce their buffers.

The members of ``comm`` listed in ``members`` all-reduce by point-to-point
messages on ``comm`` itself (no communicator is made per call); the other
ranks take no part: they may call and get ``None`` back, or not call at
all.  The list may come in any order: members are used in ascending rank
order, and a rank's *position* in that sorted list plays the part its rank
plays in a whole-communicator collective.  Buffers up to 128 KiB go up a
binomial tree to the lowest member and back down (the phases of
:mod:`collectives.tree`, run on positions); larger ones go around a ring
of the members, reduce-scatter then all-gather, on the schedule of
:mod:`collectives.ring`.  Every element is reduced once, in an order fixed
by the member set, so all members end with the same bytes; with every
rank a member, the result is bitwise that of ``ring_allreduce`` or
``tree_allreduce``, whichever was used.

Weighted average: with ``weights`` (op "avg" only), member ``i`` first
divides its own buffer by ``sum(w) / w_i``, then the members sum.  Equal
weights take the plain "avg" path (sum, then divide by the member count).

As with any collective, the members of overlapping groups must make their
partial reduces in the same order (MPI matches messages between two ranks
first in, first out); :class:`collectives.PartialReducer` arranges that for
groups formed on the fly.
"""

import numbers
import zlib

import numpy as np
from mpi4py import MPI

from collectives._agree import agreement_header, check_comm
from collectives._chunks import chunk_bounds
from collectives._numbers import check_positive
from collectives._ops import DTYPES, check_buffer, kernel_view, resolve_op
from collectives._scratch import scratch
from collectives._wait import Deadline, resolve_timeout, wait_all
from collectives.errors import CollectiveMismatchError, CollectiveTimeoutError
from collectives.timeline import phase
from collectives.tree import _bcast, _reduce

__all__ = ["partial_reduce", "PARTIAL_ALGORITHMS"]

#: algorithm names accepted by :func:`partial_reduce`.
PARTIAL_ALGORITHMS = ("auto", "ring", "tree")

_OPERATION = "partial_reduce"
_RING_TAG = 20  # and 21; the tree phases use tree.py's tags 2 and 3
_ERROR_TAG = 22
# Up to this many bytes the tree's log2(p) whole-buffer messages beat the
# ring's 2 (p - 1) chunk messages: BENCHMARKS.md, "Auto thresholds" (tree
# faster up to 64-128 KiB at 2 ranks and 128 KiB-1 MiB at 4 ranks).
_TREE_MAX_BYTES = 128 * 1024


def partial_reduce(buf, comm, members, *, op="avg", weights=None, algorithm="auto",
                   check=True, timeout=None):
    """All-reduce ``buf`` in place among the ranks ``members`` of ``comm``.

    Parameters
    ----------
    buf : numpy.ndarray
        As in :func:`collectives.ring_allreduce`.  On a member it holds the
        reduction over the members on return; elsewhere it is untouched.
    comm : mpi4py.MPI.Intracomm
        The communicator the member ranks belong to.
    members : sequence of int
        Ranks of ``comm`` that take part, in any order, without repeats;
        every member passes the same set.
    op : str or mpi4py.MPI.Op
        As in :func:`collectives.ring_allreduce`; "avg" divides by the
        number of members.
    weights : sequence of float, optional
        With op "avg": one weight > 0 per entry of ``members`` (same order);
        the result is ``sum(w_i x_i) / sum(w)``.  Every member passes the same.
    algorithm : str
        "auto" (tree for small buffers, ring for large), "ring" or "tree".
    check : bool
        Verify that the members agree on count, dtype, op, member set and
        weights (one small tree all-reduce among them).
    timeout : float, optional
        As in :func:`collectives.ring_allreduce`.

    Returns
    -------
    numpy.ndarray or None
        ``buf`` on a member, ``None`` on any other rank.

    Raises
    ------
    TypeError, ValueError
        Bad buffer, op, members (empty, repeated, out of range), weights
        (not > 0, NaN, wrong count) or algorithm, on every rank that calls,
        before any message is sent.
    CollectiveMismatchError
        On every member, when members disagree (with ``check``).
    CollectiveTimeoutError
        When a member does not take part within ``timeout``.

    Examples
    --------
    >>> partial_reduce(x, comm, [3, 0, 2])  # ranks 0, 2, 3 average; others: None

    """
    reduction, group, shares = _prepare(buf, comm, members, op, weights, algorithm,
                                        timeout)
    if comm.Get_rank() not in group:
        return None
    link = _MemberLink(comm, group, timeout)
    if check and link.size > 1:
        _check_agreement(buf, link, reduction, shares)
    if link.size == 1 or buf.size == 0:
        return buf
    flat = kernel_view(buf)
    if shares is not None:
        reduction.div(flat, 1.0 / shares[link.rank])  # scale by this member's share
        reduction = resolve_op("sum", buf.dtype)
    if algorithm == "auto":
        algorithm = "tree" if buf.nbytes <= _TREE_MAX_BYTES else "ring"
    with phase(comm, f"partial {algorithm}", bytes=buf.nbytes):
        _ring(flat, link, reduction) if algorithm == "ring" else _tree(flat, link, reduction)
    return buf


# ------------------------------------------------------------------ checks ---

def _prepare(buf, comm, members, op, weights, algorithm, timeout):
    # Local checks only; returns the op, the sorted members and the shares.
    check_comm(comm)
    check_buffer(buf)
    reduction = resolve_op(op, buf.dtype)
    ranks = _check_members(members, comm.Get_size())
    if algorithm not in PARTIAL_ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; use one of "
                         + ", ".join(repr(a) for a in PARTIAL_ALGORITHMS))
    resolve_timeout(timeout)
    shares = None if weights is None else _shares(weights, ranks, reduction)
    return reduction, tuple(sorted(ranks)), shares


def _check_members(members, size):
    if isinstance(members, (str, bytes)) or not hasattr(members, "__iter__"):
        raise TypeError(f"members must be a sequence of int ranks, got {members!r}")
    ranks = list(members)
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, numbers.Integral):
            raise TypeError(f"members must be int ranks, got {r!r} in {ranks}")
    if not ranks:
        raise ValueError("members is empty; name at least one rank of comm")
    for r in ranks:
        if not 0 <= r < size:
            raise ValueError(f"member rank {r} is out of range for a communicator "
                             f"of size {size} (0..{size - 1})")
    repeated = sorted({int(r) for r in ranks if ranks.count(r) > 1})
    if repeated:
        raise ValueError(f"members lists rank(s) {repeated} more than once: {ranks}")
    return [int(r) for r in ranks]


def _shares(weights, ranks, reduction):
    # Each member's w_i / sum(w), in ascending rank order; None if all equal.
    if reduction.name != "avg":
        raise ValueError(f"weights need op 'avg', got op {reduction.name!r}")
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
        raise TypeError(f"weights must be a sequence of numbers, got {weights!r}")
    weights = list(weights)
    if len(weights) != len(ranks):
        raise ValueError(f"weights has {len(weights)} entries but members has "
                         f"{len(ranks)}: {weights} for {ranks}")
    by_rank = sorted(zip(ranks, weights))
    values = [check_positive(f"weight of member rank {r}", w) for r, w in by_rank]
    if all(v == values[0] for v in values):
        return None
    total = sum(values)
    return tuple(v / total for v in values)


def _check_agreement(buf, link, reduction, shares):
    # Maximum of [v, -v] over the members (the tree phases): equal iff all agree.
    fields = [("count", buf.size, buf.size),
              ("dtype", DTYPES.index(buf.dtype), str(buf.dtype)),
              ("op", reduction.code, reduction.name),
              ("members", _crc(link.group), list(link.group)),
              ("weights", _crc(shares), None if shares is None else list(shares))]
    both = agreement_header(fields)
    maximum = resolve_op("max", both.dtype)
    _reduce(both, link, 0, maximum, keep_input=False)
    _bcast(both, link, 0)
    if not np.array_equal(both[:len(fields)], -both[len(fields):]):
        _raise_disagreement(link, fields)


def _crc(values):
    return 0 if values is None else zlib.crc32(np.asarray(values, np.float64).tobytes())


def _raise_disagreement(link, fields):
    # Error path only: every member sends its values to every other member.
    # Members may disagree on who the members are, so some may never
    # answer: wait politely, and report the values of those that did.
    shown = [f[2] for f in fields]
    others = [r for r in link.group if r != link.comm.Get_rank()]
    sends = [link.comm.isend(shown, r, _ERROR_TAG) for r in others]
    table = _answers(link, others)
    if not MPI.Request.Testall(sends):  # a non-member never receives
        for request in sends:
            request.Cancel()
    missing = [r for r in others if r not in table]
    table[link.comm.Get_rank()] = shown
    parts = []
    for j, (label, _, _) in enumerate(fields):
        column = [(r, table[r][j]) for r in sorted(table)]
        if any(v != column[0][1] for _, v in column):
            parts.append(f"{label}: " + ", ".join(f"rank {r} has {v}" for r, v in column))
    silent = f" (no answer from rank(s) {missing})" if missing else ""
    raise CollectiveMismatchError(f"{_OPERATION}: members disagree on "
                                  + "; ".join(parts) + silent)


def _answers(link, others):
    # The values each of ``others`` sent, as many as arrive within the timeout.
    requests = {r: link.comm.irecv(source=r, tag=_ERROR_TAG) for r in others}
    table = {}
    deadline = Deadline(_OPERATION, timeout=link.timeout, comm=link.comm)
    while True:
        for r, request in list(requests.items()):
            done, value = request.test()
            if done:
                table[r] = value
                del requests[r]
        if not requests:
            return table
        try:
            deadline.pause(sorted(requests))
        except CollectiveTimeoutError:
            for request in requests.values():
                request.Cancel()
            return table


# -------------------------------------------------------------- algorithms ---

class _MemberLink:
    """Messages among the members, addressed by position in the sorted group.

    It offers what the tree phases use (``comm``, ``rank``, ``size``,
    ``send``, ``recv``), so they run on positions, and ``shift`` for the
    ring.  Every wait has the deadline and names the late rank of ``comm``.
    """

    def __init__(self, comm, group, timeout):
        self.comm, self.group, self.timeout = comm, group, timeout
        self.rank, self.size = group.index(comm.Get_rank()), len(group)

    def send(self, flat, dest, tag):
        peer = self.group[dest]
        self._wait([self.comm.Isend([flat, MPI.BYTE], peer, tag)], [peer])

    def recv(self, flat, source, tag):
        peer = self.group[source]
        self._wait([self.comm.Irecv([flat, MPI.BYTE], peer, tag)], [peer])

    def shift(self, send, recv, tag):
        """Send to the next member and receive from the previous one."""
        right = self.group[(self.rank + 1) % self.size]
        left = self.group[(self.rank - 1) % self.size]
        self._wait([self.comm.Irecv([recv, MPI.BYTE], left, tag),
                    self.comm.Isend([send, MPI.BYTE], right, tag)], [left, right])

    def _wait(self, requests, peers):
        wait_all(requests, peers, operation=_OPERATION, timeout=self.timeout,
                 comm=self.comm)


def _tree(flat, link, reduction):
    # Binomial tree up to the lowest member, then back down.
    _reduce(flat, link, 0, reduction, keep_input=False)
    _bcast(flat, link, 0)


def _ring(flat, link, reduction):
    # Reduce-scatter, then all-gather, around the members in rank order.
    starts, sizes = chunk_bounds(flat.size, link.size)
    chunks = [flat[s:s + n] for s, n in zip(starts, sizes)]
    _ring_reduce_scatter(chunks, link, reduction)
    _ring_allgather(chunks, link)


def _ring_reduce_scatter(chunks, link, reduction):
    # Step s: pass partial chunk (pos - s) on, add the previous member's
    # partial of chunk (pos - s - 1); the last step also divides for "avg".
    p, pos = link.size, link.rank
    incoming = scratch(link.comm, 0, chunks[0].size, chunks[0].dtype)
    for step in range(p - 1):
        mine = chunks[(pos - step - 1) % p]
        recv = incoming[:mine.size]
        link.shift(chunks[(pos - step) % p], recv, _RING_TAG)
        if reduction.average and step == p - 2:
            reduction.sum_div(mine, recv, p)
        else:
            reduction.reduce(mine, recv)


def _ring_allgather(chunks, link):
    # Step s: pass finished chunk (pos + 1 - s) on, receive chunk (pos - s).
    p, pos = link.size, link.rank
    for step in range(p - 1):
        link.shift(chunks[(pos + 1 - step) % p], chunks[(pos - step) % p], _RING_TAG + 1)
