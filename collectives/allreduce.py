"""One all-reduce entry point that picks the algorithm.

"auto" picks by message size and by where the ranks are (one node or
several, see :func:`choose_algorithm`), from thresholds measured on the
development machine (thresholds and numbers below).  Its agreement check
rides on the chosen algorithm's own first exchange where the algorithm
has one (the shared-memory and recursive-doubling small paths: no extra
message); other choices get one header-only exchange of the same kind
first, so ranks that pick different algorithms because their counts
differ still meet in the same first exchange and all raise the mismatch.
A named ``algorithm=`` makes the same exchange (its header names the
algorithm), so ranks that asked for different algorithms, "auto" included,
raise a mismatch too instead of waiting for each other until the timeout.

On one node, above the shared-memory small mode (:func:`tuned_from`),
"auto" does not trust the thresholds alone: the shared-memory pipeline's
speed there changes with how the machine places the ranks (2-4x between
runs of the same binary, see BENCHMARKS.md), while the ring's does not;
the single-copy algorithm ("cma") may not be allowed at all.  Rank 0 times the candidates on live
calls (:class:`collectives._tuner.Tuner`, per power-of-two size) and
sends its pick in the agreement exchange, so every rank runs the same
algorithm; all fold every element in the same order, so the pick never
changes a result bit.  ``MPI_COLLECTIVES_TUNE=0`` keeps the thresholds.
"""

import os
import time

import numpy as np
from mpi4py import MPI

from collectives import (
    hierarchical,
    recursive_doubling,
    shared_arrays,
    shared_memory,
    single_copy,
)
from collectives._nodes import node_layout
from collectives._prepare import prepare_local
from collectives._tuner import Tuner
from collectives._window import shared_window
from collectives.hierarchical import hierarchical_allreduce
from collectives.mpi import mpi_allreduce
from collectives.pipelined_ring import pipelined_ring_allreduce
from collectives.recursive_doubling import rd_allreduce
from collectives.ring import ring_allreduce
from collectives.shared_memory import shm_allreduce
from collectives.single_copy import cma_allreduce
from collectives.tree import tree_allreduce

__all__ = ["allreduce", "ALGORITHMS", "choose_algorithm", "auto_choice", "TUNE_MIN_BYTES",
           "TUNE_BYTES_PER_RANK", "tuned_from"]

#: algorithm names accepted by :func:`allreduce`.
ALGORITHMS = ("auto", "ring", "pipelined", "tree", "rd", "shm", "cma", "hierarchical", "mpi")

_STATE_KEY = MPI.Comm.Create_keyval()  # comm -> its _State

