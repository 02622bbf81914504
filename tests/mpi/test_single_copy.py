"""The single-copy all-reduce (``collectives.single_copy``, algorithm "cma").

Ranks read each other's plain buffers with ``process_vm_readv``: bits
equal to the ring's for every dtype and op across piece and chunk edges,
buffers reused at once after a call while a late rank still runs, and
ranks that may not read each other (the probe fails on one rank): a
clear error on every rank for the named algorithm, and "auto" leaves the
algorithm out and still gives the right result.
"""

import time

import numpy as np
import pytest
from conftest import rank_data
from test_allreduce import assert_identical_on_all_ranks, assert_reduced, gather_inputs

import collectives as C
from collectives import CollectiveMismatchError, single_copy
from collectives._nodes import node_layout
from collectives._tuner import Tuner
from collectives.allreduce import TUNED


@pytest.mark.parametrize("dtype", ("float32", "float64", "float16", "int32", "int64"))
@pytest.mark.parametrize("op", ("sum", "prod", "min", "max", "avg"))
def test_cma_equals_ring_bitwise(comm, dtype, op, monkeypatch):
    # Each element folded in the ring's order: the ring's bits, so "auto"
    # may switch between them.  Pieces of 1 KiB: chunks span several.
    if op == "avg" and dtype.startswith("int"):
        pytest.skip("avg is for floating dtypes")
    monkeypatch.setattr(single_copy, "PIECE_BYTES", 1024)
    comm = comm.Dup()  # a window of its own: plans made with these pieces
    for count in (1, 3, 1009, 20_011):
        x = rank_data(comm, count, dtype, positive=op == "prod")
        ring, table = x.copy(), gather_inputs(x, comm)
        assert C.cma_allreduce(x, comm, op=op) is x
        C.ring_allreduce(ring, comm, op=op)
        assert x.tobytes() == ring.tobytes(), (count, np.flatnonzero(x != ring)[:5])
        assert_reduced(x, table, op)
        assert_identical_on_all_ranks(x, comm)
    comm.Free()


def test_cma_new_buffers_dtypes_and_ops_at_one_count(comm):
    # Each call's plan (kept per count, dtype and op) reads the buffers'
    # addresses afresh: every call here passes a new buffer, all kept alive
    # so none reuses an earlier one's memory, and changes dtype or op.
    comm = comm.Dup()
    rank, size = comm.Get_rank(), comm.Get_size()
    kept = []
    for i in range(12):
        dtype, op = ("float32", "float64", "int64")[i % 3], ("sum", "max")[i // 3 % 2]
        x = np.arange(20_011, dtype=dtype) + rank * (i + 1)
        kept.append(x)
        C.allreduce(x, comm, algorithm="cma", op=op)
        base = np.arange(20_011, dtype=dtype)
        want = size * base + sum(range(size)) * (i + 1) if op == "sum" else (
            base + (size - 1) * (i + 1))
        assert np.array_equal(x, want), (i, dtype, op, x[:3], want[:3])
    comm.Free()


def test_cma_buffer_reused_at_once_with_a_late_rank(comm):
    # A rank refills its buffer as soon as its call returns; peers may still
    # be writing their finished chunks into it, or reading it, unless the
    # call waits for them at the end.  A late rank, a different one each
    # call, makes the others run ahead.
    comm = comm.Dup()
    rank, size = comm.Get_rank(), comm.Get_size()
    x = np.empty(50_000, dtype=np.float64)
    for i in range(30):
        x[:] = rank + i
        if rank == i % size:
            time.sleep(0.002)
        C.allreduce(x, comm, algorithm="cma")
        assert np.all(x == sum(range(size)) + size * i), (i, x[:3])
    comm.Free()


def _deny_on_last_rank(comm, monkeypatch):
    # The probe fails on the last rank only, as if it could not read a peer.
    if comm.Get_rank() == comm.Get_size() - 1:
        monkeypatch.setattr(single_copy, "_probe", lambda window: "denied for the test")


def test_cma_not_permitted_raises_on_every_rank(world, monkeypatch):
    if world.Get_size() == 1:
        pytest.skip("needs two ranks")
    comm = world.Dup()  # a fresh window: its probe has not run
    _deny_on_last_rank(comm, monkeypatch)
    x = np.ones(1000)
    message = ("denied for the test" if comm.Get_rank() == comm.Get_size() - 1
               else "another rank could not read")
    for _ in range(2):  # the second call answers from the cached probe
        with pytest.raises(RuntimeError, match=message):
            C.allreduce(x, comm, algorithm="cma")
    C.allreduce(x, comm)  # still usable
    assert np.all(x == comm.Get_size())
    comm.Free()


def test_auto_leaves_cma_out_where_not_permitted(world, monkeypatch):
    # Rank 0's tuner proposes "cma"; the probe fails; every rank runs the
    # ring instead, and rank 0's tuner never proposes "cma" again.
    if world.Get_size() == 1 or node_layout(world).nodes > 1:
        pytest.skip("tuning is for two or more ranks on one node")
    comm = world.Dup()
    _deny_on_last_rank(comm, monkeypatch)
    proposals = []
    if comm.Get_rank() == 0:
        propose = Tuner.propose

        def first_cma(self, nbytes):
            pick = TUNED.index("cma") if not proposals else propose(self, nbytes)
            proposals.append(TUNED[pick])
            return pick

        monkeypatch.setattr(Tuner, "propose", first_cma)
    count = C.tuned_from(comm.Get_size()) // 8 + 5
    for i in range(len(TUNED) * 4):
        x = rank_data(comm, count, "float64", seed=i)
        ring = x.copy()
        C.allreduce(x, comm)
        C.ring_allreduce(ring, comm)
        assert x.tobytes() == ring.tobytes(), i
        assert C.auto_choice(comm, x.nbytes) != "cma"
    if comm.Get_rank() == 0:
        assert proposals[0] == "cma" and "cma" not in proposals[1:]
    comm.Free()


@pytest.mark.parametrize("count", [10, 100_003])
def test_cma_mismatch_raises_before_any_read(world, count):
    # Ranks that disagree on the count (or dtype) must all raise in the
    # header exchange: a read sized by one rank's count from a peer's
    # smaller buffer would read past its end.
    if world.Get_size() == 1:
        pytest.skip("needs two ranks")
    rank = world.Get_rank()
    with pytest.raises(CollectiveMismatchError, match=f"count: rank 0 has {count}, rank 1 has "
                                                     f"{count + 7}"):
        C.cma_allreduce(np.ones(count + 7 * (rank == 1)), world)
    with pytest.raises(CollectiveMismatchError, match="dtype: rank 0 has float64, rank 1 has"):
        C.cma_allreduce(np.ones(count, np.float64 if rank == 0 else np.float32), world)
    x = np.ones(count)
    C.cma_allreduce(x, world)
    assert np.all(x == world.Get_size())
