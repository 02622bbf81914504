"""Launch a command under ``mpiexec`` with a hard timeout (test helper)."""

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["ROOT", "mpiexec", "run_mpi"]

ROOT = Path(__file__).resolve().parent.parent


def mpiexec():
    """The mpiexec next to this Python (the mpich wheel's), else on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else "mpiexec"


def run_mpi(nranks, args, *, timeout=180, env=None):
    """Run ``python -m mpi4py ARGS`` on ``nranks`` ranks; return the result.

    ``timeout`` (the coreutils command, then ``subprocess``'s own) makes a
    hang a failure instead of a stuck suite.
    """
    full_env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    cmd = ["timeout", "-k", "5", str(timeout), mpiexec(), "-n", str(nranks),
           sys.executable, "-m", "mpi4py", *args]
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout + 30)
