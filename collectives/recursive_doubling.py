"""Recursive-doubling all-reduce for small messages, with the agreement check inside.

With ``pof2`` the largest power of two <= ``size``, ranks ``pof2..size-1``
first fold their data into rank ``rank - pof2`` (the standard fold-in of
the extra ranks), then in round ``k`` each rank below ``pof2`` exchanges
its partial result with rank ``rank ^ 2**k`` and combines, and at the end
the extra ranks get the result back: ``log2(pof2)`` exchanges of the
whole buffer (plus two for the extra ranks), the latency-optimal choice
for small messages.  Partners combine as ``lower rank op higher rank``, so
both hold the same bits: the result is identical on every rank.

The agreement check costs no extra message: every message starts with a
64-byte header, the ``[v, -v]`` vector of (operation, count, dtype, op),
merged by maximum on the way; after the last round every rank has seen
every rank's values, and if they differ all ranks raise
``CollectiveMismatchError`` together.  Receives are posted for up to
``FUSED_MAX_BYTES`` of data, so a rank that passes another count still
fits; above that size the headers travel alone first
(:func:`header_agreement`, which the other algorithms use as their check).
"""

import numpy as np
from mpi4py import MPI

from collectives import _combine_kernels as K
from collectives._agree import agreement_header, raise_disagreement
from collectives._lifetime import cached, release_keyval
from collectives._nodes import node_layout
from collectives._ops import kernel_view
from collectives._prepare import collective_fields, prepare_local
from collectives._spin import complete, yield_after
from collectives.errors import CollectiveTimeoutError
from collectives.timeline import phase

__all__ = ["rd_allreduce", "header_agreement", "FUSED_MAX_BYTES"]

#: Data up to this many bytes travels in one message with the header.
FUSED_MAX_BYTES = 4096
_HEADER_WORDS = 8  # [v, -v] of 4 fields
_HEADER = 8 * _HEADER_WORDS
_TAG = 78
_MAX_PLANS = 64


def rd_allreduce(buf, comm, *, op="sum", check=True, timeout=None):
    """All-reduce ``buf`` in place with recursive doubling.

    Arguments and result are those of :func:`collectives.ring_allreduce`.
    Above ``FUSED_MAX_BYTES`` the check is one header-only exchange
    first; ``check=False`` skips it (up to that size it is free and
    always done).
    """
    reduction = prepare_local("rd_allreduce", buf, comm, op=op, timeout=timeout)
    return run(buf, comm, reduction, operation="rd_allreduce", check=check,
               timeout=timeout)


def run(buf, comm, reduction, *, operation, check, timeout):
    """Recursive doubling after the local checks (``allreduce`` calls this)."""
    if comm.Get_size() == 1:
        return buf
    plan = _plan(comm, operation, buf, reduction)
    flat = kernel_view(buf)
    if flat.nbytes > FUSED_MAX_BYTES:
        if check:
            _agree_or_raise(plan, comm, 0, timeout)
        plan.mine_data[:] = flat
        with phase(comm, "recursive doubling", bytes=buf.nbytes):
            _rounds(plan, comm, flat, flat.nbytes, timeout)
        return buf
    plan.mine_data[:] = flat
    if not _rounds(plan, comm, flat, flat.nbytes, timeout):
        raise_disagreement(comm, operation, plan.fields)
    return buf


def header_agreement(buf, comm, reduction, *, operation, timeout=None):
    """Check that all ranks agree, with the headers of :func:`rd_allreduce` alone.

    Raises ``CollectiveMismatchError`` on every rank if they differ.
    """
    if comm.Get_size() > 1:
        with phase(comm, "agreement check"):
            _agree_or_raise(_plan(comm, operation, buf, reduction), comm, 0, timeout)


def _agree_or_raise(plan, comm, nbytes, timeout):
    if not _rounds(plan, comm, None, nbytes, timeout):
        raise_disagreement(comm, plan.operation, plan.fields)


