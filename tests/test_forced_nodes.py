"""Hierarchical all-reduce across forced "nodes": 4 ranks as 2x2, 6 ranks as 3x2.

``MPI_COLLECTIVES_RANKS_PER_NODE=2`` splits one machine's ranks into nodes
of two, so "auto" picks the multi-node algorithms and the hierarchical
all-reduce runs its inter-node ring; the selected cases of
``tests/mpi/test_fast_algorithms.py`` check every result on every rank.
"""

import pytest
from launch import run_mpi

SELECTION = "forced or matches_mpi or (forced_nodes and world) or mismatch_across"


@pytest.mark.parametrize("nranks", [4, 6])
def test_forced_nodes(nranks):
    result = run_mpi(nranks, ["-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests/mpi/test_fast_algorithms.py", "-k", SELECTION],
                     env={"MPI_COLLECTIVES_RANKS_PER_NODE": "2"}, timeout=300)
    assert result.returncode == 0, (
        f"{nranks} ranks as nodes of 2 exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}")
    assert " passed" in result.stdout
