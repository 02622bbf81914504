"""Time writes into shared memory that the peer core has just read.

    mpiexec -n 2 python -m mpi4py -m benchmarks.store_probe [ROUNDS]

Each rank owns a 512 KiB float32 row of an MPI-3 shared window.  In each
step a rank writes its row (plain stores, or streaming stores through
``collectives._combine_kernels.copy_streaming``), then reads its peer's
row, so the next write lands on lines the other core holds.  One line per
round (default 12, 2 s apart, so that a change of the machine's state
shows): median write time of each kind, and of the peer's read after it.
This is the measurement behind the "shm-streaming" candidate of "auto".
"""

import time

import numpy as np
from mpi4py import MPI

from benchmarks._harness import count_argument
from collectives import _combine_kernels as K

__all__ = ["main"]

ROW = (512 << 10) // 4  # float32 elements per rank
STEPS = 5  # per kind and round


def _read(row):
    # Touch every line of row (the sum keeps the loads).
    return float(np.add.reduce(row, dtype=np.float64))


def _round(comm, rows, mine, kinds):
    # Median (write, peer read) seconds per kind, the kinds interleaved.
    rank = comm.Get_rank()
    peer = rows[1 - rank]
    times = {name: [] for name in kinds}
    for _ in range(STEPS):
        for name, write in kinds.items():
            comm.Barrier()
            start = time.perf_counter()
            write(rows[rank], mine)
            wrote = time.perf_counter() - start
            comm.Barrier()
            start = time.perf_counter()
            _read(peer)
            times[name].append((wrote, time.perf_counter() - start))
    return {name: np.median(np.array(t), axis=0) for name, t in times.items()}


def main(argv=None, comm=MPI.COMM_WORLD):
    rounds = count_argument(argv, 12)
    if comm.Get_size() != 2:
        raise SystemExit("store_probe: run it on exactly 2 ranks")
    win = MPI.Win.Allocate_shared(ROW * 4, 4, comm=comm)
    rows = [np.frombuffer(win.Shared_query(q)[0], dtype=np.float32)[:ROW] for q in range(2)]
    mine = np.ones(ROW, np.float32)
    kinds = {"plain": K.copy, "streaming": K.copy_streaming}
    for _ in range(rounds):
        medians = _round(comm, rows, mine, kinds)
        if comm.Get_rank() == 0:
            print(time.strftime("%H:%M:%S"), "  ".join(
                f"{name}: write {w * 1e6:6.1f} us, peer read {r * 1e6:6.1f} us"
                for name, (w, r) in medians.items()), flush=True)
        time.sleep(2)
    comm.Barrier()
    win.Free()


if __name__ == "__main__":
    main()
