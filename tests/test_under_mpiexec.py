"""Run each multi-rank test module of ``tests/mpi`` at 1, 2, 3, 4 and 5 ranks."""

from pathlib import Path

import pytest
from launch import run_mpi

MODULES = sorted(p.name for p in (Path(__file__).parent / "mpi").glob("test_*.py"))
RANKS = (1, 2, 3, 4, 5)


@pytest.mark.parametrize("nranks", RANKS)
@pytest.mark.parametrize("module", MODULES)
def test_module_under_mpiexec(module, nranks):
    result = run_mpi(nranks, ["-m", "pytest", "-q", "-p", "no:cacheprovider",
                              f"tests/mpi/{module}"])
    assert result.returncode == 0, (
        f"{module} at {nranks} ranks exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-8000:]}\n--- stderr ---\n{result.stderr[-8000:]}")
