"""An MPI-3 shared-memory window per communicator, with progress counters.

Every rank of the communicator owns one segment of a window from
``MPI.Win.Allocate_shared``; all segments are mapped by every rank and
must lie at a constant stride (MPICH and Open MPI allocate them
contiguously), so the whole window is one NumPy array and rank ``q``'s
byte ``i`` is at ``q * stride + i``.  A segment holds:

- ``COUNTERS`` int64 progress counters, one per 64-byte cache line: a rank
  only writes its own and reads its peers' (CHOICE is no counter: rank 0
  leaves there the algorithm it picked for a header exchange; PROCESS
  holds the rank's process id, where the window starts in its address
  space, and the address of its buffer in the current call, for
  :mod:`collectives.single_copy`);
- two 64-byte header slots and two small data slots (``SMALL_BYTES``
  each), used alternately by consecutive small calls (ARRIVE counts them);
- a large area for the pipelined blocks, grown on demand.

Counters only grow, so no call ever has to reset them.  Writing data then
a counter, and reading a counter then data, is ordered by ``Win.Sync``
(a memory barrier) inside a ``Lock_all`` epoch held for the window's life:
the MPI-3 "unified" model's rule for load/store synchronisation.  The
small-call kernel, which never returns to Python between the two, orders
them with a release store and acquire loads instead (``_atomics``).

The window is cached on the communicator (an MPI attribute) and freed with
it; :func:`shared_window` replaces it with a larger one when asked for
more room, which is collective, like the first allocation.
"""

import os

import numpy as np
from mpi4py import MPI

from collectives import _combine_kernels as K
from collectives._lifetime import cached, release_keyval
from collectives._spin import SPIN, yield_after
from collectives._wait import Deadline

__all__ = ["SharedWindow", "shared_window", "ARRIVE", "IN", "REDUCED", "OUT", "CHOICE_AT",
           "counter_word",
           "PID_AT", "BASE_AT", "BUFFER_AT", "SMALL_BYTES", "HEADER_BYTES"]