#: From ``TUNE_BYTES_PER_RANK`` times the ranks on, at least this, on one
#: node and above the shared-memory small mode (``shared_memory.small_limit``;
#: :func:`tuned_from` gives the smallest tuned size), "auto" times its
#: candidates and runs the fastest (collectives._tuner); below it "shm" by
#: the thresholds.  Until stop 25 this was 1 MiB at any rank count, where
#: at 256-512 KiB, 2 ranks, "cma" took half the time of "shm" and of the
#: small mode: 512 KiB, Intel Xeon VM, "auto" 107-116 -> 57-59 us a call
#: (MPI 117-125).  Growing with the ranks: at 256 KiB, 4 ranks on 2
#: cores, the tuner's own work and retries cost more than its pick gained
#: ("auto" 240-247 us, its candidates 185-209; "shm" alone, as before,
#: 199-218).
TUNE_MIN_BYTES = 256 << 10
#: See ``TUNE_MIN_BYTES``.
TUNE_BYTES_PER_RANK = 128 << 10
#: The candidates of the tuner, in the order of its choice codes: the
#: shared-memory algorithm with the whole buffer as one block ("shm": the
#: fewest waits), in BLOCK_BYTES blocks ("shm-pipelined": data stays in
#: cache, stages overlap), with streaming stores into the window
#: ("shm-streaming", blocks as "shm" up to WHOLE_BYTES and as
#: "shm-pipelined" above), and the ring.  Which is fastest changes with the
#: machine's state (BENCHMARKS.md): at 8 MiB, 2 ranks, one block took 2.8 ms
#: and 512 KiB blocks 5.6 ms in one run; in another the blocks were faster;
#: streaming stores took 0.30-0.53x MPI's time at 1-4 MiB in a slow-state
#: run and 1.5-1.7x in a fast-state one, where "shm" took 0.63-0.77x.
#: "cma" (collectives.single_copy: no copy into shared memory) is left out
#: where the ranks may not read each other's memory.
TUNED = ("shm", "shm-pipelined", "shm-streaming", "ring", "cma")
#: The tuner times one in this many calls of a best that runs with nothing
#: due (``Tuner``'s ``sample``).  Rank 0's ``propose`` and ``record`` took
#: 1.5 and 7-8 us a call inside a 1 MiB all-reduce at 2 ranks (3 us
#: together in a loop of their own: the call's data pushes the tuner's
#: out of the caches), and every rank waits for them.  A/B in one process
#: (AMD EPYC Zen 3 VM, two communicators, 10 launches of 10 rounds of 40
#: calls): 2 ranks, 1 MiB, 225 -> 214 us a call (8 of 10 launches
#: faster); 4 ranks, 1 MiB, 740 -> 729; 8 MiB, 7 rounds of 4 calls, 4
#: ranks 4139 -> 3992, 2 ranks 999 -> 997.
TUNER_SAMPLE = 4
#: Candidates tried only from a size on (the tuner's ``smallest``): blocks
#: only where "shm" itself would cut the buffer into them.  Up to 4 MiB one
#: block was faster than 512 KiB blocks in every table at 2 and 4 ranks
#: (1 MiB, 2 ranks: 95-100 us against 110-120), and as a candidate there
#: "shm-pipelined" cost retries and, on noise, ran as the best for 50-250
#: calls in a row.
TUNED_SMALLEST = {"shm-pipelined": shared_memory.WHOLE_BYTES + 1}
#: The tuner's candidates for a shared array: plain and streaming stores.
SHARED_TUNED = ("shared", "shared-streaming")

_IMPLEMENTATIONS = {"ring": ring_allreduce, "pipelined": pipelined_ring_allreduce,
                    "tree": tree_allreduce, "rd": rd_allreduce, "shm": shm_allreduce,
                    "cma": cma_allreduce, "hierarchical": hierarchical_allreduce,
                    "mpi": mpi_allreduce}

# Thresholds of "auto" (bytes), measured with float32 sums at 2 and 4
# ranks on the 2-core development machine (MPICH 5.0.2), against MPI's own
# Allreduce in the same run; interleaved blocks, medians of 5-7 rounds,
# the machine shared with other test runs (load 4-9), so single numbers
# are noisy.  Commands and full tables: /work/notes/fast_algorithms.md.
#
# One node: the shared-memory algorithm up to SHM_MAX_BYTES.  Time / MPI's
# time at 2 | 4 ranks: 16 B - 4 KiB 0.3-0.8 | 0.6-1.2 (MPI's own small
# Allreduce took 14-30 us under that load; 5-7 us for ours), 256 KiB -
# 2 MiB 0.7-0.8 | 0.55-0.65, 4 MiB 0.90 | 0.85.  Above it the plain ring
# (one large message per step, which MPICH moves in one copy) beat both
# MPI and the shared-memory pipeline, whose per-block synchronisation
# stalls whenever another process takes a rank's core: 8 MiB 1.06 | 0.90,
# 16 MiB 0.98 | 0.77, 64 MiB 0.24 | 0.46 (against MPI with the default
# malloc; see the notes for the tuned one).  The pipelined ring measured
# slower than the plain ring at every size (each segment is a separate
# rendezvous and MPI moves data only inside MPI calls, so nothing overlaps
# the Numba reduction), so "auto" does not use it.
# With tuning on (the default) these two thresholds only seed the tuner's
# first trial order at 1 MiB and above; see _tuned().
SHM_MAX_BYTES = 4 << 20
# Several nodes (not measurable on one machine; by design): recursive
# doubling while data and agreement header fit one message, then the
# hierarchical algorithm, which moves 1/m of the data across nodes.
RD_MAX_BYTES = recursive_doubling.FUSED_MAX_BYTES


def tuned_from(size):
    """The fewest bytes that "auto" tunes on one node of ``size`` ranks (see ``TUNE_MIN_BYTES``)."""
    return max(TUNE_MIN_BYTES, TUNE_BYTES_PER_RANK * size, shared_memory.small_limit(size) + 1)


