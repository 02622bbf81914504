"""DP-SGD on the ranks vs one process on the whole batch, same noise seed.

Usage: python -m mpi4py tests/workers/dp_check.py
Prints "dp ok" when every rank's parameters equal rank 0's bytes and equal
single-process DP-SGD on the global batch (float64).
"""

import numpy as np
from mpi4py import MPI

from optim.dp import DPGradient
from optim.mlp import MLP
from optim.sgd import SyncSGD

SIZES, LOCAL, STEPS = [6, 8, 3], 5, 4


def train(comm, ranks, rows):
    # STEPS DP-SGD steps on batches of LOCAL * ranks rows; this rank takes `rows`.
    model = MLP(SIZES, seed=2, dtype=np.float64)
    dp = DPGradient(model, comm, clip_norm=0.5, noise_multiplier=1.3, seed=11)
    opt = SyncSGD(model.flat, comm, lr=0.3, momentum=0.5)
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        x = rng.standard_normal((LOCAL * ranks, SIZES[0]))
        y = rng.integers(0, SIZES[-1], len(x))
        dp.loss_and_grad(x[rows], y[rows])
        opt.step()
    return model.flat.data


def main():
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    mine = train(world, size, slice(rank * LOCAL, (rank + 1) * LOCAL))
    # One process, the whole batch, the same noise seed.
    alone = train(MPI.COMM_SELF, size, slice(None))
    assert len(set(world.allgather(mine.tobytes()))) == 1, "replicas differ"
    np.testing.assert_allclose(mine, alone, rtol=1e-10, atol=1e-12)
    assert np.abs(mine - MLP(SIZES, seed=2, dtype=np.float64).flat.data).max() > 1e-3
    if rank == 0:
        print("dp ok", flush=True)


if __name__ == "__main__":
    main()
