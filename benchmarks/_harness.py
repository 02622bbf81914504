"""Shared pieces of the benchmarks: sizes, iteration counts, timing, machine info.

Timing follows the OSU micro-benchmarks: warm-up calls, a ``Barrier``, then
``iters`` calls between two ``MPI.Wtime`` readings; the time per call on
each rank is gathered, and a row reports its average, minimum and maximum
over ranks.  Bandwidths use the maximum (the slowest rank finishes the
collective).  Before each block the objects made so far are frozen out of
Python's garbage collector (``gc.freeze``): a full collection walks every
object that numba, numpy and mpi4py made at import; it took 60 ms once in
each run of ``benchmarks.collectives`` (AMD EPYC VM, 2 ranks), after the
header was printed, where a block of small calls takes under 1 ms.
"""

import gc
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np
from mpi4py import MPI

__all__ = [
    "parse_size", "parse_sizes", "iterations", "time_block", "rank_stats",
    "median_stats", "machine_info", "format_bytes", "count_argument",
]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
# Up to this many bytes a block runs the full ``-i``/``-x`` counts; above
# it the counts shrink in proportion to the size (at least ``MIN_ITERS``).
LARGE = 256 << 10
MIN_ITERS = 3


def parse_size(text):
    """Return the byte count of ``"64"``, ``"4K"``, ``"64M"``, ``"1G"`` (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"bad size {text!r}; use a byte count such as 8, 4K, 64M or 1G")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def parse_sizes(text):
    """Return the powers-of-two sizes from ``"MIN:MAX"`` (or one size ``"N"``)."""
    low, _, high = text.partition(":")
    low = parse_size(low)
    high = parse_size(high) if high else low
    if low < 1 or high < low:
        raise ValueError(f"bad size range {text!r}: need 1 <= MIN <= MAX, "
                         f"got MIN={low} and MAX={high} bytes")
    sizes = []
    while low <= high:
        sizes.append(low)
        low *= 2
    return sizes


def iterations(nbytes, count, *, floor=MIN_ITERS):
    """Return ``count`` for small messages, fewer (at least ``floor``) for large ones."""
    if nbytes <= LARGE:
        return count
    return max(floor, count * LARGE // nbytes)


def count_argument(argv, default):
    """Return the one optional positional count of a probe (``sys.argv`` when None)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return int(args[0]) if args else default


def time_block(run, comm, warmup, iters):
    """Return this rank's seconds per call of ``run()`` over ``iters`` calls."""
    gc.freeze()  # see the module's docstring
    for _ in range(warmup):
        run()
    comm.Barrier()
    start = MPI.Wtime()
    for _ in range(iters):
        run()
    return (MPI.Wtime() - start) / iters


def rank_stats(seconds, comm):
    """Return (avg, min, max) over ranks of each rank's ``seconds``."""
    every = np.empty(comm.Get_size())
    comm.Allgather(np.array([seconds], dtype=np.float64), every)
    return float(every.mean()), float(every.min()), float(every.max())


def median_stats(samples):
    """Return the columnwise median of a list of (avg, min, max) triples."""
    return tuple(float(v) for v in np.median(np.asarray(samples), axis=0))


def format_bytes(nbytes):
    """Return ``nbytes`` as a short string: 512, 4K, 64M."""
    for unit in ("G", "M", "K"):
        if nbytes >= _UNITS[unit] and nbytes % _UNITS[unit] == 0:
            return f"{nbytes // _UNITS[unit]}{unit}"
    return str(nbytes)


def _cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor()
    found = re.search(r"Model name:\s*(.+)", out)
    return found.group(1).strip() if found else platform.processor()


def machine_info(comm):
    """Return a dict describing the machine, the MPI library and the load now."""
    import numba

    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "ranks": comm.Get_size(),
        "mpi": MPI.Get_library_version().splitlines()[0].strip(),
        "mpi4py": __import__("mpi4py").__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),
        "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS", ""),
    }
