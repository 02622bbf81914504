"""Launch a command under ``mpiexec`` with a hard timeout (test helper)."""

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["ROOT", "mpiexec", "rank_of", "rank_pids", "run_mpi"]

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


def rank_pids(marker):
    """The python rank processes whose command line holds ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).startswith(b"python") \
                and marker.encode() in b" ".join(argv):
            pids.append(int(entry))
    return pids


def rank_of(pid):
    """The MPI rank of a process, from the PMI environment hydra gives it."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return int(env[b"PMI_RANK"])
