"""All-reduce (every algorithm, and auto) against NumPy and MPI's own Allreduce.

Tolerance: an all-reduce of ``p`` floating inputs makes at most ``p - 1``
roundings of partial sums (plus one for "avg"), each at most ``eps/2``
times ``sum_i |x_i|``.  So any order of summation lies within
``p * eps * sum_i |x_i|`` of the exact result, elementwise, and two orders
(ours and MPI's) within twice that.  Products: same bound relative to
``prod_i |x_i|``.  Integers, min and max are exact.
"""

import importlib

import numpy as np
import pytest
from conftest import rank_data
from mpi4py import MPI

import collectives as C

allreduce_module = importlib.import_module("collectives.allreduce")

DTYPES = ("float16", "float32", "float64", "int32", "int64")
OPS = ("sum", "prod", "min", "max", "avg")
MPI_OPS = {"sum": MPI.SUM, "avg": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN,
           "max": MPI.MAX}
ALGORITHMS = ("ring", "pipelined", "tree", "rd", "shm", "cma", "hierarchical", "mpi", "auto")
FUNCTIONS = [C.ring_allreduce, C.pipelined_ring_allreduce, C.tree_allreduce, C.rd_allreduce,
             C.shm_allreduce, C.cma_allreduce, C.hierarchical_allreduce]


def counts(comm):
    size = comm.Get_size()
    return sorted({0, 1, max(size - 1, 0), size + 1, 7919})


def gather_inputs(x, comm):
    table = np.empty((comm.Get_size(),) + x.shape, dtype=x.dtype)
    comm.Allgather(x, table)
    return table


def expected(table, op):
    """Reduce the gathered inputs in float64 (or exactly, for integers)."""
    if table.dtype.kind == "i":
        if op in ("min", "max"):
            return getattr(table, op)(axis=0), 0.0
        return getattr(table, op)(axis=0, dtype=table.dtype), 0.0
    wide = table.astype(np.float64)
    eps = np.finfo(table.dtype).eps
    p = table.shape[0]
    if op in ("sum", "avg"):
        exact = wide.sum(axis=0) / (p if op == "avg" else 1)
        return exact, 2 * p * eps * np.abs(wide).sum(axis=0) + np.finfo(table.dtype).tiny
    if op == "prod":
        exact = wide.prod(axis=0)
        return exact, 2 * p * eps * np.abs(exact)
    return (wide.min(axis=0) if op == "min" else wide.max(axis=0)), 0.0


def assert_reduced(result, table, op):
    want, tol = expected(table, op)
    if result.dtype.kind == "i":
        np.testing.assert_array_equal(result, want)
    else:
        np.testing.assert_array_less(np.abs(result.astype(np.float64) - want), tol + 1e-300)


def assert_identical_on_all_ranks(result, comm):
    table = gather_inputs(result, comm)
    assert all(table[r].tobytes() == result.tobytes() for r in range(comm.Get_size()))


def supported(algorithm, dtype, op):
    return not (op == "avg" and dtype.startswith("int")) and not (
        algorithm == "mpi" and dtype == "float16")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_op_dtype_count(comm, algorithm, op, dtype):
    if not supported(algorithm, dtype, op):
        pytest.skip("combination rejected by design (tested in test_bad_input)")
    for count in counts(comm):
        x = rank_data(comm, count, dtype, positive=op == "prod")
        table = gather_inputs(x, comm)
        result = C.allreduce(x, comm, op=op, algorithm=algorithm)
        assert result is x
        assert_reduced(result, table, op)
        assert_identical_on_all_ranks(result, comm)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("dtype", ("float32", "float64", "int64"))
def test_against_mpi_allreduce(comm, function, dtype):
    x = rank_data(comm, 100_003, dtype)
    ours, theirs = x.copy(), x.copy()
    function(ours, comm, op="sum")
    comm.Allreduce(MPI.IN_PLACE, theirs, op=MPI.SUM)
    if dtype.startswith("int"):
        np.testing.assert_array_equal(ours, theirs)
    else:
        _, tol = expected(gather_inputs(x, comm), "sum")
        assert np.all(np.abs(ours - theirs) <= tol)
    for op in ("min", "max"):  # exact ops are bitwise equal to MPI's
        ours, theirs = x.copy(), x.copy()
        function(ours, comm, op=op)
        comm.Allreduce(MPI.IN_PLACE, theirs, op=MPI_OPS[op])
        assert ours.tobytes() == theirs.tobytes()


