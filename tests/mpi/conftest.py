"""Run under ``mpiexec ... python -m mpi4py -m pytest``: every rank runs every test.

A failed test on any rank prints its report and aborts the whole job, so
the other ranks never wait in a collective that the failed rank skipped.
"""

import sys

import numpy as np
import pytest
from mpi4py import MPI


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and MPI.COMM_WORLD.Get_size() > 1:
        sys.stderr.write(f"\n[rank {MPI.COMM_WORLD.Get_rank()}] FAILED "
                         f"{item.nodeid}\n{report.longreprtext}\n")
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)


def _communicators():
    world = MPI.COMM_WORLD
    half = world.Split(world.Get_rank() % 2, world.Get_rank())
    return {"world": world, "self": MPI.COMM_SELF, "half": half}


_COMMS = _communicators()


@pytest.fixture(params=sorted(_COMMS))
def comm(request):
    """COMM_WORLD, COMM_SELF and a Split half (even / odd ranks).

    Cases that would repeat another exactly are skipped: at 1 rank all
    three are one process alone, and at 2 ranks each half is one rank, as
    COMM_SELF is.
    """
    size = MPI.COMM_WORLD.Get_size()
    if (size == 1 and request.param != "world") or (size == 2 and request.param == "half"):
        pytest.skip(f"'{request.param}' repeats another communicator at {size} rank(s)")
    return _COMMS[request.param]


@pytest.fixture
def world():
    return MPI.COMM_WORLD


def rank_data(comm, count, dtype, *, seed=0, positive=False):
    """Different, reproducible data on every rank of ``comm``."""
    rng = np.random.default_rng([seed, comm.Get_rank(), count])
    if np.dtype(dtype).kind == "i":
        lo = 1 if positive else -50
        return rng.integers(lo, 50, size=count).astype(dtype)
    if positive:
        return (1.0 + 0.05 * rng.random(count)).astype(dtype)
    return rng.standard_normal(count).astype(dtype)


def assert_same_on_every_rank(array, comm):
    """Assert that ``array`` holds the same bytes on every rank of ``comm``."""
    table = np.empty((comm.Get_size(), array.size), dtype=array.dtype)
    comm.Allgather(array, table)
    for r in range(comm.Get_size()):
        assert table[r].tobytes() == array.tobytes(), (
            f"rank {comm.Get_rank()}: parameters differ from rank {r}")
