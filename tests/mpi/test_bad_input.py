"""Bad input: local errors before any message, mismatches on every rank."""

import numpy as np
import pytest
from mpi4py import MPI

import collectives as C

ALLREDUCES = [C.ring_allreduce, C.tree_allreduce, C.mpi_allreduce, C.cma_allreduce,
              lambda b, c, **kw: C.allreduce(b, c, algorithm="auto", **kw)]


@pytest.mark.parametrize("function", ALLREDUCES)
@pytest.mark.parametrize("bad, error, words", [
    (dict(op="mean"), ValueError, "unsupported op 'mean'"),
    (dict(op=MPI.LAND), ValueError, "unsupported op"),
    (dict(op=None), ValueError, "unsupported op None"),
])
def test_unknown_op(world, function, bad, error, words):
    with pytest.raises(error, match=words):
        function(np.zeros(4), world, **bad)


@pytest.mark.parametrize("function", ALLREDUCES)
def test_bad_buffers(world, function):
    with pytest.raises(TypeError, match="unsupported dtype complex128"):
        function(np.zeros(4, dtype=complex), world)
    with pytest.raises(TypeError, match="unsupported dtype uint8"):
        function(np.zeros(4, dtype=np.uint8), world)
    with pytest.raises(TypeError, match="numpy.ndarray, got list"):
        function([1.0, 2.0], world)
    with pytest.raises(ValueError, match="not C-contiguous"):
        function(np.zeros((4, 4))[:, 0], world)
    ro = np.zeros(4)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        function(ro, world)
    with pytest.raises(TypeError, match="'avg' needs a floating dtype, got int32"):
        function(np.zeros(4, dtype=np.int32), world, op="avg")
    with pytest.raises(TypeError, match="intracommunicator"):
        function(np.zeros(4), "COMM_WORLD")


def test_small_fast_path_checks_as_the_general_one(world):
    # After a first call the comm's state exists and a small "auto" call
    # takes the lean path (collectives._prepare.quick_local): every input it
    # does not take must still raise the general path's error.
    C.allreduce(np.zeros(4), world)
    test_bad_buffers(world, C.allreduce)
    for op, words in (("mean", "unsupported op 'mean'"), (None, "unsupported op None"),
                      (MPI.LAND, "unsupported op")):
        with pytest.raises(ValueError, match=words):
            C.allreduce(np.zeros(4), world, op=op)
    with pytest.raises(ValueError, match="timeout"):
        C.allreduce(np.zeros(4), world, timeout=-1.0)
    # A subclass and an MPI op object take the general path, and reduce right.
    rank, size = world.Get_rank(), world.Get_size()
    sub = np.full(5, rank + 1.0).view(np.memmap)
    assert C.allreduce(sub, world, op=MPI.MAX) is sub
    assert (np.asarray(sub) == size).all()


def test_mpi_baseline_rejects_float16(world):
    with pytest.raises(TypeError, match="float16"):
        C.allreduce(np.zeros(3, np.float16), world, algorithm="mpi")


def test_unknown_algorithm(world):
    with pytest.raises(ValueError, match="unknown algorithm 'fast'"):
        C.allreduce(np.zeros(3), world, algorithm="fast")


@pytest.mark.parametrize("function", [C.tree_reduce, C.tree_bcast])
def test_bad_root(world, function):
    size = world.Get_size()
    with pytest.raises(ValueError, match=f"root {size} is out of range.*size {size}"):
        function(np.zeros(3), world, root=size)
    with pytest.raises(ValueError, match="root -1 is out of range"):
        function(np.zeros(3), world, root=-1)
    with pytest.raises(TypeError, match="root must be an int"):
        function(np.zeros(3), world, root="0")


def _on_every_rank_raises(call, words):
    with pytest.raises(C.CollectiveMismatchError, match=words):
        call()


@pytest.mark.parametrize("name", ["ring", "tree", "mpi", "cma", "auto"])
def test_count_mismatch(world, name):
    if world.Get_size() == 1:
        pytest.skip("needs two ranks")
    rank = world.Get_rank()
    buf = np.zeros(10 + (rank == 1), dtype=np.float32)
    _on_every_rank_raises(lambda: C.allreduce(buf, world, algorithm=name),
                          "count: rank 0 has 10, rank 1 has 11")


def test_dtype_mismatch(world):
    if world.Get_size() == 1:
        pytest.skip("needs two ranks")
    dtype = np.float64 if world.Get_rank() == 0 else np.float32
    _on_every_rank_raises(lambda: C.ring_allreduce(np.zeros(5, dtype), world),
                          "dtype: rank 0 has float64, rank 1 has float32")


def test_op_and_root_mismatch(world):
    if world.Get_size() == 1:
        pytest.skip("needs two ranks")
    rank = world.Get_rank()
    _on_every_rank_raises(
        lambda: C.tree_allreduce(np.zeros(5), world, op="max" if rank else "sum"),
        "op: rank 0 has sum, rank 1 has max")
    _on_every_rank_raises(
        lambda: C.tree_reduce(np.zeros(5), world, root=min(rank, 1)),
        "root: rank 0 has 0, rank 1 has 1")
    _on_every_rank_raises(
        lambda: C.tree_bcast(np.zeros(5), world, root=min(rank, 1)),
        "root: rank 0 has 0, rank 1 has 1")


def test_still_usable_after_errors(world):
    x = np.ones(7)
    C.allreduce(x, world)
    assert np.all(x == world.Get_size())


@pytest.mark.parametrize("first", [False, True], ids=["later", "first-call"])
@pytest.mark.parametrize("count", [10, 100_000])
@pytest.mark.parametrize("name", ["ring", "tree", "mpi", "rd", "shm", "cma", "hierarchical"])
def test_algorithm_mismatch_with_auto(world, name, count, first):
    # Rank 1 names an algorithm, the others use "auto": every rank raises
    # at once (not a timeout), also as a communicator's first call, and the
    # communicator stays usable.
    if world.Get_size() == 1:
        pytest.skip("needs two ranks")
    comm = world.Dup() if first else world
    algorithm = name if comm.Get_rank() == 1 else "auto"
    _on_every_rank_raises(
        lambda: C.allreduce(np.ones(count), comm, algorithm=algorithm, timeout=30),
        f"operation: rank 0 has allreduce, rank 1 has allreduce/{name}")
    buf = np.ones(count)
    C.allreduce(buf, comm)
    assert np.all(buf == comm.Get_size())
    if first:
        comm.Free()


def test_one_node_algorithms_refuse_several_nodes(world, monkeypatch):
    # shm, cma and shared arrays need every rank on one node; with the
    # layout faked to span two, each raises before any message is sent.
    from types import SimpleNamespace

    from collectives import _nodes
    monkeypatch.setattr(_nodes, "node_layout", lambda *a, **k: SimpleNamespace(nodes=2))
    size = world.Get_size()
    for call, words in [(lambda: C.shm_allreduce(np.ones(3), world),
                         "shm_allreduce needs all ranks on one node.*use algorithm "
                         "'hierarchical'"),
                        (lambda: C.cma_allreduce(np.ones(3), world),
                         f"cma_allreduce needs all ranks on one node, but the {size} ranks "
                         "span 2 nodes")]:
        with pytest.raises(ValueError, match=words):
            call()
