"""Algorithm-specific cases of the fast all-reduces.

Segment and block boundaries of the pipelined ring and the shared-memory
pipeline, window growth and slot reuse, the fold-in of recursive doubling,
hierarchical "nodes" forced on one machine, mismatches that make ranks
pick different paths, and timeouts.  (Every op x dtype x count of each
algorithm is in test_allreduce.py.)
"""

import time

import numpy as np
import pytest
from conftest import rank_data
from mpi4py import MPI
from test_allreduce import (
    allreduce_module,
    assert_identical_on_all_ranks,
    assert_reduced,
    gather_inputs,
)

import collectives as C
from collectives import hierarchical, recursive_doubling, shared_memory
from collectives._nodes import node_layout, ranks_per_node_from_env
from collectives._ops import resolve_op
from collectives._tuner import Tuner, trial_calls
from collectives._window import SMALL_BYTES, shared_window
from collectives.allreduce import TUNED


def _check(x, comm, op, run):
    table = gather_inputs(x, comm)
    run(x)
    assert_reduced(x, table, op)
    assert_identical_on_all_ranks(x, comm)


@pytest.mark.parametrize("dtype", ("float32", "float16", "int64"))
def test_pipelined_ring_segment_boundaries(comm, dtype):
    size, item = comm.Get_size(), np.dtype(dtype).itemsize
    segment = 16 * item  # 16 elements per segment
    for count in sorted({0, 1, 15, 16, 17, size * 16, size * 16 + 1, size * 48 - 1, 1009}):
        x = rank_data(comm, count, dtype)
        ours, ring = x.copy(), x.copy()
        _check(ours, comm, "sum", lambda b: C.pipelined_ring_allreduce(
            b, comm, segment_bytes=segment))
        C.ring_allreduce(ring, comm)
        assert ours.tobytes() == ring.tobytes()  # same order of reduction as the ring


def test_pipelined_ring_avg_and_bad_segment(comm):
    x = rank_data(comm, 5003, "float64")
    _check(x, comm, "avg", lambda b: C.pipelined_ring_allreduce(
        b, comm, op="avg", segment_bytes=1000))
    with pytest.raises(ValueError, match="segment_bytes must be a positive int, got 0"):
        C.pipelined_ring_allreduce(x, comm, segment_bytes=0)


