r"""Pipeline throughput against micro-batch count, and the measured bubble.

Run::

    NUMBA_NUM_THREADS=1 mpiexec -n 4 python -m mpi4py -m benchmarks.pipeline \\
        --batch 512 --micro 1,2,4,8,16 --schedule gpipe

Each rank is one stage of :class:`optim.pipeline.PipelineMLP` (the whole
communicator is one pipeline).  For every micro-batch count ``m`` (the
global batch is fixed, so a micro-batch has ``batch / m`` rows) it times
``--iters`` forward/backward steps after ``--warmup`` (OSU style: a
barrier, ``MPI.Wtime``, the slowest rank), ``--reps`` times, and prints the
median.  Columns: samples/s, the measured bubble (each stage's time spent
waiting for a neighbour over its step time, averaged over the stages) and
the GPipe model ``(p - 1) / (m + p - 1)`` beside it.
"""

import argparse

import numpy as np
from mpi4py import MPI

from benchmarks._harness import time_block
from optim.pipeline import SCHEDULES, PipelineMLP

__all__ = ["main"]


def _parse(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks.pipeline")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--micro", default="1,2,4,8,16", help="micro-batch counts")
    p.add_argument("--width", type=int, default=512, help="hidden width")
    p.add_argument("--layers-per-stage", type=int, default=2)
    p.add_argument("--schedule", choices=SCHEDULES, default="gpipe")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    args.micro = [int(m) for m in args.micro.split(",")]
    bad = [m for m in args.micro if m < 1 or args.batch % m]
    if bad:
        p.error(f"--micro {bad} do not divide --batch {args.batch}")
    return args


def _measure(args, comm, m):
    # Median over reps of (seconds per step on the slowest rank, mean bubble).
    stages = comm.Get_size()
    sizes = [args.width] * (stages * args.layers_per_stage) + [10]
    pipe = PipelineMLP(sizes, comm, micro_batch=args.batch // m, micro_batches=m,
                       schedule=args.schedule, timeout=120)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.width)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    idle = []

    def step():
        pipe.loss_and_grad(x, y)
        idle.append(pipe.idle_seconds / pipe.busy_seconds)

    samples = []
    for _ in range(args.reps):
        idle.clear()
        seconds = comm.allreduce(time_block(step, comm, args.warmup, args.iters), MPI.MAX)
        bubble = comm.allreduce(float(np.mean(idle[args.warmup:])), MPI.SUM) / stages
        samples.append((seconds, bubble))
    pipe.free()
    return np.median(np.array(samples), axis=0)


def main(argv=None, comm=MPI.COMM_WORLD):
    """Run the sweep; rank 0 prints the table."""
    args = _parse(argv)
    p = comm.Get_size()
    if comm.Get_rank() == 0:
        print(f"# pipeline: {p} stages x {args.layers_per_stage} layers of {args.width}, "
              f"batch {args.batch}, {args.schedule}, median of {args.reps} x "
              f"{args.iters} steps")
        print(f"{'m':>4} {'micro':>6} {'s/step':>9} {'samples/s':>10} "
              f"{'bubble':>7} {'model':>7}")
    for m in args.micro:
        seconds, bubble = _measure(args, comm, m)
        if comm.Get_rank() == 0:
            print(f"{m:4d} {args.batch // m:6d} {seconds:9.4f} {args.batch / seconds:10.0f} "
                  f"{bubble:7.3f} {(p - 1) / (m + p - 1):7.3f}", flush=True)


if __name__ == "__main__":
    main()
