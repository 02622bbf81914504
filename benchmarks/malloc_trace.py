"""Count the memory maps MPI's own ``Allreduce`` makes per call, under both malloc settings.

    python -m benchmarks.malloc_trace [-m 1M:64M] [-n 2] [-c 20] [--markdown FILE]

MPI's own all-reduce allocates a temporary buffer on every call.  glibc
serves an allocation from a fresh ``mmap`` (and page-faults all of it)
whenever it is above the mmap threshold, which by default rises to the
size of the last freed mapping, up to 32 MiB; so in a steady loop the
temporary buffer should come from the heap below 32 MiB and from a new
mapping, one ``mmap`` and one ``munmap`` per call, from 32 MiB on.
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...`` (the "tuned" runs of
BENCHMARKS.md) keeps it on the heap at every size.  This counts, with
``strace``, the ``mmap``/``munmap`` calls of at least the message size
that every rank makes during ``-c`` steady calls (after ten warm-up
calls, and before finalize), per setting: a count, not a time, so it
does not depend on the state of the machine, and it says at which sizes
the two baselines can differ at all.  Needs ``strace`` (Debian: ``apt-get install strace``).

Run plainly (not under ``mpiexec``): it starts ``mpiexec -n N`` itself.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._harness import format_bytes, parse_sizes
from benchmarks._launch import mpiexec_command

__all__ = ["count_maps", "trace", "main", "TUNED", "MARK"]

#: The tuned malloc of BENCHMARKS.md (benchmarks/run_all.sh).
TUNED = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"
#: What a worker writes before and after its steady calls; only the maps
#: between the two are counted (not those of start-up and finalize).
MARK = "MALLOC-TRACE-STEADY"
_MAP = re.compile(r"^(?:mmap\(NULL, (\d+),|munmap\(0x[0-9a-f]+, (\d+)\))")


def count_maps(lines, nbytes):
    """Return the ``mmap``/``munmap`` calls of at least ``nbytes`` between two :data:`MARK`.

    ``lines``: one process's ``strace -e trace=mmap,munmap,write`` output.
    """
    steady, count = False, 0
    for line in lines:
        if MARK in line:
            steady = not steady
            continue
        match = _MAP.match(line) if steady else None
        if match and int(match.group(1) or match.group(2)) >= nbytes:
            count += 1
    return count


def trace(nbytes, *, ranks, calls, tuned, mpiexec, python, timeout=300):
    """Return the maps per call and rank for ``nbytes``, with the default or tuned malloc."""
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if tuned:
        env["GLIBC_TUNABLES"] = TUNED
    with tempfile.TemporaryDirectory() as folder:
        prefix = str(Path(folder) / "trace")
        command = [mpiexec, "-n", str(ranks), "strace", "-ff", "-qq", "-e",
                   "trace=mmap,munmap,write", "-o", prefix, python, "-m",
                   "benchmarks.malloc_trace", "--worker", str(nbytes), str(calls)]
        subprocess.run(command, env=env, check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        texts = [path.read_text() for path in Path(folder).glob("trace.*")]
        counts = [count_maps(text.splitlines(), nbytes) for text in texts if MARK in text]
    if len(counts) != ranks:
        raise RuntimeError(f"found the steady-state mark in {len(counts)} traces, "
                           f"expected one per rank ({ranks})")
    return sum(counts) / (ranks * calls)


def _worker(nbytes, calls):
    # Under mpiexec: warm up, mark, then `calls` in-place Allreduce calls.
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    buf = np.ones(max(1, nbytes // 4), np.float32)
    for _ in range(10):
        comm.Allreduce(MPI.IN_PLACE, buf)
    comm.Barrier()
    os.write(1, f"{MARK}\n".encode())
    for _ in range(calls):
        comm.Allreduce(MPI.IN_PLACE, buf)
    os.write(1, f"{MARK}\n".encode())
    comm.Barrier()


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.malloc_trace",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--sizes", default="1M:64M", type=parse_sizes,
                        help="MIN:MAX bytes, powers of two (default 1M:64M)")
    parser.add_argument("-n", "--ranks", type=int, default=2, help="ranks (default 2)")
    parser.add_argument("-c", "--calls", type=int, default=20,
                        help="steady calls counted (default 20)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table here")
    parser.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ranks < 1 or args.calls < 1:
        parser.error(f"need at least 1 rank and 1 call, got {args.ranks} and {args.calls}")
    return args


def main(argv=None):
    args = _parse(argv)
    if args.worker:
        return _worker(*args.worker)
    if shutil.which("strace") is None:
        sys.exit("benchmarks.malloc_trace needs strace (Debian: apt-get install strace)")
    mpiexec = mpiexec_command()
    lines = [f"*MPI's own Allreduce, {args.ranks} ranks, float32, in place: mmap + munmap "
             f"calls of at least the message size per call and rank, over {args.calls} "
             "steady calls (strace)*", "",
             "| size | default malloc | tuned malloc |", "|---:|---:|---:|"]
    for nbytes in args.sizes:
        default, tuned = (trace(nbytes, ranks=args.ranks, calls=args.calls, tuned=t,
                                mpiexec=mpiexec, python=sys.executable) for t in (False, True))
        lines.append(f"| {format_bytes(nbytes)} | {default:.2f} | {tuned:.2f} |")
        print(lines[-1], flush=True)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
