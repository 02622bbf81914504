"""All-reduce of plain buffers on one node, each byte read once from its owner's memory.

The shared-memory pipeline (:mod:`collectives.shared_memory`) must first
copy a plain NumPy buffer into the shared window, which is most of its
memory traffic.  Here each rank reads and writes its peers' buffers where
they are, with Linux's cross-memory attach (``process_vm_readv`` and
``process_vm_writev``, one kernel copy each: what MPICH and Open MPI use
for large messages on one node, and what XPMEM-based collectives build
on).  Per rank ``r``, with chunks as in :func:`collectives.ring_allreduce`:

1. arrive: the shared window's header exchange (the agreement check),
   which also carries every rank's buffer address (:func:`announce`) and
   says every rank's data is ready;
2. reduce and hand out: rank ``r`` reads chunk ``r`` of every peer's
   buffer, a cache-sized piece at a time, folds the pieces into its own
   chunk in place, in the ring's order (so the bits equal the ring's),
   and writes each finished piece, still in cache, over the peers' copies
   of it.  Only rank ``r`` ever reads or writes chunk ``r`` of another
   rank's buffer, and it writes a piece only after reading it, so no two
   ranks touch the same bytes;
3. leave: every rank waits until all have written, so that its buffer is
   complete and nobody touches it after the call.

All ranks together move 2p bytes of memory per byte of buffer (each reads
its chunk of every buffer and writes its chunk into every buffer once),
the least any all-reduce of separate buffers can; reading the finished
chunks back instead of writing them out (this module until 2026-11-25)
moved 3p - 1 and took 1.1-1.25x MPI's time where this takes 0.3-0.7x
(BENCHMARKS.md).  Reading and writing another process needs the
permission to trace it: same user, and no seccomp or Yama rule against
it.  Each process allows its peers (``prctl(PR_SET_PTRACER)``, as MPICH
does); :func:`usable` probes once per window, on every rank together, and
"auto" leaves this algorithm out where the probe fails.
"""

import ctypes
import os

import numpy as np
from mpi4py import MPI

from collectives import _cma_kernels as C
from collectives import _combine_kernels as K
from collectives._chunks import chunk_bounds
from collectives._nodes import one_node_layout
from collectives._ops import kernel_view
from collectives._prepare import prepare_local
from collectives._scratch import scratch
from collectives._window import BASE_AT, BUFFER_AT, OUT, PID_AT, shared_window
from collectives.shared_memory import window_agreement
from collectives.timeline import phase

__all__ = ["cma_allreduce", "checked_run", "run", "announce", "usable", "PIECE_BYTES",
           "ROWS_BYTES"]

#: Bytes of each peer's chunk read per step of the reduction: the pieces of
#: all peers together stay in the L2 while they are folded.  2 ranks,
#: time / MPI's at 1-64 MiB: 128 KiB 0.31-1.36, 256 KiB 0.31-0.86,
#: 1 MiB 0.28-0.79; 4 ranks: 256 KiB 0.31-0.80, 1 MiB 0.34-1.14.
PIECE_BYTES = 256 << 10
#: All ranks' pieces together, from 3 ranks on: each rank's piece is this
#: over the ranks (at most ``PIECE_BYTES``, at least 64 KiB).  Intel VM,
#: 1-4 MiB, two interleaved runs: 3-4 ranks took 0.92-1.0x the time with
#: 128 KiB pieces as with 256 KiB; 2 ranks 1.1-1.25x with 128 KiB.
ROWS_BYTES = 512 << 10
_PR_SET_PTRACER, _PR_SET_PTRACER_ANY = 0x59616D61, ctypes.c_ulong(-1)


def cma_allreduce(buf, comm, *, op="sum", check=True, timeout=None):
    """All-reduce ``buf`` in place, every rank reading and writing its peers' buffers directly.

    Arguments and result are those of :func:`collectives.ring_allreduce`.
    ``comm``'s ranks must all be on one node (``ValueError``), and be
    allowed to read and write each other's memory (``RuntimeError`` on every rank if
    not; see :func:`usable`).  The agreement check is made whatever
    ``check`` says: its exchange also carries the buffers' addresses.
    """
    reduction = prepare_local("cma_allreduce", buf, comm, op=op, timeout=timeout)
    one_node_layout(comm, "cma_allreduce", timeout=timeout)
    return checked_run(buf, comm, reduction, operation="cma_allreduce", timeout=timeout)


def checked_run(buf, comm, reduction, *, operation, timeout):
    """Announce, check agreement, and run; ``RuntimeError`` if the ranks cannot read each other."""
    if comm.Get_size() == 1:
        return buf
    window = shared_window(comm)
    announce(window, buf)
    window_agreement(buf, comm, reduction, operation=operation, timeout=timeout, window=window)
    if not usable(window):
        raise RuntimeError(f"{operation}: {window.single_copy_error}")
    return run(buf, window, reduction, operation=operation, timeout=timeout)