@pytest.mark.parametrize("op", ("sum", "avg", "max"))
def test_shm_block_boundaries_and_slot_reuse(comm, op, monkeypatch):
    monkeypatch.setattr(shared_memory, "BLOCK_BYTES", 4096)  # many blocks, slots reused
    monkeypatch.setattr(shared_memory, "WHOLE_BYTES", 0)
    monkeypatch.setattr(shared_memory, "SMALL_BYTES", 16384)  # the pipeline from 16 KiB
    size = comm.Get_size()
    for count in (SMALL_BYTES // 4 + 1, 1024 * size * 5 + 3, 40_009):
        x = rank_data(comm, count, "float32")
        _check(x, comm, op, lambda b: C.shm_allreduce(b, comm, op=op))


def test_shm_slots_of_changing_size_back_to_back(comm, monkeypatch):
    # Each call numbers its slots from 0 and slots of another size overlap
    # the old ones: a rank that ran ahead into a call with other slot
    # sizes must wait until every rank has copied out of the old ones.
    # A late rank in turn makes the others run ahead (no check: its header
    # exchange would hold them at the start of the call).
    monkeypatch.setattr(shared_memory, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(shared_memory, "WHOLE_BYTES", 65536)  # 40 KB whole, 120 KB in blocks
    monkeypatch.setattr(shared_memory, "SMALL_BYTES", 16384)
    comm = comm.Dup()
    rank, size = comm.Get_rank(), comm.Get_size()
    for i in range(40):
        if rank == i % size:
            time.sleep(0.002)
        x = np.full(10_000 if i % 2 else 30_000, rank + i, dtype=np.float32)
        C.shm_allreduce(x, comm, check=False)
        assert np.all(x == sum(range(size)) + size * i), (i, x[:3])
    comm.Free()


@pytest.mark.parametrize("dtype", ("float32", "float64", "float16", "int32", "int64"))
@pytest.mark.parametrize("op", ("sum", "prod", "min", "max", "avg"))
def test_shm_pipeline_equals_ring_bitwise(comm, dtype, op, monkeypatch):
    # Each element is folded in the ring's order, so the bits equal
    # ring_allreduce's: "auto" may switch between the two (it times them)
    # without changing a result.  Small blocks: slices cross chunk edges.
    if op == "avg" and dtype.startswith("int"):
        pytest.skip("avg is for floating dtypes")
    monkeypatch.setattr(shared_memory, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(shared_memory, "SMALL_BYTES", 16384)  # the pipeline from 16 KiB
    # Blocks (the stages in Python), then one block (K.one_block).
    for whole, streaming in ((0, False), (0, True), (1 << 20, False), (1 << 20, True)):
        monkeypatch.setattr(shared_memory, "WHOLE_BYTES", whole)
        x = rank_data(comm, 20_011, dtype, positive=op == "prod")
        ring = x.copy()
        reduction = resolve_op(op, x.dtype)
        _check(x, comm, op, lambda b: shared_memory.run(
            b, comm, reduction, operation="test", check=True, timeout=None,
            streaming=streaming))
        C.ring_allreduce(ring, comm, op=op)
        assert x.tobytes() == ring.tobytes(), (streaming, np.flatnonzero(x != ring)[:5])


@pytest.mark.parametrize("nbytes, left_out", [
    ("first", {"shm-pipelined"}),  # the first tuned size: one block only
    (2 * shared_memory.WHOLE_BYTES, set()),
])
def test_auto_tunes_large_calls_on_rank_0s_choice(world, monkeypatch, nbytes, left_out):
    # Rank 0's tuner alone picks shm (one block or pipelined), the ring or
    # cma; every rank runs its pick (a proposal on another rank would be a
    # bug: it fails the test), the bits equal the ring's whichever runs, and
    # all the candidates of the size get tried.
    if world.Get_size() == 1 or node_layout(world).nodes > 1:
        pytest.skip("tuning is for two or more ranks on one node")
    comm, rank = world.Dup(), world.Get_rank()
    if rank != 0:
        monkeypatch.setattr(Tuner, "propose", lambda self, nbytes: pytest.fail("proposed"))
    if nbytes == "first":
        nbytes = C.tuned_from(comm.Get_size())
    count = nbytes // 8 + 13
    runs = set()
    for i in range(trial_calls(len(TUNED))):
        x = rank_data(comm, count, "float64", seed=i)
        ring = x.copy()
        C.allreduce(x, comm)
        C.ring_allreduce(ring, comm)
        assert x.tobytes() == ring.tobytes(), i
        runs.add(C.auto_choice(comm, x.nbytes))
        assert comm.allgather(C.auto_choice(comm, x.nbytes)) == [C.auto_choice(
            comm, x.nbytes)] * comm.Get_size()
    assert runs == set(TUNED) - left_out
    comm.Free()


def test_auto_tuning_off_keeps_the_thresholds(world, monkeypatch):
    if world.Get_size() == 1:
        pytest.skip("needs two ranks")
    monkeypatch.setenv("MPI_COLLECTIVES_TUNE", "0")
    comm, size = world.Dup(), world.Get_size()
    nodes = node_layout(comm).nodes
    for nbytes in (C.tuned_from(size), 8 << 20):
        x = np.ones(nbytes // 4 + 1, dtype=np.float32)
        for _ in range(7):
            C.allreduce(x, comm)
            assert C.auto_choice(comm, nbytes) == C.choose_algorithm(nbytes, size, nodes=nodes)
        assert np.all(x == size ** 7)
    comm.Free()


def test_shm_window_grows(comm):
    sizes = [10, 5000, 20_000, 70_000]  # small slots, then the pipeline (560 KB)
    for count in sizes:
        x = rank_data(comm, count, "float64")
        _check(x, comm, "sum", lambda b: C.shm_allreduce(b, comm))
    if comm.Get_size() > 1:  # one block of the whole last buffer
        assert shared_window(comm).large_bytes >= sizes[-1] * 8


@pytest.mark.parametrize("algorithm", ("shm", "auto"))
def test_shm_many_calls_back_to_back(comm, algorithm):
    # Consecutive small and large calls reuse slots: a rank that ran ahead
    # must never overwrite data a slower rank still reads.  Each larger
    # call grows the window (a new one): "auto" must not keep the old one.
    comm = comm.Dup()  # a window of its own, small at first
    rank, size = comm.Get_rank(), comm.Get_size()
    for i in range(200):
        count = 3 if i % 3 else SMALL_BYTES // 8 + 7 * i
        x = np.full(count, rank + i, dtype=np.float64)
        C.allreduce(x, comm, algorithm=algorithm)
        assert np.all(x == sum(range(size)) + size * i), i
    comm.Free()


@pytest.mark.parametrize("check", (True, False))
@pytest.mark.parametrize("late", ("none", "first", "last", "each"))
def test_shm_one_block_with_a_late_rank(comm, late, check, monkeypatch):
    # K.one_block polls briefly at each of its three waits, then returns
    # the stage for Python to wait and call it again from there: a late
    # rank (or few polls) sends the others down that path at any stage,
    # unchecked calls let them run ahead to the slot's wait.
    monkeypatch.setattr(shared_memory, "SMALL_BYTES", 16384)
    comm = comm.Dup()
    rank, size = comm.Get_rank(), comm.Get_size()
    window = shared_window(comm, 1 << 20)  # room enough: the calls keep this window
    monkeypatch.setattr(window, "fast_polls", 3)
    for i in range(12):
        slow = {"none": -1, "first": 0, "last": size - 1, "each": i % size}[late]
        if rank == slow:
            time.sleep(0.003)
        x = np.full(20_000 + i, rank + 2 * i, dtype=np.float32)
        shared_memory.run(x, comm, resolve_op("sum", x.dtype), operation="test", check=check,
                          timeout=None, streaming=i % 2 == 1)
        assert np.all(x == sum(range(size)) + 2 * i * size), (i, x[:3])
        assert shared_window(comm) is window
        assert all(layout.one_block[6] == 3 for layout in window.layouts.values())
    comm.Free()


@pytest.mark.parametrize("late", ("none", "first", "last", "each"))
def test_shm_small_calls_with_a_late_rank(comm, late, monkeypatch):
    # The small-call kernel polls only briefly, then leaves the wait to
    # Python: a late rank sends every other rank down that slower path
    # (few polls force it even when nobody is late), with the same result.
    rank, size = comm.Get_rank(), comm.Get_size()
    window = shared_window(comm)
    monkeypatch.setattr(window, "fast_polls", 3)
    window.headers.clear()  # plans made now take the new poll count
    state = comm.Get_attr(allreduce_module._STATE_KEY)
    if state is not None:
        state.small_calls.clear()  # and so do the lean path's prepared calls
    for i in range(12):
        slow = {"none": -1, "first": 0, "last": size - 1, "each": i % size}[late]
        if rank == slow:
            time.sleep(0.005)
        x = np.full(5 + i, rank + 2 * i, dtype=np.float32)
        C.allreduce(x, comm)
        assert np.all(x == sum(range(size)) + 2 * i * size), (i, x)
    window.headers.clear()


def test_window_wait_lets_large_sends_finish(world):
    # A 64 MiB ring's last sends complete only once the receiver's MPI
    # acknowledges them; a rank that moved on to poll the shared window
    # must still drive MPI's progress, or its peer waits there forever.
    rank, size = world.Get_rank(), world.Get_size()
    big = np.empty(16 << 20, dtype=np.float32)
    small = np.empty(4, dtype=np.float32)
    for i in range(16):  # it hung at a random call, the 3rd to the 10th
        big.fill(rank + 1)
        small.fill(rank)
        C.allreduce(big, world, algorithm="pipelined", timeout=20)
        C.allreduce(small, world, timeout=20)  # auto: the shared window
        assert big[0] == big[-1] == size * (size + 1) // 2, i
        assert np.all(small == size * (size - 1) // 2), i


def test_rd_fold_in_and_both_paths(comm):
    for count in (1, 7, recursive_doubling.FUSED_MAX_BYTES // 4,
                  recursive_doubling.FUSED_MAX_BYTES // 4 + 1, 33_333):
        for op in ("sum", "prod", "min", "avg"):
            x = rank_data(comm, count, "float32", positive=op == "prod")
            _check(x, comm, op, lambda b: C.rd_allreduce(b, comm, op=op))


@pytest.mark.parametrize("per_node", (1, 2, 3))
def test_hierarchical_forced_nodes(comm, per_node, monkeypatch):
    monkeypatch.setattr(hierarchical, "PIECE_BYTES", 8192)  # several pieces
    for count, dtype, op in ((0, "float32", "sum"), (5, "float16", "max"),
                             (3001, "float32", "avg"), (20_011, "int32", "sum"),
                             (9_999, "float64", "prod")):
        x = rank_data(comm, count, dtype, positive=op == "prod")
        _check(x, comm, op, lambda b: C.hierarchical_allreduce(
            b, comm, op=op, ranks_per_node=per_node))


def test_forced_layout_from_environment(world):
    # tests/test_forced_nodes.py runs this module with
    # MPI_COLLECTIVES_RANKS_PER_NODE set (4 ranks as 2x2, 6 as 3x2).
    size, per_node = world.Get_size(), ranks_per_node_from_env()
    layout = node_layout(world)
    assert layout.nodes == (-(-size // per_node) if per_node else 1)
    assert layout.node_size == (min(per_node, size - world.Get_rank() // per_node * per_node)
                                if per_node else size)
    big = rank_data(world, 300_001, "float32")
    assert C.choose_algorithm(big.nbytes, size, nodes=layout.nodes) == (
        "hierarchical" if layout.nodes > 1 else "shm")
    for x in (big, rank_data(world, 11, "float64")):
        _check(x, world, "sum", lambda b: C.allreduce(b, world))


def test_hierarchical_matches_mpi(comm):
    x = rank_data(comm, 100_003, "float64")
    ours, theirs = x.copy(), x.copy()
    C.hierarchical_allreduce(ours, comm, op="max", ranks_per_node=2)
    comm.Allreduce(MPI.IN_PLACE, theirs, op=MPI.MAX)
    assert ours.tobytes() == theirs.tobytes()


@pytest.mark.parametrize("name", ["shm", "rd", "auto", "hierarchical"])
def test_mismatch_across_paths(world, name):
    # Rank 1 is above the small-message size, the others below: they take
    # different paths, yet all raise the mismatch.
    if world.Get_size() == 1:
        pytest.skip("needs two ranks")
    comm = world.Dup()
    big = 4 * max(SMALL_BYTES, recursive_doubling.FUSED_MAX_BYTES)
    x = np.zeros(big if comm.Get_rank() == 1 else 10, dtype=np.float32)
    with pytest.raises(C.CollectiveMismatchError, match=f"count: rank 0 has 10, rank 1 has {big}"):
        C.allreduce(x, comm, algorithm=name)
    y = np.ones(9)
    C.allreduce(y, comm, algorithm=name)  # still usable afterwards
    assert np.all(y == comm.Get_size())
    comm.Free()


@pytest.mark.parametrize("name", ["shm", "rd", "auto"])
def test_absent_rank_times_out(world, name):
    size = world.Get_size()
    if size == 1:
        pytest.skip("needs two ranks")
    comm = world.Dup()
    C.allreduce(np.ones(3), comm, algorithm=name)  # set up windows and plans first
    absent = size - 1
    if comm.Get_rank() != absent:
        with pytest.raises(C.CollectiveTimeoutError) as info:
            C.allreduce(np.ones(100), comm, algorithm=name, timeout=0.5)
        assert info.value.waited >= 0.5
        assert all(0 <= p < size for p in info.value.peers)
    world.Barrier()  # the Dup is left behind: its state is stale


def test_shm_rejects_several_nodes_and_bad_layouts(world):
    with pytest.raises(ValueError, match="ranks_per_node must be a positive int"):
        C.hierarchical_allreduce(np.ones(3), world, ranks_per_node=-1)
    if world.Get_size() < 2:
        return
    comm = world.Dup()
    C.hierarchical_allreduce(np.ones(3), comm, ranks_per_node=1)
    assert np.all(np.ones(3) * comm.Get_size() == _summed(comm))
    comm.Free()


def _summed(comm):
    x = np.ones(3)
    C.allreduce(x, comm, algorithm="hierarchical")
    return x
