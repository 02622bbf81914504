"""Sweep the shared-memory all-reduce's block size against MPI's Allreduce.

    mpiexec -n 2 python -m mpi4py -m benchmarks.block_sweep [REPEATS]

float32 sums, 1-64 MiB, in place; per size the algorithms run interleaved,
REPEATS times (default 5), and each row prints time / MPI's time (median
over repeats of the max over ranks).  "whole" is the buffer as one block.
This is how ``shared_memory.WHOLE_BYTES`` and ``BLOCK_BYTES`` were chosen;
the numbers move with the machine's state (BENCHMARKS.md), so compare
within a row only.
"""


import numpy as np
from mpi4py import MPI

from benchmarks._harness import count_argument, rank_stats, time_block
from collectives import shared_memory
from collectives._ops import resolve_op

__all__ = ["main"]

BLOCKS = {"512K": 512 << 10, "1M": 1 << 20, "2M": 2 << 20, "4M": 4 << 20, "whole": None}
SIZES = [1 << k for k in range(20, 27)]


def _runners(comm, buf, plain):
    # name -> run(count); "mpi" first.
    sum_ = resolve_op("sum", buf.dtype)

    def ours(block):
        return lambda n: shared_memory.run(buf[:n], comm, sum_, operation="block sweep",
                                           check=True, timeout=None,
                                           block_bytes=block or n * buf.itemsize)
    runs = {"mpi": lambda n: comm.Allreduce(MPI.IN_PLACE, [plain[:n], MPI.FLOAT])}
    runs.update((name, ours(block)) for name, block in BLOCKS.items())
    return runs


def main(argv=None, comm=MPI.COMM_WORLD):
    repeats = count_argument(argv, 5)
    buf = np.ones(SIZES[-1] // 4, np.float32)
    runs = _runners(comm, buf, np.ones_like(buf))
    if comm.Get_rank() == 0:
        print(f"# {comm.Get_size()} ranks, time / MPI's, median of {repeats}")
        print("   size   mpi us  " + "  ".join(f"{name:>6}" for name in BLOCKS), flush=True)
    for nbytes in SIZES:
        count, iters = nbytes // 4, max(3, min(30, (60 << 20) // nbytes))
        times = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                seconds = time_block(lambda: run(count), comm, 1, iters)  # 1: the window may grow
                times[name].append(rank_stats(seconds, comm)[2])  # max over ranks
        median = {name: float(np.median(t)) for name, t in times.items()}
        if comm.Get_rank() == 0:
            print(f"{nbytes >> 20:4d} MiB {median['mpi'] * 1e6:8.0f}  " + "  ".join(
                f"{median[name] / median['mpi']:6.2f}" for name in BLOCKS), flush=True)


if __name__ == "__main__":
    main()