def choose_algorithm(nbytes, size, *, nodes=1):
    """Return the algorithm "auto" uses for ``nbytes`` over ``size`` ranks on ``nodes`` nodes."""
    if size == 1:
        return "shm" if nodes == 1 else "rd"
    if nodes == 1:
        return "shm" if nbytes <= SHM_MAX_BYTES else "ring"
    return "rd" if nbytes <= RD_MAX_BYTES else "hierarchical"


def allreduce(buf, comm, *, op="sum", algorithm="auto", check=True, timeout=None):
    """All-reduce ``buf`` in place with the chosen algorithm.

    Arguments and result are those of :func:`collectives.ring_allreduce`,
    plus ``algorithm``: "ring", "pipelined" (segmented ring), "tree",
    "rd" (recursive doubling), "shm" (shared memory, one node), "cma"
    (one node, each rank reading and writing its peers' buffers directly; Linux),
    "hierarchical" (shared memory in nodes, ring across), "mpi" (the MPI
    library's own ``Allreduce``, as a baseline) or "auto" (by message
    size and node layout, see :func:`choose_algorithm`; on one node from
    :func:`tuned_from` on, the fastest of ``TUNED`` (shm variants, the
    ring, "cma") as timed on earlier calls, see :func:`auto_choice`).  "auto" splits the
    communicator by node on its first call (collective); the environment
    variable ``MPI_COLLECTIVES_RANKS_PER_NODE`` makes it treat groups of
    that many ranks as nodes, and ``MPI_COLLECTIVES_TUNE=0`` turns the
    timing off.  On a :func:`collectives.shared_array` (one node, above the
    shared-memory small mode) "auto" and "shm" reduce in place without
    copying the data in (:mod:`collectives.shared_arrays`), checked always.
    """
    if algorithm == "auto":
        # The usual small call on one node (a comm seen before, a plain
        # buffer of a kind already called, an op by name, no timeout) in the
        # fewest steps: the checks that the kind's prepared call needs,
        # then its kernel.  At 2 ranks the general path's Python took 2-3 us
        # of a 4.8 us call (Intel Xeon VM; MPI's own 2.6-2.9).  Anything
        # else takes the general path and its errors.
        if (timeout is None and type(buf) is np.ndarray and isinstance(op, str)
                and isinstance(comm, MPI.Intracomm) and comm != MPI.COMM_NULL):
            state = comm.Get_attr(_STATE_KEY)
            if state is not None and buf.ndim == 1 and buf.flags.carray:
                call = state.small_calls.get((op, buf.size, buf.dtype))
                if call is not None and not call.window.freed:
                    return call.run(buf)
        return _auto(buf, comm, op, check, timeout)
    implementation = _IMPLEMENTATIONS.get(algorithm) if isinstance(algorithm, str) else None
    if implementation is None:
        raise ValueError(f"unknown algorithm {algorithm!r}; use one of "
                         + ", ".join(repr(a) for a in ALGORITHMS))
    if not check or comm.Get_size() == 1:
        return implementation(buf, comm, op=op, check=check, timeout=timeout)
    return _named(buf, comm, algorithm, op, timeout)


def _named(buf, comm, name, op, timeout):
    # Check in auto's first exchange, with "allreduce/NAME" as the operation,
    # so ranks that chose differently ("auto" included) meet there and all
    # raise; shm on one node and rd across nodes carry it in their own.
    reduction = prepare_local("allreduce", buf, comm, op=op, timeout=timeout)
    state = _state(comm, timeout)
    layout = state.layout
    options = dict(operation=f"allreduce/{name}", check=True, timeout=timeout)
    if name == "shm" and layout.nodes == 1:
        found = (None if shared_memory.is_small(buf.nbytes, layout.total)
                 else shared_arrays.find(comm, buf))
        if found is not None:
            return _zero_copy(buf, comm, state, found, reduction, options["operation"],
                              timeout)
        return shared_memory.run(buf, comm, reduction, **options)
    if name == "cma" and layout.nodes == 1:
        return single_copy.checked_run(buf, comm, reduction, operation=options["operation"],
                                       timeout=timeout)
    if name == "rd" and layout.nodes > 1:
        return recursive_doubling.run(buf, comm, reduction, **options)
    _agree(buf, comm, reduction, layout, options["operation"], timeout)
    return _IMPLEMENTATIONS[name](buf, comm, op=op, check=False, timeout=timeout)