def announce(window, buf):
    """Leave ``buf``'s address where peers read it after the next header exchange.

    One word per rank suffices: a peer reads it right after that exchange,
    and this rank writes the next one only after the call's last wait.
    """
    window.words[window.rank * window.stride // 8 + BUFFER_AT] = MPI.Get_address(buf)


def usable(window):
    """Whether every rank of ``window`` can read and write every other's memory.

    Collective the first time per window (every rank must call it at the
    same point, after an agreement exchange); cached after that.  Each rank
    allows its peers to trace it, then reads each peer's process id from
    that peer's own memory and writes it back; all ranks learn whether all
    succeeded.
    """
    if window.single_copy is None:
        if C.SUPPORTED:  # as MPICH does; without Yama this fails (EINVAL), harmlessly
            ctypes.CDLL(None).prctl(_PR_SET_PTRACER, _PR_SET_PTRACER_ANY, 0, 0, 0)
        window.comm.Barrier()  # every rank allows its peers before any reads
        error = _probe(window)
        flags = np.array([error is None], dtype=np.int32)
        window.comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MIN)
        window.single_copy = bool(flags[0])
        window.single_copy_error = error or (
            "another rank could not read or write its peers' memory with process_vm_readv/writev")
    return window.single_copy


def _probe(window):
    # None if this rank read every peer's pid word from the peer's memory
    # and wrote it back (the same value: harmless), else why not.
    if not C.SUPPORTED:
        return "this system has no process_vm_readv/writev (Linux only)"
    pids, bases = _column(window, PID_AT), _column(window, BASE_AT)
    got = np.zeros(1, dtype=np.int64)
    for q in range(window.size):
        theirs, pid = int(bases[q]) + q * window.stride + PID_AT * 8, int(pids[q])
        if q != window.rank and not (C.pull(pid, got, theirs) and got[0] == pid
                                     and C.push(pid, got, theirs)):
            return (f"rank {window.rank} (pid {os.getpid()}) cannot read and write the "
                    f"memory of rank {q} (pid {pid}) with process_vm_readv/writev: not "
                    "permitted (seccomp, Yama ptrace_scope, or another user or PID namespace)")
    return None


def _column(window, index):
    # Word `index` of every rank's row, as a contiguous int64 array.
    return np.ascontiguousarray(window.words[index::window.stride // 8][:window.size])


def run(buf, window, reduction, *, operation, timeout):
    """The all-reduce, after a header exchange that followed :func:`announce` on every rank."""
    flat = kernel_view(buf)
    if window.size == 1 or flat.size == 0:
        return buf
    call = window.blocks = window.blocks + 1  # one "block" of the window's counters
    plan = _plan(window, buf, flat, reduction)
    with phase(window.comm, "single-copy all-reduce", bytes=buf.nbytes):
        # My chunk in every buffer: the peers' buffers may move between calls.
        np.add(plan.buffers, plan.offset, out=plan.addresses)
        _check(C.reduce_chunk(flat[plan.lo:plan.hi], plan.pids, plan.addresses, *plan.rest),
               plan.pids, operation)
        window.publish(OUT, call)
        window.wait(OUT, call, operation=operation, timeout=timeout)  # all have written
    return buf


class _Plan:
    """What reduce_chunk needs for one count, dtype and op, made once per window.

    Made on every call, these took 25-40 us of a 1 MiB all-reduce (Intel
    VM: 176 us a call at 2 ranks, 146 with them kept; 4 ranks 798 and 705).
    """

    __slots__ = ("lo", "hi", "offset", "pids", "buffers", "addresses", "rest")

    def __init__(self, window, flat, reduction):
        rank, size, item = window.rank, window.size, flat.itemsize
        starts, sizes = chunk_bounds(flat.size, size)
        self.lo, self.hi = starts[rank], starts[rank] + sizes[rank]
        self.offset = self.lo * item  # of my chunk, in bytes
        self.pids = _column(window, PID_AT)
        self.buffers = window.words[BUFFER_AT::window.stride // 8][:size]  # live addresses
        self.addresses = np.empty(size, dtype=np.int64)  # of my chunk in each buffer
        piece = max(1, min(PIECE_BYTES, max(64 << 10, ROWS_BYTES // size)) // item)
        rows = scratch(window.comm, "single-copy", size * piece, flat.dtype)
        code, last = K.CODES[reduction.name]
        self.rest = (rank, rows, piece, code, last, float(size))


def _plan(window, buf, flat, reduction):
    # The window's plan for this call's count, dtype and op.
    key = (buf.size, buf.dtype.num, reduction.name)
    plan = window.single_copy_plans.get(key)
    if plan is None:
        plan = window.single_copy_plans[key] = _Plan(window, flat, reduction)
    return plan


def _check(failed, pids, operation):
    # A copy that the probe allowed failed now: the peer is gone or broken.
    if failed >= 0:
        raise RuntimeError(f"{operation}: could not read or write the buffer of rank "
                           f"{failed} (pid {int(pids[failed])}) with process_vm_readv/writev")
