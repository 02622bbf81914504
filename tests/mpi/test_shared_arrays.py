"""Shared arrays and the zero-copy all-reduce on them, on every rank.

Run under ``mpiexec -n K python -m mpi4py -m pytest tests/mpi``.
"""

import importlib
import time

import numpy as np
import pytest
from conftest import rank_data
from test_allreduce import assert_identical_on_all_ranks, assert_reduced, gather_inputs

import collectives as C
import optim
from collectives import shared_arrays, shared_memory
from collectives._nodes import node_layout

ALLREDUCE = importlib.import_module("collectives.allreduce")  # the module, not the function

DTYPES = ("float32", "float64", "float16", "int32", "int64")


@pytest.fixture
def own(comm):
    """A Dup of ``comm``: its shared arrays are freed with it after the test."""
    mine = comm.Dup()
    yield mine
    mine.Free()


def _shared_copy(comm, x):
    # A shared array holding x (same shape and dtype).
    array = C.shared_array(comm, x.shape, x.dtype)
    array[...] = x
    return array


def test_shared_array_is_zeroed_and_each_ranks_own(own):
    a = C.shared_array(own, (3, 5), "float64")
    assert a.shape == (3, 5) and a.dtype == np.float64 and a.flags.c_contiguous
    assert a.flags.writeable and np.all(a == 0)
    a[...] = own.Get_rank() + 1
    own.Barrier()
    assert np.all(a == own.Get_rank() + 1)  # a peer's writes went to its own array


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ("sum", "prod", "min", "max", "avg"))
@pytest.mark.parametrize("stores", ("shared", "shared-streaming"))
def test_zero_copy_equals_the_ring_bitwise(own, dtype, op, stores, monkeypatch):
    # Every chunk is folded in the ring's order: the same bits as the ring
    # and the pipeline, whichever runs.  No small mode: counts 1, < size
    # and primes go through the zero-copy path too.  (Forced into several
    # "nodes", "auto" runs the hierarchical algorithm: other bits.)
    if op == "avg" and dtype.startswith("int"):
        pytest.skip("avg is for floating dtypes")
    monkeypatch.setattr(shared_memory, "SMALL_BYTES", 0)
    monkeypatch.setenv("MPI_COLLECTIVES_TUNE", "0")  # the first candidate, always:
    monkeypatch.setattr(ALLREDUCE, "SHARED_TUNED", (stores, "shared"))  # this one
    for count in (1, 3, 1009, 70_001):
        x = rank_data(own, count, dtype, positive=op == "prod")
        ring, shared, table = x.copy(), _shared_copy(own, x), gather_inputs(x, own)
        assert C.allreduce(shared, own, op=op) is shared
        C.ring_allreduce(ring, own, op=op)
        assert_reduced(shared, table, op)
        if node_layout(own).nodes == 1:
            assert shared.tobytes() == ring.tobytes(), (count, np.flatnonzero(shared != ring)[:5])
        assert_identical_on_all_ranks(shared, own)


@pytest.mark.parametrize("algorithm", ("auto", "shm"))
def test_zero_copy_on_a_slice_and_above_the_small_mode(own, algorithm):
    # A slice at the same place on every rank; the rest of the array stays.
    count = 300_007  # 1.2 MB: the large path at any size
    array = C.shared_array(own, count + 20, "float32")
    x = rank_data(own, count, "float32")
    array[:] = -1.0
    array[13:13 + count] = x
    table = gather_inputs(x, own)
    C.allreduce(array[13:13 + count], own, algorithm=algorithm)
    assert_reduced(array[13:13 + count], table, "sum")
    assert np.all(array[:13] == -1.0) and np.all(array[13 + count:] == -1.0)


def test_zero_copy_back_to_back_with_a_late_rank(own, monkeypatch):
    # Nobody may change its array while a peer still reads it or writes its
    # finished chunk into it: each call ends when every rank has written.
    # The late rank changes in turn.
    monkeypatch.setattr(shared_memory, "SMALL_BYTES", 0)
    rank, size = own.Get_rank(), own.Get_size()
    array = C.shared_array(own, 50_000, "float64")
    for i in range(30):
        array[:] = rank + i
        if rank == i % size:
            time.sleep(0.002)
        C.allreduce(array, own)
        assert np.all(array == sum(range(size)) + size * i), (i, array[:3])


def test_shared_and_plain_buffers_mixed_raise_on_every_rank(own):
    if own.Get_size() == 1 or node_layout(own).nodes > 1:
        pytest.skip("needs two ranks on one node (over several, no zero-copy path)")
    count = 100_000  # above the small mode at any size
    array = C.shared_array(own, count, "float64")
    buf = array if own.Get_rank() == 0 else np.ones(count)
    with pytest.raises(C.CollectiveMismatchError,
                       match="operation: rank 0 has allreduce/shared"):
        C.allreduce(buf, own, timeout=30)
    plain = np.ones(count)
    C.allreduce(plain, own)  # still usable
    assert np.all(plain == own.Get_size())


def test_shared_array_bad_arguments(own):
    with pytest.raises(TypeError, match="not complex128"):
        C.shared_array(own, 10, np.complex128)
    with pytest.raises(ValueError, match="negative"):
        C.shared_array(own, (2, -1))
    if own.Get_size() > 1:
        with pytest.raises(C.CollectiveMismatchError, match="count: rank 0 has 10, rank 1 has 11"):
            C.shared_array(own, 10 + (own.Get_rank() == 1))


@pytest.mark.parametrize("bucket_bytes", (None, 200_000))
def test_sync_sgd_on_a_shared_gradient_equals_a_plain_one(own, bucket_bytes):
    # MLP(grad_comm=...) keeps the gradient in a shared array: the same
    # training, bit for bit, as with a plain one (the zero-copy path folds
    # in the ring's order, as the plain path's candidates do).  1024 hidden
    # units: a 305 KB gradient, above the small mode at any size.
    rank, size = own.Get_rank(), own.Get_size()
    rng = np.random.default_rng([3, rank])
    x, y = rng.standard_normal((32, 64)), rng.integers(0, 10, 32)
    results = []
    for grad_comm in (None, own):
        model = optim.MLP([64, 1024, 10], seed=1, bucket_bytes=bucket_bytes,
                          grad_comm=grad_comm)
        opt = optim.SyncSGD(model.flat, own, lr=0.1, momentum=0.9)
        for _ in range(3):
            model.loss_and_grad(x, y)
            opt.step()
        results.append(model.flat.data.copy())
    assert (shared_memory.is_small(model.flat.grad.nbytes, size)
            or shared_arrays.find(own, model.flat.grad) is not None)
    assert results[0].tobytes() == results[1].tobytes()
