"""Randomised multi-rank cases: counts, dtypes, ops, roots, algorithms, communicators.

Every rank draws the same case from the case number, so all ranks agree
on what to call; each case is one pytest test, so the summary line counts
the cases that ran.
"""

import numpy as np
import pytest
from conftest import rank_data
from mpi4py import MPI
from test_allreduce import DTYPES, OPS, assert_reduced, gather_inputs, supported

import collectives as C

CASES = 80


def _draw(case):
    rng = np.random.default_rng(1000 + case)
    comm_kind = rng.choice(["world", "world", "half", "self"])
    count = int(rng.choice([0, 1, 2, 3, 5, int(rng.integers(0, 70_000))]))
    return dict(comm_kind=str(comm_kind), count=count,
                dtype=str(rng.choice(DTYPES)), op=str(rng.choice(OPS)),
                collective=str(rng.choice(["allreduce", "reduce", "bcast"])),
                algorithm=str(rng.choice(C.ALGORITHMS)),
                root_pick=float(rng.random()))


@pytest.fixture(scope="module")
def communicators():
    world = MPI.COMM_WORLD
    return {"world": world, "self": MPI.COMM_SELF,
            "half": world.Split(world.Get_rank() % 2, world.Get_rank())}


@pytest.mark.parametrize("case", range(CASES))
def test_random_case(case, communicators):
    spec = _draw(case)
    comm = communicators[spec["comm_kind"]]
    op, dtype = spec["op"], spec["dtype"]
    if not supported(spec["algorithm"], dtype, op):
        op = "sum" if op == "avg" else op
        spec["algorithm"] = "ring" if spec["algorithm"] == "mpi" else spec["algorithm"]
    x = rank_data(comm, spec["count"], dtype, seed=case, positive=op == "prod")
    table = gather_inputs(x, comm)
    root = int(spec["root_pick"] * comm.Get_size())
    if spec["collective"] == "allreduce":
        C.allreduce(x, comm, op=op, algorithm=spec["algorithm"])
        assert_reduced(x, table, op)
    elif spec["collective"] == "reduce":
        if C.tree_reduce(x, comm, root=root, op=op) is not None:
            assert_reduced(x, table, op)
        else:
            assert x.tobytes() == table[comm.Get_rank()].tobytes()
    else:
        C.tree_bcast(x, comm, root=root)
        assert x.tobytes() == table[root].tobytes()
