"""Binomial-tree reduce and broadcast against MPI's own Reduce and Bcast."""

import numpy as np
import pytest
from conftest import rank_data
from test_allreduce import DTYPES, MPI_OPS, OPS, assert_reduced, counts, gather_inputs

import collectives as C


def roots(comm):
    return sorted({0, comm.Get_size() - 1, comm.Get_size() // 2})


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reduce_every_root(comm, op, dtype):
    if op == "avg" and dtype.startswith("int"):
        pytest.skip("avg on integers is rejected (test_bad_input)")
    # The middle root (a vrank shift that is neither 0 nor size-1) for a
    # float and an integer dtype; the two ends for every op and dtype.
    middle = dtype in ("float32", "int64")
    for root in roots(comm) if middle else sorted({0, comm.Get_size() - 1}):
        for count in counts(comm):
            x = rank_data(comm, count, dtype, positive=op == "prod")
            before = x.copy()
            table = gather_inputs(x, comm)
            result = C.tree_reduce(x, comm, root=root, op=op)
            if comm.Get_rank() == root:
                assert result is x
                assert_reduced(x, table, op)
            else:
                assert result is None
                assert x.tobytes() == before.tobytes()


@pytest.mark.parametrize("op", ("sum", "min", "max"))
def test_reduce_against_mpi_reduce(comm, op):
    root = comm.Get_size() - 1
    x = rank_data(comm, 10_007, "int64")
    ours = x.copy()
    theirs = np.empty_like(x)
    C.tree_reduce(ours, comm, root=root, op=op)
    comm.Reduce(x, theirs, op=MPI_OPS[op], root=root)
    if comm.Get_rank() == root:
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bcast_against_mpi_bcast(comm, dtype):
    for root in roots(comm):
        for count in counts(comm) + [1_000_003]:
            x = rank_data(comm, count, dtype).reshape(-1, 1)
            theirs = x.copy()
            assert C.tree_bcast(x, comm, root=root) is x
            comm.Bcast(theirs, root=root)
            assert x.tobytes() == theirs.tobytes()
