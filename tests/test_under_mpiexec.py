"""Run the multi-rank tests of ``tests/mpi`` at 1, 2, 3, 4 and 5 ranks.

One ``mpiexec`` per rank count runs every module (a launch costs a few
seconds of imports, so one per module would cost minutes); a failure on
any rank aborts that launch and the output names the test and the rank.
"""

import pytest
from launch import run_mpi

RANKS = (1, 2, 3, 4, 5)


@pytest.mark.parametrize("nranks", RANKS)
def test_mpi_modules_under_mpiexec(nranks):
    result = run_mpi(nranks, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/mpi"],
                     timeout=600)
    summary = result.stdout.strip().splitlines()[-1:] or ["(no output)"]
    assert result.returncode == 0, (
        f"tests/mpi at {nranks} ranks exited {result.returncode}: {summary[0]}\n"
        f"--- stdout ---\n{result.stdout[-12000:]}\n--- stderr ---\n{result.stderr[-8000:]}")