class _State:
    """What allreduce keeps per communicator, under one attribute.

    mpi4py takes 0.25-0.4 us to look up a set attribute, a tenth of a
    small call; so the node layout, the shared window of small calls (None
    until the first; replaced when it has been freed for a larger one),
    the prepared small calls of the lean path (by op, count and dtype) and
    the tuners (None until the first tuned call) are fetched together.
    """

    __slots__ = ("layout", "window", "small_calls", "tuner", "shared_tuner")

    def __init__(self, layout):
        self.layout, self.window, self.tuner, self.shared_tuner = layout, None, None, None
        self.small_calls = {}

    def small_window(self, comm):
        if self.window is None or self.window.freed:
            self.window = shared_window(comm)
        return self.window

    def run_small(self, buf, comm, op, reduction, timeout):
        # The small mode's call; a plain buffer's kind is then prepared
        # for the lean path (see allreduce), on the current window.
        window = self.small_window(comm)
        shared_memory.run_small(buf, window, reduction, "allreduce", timeout)
        if (type(buf) is np.ndarray and isinstance(op, str) and buf.ndim == 1
                and buf.flags.carray and buf.dtype != np.float16):
            key = (op, buf.size, buf.dtype)
            call = self.small_calls.get(key)
            if call is None or call.window is not window:
                self.small_calls[key] = shared_memory.SmallCall(window, buf, reduction,
                                                                "allreduce")
        return buf


def _state(comm, timeout):
    # comm's state; the first call on comm splits it by node (collective).
    state = comm.Get_attr(_STATE_KEY)
    if state is None:
        state = _State(node_layout(comm, operation="allreduce", timeout=timeout))
        comm.Set_attr(_STATE_KEY, state)
    return state


def _agree(buf, comm, reduction, layout, operation, timeout):
    # A header-only exchange: the shared window on one node, else recursive doubling.
    agree = (shared_memory.window_agreement if layout.nodes == 1
             else recursive_doubling.header_agreement)
    agree(buf, comm, reduction, operation=operation, timeout=timeout)


def _auto(buf, comm, op, check, timeout):
    # Local checks, pick, then the pick's own check or a header exchange.
    # A small call on one node goes straight to shm: at 8 bytes every
    # tenth of a microsecond of Python here is 4% of MPI's own time.
    reduction = prepare_local("allreduce", buf, comm, op=op, timeout=timeout)
    if comm.Get_size() == 1:
        return buf
    state, nbytes = _state(comm, timeout), buf.nbytes
    layout = state.layout
    if layout.nodes == 1 and shared_memory.is_small(nbytes, layout.total):
        return state.run_small(buf, comm, op, reduction, timeout)
    if layout.nodes == 1:
        found = shared_arrays.find(comm, buf)
        if found is not None:
            return _zero_copy(buf, comm, state, found, reduction, "allreduce", timeout)
    if check and layout.nodes == 1 and nbytes >= tuned_from(layout.total):
        return _tuned(buf, comm, state, reduction, op, timeout)
    name = choose_algorithm(nbytes, layout.total, nodes=layout.nodes)
    if name == "shm":
        return shared_memory.run(buf, comm, reduction, operation="allreduce",
                                 check=check, timeout=timeout)
    options = dict(operation="allreduce", check=check, timeout=timeout)
    if name == "rd":
        return recursive_doubling.run(buf, comm, reduction, **options)
    if name == "hierarchical":
        return hierarchical.run(buf, comm, reduction, layout, **options)
    if check:
        _agree(buf, comm, reduction, layout, "allreduce", timeout)
    return _IMPLEMENTATIONS[name](buf, comm, op=op, check=False, timeout=timeout)


def _zero_copy(buf, comm, state, found, reduction, operation, timeout):
    # A shared array's all-reduce: its header exchange (always made: it is
    # also the arrival of every rank's data) names the offset in the array,
    # so ranks that passed plain buffers or other places raise a mismatch
    # instead of waiting on counters that nobody else bumps; it also
    # carries rank 0's pick of plain or streaming stores, timed as in _tuned.
    start = time.perf_counter()  # from entry: see _tuned
    if state.shared_tuner is None:
        state.shared_tuner = _new_tuner(SHARED_TUNED, {})
    tuner = state.shared_tuner
    picked = _pick(tuner, buf, comm, reduction, fallback=0, timeout=timeout,
                   operation=f"{operation}/shared+{found[1]}")
    shared_arrays.run(buf, found, reduction, timeout=timeout,
                      streaming=SHARED_TUNED[picked] == "shared-streaming")
    tuner.record(buf.nbytes, picked, time.perf_counter() - start)
    return buf


