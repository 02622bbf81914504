"""Pipeline (x data-parallel) training vs single-process MLP on the same batches.

Usage: python -m mpi4py tests/workers/pipeline_check.py STAGES:MICRO_BATCHES:SCHEDULE ...
Ranks = STAGES x replicas, for each case in turn (one launch, several cases).
Every rank also trains the whole model alone (float64) and compares its
stage's parameters; prints "pipeline ok" on success.
"""

import sys

import numpy as np
from mpi4py import MPI

from optim.mlp import MLP
from optim.pipeline import PipelineMLP, grid
from optim.sgd import SyncSGD

SIZES = [12, 16, 16, 12, 16, 5]  # five layers
MICRO, STEPS, LR, MOMENTUM = 4, 6, 0.2, 0.9


def batches(global_rows):
    rng = np.random.default_rng(7)
    for _ in range(STEPS):
        yield rng.standard_normal((global_rows, SIZES[0])), rng.integers(0, SIZES[-1],
                                                                         global_rows)


def main():
    for case in sys.argv[1:]:
        stages, m, schedule = case.split(":")
        check(int(stages), int(m), schedule)


def check(stages, m, schedule):
    # Train both ways, compare this stage's parameters with the reference's.
    world = MPI.COMM_WORLD
    pipe_comm, data_comm = grid(world, stages)
    replicas, replica = data_comm.Get_size(), data_comm.Get_rank()
    pipe = PipelineMLP(SIZES, pipe_comm, micro_batch=MICRO, micro_batches=m, seed=3,
                       dtype=np.float64, schedule=schedule, timeout=60)
    opt = SyncSGD(pipe.flat, data_comm, lr=LR, momentum=MOMENTUM, timeout=60)
    ref = MLP(SIZES, seed=3, dtype=np.float64)
    ref_opt = SyncSGD(ref.flat, MPI.COMM_SELF, lr=LR, momentum=MOMENTUM)
    n = MICRO * m
    for x, y in batches(n * replicas):
        rows = slice(replica * n, (replica + 1) * n)
        loss = pipe.loss_and_grad(x[rows], y[rows])
        opt.step()
        ref_loss = ref.loss_and_grad(x, y)
        ref_opt.step()
        assert (loss is None) == (not pipe.last)
    expected = [p for i in pipe.layers for p in (ref.weights[i], ref.biases[i])]
    # float64: only the order of the batch sums differs (micro-batches,
    # replica average), ~1e-16 relative per step; 1e-10 leaves a wide margin.
    for got, want in zip(pipe.flat.params, expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    if pipe.last and replicas == 1:
        assert abs(loss - ref_loss) < 1e-9 * (1 + abs(ref_loss)), (loss, ref_loss)
    replicas_params = data_comm.allgather(pipe.flat.data.tobytes())
    assert len(set(replicas_params)) == 1, "replicas differ"
    assert world.allreduce(1) == world.Get_size()
    pipe.free()
    pipe_comm.Free()
    data_comm.Free()
    if world.Get_rank() == 0:
        print(f"pipeline ok: {stages} stages x {replicas} replicas, {m} micro-batches, "
              f"{schedule}", flush=True)


if __name__ == "__main__":
    main()
