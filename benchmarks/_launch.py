"""Where the benchmarks that start jobs find ``mpiexec``.

No MPI import here: a launcher that imported ``mpi4py.MPI`` would
initialise MPI itself before starting the job.
"""

import os
import sys

__all__ = ["mpiexec_command"]


def mpiexec_command():
    """The ``mpiexec`` next to this Python (the mpich wheel's in a venv), else the one on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else "mpiexec"
