"""Op resolution, buffer checks and chunk partitioning, single process."""

import numpy as np
import pytest
from mpi4py import MPI

from collectives._chunks import chunk_bounds
from collectives._ops import OPS, check_buffer, resolve_op


@pytest.mark.parametrize("op, name", [("sum", "sum"), (MPI.SUM, "sum"),
                                      (MPI.PROD, "prod"), (MPI.MIN, "min"),
                                      (MPI.MAX, "max"), ("avg", "avg")])
def test_resolve(op, name):
    assert resolve_op(op, np.float32).name == name


@pytest.mark.parametrize("op", ["mean", MPI.BAND, 3, None])
def test_unknown_op_lists_allowed(op):
    with pytest.raises(ValueError, match="use one of 'sum', 'prod', 'min', 'max', 'avg'"):
        resolve_op(op, np.float32)


def test_avg_needs_float():
    with pytest.raises(TypeError, match="'avg' needs a floating dtype, got int64"):
        resolve_op("avg", np.int64)
    assert OPS == ("sum", "prod", "min", "max", "avg")


def test_check_buffer():
    check_buffer(np.zeros((3, 4), np.float16))
    with pytest.raises(ValueError, match="not C-contiguous"):
        check_buffer(np.zeros((3, 4)).T)
    with pytest.raises(TypeError, match="unsupported dtype bool"):
        check_buffer(np.zeros(3, bool))


@pytest.mark.parametrize("count", [0, 1, 2, 3, 7, 97, 1000])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 5, 8])
def test_chunks_cover_in_order_and_balance(count, parts):
    starts, sizes = chunk_bounds(count, parts)
    assert len(starts) == len(sizes) == parts
    assert sum(sizes) == count
    assert starts[0] == 0
    assert all(starts[i] + sizes[i] == starts[i + 1] for i in range(parts - 1))
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)
    assert max(sizes) == -(-count // parts)


def test_chunks_reject_bad_parts():
    with pytest.raises(ValueError, match="parts=0"):
        chunk_bounds(5, 0)
