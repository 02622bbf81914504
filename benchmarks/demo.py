"""Short demo: every all-reduce algorithm, checked against MPI's own and timed.

Run as ``mpiexec -n 4 python -m mpi4py -m benchmarks.demo``.
"""

import numpy as np
from mpi4py import MPI

import collectives
from collectives._tuner import trial_calls
from collectives.allreduce import TUNED

SIZES = (1 << 10, 1 << 20, 16 << 20)  # bytes of float32
REPEATS = 9
WARMUP = 8  # untimed calls first
#: "auto" also makes its tuner's trials (each candidate's switch call and
#: timed calls) untimed, as a training job has after its first steps.
AUTO_WARMUP = trial_calls(len(TUNED))


def _time(algorithm, buf, comm):
    for _ in range(WARMUP + (AUTO_WARMUP if algorithm == "auto" else 0)):
        collectives.allreduce(buf, comm, algorithm=algorithm)
    times = []
    for _ in range(REPEATS):
        comm.Barrier()
        start = MPI.Wtime()
        collectives.allreduce(buf, comm, algorithm=algorithm)
        times.append(comm.allreduce(MPI.Wtime() - start, op=MPI.MAX))
    return float(np.median(times))


def main(comm=MPI.COMM_WORLD):
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank == 0:
        print(f"all-reduce, float32 sum, {size} ranks, median of {REPEATS} "
              "(max over ranks)")
        print(f"{'bytes':>10} {'algorithm':>9} {'chose':>13} {'time us':>10} "
              f"{'vs mpi':>7} {'result':>7}")
    for nbytes in SIZES:
        data = np.random.default_rng(rank).standard_normal(nbytes // 4).astype(np.float32)
        reference = data.copy()
        comm.Allreduce(MPI.IN_PLACE, reference)
        base = _time("mpi", data.copy(), comm)
        for algorithm in ("mpi", "ring", "tree", "auto"):
            out = collectives.allreduce(data.copy(), comm, algorithm=algorithm)
            good = comm.allreduce(bool(np.allclose(out, reference, rtol=1e-4, atol=1e-4)),
                                  op=MPI.LAND)
            elapsed = base if algorithm == "mpi" else _time(algorithm, data.copy(), comm)
            chose = collectives.auto_choice(comm, nbytes) if algorithm == "auto" else ""
            if rank == 0:
                print(f"{nbytes:>10} {algorithm:>9} {chose:>13} {elapsed * 1e6:>10.1f} "
                      f"{elapsed / base:>7.2f} {'ok' if good else 'WRONG':>7}")


if __name__ == "__main__":
    main()