class _Plan:
    """Buffers, views and persistent requests of one (operation, count, dtype, op)."""

    def __init__(self, comm, operation, buf, reduction):
        flat = kernel_view(buf)
        self.comm, self.operation = comm, operation
        self.fields = collective_fields(operation, buf, reduction)
        self.header = agreement_header(self.fields)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.divisor = float(self.size)
        self.polite = yield_after(_ranks_here(comm))
        self.code, self.last = K.CODES[reduction.name]
        self.mine = np.empty(_HEADER + flat.nbytes, dtype=np.uint8)
        self.theirs = np.empty(_HEADER + max(flat.nbytes, FUSED_MAX_BYTES), np.uint8)
        self.mine_header = self.mine[:_HEADER].view(np.int64)
        self.theirs_header = self.theirs[:_HEADER].view(np.int64)
        self.mine_data = self.mine[_HEADER:].view(flat.dtype)
        self.theirs_data = self.theirs[_HEADER:_HEADER + flat.nbytes].view(flat.dtype)
        self.schedules = {}  # bytes of data sent -> list of steps

    def schedule(self, nbytes):
        """Return the steps ``(kind, requests, peer, mine_first, code)``.

        The requests are persistent, for messages of ``nbytes`` data bytes.
        """
        steps = self.schedules.get(nbytes)
        if steps is None:
            steps = self.schedules[nbytes] = list(self._steps(nbytes))
        return steps

    def _steps(self, nbytes):
        comm, send, recv = self.comm, self.mine[:_HEADER + nbytes], self.theirs
        rank, size = self.rank, self.size
        pof2 = 1 << (size.bit_length() - 1)
        if rank >= pof2:  # extra rank: hand in, get the result back
            yield ("extra", [comm.Recv_init(recv, rank - pof2, _TAG),
                             comm.Send_init(send, rank - pof2, _TAG)],
                   rank - pof2, False, self.code)
            return
        extra = rank + pof2 if rank + pof2 < size else None
        if extra is not None:
            yield ("fold", [comm.Recv_init(recv, extra, _TAG)], extra, True, self.code)
        mask = 1
        while mask < pof2:
            partner = rank ^ mask
            mask <<= 1
            kind = "last" if mask == pof2 and extra is None else "round"
            yield (kind, [comm.Recv_init(recv, partner, _TAG),
                          comm.Send_init(send, partner, _TAG)], partner,
                   rank < partner, self.last if mask == pof2 else self.code)
        if extra is not None:
            yield ("final", [comm.Send_init(send, extra, _TAG)], extra, True, self.code)

    def free(self):
        for steps in self.schedules.values():
            for step in steps:
                for request in step[1]:
                    request.Free()
        self.schedules.clear()


def _ranks_here(comm):
    # Ranks of comm on this machine (a cheap local count after the first).
    return node_layout(comm, ranks_per_node=0).node_size


class _Plans(dict):
    """A communicator's plans, keyed by (operation, count, dtype, op)."""

    def release(self):
        for plan in self.values():
            plan.free()
        self.clear()


_PLANS_KEY = release_keyval()


def _plan(comm, operation, buf, reduction):
    plans = cached(comm, _PLANS_KEY, _Plans, at_exit=True)
    key = (operation, buf.size, buf.dtype.num, reduction.name)
    plan = plans.get(key)
    if plan is None:
        if len(plans) >= _MAX_PLANS:
            plans.release()
        plan = plans[key] = _Plan(comm, operation, buf, reduction)
    return plan


def _rounds(plan, comm, out, nbytes, timeout):
    # Walk the schedule: fold the extra rank in, recursive doubling among
    # the first pof2 ranks, hand the result back out; ``out`` (or None:
    # headers only) gets the result.  Return whether all ranks agree.
    plan.mine_header[:] = plan.header
    agree = True
    for kind, requests, peer, mine_first, code in plan.schedule(nbytes):
        MPI.Prequest.Startall(requests)
        if kind == "final" and out is not None and agree:
            out[:] = plan.mine_data
        _wait(requests, peer, plan, timeout)
        if kind == "extra":
            agree = K.merge_header(plan.mine_header, plan.theirs_header)
            if agree and out is not None:
                out[:] = plan.theirs_data
        elif kind != "final":
            target = out if kind == "last" and out is not None else plan.mine_data
            agree = _combine(plan, nbytes, mine_first, code, target)
    return agree


def _combine(plan, nbytes, mine_first, code, out):
    # Merge the headers; if they agree, out = lower rank's op higher rank's.
    if nbytes == 0:
        return K.merge_header(plan.mine_header, plan.theirs_header)
    mine, theirs = plan.mine_data, plan.theirs_data
    lo, hi = (mine, theirs) if mine_first else (theirs, mine)
    return K.step(plan.mine_header, plan.theirs_header, out, lo, hi, code,
                     plan.divisor)


def _wait(requests, peer, plan, timeout):
    try:
        complete(requests, [peer] * len(requests), operation=plan.operation,
                 timeout=timeout, comm=plan.comm, polite=plan.polite)
    except CollectiveTimeoutError:
        plan.comm.Get_attr(_PLANS_KEY).release()  # their requests are in limbo
        raise
