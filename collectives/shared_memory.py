"""Intra-node all-reduce through an MPI-3 shared-memory window.

All ranks of the communicator must share memory (one node).  Two modes:

- Small (see :func:`is_small`): each rank writes its agreement header and
  data into its own slot of the window and bumps its ARRIVE counter; once
  all have arrived, every rank checks the headers and folds all ranks'
  data, in rank order, straight into its own buffer (so all get the same
  bits).  One synchronisation, no message; one Numba call
  (``_combine_kernels.exchange``) stages, publishes, polls briefly and
  folds, since the Python between those steps was most of the time of an
  8-byte call (4.0 -> 1.7 us for the exchange at 2 ranks).
- Large: the buffer goes through in blocks (the whole buffer up to
  ``WHOLE_BYTES``, else ``BLOCK_BYTES`` each), each cut
  into one slice per rank, in a three-stage software pipeline over
  ``SLOTS`` window slots: at step ``t`` a rank copies block ``t`` (all
  but its own slice) into its slot (IN), reduces its slice of block
  ``t - 1`` reading every rank's slot directly and writes the result to
  its slot and its buffer (REDUCED), and copies the other slices of block
  ``t - 2`` out of their owners' slots (OUT).  Each stage waits only for the counters it needs,
  so ranks overlap copy-in, reduction and copy-out, and a block is reused
  from cache while it is still there.  Every slice is reduced once, by
  its owner, so the result is identical on every rank; and each element
  is folded in the order in which :func:`collectives.ring_allreduce`
  folds it (starting from the rank whose ring chunk holds it), so the
  bits equal the ring's too and "auto" can pick either by speed.

The agreement check is the small mode's header exchange (with no data
for large calls, :func:`window_agreement`): every rank reads every rank's
header, so a mismatch raises on all of them.
"""

import numpy as np

from collectives import _combine_kernels as K
from collectives._agree import agreement_header, raise_disagreement
from collectives._chunks import chunk_bounds
from collectives._nodes import one_node_layout
from collectives._ops import kernel_view
from collectives._prepare import collective_fields, prepare_local
from collectives._window import (
    ARRIVE,
    CHOICE_AT,
    IN,
    OUT,
    REDUCED,
    SMALL_BYTES,
    counter_word,
    shared_window,
)
from collectives.timeline import phase

__all__ = ["shm_allreduce", "run", "run_small", "SmallCall", "is_small", "small_limit",
           "window_agreement", "window_choice", "fold_window", "SMALL_BYTES",
           "SMALL_TOTAL_BYTES", "SMALL_RANK_BYTES", "WHOLE_BYTES", "BLOCK_BYTES", "SLOTS"]

#: Messages up to this many bytes go through as one block: each block
#: costs three waits and some tens of microseconds of Python, and data
#: this size stays in the L3 anyway.  Larger ones go in ``BLOCK_BYTES``
#: blocks, which keep the pipeline's working set in cache.  Measured with
#: ``benchmarks/block_sweep.py`` (BENCHMARKS.md, "Shared-memory block
#: size"): 2 ranks, time / MPI's, one block 0.61-0.67 at 1-4 MiB and
#: 0.59-1.37 at 8-64 MiB, 512 KiB blocks 0.84-0.99 and 0.39-1.07.
WHOLE_BYTES = 4 << 20
#: Bytes per pipelined block above ``WHOLE_BYTES``.
BLOCK_BYTES = 512 << 10
#: Window slots per rank that blocks rotate through.
SLOTS = 4
#: The small mode's limit on all ranks' data together: every rank folds
#: every rank's data, so its work grows with the ranks, the pipeline's does
#: not.  Measured crossover (this machine): 256 KiB at 2 ranks, 128 KiB at
#: 4 (small mode 0.9-1.1x MPI there, the pipeline 1.2-2.4x).
SMALL_TOTAL_BYTES = 512 * 1024
#: The small mode's limit per rank, below its slots' ``SMALL_BYTES``: above
#: it, at 2 ranks, "auto"'s tuned candidates win (256 KiB: "cma" 30 us a
#: call on the Intel Xeon VM and 62 on the AMD Zen 3 VM, the small mode
#: 58 and 119; MPI 58 and 107).
SMALL_RANK_BYTES = 128 * 1024