@pytest.mark.parametrize("algorithm", ("ring", "pipelined", "tree", "rd", "shm", "cma",
                                       "hierarchical", "auto"))
def test_large_and_shaped(comm, algorithm):
    x = rank_data(comm, 1_000_003, "float32").reshape(1_000_003, 1)
    table = gather_inputs(x, comm)
    C.allreduce(x, comm, op="avg", algorithm=algorithm)
    assert x.shape == (1_000_003, 1)
    assert_reduced(x, table, "avg")
    assert_identical_on_all_ranks(x, comm)
    y = rank_data(comm, 3 * 5 * 7, "int32").reshape(3, 5, 7)
    table = gather_inputs(y, comm)
    C.allreduce(y, comm, op=MPI.SUM, algorithm=algorithm)
    np.testing.assert_array_equal(y, table.sum(axis=0, dtype=np.int32))


@pytest.mark.parametrize("algorithm", ("ring", "pipelined", "tree", "rd", "shm", "cma",
                                       "hierarchical"))
def test_repeatable_bitwise(comm, algorithm):
    x = rank_data(comm, 4099, "float32")
    first, second = x.copy(), x.copy()
    C.allreduce(first, comm, algorithm=algorithm)
    C.allreduce(second, comm, algorithm=algorithm)
    assert first.tobytes() == second.tobytes()


def test_choose_algorithm_is_documented_by_size():
    for nbytes in (8, 1 << 10, 1 << 20, 64 << 20):
        for size, nodes in ((2, 1), (4, 1), (4, 2), (6, 3)):
            assert C.choose_algorithm(nbytes, size, nodes=nodes) in C.ALGORITHMS
    assert C.choose_algorithm(8, 4, nodes=2) == "rd"
    assert C.choose_algorithm(64 << 20, 4, nodes=2) == "hierarchical"


def test_lean_path_only_for_prepared_small_plain_calls(world):
    # allreduce's lean path runs a kind's prepared small call (SmallCall):
    # prepared only by the small mode, for plain 1-D aligned buffers, and
    # again on a new window once the old one is freed; every other buffer
    # takes the general path.  All give MPI's result, on every rank.
    if world.Get_size() == 1:
        pytest.skip("one rank returns before any state is kept")
    comm = world.Dup()  # its own state and window, which the big call grows
    small, big, key = 7, (1 << 20) // 4 + 3, ("sum", 7, np.dtype(np.float32))
    unaligned = np.zeros(4 * small + 1, np.uint8)[1:].view(np.float32)
    cases = [np.empty(small, np.float32), np.empty((small, 1), np.float32), unaligned,
             np.empty(small, np.float16)]

    def check(buf):
        buf[...] = rank_data(comm, buf.size, np.float32).reshape(buf.shape)
        exact, bound = np.empty(buf.shape), np.empty(buf.shape)
        comm.Allreduce(buf.astype(np.float64), exact)
        comm.Allreduce(np.abs(buf.astype(np.float64)), bound)
        assert C.allreduce(buf, comm) is buf
        eps = np.finfo(buf.dtype).eps
        assert (np.abs(buf - exact) <= comm.Get_size() * eps * bound).all()

    for _ in range(2):  # the second time through, the prepared call runs
        for buf in cases:
            check(buf)
        state = comm.Get_attr(allreduce_module._STATE_KEY)
        assert list(state.small_calls) == [key]
    prepared = state.small_calls[key]
    check(np.empty(big, np.float32))  # the tuner's shm candidates grow the window
    assert prepared.window.freed and list(state.small_calls) == [key]
    check(cases[0])
    assert state.small_calls[key].window is state.window and not state.window.freed
    comm.Free()
