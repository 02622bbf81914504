"""How close "auto" comes to its best candidate over a long run, as in training.

    mpiexec -n 2 python -m mpi4py -m benchmarks.tuner [-m 1M:16M] [-c 400] [-b 8]

The per-size tables of ``benchmarks.collectives`` time "auto" on a few
dozen calls right after its trials; a training job makes thousands at one
size, with the tuner's retries of the other candidates in them.  Here, per
size, "auto" and each of its candidates (``collectives.allreduce.TUNED``,
as the columns of ``benchmarks.collectives``: "shm-whole" is the tuner's
"shm") run ``-c`` calls each, in ``-b`` interleaved blocks (a change in the
machine hits all alike); a row gives each one's mean time per call, and
"auto" over the fastest candidate in hindsight, whose mean no rule that
picks one algorithm per call can beat by more than the noise; "mpi" (MPI's
own ``Allreduce``) runs in the same blocks.  float32 sum, in place; "auto"
is warmed up past its trials first.
"""

import argparse

import numpy as np
from mpi4py import MPI

from benchmarks._harness import machine_info, parse_sizes, time_block
from benchmarks._output import Column, Report
from benchmarks.collectives import Setup, make_runner
from collectives._tuner import trial_calls

__all__ = ["main", "CANDIDATES"]

#: auto's candidates under their benchmark names, in the tuner's order.
CANDIDATES = ("shm-whole", "shm-pipelined", "shm-streaming", "ring", "cma")


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tuner",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--sizes", default="1M:16M",
                        help="MIN:MAX bytes, powers of two (default 1M:16M)")
    parser.add_argument("-c", "--calls", type=int, default=400,
                        help="calls of each algorithm per size (default 400)")
    parser.add_argument("-b", "--blocks", type=int, default=8,
                        help="interleaved blocks the calls come in (default 8)")
    parser.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    args = parser.parse_args(argv)
    if args.blocks < 1 or args.calls < args.blocks:
        parser.error(f"need 1 <= blocks <= calls, got {args.blocks} and {args.calls}")
    return args


def measure(comm, nbytes, calls, blocks):
    """Return ``({name: mean seconds per call, max over ranks}, calls)``.

    Names: "mpi", "auto" and each of :data:`CANDIDATES`.
    """
    setup = Setup("allreduce", comm, np.dtype(np.float32), "sum", 0, True, True)
    buf = np.zeros(nbytes // 4, np.float32)
    names = ("mpi", "auto", *CANDIDATES)
    runs = {name: make_runner(setup, name, buf, buf) for name in names}
    time_block(runs["auto"], comm, trial_calls(len(CANDIDATES)), 1)  # past the trials
    per_block = calls // blocks
    total = dict.fromkeys(names, 0.0)
    for _ in range(blocks):
        for name, run in runs.items():
            total[name] += time_block(run, comm, 1, per_block)
    mine = np.array([total[name] / blocks for name in names])
    comm.Allreduce(MPI.IN_PLACE, mine, op=MPI.MAX)
    return dict(zip(names, mine.tolist())), per_block * blocks


COLUMNS = [Column("bytes", "bytes", 10), Column("calls", "calls", 6),
           *(Column(name, f"{name} us", 14, ".0f") for name in ("mpi", "auto", *CANDIDATES)),
           Column("best", "best", 14), Column("auto_vs_best", "auto/best", 9, ".3f"),
           Column("auto_vs_mpi", "auto/mpi", 8, ".2f")]


def main(argv=None, comm=MPI.COMM_WORLD):
    args = _parse(argv)
    meta = dict(machine_info(comm), calls=args.calls, blocks=args.blocks)
    report = Report(COLUMNS, meta, enabled=comm.Get_rank() == 0)
    report.header(f"auto against its candidates, {comm.Get_size()} ranks, float32 sum, "
                  f"{args.calls} calls each per size in {args.blocks} interleaved blocks; "
                  "mean us per call, max over ranks")
    for nbytes in parse_sizes(args.sizes):
        means, calls = measure(comm, nbytes, args.calls, args.blocks)
        best = min(CANDIDATES, key=means.get)
        row = {"bytes": nbytes, "calls": calls, "best": best,
               "auto_vs_best": means["auto"] / means[best],
               "auto_vs_mpi": means["auto"] / means["mpi"]}
        row.update((name, seconds * 1e6) for name, seconds in means.items())
        report.add(row)
    report.write(markdown_path=args.markdown)


if __name__ == "__main__":
    main()