def small_limit(size):
    """The most bytes per rank, over ``size`` ranks, that go through the small mode."""
    return min(SMALL_BYTES, SMALL_RANK_BYTES, SMALL_TOTAL_BYTES // size)


def is_small(nbytes, size):
    """Whether ``nbytes`` per rank over ``size`` ranks go through the small mode."""
    return nbytes <= small_limit(size)


def shm_allreduce(buf, comm, *, op="sum", check=True, timeout=None):
    """All-reduce ``buf`` in place through a shared-memory window.

    Arguments and result are those of :func:`collectives.ring_allreduce`.
    ``comm``'s ranks must all be on one node (``ValueError`` otherwise);
    the first call on a communicator, and a call that needs a larger
    window, allocate the window (collective).  In the small mode
    (:func:`is_small`) the check is free and always done.
    """
    reduction = prepare_local("shm_allreduce", buf, comm, op=op, timeout=timeout)
    one_node_layout(comm, "shm_allreduce", timeout=timeout,
                    hint="; use algorithm 'hierarchical'")
    return run(buf, comm, reduction, operation="shm_allreduce", check=check,
               timeout=timeout)


def run(buf, comm, reduction, *, operation, check, timeout, block_bytes=None,
        streaming=False, window=None):
    """The shared-memory all-reduce after the checks (``allreduce`` calls this).

    ``block_bytes``: the large mode's block size; None: the whole buffer up
    to ``WHOLE_BYTES``, ``BLOCK_BYTES`` above.  ``streaming``: write the
    window with streaming stores (``_atomics.store_streaming``).  The tuner
    of "auto" tries these variants; all give the same bits.  ``window``:
    ``shared_window(comm)``, where the caller has it (each look-up costs
    about 0.5 us; a larger one is still made here where needed).
    """
    if comm.Get_size() == 1:
        return buf
    flat = buf if buf.ndim == 1 and buf.dtype.char != "e" else kernel_view(buf)
    window = shared_window(comm) if window is None else window
    if is_small(flat.nbytes, window.size):
        _exchange(window, buf, flat, reduction, operation, timeout)
        return buf
    if check:
        _exchange(window, buf, None, reduction, operation, timeout)
    if block_bytes is None:
        block_bytes = flat.nbytes if flat.nbytes <= WHOLE_BYTES else BLOCK_BYTES
    block = max(1, min(block_bytes // flat.itemsize, flat.size))
    large_bytes = min(SLOTS, -(-flat.size // block)) * block * flat.itemsize
    if window.large_bytes < large_bytes:
        window = shared_window(comm, large_bytes)
    with phase(comm, "shared-memory pipeline", bytes=buf.nbytes):
        _pipeline(window, flat, block, reduction, operation, timeout, streaming)
    return buf


def run_small(buf, window, reduction, operation, timeout):
    """:func:`run` for a call that :func:`is_small`, on two or more ranks (always checked).

    ``window`` is ``shared_window(comm)``, which the caller may keep,
    but not past its release (a larger one replaces it).
    """
    if window.freed:  # its memory may be unmapped: fail, do not crash
        raise RuntimeError("shm all-reduce called with a shared window already freed")
    flat = buf if buf.ndim == 1 and buf.dtype.char != "e" else kernel_view(buf)
    _exchange(window, buf, flat, reduction, operation, timeout)
    return buf


def window_agreement(buf, comm, reduction, *, operation, timeout=None, window=None):
    """Check that all ranks agree, with the window's header exchange alone.

    ``window``: ``shared_window(comm)``, where the caller has it.
    """
    if comm.Get_size() > 1:
        with phase(comm, "agreement check"):
            _exchange(shared_window(comm) if window is None else window, buf, None, reduction,
                      operation, timeout)


def window_choice(buf, comm, reduction, proposal, *, operation, timeout=None, window=None):
    """Check agreement with the header exchange; return rank 0's ``proposal``.

    ``proposal`` (0 to 15) is read on rank 0 only: ranks that each time
    their calls settle on one algorithm with no extra message.
    ``window``: ``shared_window(comm)``, where the caller has it.
    """
    with phase(comm, "agreement check"):
        return _exchange(shared_window(comm) if window is None else window, buf, None,
                         reduction, operation, timeout, proposal=proposal)


def _exchange(window, buf, flat, reduction, operation, timeout, *, proposal=0):
    # Small mode: header (and data, unless flat is None) into my slot,
    # wait for all, check headers, fold every rank's data into flat.  My
    # slot was last read in call sequence - 2, and every rank finished
    # that call before it arrived at sequence - 1, which I waited for.
    # Rank 0 also leaves its proposal, stamped with the sequence, in one of
    # two words by parity, like the slots: it may be one call ahead.
    kind = window.headers.get((operation, buf.size, buf.dtype.num, reduction.name))
    if kind is None:
        kind = _new_kind(window, operation, buf, reduction)
    sequence = window.sequence = window.sequence + 1
    words = window.words
    if flat is not None:
        # Stage, publish and poll in one kernel call: the Python between
        # them was most of a small call's time.
        if kind.plan is None:
            kind.plan, kind.typed = _plan(window, flat, reduction, kind.header)
        status = K.exchange(flat, kind.typed, words, kind.plan, sequence)
        if status == K.DONE:
            return proposal
    else:
        if window.rank == 0:
            words[CHOICE_AT + (sequence & 1)] = sequence * 16 + proposal
        header_at = window.header_offset(sequence & 1) // 8
        words[window.rank * window.stride // 8 + header_at:][:kind.header.size] = kind.header
        window.publish(ARRIVE, sequence)
        status = K.NOT_YET
    return _conclude(window, flat, reduction, kind, sequence, status, operation, timeout)


def _conclude(window, flat, reduction, kind, sequence, status, operation, timeout):
    # After the kernel or the header's publication: wait for all if they
    # had not all arrived, check and fold; raise on a disagreement or a
    # call out of step; return rank 0's proposal.
    words, slot = window.words, sequence & 1
    choice_at = CHOICE_AT + slot
    if status == K.NOT_YET:
        window.wait(ARRIVE, sequence, operation=operation, timeout=timeout)
        status = _finish(window, flat, reduction, words, window.header_offset(slot) // 8,
                         kind.header, slot)
        if status and int(words[choice_at]) // 16 != sequence:
            status = K.OUT_OF_STEP
    if status == K.DISAGREE:
        raise_disagreement(window.comm, operation, kind.fields)
    if status == K.OUT_OF_STEP:
        raise RuntimeError(f"shared window out of step: rank 0's choice is for call "
                           f"{int(words[choice_at]) // 16}, this rank is at call {sequence}")
    return int(words[choice_at]) % 16


class SmallCall:
    """One kind of small all-reduce on one window, prepared: ``allreduce``'s lean path.

    Made after a first :func:`run_small` of ``buf``'s kind (operation,
    count, dtype, op) on ``window``.  :meth:`run` makes the call with no
    checks of ``buf`` and through the kernel's compiled entry point (no
    Numba dispatch), so its caller must have checked that ``buf`` is a
    writeable, aligned, C-contiguous one-dimensional ``numpy.ndarray`` of
    that dtype (not float16) and count, and that ``window`` is not freed.
    The agreement check is the kind's header, in the kernel's exchange, as
    in :func:`run_small`.
    """

    __slots__ = ("window", "kind", "reduction", "operation", "kernel")

    def __init__(self, window, buf, reduction, operation):
        self.window, self.reduction, self.operation = window, reduction, operation
        self.kind = window.headers[(operation, buf.size, buf.dtype.num, reduction.name)]
        self.kernel = K.compiled(K.exchange, buf, self.kind.typed, window.words,
                                 self.kind.plan, window.sequence)

    def run(self, buf):
        """All-reduce ``buf`` in place (see the class's conditions); return it."""
        window, kind = self.window, self.kind
        sequence = window.sequence = window.sequence + 1
        status = self.kernel(buf, kind.typed, window.words, kind.plan, sequence)
        if status != K.DONE:
            _conclude(window, buf, self.reduction, kind, sequence, status, self.operation, None)
        return buf


def _finish(window, flat, reduction, words, header_at, header, slot):
    # After all arrived: check the headers, fold the data (if any) into flat.
    stride = window.stride
    if flat is None:
        return K.rows_equal(words, header_at, stride // 8, window.size, header.size)
    item, typed = flat.itemsize, window.typed(flat.dtype)
    code, last = K.CODES[reduction.name]
    return K.finish(flat, typed, window.small_offset(slot) // item, stride // item,
                    window.size, code, last, float(window.size), words, header_at,
                    stride // 8, header.size)


def _plan(window, flat, reduction, header):
    # K.exchange's plan for one kind of small call (its header included),
    # and the window in flat's dtype.
    item, stride, (code, last) = flat.itemsize, window.stride, K.CODES[reduction.name]
    fields = [window.small_offset(0) // item, window.small_offset(1) // item,
              window.header_offset(0) // 8, window.header_offset(1) // 8,
              CHOICE_AT, CHOICE_AT + 1, stride // item, window.size, window.rank,
              code, last, stride // 8, window.fast_polls, window.fast_yield_from, header.size]
    return np.array(fields + list(header), dtype=np.int64), window.typed(flat.dtype)


class _Kind:
    """One kind of call on a window: its agreement header, fields and small-call plan."""

    __slots__ = ("header", "fields", "plan", "typed")

    def __init__(self, header, fields):
        self.header, self.fields, self.plan, self.typed = header, fields, None, None


def _new_kind(window, operation, buf, reduction):
    # The _Kind of a call with a key (see _exchange) not seen before.
    fields = collective_fields(operation, buf, reduction)
    kind = _Kind(agreement_header(fields), fields)
    window.headers[(operation, buf.size, buf.dtype.num, reduction.name)] = kind
    return kind


def fold_window(window, out, offset, reduction, *, mine_row=-1, mine=None, code=None):
    """Out = rank 0's op rank 1's op ... at byte ``offset`` of every segment.

    Rank ``mine_row``'s row comes from ``mine``; ``code`` (a
    ``_combine_kernels`` code) replaces the op's own, e.g. SUM for the
    partial sums of an "avg".
    """
    item = out.itemsize
    code, last = K.CODES[reduction.name] if code is None else (code, code)
    K.fold_rows(out, window.typed(out.dtype), offset // item, window.stride // item,
         window.size, mine_row, out if mine is None else mine, code, last,
         float(window.size))


def _pipeline(window, flat, block, reduction, operation, timeout, streaming):
    # Step t: copy in block t, reduce my slice of block t - 1, copy out
    # the other slices of block t - 2.
    nblocks = -(-flat.size // block)
    first = window.begin_blocks(block * flat.itemsize, operation=operation, timeout=timeout)
    layout = _layout(window, flat, block, reduction)
    if layout.one_block is not None:
        return _one_block(window, flat, layout, first, operation, timeout, streaming)
    stages = _Stages(window, flat, layout, reduction, operation, timeout, streaming)
    for t in range(nblocks + 2):
        if t < nblocks:
            stages.copy_in(first + t, t)
        if 1 <= t <= nblocks:
            stages.reduce(first + t - 1, t - 1)
        if t >= 2:
            stages.copy_out(first + t - 2, t - 2)


#: Layouts kept per window before the oldest go (a job uses a few sizes).
_LAYOUTS_KEPT = 64


#: The waits of K.one_block's stages: the counter, and whether the value is the block's.
_BLOCK_WAITS = ((OUT, False), (IN, True), (REDUCED, True))


def _one_block(window, flat, layout, block, operation, timeout, streaming):
    # A call of one block in one kernel call: the stages' Python (three
    # waits, four Numba dispatches and a dozen Python calls more) was about
    # a tenth of a 1 MiB call at 2 ranks.  A wait that the kernel gives up
    # on is made here, politely, and the kernel goes on from that stage.
    after = window.take_slot(0, block)
    plan, kernel = layout.one_block, layout.one_block_entry
    if kernel is None or not flat.flags.aligned:  # the entry point takes aligned arrays
        kernel = K.one_block
    stage = kernel(flat, layout.typed, window.words, plan, block, after, 0, streaming)
    if layout.one_block_entry is None and flat.flags.aligned:  # compiled now
        layout.one_block_entry = K.compiled(K.one_block, flat, layout.typed, window.words,
                                            plan, block, after, 0, streaming)
    while stage != K.BLOCK_DONE:
        counter, of_block = _BLOCK_WAITS[stage]
        window.wait(counter, block + 1 if of_block else after, operation=operation,
                    timeout=timeout)
        stage = kernel(flat, layout.typed, window.words, plan, block, after, stage, streaming)


def _layout(window, flat, block, reduction):
    # The window's layout for this count, dtype, block size and op, made
    # once: with it a call's stages only slice the caller's buffer (working
    # it out on every call, chunk bounds and ring pieces, was about a fifth
    # of the Python of a 1 MiB call at 2 ranks).
    key = (flat.size, flat.dtype.str, block, reduction.name)
    layout = window.layouts.get(key)
    if layout is None:
        if len(window.layouts) >= _LAYOUTS_KEPT:
            window.layouts.pop(next(iter(window.layouts)))
        layout = window.layouts[key] = _Layout(window, flat, block, reduction)
    return layout


class _Layout:
    """Where each block's stages read and write, for one kind of large call on one window.

    Per block: ``copy_in``, the two parts of my slot that take every slice
    but mine, as (window view, buffer start, buffer stop); ``folds``, the
    pieces of my slice that lie in one ring chunk, as (my slot's view,
    row 0's offset, buffer start, buffer stop, the chunk); ``copy_out``,
    the other ranks' slices, as (buffer start, buffer stop, their view).
    ``typed`` is the window as an array of the dtype, ``stride`` a row's length in it.
    ``one_block``: for a call of one block, ``K.one_block``'s plan (the
    same pieces as offsets), else None; ``one_block_entry`` its compiled
    entry point, once called.
    """

    def __init__(self, window, flat, block, reduction):
        count, dtype = flat.size, flat.dtype
        self.typed = typed = window.typed(dtype)
        item, rank, size = dtype.itemsize, window.rank, window.size
        self.stride = window.stride // item
        base = window.large_offset() // item
        chunks = chunk_bounds(count, size)[0]  # the ring's chunk starts
        self.blocks = []
        for b in range(-(-count // block)):
            start = b * block
            length = min(block, count - start)
            starts, sizes = chunk_bounds(length, size)
            slot = [q * self.stride + base + (b % SLOTS) * block for q in range(size)]
            lo, n = starts[rank], sizes[rank]
            mine = slot[rank]
            copy_in = ((typed[mine:mine + lo], start, start + lo),
                       (typed[mine + lo + n:mine + length], start + lo + n, start + length))
            folds = [(typed[mine + lo + at:mine + lo + at + m], slot[0] + lo + at,
                      start + lo + at, start + lo + at + m, chunk)
                     for at, m, chunk in _ring_pieces(chunks, start + lo, n)]
            copy_out = [(start + starts[q], start + starts[q] + sizes[q],
                         typed[slot[q] + starts[q]:slot[q] + starts[q] + sizes[q]])
                        for q in range(size) if q != rank and sizes[q]]
            self.blocks.append((copy_in, folds, copy_out))
        self.one_block = self._plan(window, reduction) if len(self.blocks) == 1 else None
        self.one_block_entry = None

    def _plan(self, window, reduction):
        # K.one_block's plan: the fields, then block 0's pieces as offsets.
        copy_in, folds, copy_out = self.blocks[0]
        typed, item = self.typed, self.typed.itemsize
        where = lambda view: (view.ctypes.data - typed.ctypes.data) // item  # noqa: E731
        counters = [counter_word(c) for c in (IN, REDUCED, OUT)]
        fields = [self.stride, window.size, window.rank, *K.CODES[reduction.name],
                  window.stride // 8, window.fast_polls, window.fast_yield_from, *counters,
                  len(copy_in), len(folds), len(copy_out)]
        pieces = ([(where(view), lo, hi) for view, lo, hi in copy_in]
                  + [(where(view), row0, lo, hi, chunk) for view, row0, lo, hi, chunk in folds]
                  + [(lo, hi, where(view)) for lo, hi, view in copy_out])
        return np.array(fields + [x for piece in pieces for x in piece], dtype=np.int64)


def _ring_pieces(chunks, begin, n):
    # (offset, length, ring chunk) of each part of elements begin .. begin + n
    # that lies in one chunk of the ring all-reduce: folded in its order.
    at = 0
    c = int(np.searchsorted(chunks, begin, side="right")) - 1
    while at < n:
        end = chunks[c + 1] if c + 1 < len(chunks) else begin + n
        length = min(n - at, end - begin - at)
        if length > 0:
            yield at, length, c
        at, c = at + max(length, 0), c + 1


class _Stages:
    """The three pipeline stages for block ``b`` of a call (global block number ``g``)."""

    def __init__(self, window, flat, layout, reduction, operation, timeout, streaming):
        self.window, self.flat, self.blocks = window, flat, layout.blocks
        self.streaming = streaming
        self.copy_in_kernel = K.copy_streaming if streaming else K.copy
        self.wait = dict(operation=operation, timeout=timeout)
        self.typed, self.stride = layout.typed, layout.stride
        self.rank, self.size = window.rank, window.size
        code, last = K.CODES[reduction.name]
        self.codes = (code, last, float(self.size))

    def copy_in(self, g, b):
        # Every slice but mine into my slot, once every rank has finished
        # with the block that used the slot before.
        self.window.claim_slot(b % SLOTS, g, **self.wait)
        flat = self.flat
        for view, lo, hi in self.blocks[b][0]:
            self.copy_in_kernel(view, flat[lo:hi])
        self.window.publish(IN, g + 1)

    def reduce(self, g, b):
        # My slice, from every rank's slot and my buffer, into my slot
        # and my buffer.
        self.window.wait(IN, g + 1, **self.wait)
        typed, stride, size, rank = self.typed, self.stride, self.size, self.rank
        for out, row0, lo, hi, first in self.blocks[b][1]:
            user = self.flat[lo:hi]
            if self.streaming:
                K.fold_ring(out, typed, row0, stride, size, first, rank, user, *self.codes,
                            user, True)
            else:  # plain stores: passes in the L2, faster than fold_ring's L1 copies
                K.fold_ring_in_l2(out, typed, row0, stride, size, first, rank, user,
                                  *self.codes, user)
        self.window.publish(REDUCED, g + 1)

    def copy_out(self, g, b):
        # The other ranks' reduced slices, from their slots.
        self.window.wait(REDUCED, g + 1, **self.wait)
        flat = self.flat
        for lo, hi, theirs in self.blocks[b][2]:
            K.copy(flat[lo:hi], theirs)
        self.window.publish(OUT, g + 1)