ARRIVE, IN, REDUCED, OUT, CHOICE, PROCESS = range(6)
COUNTERS = 8
_LINE = 64
HEADER_BYTES = 64
#: Bytes of data a small call carries at most (the size of a small slot);
#: shared_memory.is_small decides, the large area takes the rest.
SMALL_BYTES = 256 * 1024
_HEADERS = COUNTERS * _LINE
#: Index in ``SharedWindow.words`` of rank 0's CHOICE word.
CHOICE_AT = CHOICE * _LINE // 8
#: Indices in a rank's row of ``SharedWindow.words`` of its process id,
#: the address of the window's first byte in its process, and its buffer's
#: address in the current call (written by ``single_copy.announce``).
PID_AT, BASE_AT, BUFFER_AT = (PROCESS * _LINE // 8 + i for i in range(3))
_SMALL = _HEADERS + 2 * HEADER_BYTES
_LARGE = _SMALL + 2 * SMALL_BYTES
_PAGE = 4096
#: Counter polls between two calls into MPI's progress engine.
_POKE_EVERY = 16
#: Polls of the small-call kernel when every rank has a core of its own
#: (some tens of microseconds at most: above the usual skew between ranks).
FAST_POLLS = 2000


def counter_word(counter):
    """Index of ``counter`` in a rank's row of ``SharedWindow.words``."""
    return counter * _LINE // 8


class SharedWindow:
    """One communicator's shared window: layout, views, counters, waiting."""

    def __init__(self, comm, large_bytes):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.large_bytes = large_bytes
        segment = -(-(_LARGE + large_bytes) // _PAGE) * _PAGE
        self.win = MPI.Win.Allocate_shared(segment, 1, comm=comm)
        self.win.Lock_all(MPI.MODE_NOCHECK)
        self.stride = _stride(self.win, self.size, segment)
        base = MPI.Get_address(self.win.Shared_query(0)[0])
        whole = MPI.buffer.fromaddress(base, self.stride * self.size)
        self.bytes = np.frombuffer(whole, dtype=np.uint8)
        self.words = self.bytes.view(np.int64)
        self.row(0, _HEADERS)[:] = 0  # my counters; memory comes uninitialised
        mine = self.rank * self.stride // 8
        self.words[mine + PID_AT], self.words[mine + BASE_AT] = os.getpid(), base
        self.win.Sync()
        comm.Barrier()  # nobody reads a counter before its owner zeroed it
        # Yield the core between polls at once when ranks outnumber cores
        # (the awaited rank may need it); else spin, as MPI does.
        self.yield_after = yield_after(self.size)
        # Counter polls inside the small-call kernel before it returns to
        # wait in Python (which also drives MPI progress and the deadline),
        # and the poll from which each yields the core.  Oversubscribed,
        # the kernel yields as Python's wait would, without its Python (8 B
        # - 1 KiB on 2 cores: 4 ranks 10.5-16 us a call against 28-38
        # before, 8 ranks 33-36 against 76-118).
        self.fast_polls = FAST_POLLS if self.yield_after else SPIN
        self.fast_yield_from = self.fast_polls if self.yield_after else 0
        self.freed = False
        self.single_copy = None  # whether peers may read each other's memory; see single_copy
        self.single_copy_error = None  # why not, if not
        self.single_copy_plans = {}  # (count, dtype, op) -> single_copy._Plan
        self.sequence = 0  # small calls and header checks made so far
        self.blocks = 0  # large blocks passed so far
        self.slot_bytes = 0  # the large area's slot size in the last large call
        self.slot_last = {}  # slot -> global number of the last block in it
        self.headers = {}  # (operation, count, dtype, op) -> shared_memory._Kind
        self.layouts = {}  # (count, dtype, block, op) -> shared_memory._Layout
        self.views = {}  # dtype -> the window as an array of it

    # ---------------------------------------------------------- layout ---
    def typed(self, dtype):
        """The whole window as a 1-D array of ``dtype``."""
        view = self.views.get(dtype)
        if view is None:
            view = self.views[dtype] = self.bytes.view(dtype)
        return view

    def header_offset(self, slot):
        return _HEADERS + slot * HEADER_BYTES

    def small_offset(self, slot):
        return _SMALL + slot * SMALL_BYTES

    def large_offset(self):
        return _LARGE

    def row(self, offset, nbytes, rank=None):
        """Bytes ``offset .. offset + nbytes`` of ``rank``'s segment (default: mine)."""
        start = (self.rank if rank is None else rank) * self.stride + offset
        return self.bytes[start:start + nbytes]

    # ---------------------------------------------------- large slots ---
    def begin_blocks(self, slot_bytes, *, operation, timeout):
        """Start a large call with slots of ``slot_bytes``; return its first block number.

        Each call numbers its slots from 0, so a call that repeats the last
        one's sizes reuses the memory it left in cache (rotating on across
        calls, 4 MiB at 2 ranks took twice as long: its 16 MiB of slots per
        rank fell out of the L3).  Slots of another size overlap the old
        ones anywhere, so a change of size first waits until every rank has
        copied out every earlier block.
        """
        if slot_bytes != self.slot_bytes:
            self.wait(OUT, self.blocks, operation=operation, timeout=timeout)
            self.slot_bytes, self.slot_last = slot_bytes, {}
        return self.blocks

    def claim_slot(self, slot, block, *, operation, timeout):
        """Wait until every rank has copied out ``slot``'s last block; it now holds ``block``."""
        after = self.take_slot(slot, block)
        if after:
            self.wait(OUT, after, operation=operation, timeout=timeout)

    def take_slot(self, slot, block):
        """:meth:`claim_slot` without the wait: return the OUT count to wait for (0: none)."""
        last = self.slot_last.get(slot)
        self.slot_last[slot] = block
        self.blocks = max(self.blocks, block + 1)
        return 0 if last is None else last + 1

    # -------------------------------------------------------- counters ---
    def publish(self, counter, value):
        """Make my writes visible, then set my ``counter`` to ``value``."""
        self.win.Sync()
        self.words[self.rank * self.stride // 8 + counter_word(counter)] = value

    def wait(self, counter, value, *, operation, timeout):
        """Return once every rank's ``counter`` is >= ``value``."""
        index, step = counter_word(counter), self.stride // 8
        words = self.words
        if K.all_at_least(words, index, step, self.size, value):
            self.win.Sync()
            return
        for i in range(SPIN):
            if K.all_at_least(words, index, step, self.size, value):
                self.win.Sync()
                return
            if i % _POKE_EVERY == 0:
                self.poke()
            if i >= self.yield_after:
                os.sched_yield()
        deadline = Deadline(operation, timeout=timeout, comm=self.comm)
        while not K.all_at_least(words, index, step, self.size, value):
            self.poke()
            deadline.pause([q for q in range(self.size)
                            if words[index + q * step] < value])
        self.win.Sync()

    def poke(self):
        """Let MPI make progress on this rank's messages while it polls memory.

        A peer may still wait on a message this rank already received: a
        large send completes only when the receiver's MPI acknowledges it,
        which MPICH does from its progress engine.  A rank polling counters
        never enters MPI, so without this the peer, finishing that send
        before it publishes its counter, waits forever (seen: a 64 MiB
        pipelined ring followed by a small all-reduce).
        """
        self.comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)

    def release(self):
        """Free the window (collective)."""
        self.freed = True  # for holders of this object (allreduce's state)
        self.win.Unlock_all()
        self.win.Free()


def _stride(win, size, segment):
    # The segments must lie at one constant stride for the single array.
    bases = [MPI.Get_address(win.Shared_query(q)[0]) for q in range(size)]
    stride = bases[1] - bases[0] if size > 1 else segment
    if any(b != bases[0] + q * stride for q, b in enumerate(bases)) or stride < segment:
        win.Unlock_all()
        win.Free()
        raise RuntimeError("the MPI library did not place the shared window's "
                           f"segments at a constant stride (bases {bases}); "
                           "use another algorithm")
    return stride


_KEY = release_keyval()


def shared_window(comm, large_bytes=0):
    """Return ``comm``'s shared window with at least ``large_bytes`` of large area.

    Collective on first use and whenever the window must grow; every rank
    must ask for the same size.
    """
    window = comm.Get_attr(_KEY)
    if window is not None and window.large_bytes >= large_bytes:
        return window
    window = cached(comm, _KEY, lambda: SharedWindow(comm, large_bytes))
    if window.large_bytes < large_bytes:
        comm.Barrier()  # nobody still reads the old window
        comm.Delete_attr(_KEY)  # frees it, on every rank
        window = cached(comm, _KEY, lambda: SharedWindow(comm, large_bytes))
    return window