def _tuned(buf, comm, state, reduction, op, timeout):
    # One node, large: rank 0 picks one of TUNED from their times on earlier
    # calls (or by the thresholds, with tuning off); the pick rides in the
    # agreement exchange, so every rank runs it.  All give the same bits.
    # Timed from entry, the exchange included: it is where rank 0 waits
    # for the others to finish the last call, which costs some algorithms
    # more than others (at 1 MiB, 4 ranks on 2 cores, "cma" took 500 us a
    # call and 190-270 us on rank 0 after the exchange, "shm" 400 and 290).
    start = time.perf_counter()
    tuner, window = _tuner(state), shared_window(comm)
    fallback = 0 if tuner.enabled else TUNED.index(choose_algorithm(buf.nbytes, comm.Get_size()))
    single_copy.announce(window, buf)  # for "cma"; rides in the exchange
    picked = _pick(tuner, buf, comm, reduction, fallback=fallback, operation="allreduce",
                   timeout=timeout, window=window)
    if TUNED[picked] == "cma" and not single_copy.usable(window):
        tuner.drop(picked)  # on every rank; rank 0's is the one that counts
        picked = TUNED.index("ring")
    name = TUNED[picked]
    if name == "ring":
        ring_allreduce(buf, comm, op=op, check=False, timeout=timeout)
    elif name == "cma":
        single_copy.run(buf, window, reduction, operation="allreduce", timeout=timeout)
    else:
        blocks = {"shm": buf.nbytes, "shm-pipelined": shared_memory.BLOCK_BYTES}
        shared_memory.run(buf, comm, reduction, operation="allreduce", check=False,
                          timeout=timeout, block_bytes=blocks.get(name),
                          streaming=name == "shm-streaming", window=window)
    tuner.record(buf.nbytes, picked, time.perf_counter() - start)
    return buf


def _pick(tuner, buf, comm, reduction, *, fallback, operation, timeout, window=None):
    # Rank 0's proposal (its tuner's, or ``fallback`` with tuning off) rides
    # in the header exchange; every rank gets it back and runs it.
    proposal = 0
    if comm.Get_rank() == 0:
        proposal = tuner.propose(buf.nbytes) if tuner.enabled else fallback
    return shared_memory.window_choice(buf, comm, reduction, proposal, operation=operation,
                                       timeout=timeout, window=window)


def _tuner(state):
    # The tuner of plain buffers, made on the first tuned call.
    if state.tuner is None:
        state.tuner = _new_tuner(TUNED, TUNED_SMALLEST)
    return state.tuner


def _new_tuner(candidates, smallest):
    # MPI_COLLECTIVES_TUNE=0 (read on rank 0, whose choice counts) keeps
    # the fixed thresholds (plain buffers) or plain stores (shared arrays).
    enabled = os.environ.get("MPI_COLLECTIVES_TUNE", "1").strip() != "0"
    return Tuner(candidates, enabled=enabled, smallest=smallest, sample=TUNER_SAMPLE)


def auto_choice(comm, nbytes):
    """Return the algorithm ``allreduce(algorithm="auto")`` ran last on ``comm`` for ``nbytes``.

    From :func:`tuned_from` on, on one node, this is the run-time
    tuner's pick (see :mod:`collectives._tuner`), the same on every rank:
    one of ``TUNED``, where "shm" is the whole buffer as one block and
    "shm-pipelined" (no ``algorithm=`` name) the same algorithm in
    ``shared_memory.BLOCK_BYTES`` blocks; elsewhere, and before the first
    such call, :func:`choose_algorithm`'s.  (A :func:`collectives.shared_array`
    takes the zero-copy path whatever this says.)
    """
    state = comm.Get_attr(_STATE_KEY)
    nodes = 1 if state is None else state.layout.nodes
    static = choose_algorithm(nbytes, comm.Get_size(), nodes=nodes)
    tuner = None if state is None else state.tuner
    if tuner is None or nodes > 1 or nbytes < tuned_from(comm.Get_size()):
        return static
    return tuner.chosen(nbytes) or static
