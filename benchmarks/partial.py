"""Partial reduce vs a full all-reduce when one rank is a straggler.

Each step every rank fills its buffer (the "compute"; the slow rank also
sleeps ``delay`` seconds), then averages it: with ``collectives.allreduce``
(everyone waits for the straggler) or with a ``collectives.PartialReducer``
(groups of the first ``group_size`` ranks ready).  Per rank, after warm-up
steps (and a ``Barrier`` for the all-reduce), it reports the time per step
(compute and reduce) and the time inside the reduce call, and each
column's maximum over ranks.  A validation column checks every result: the all-reduce must
give the mean of all ranks' values, the partial reduce the mean of its
group's members (each rank fills its buffer with its own rank number).

    mpiexec -n 4 python -m mpi4py -m benchmarks.partial --delay 20 --bytes 1M
"""

import argparse
import time

import numpy as np
from mpi4py import MPI

import collectives
from benchmarks._harness import format_bytes, parse_size

__all__ = ["run", "main"]


def run(comm, *, nbytes, iterations, slow_rank, delay, group_size=None, warmup=3):
    """Time partial reduce and full all-reduce with ``slow_rank`` slowed by ``delay`` s.

    Returns, on every rank, one dict per rank (list index = rank) with
    ``step_allreduce`` / ``step_partial`` (seconds per step),
    ``call_allreduce`` / ``call_partial`` (seconds per reduce call),
    ``mean_group`` (mean size of the rank's partial groups) and ``valid``.
    """
    size = comm.Get_size()
    if not 0 <= slow_rank < size:
        raise ValueError(f"slow_rank {slow_rank} is out of range for {size} ranks")
    if delay < 0 or iterations < 1:
        raise ValueError(f"need delay >= 0 and iterations >= 1, got delay={delay}, "
                         f"iterations={iterations}")
    group_size = group_size or min(size, max(2, size // 2))
    buf = np.empty(max(1, nbytes // 4), dtype=np.float32)
    pause = delay if comm.Get_rank() == slow_rank else 0.0
    full = _time_full(comm, buf, iterations, warmup, pause)
    partial = _time_partial(comm, buf, iterations, warmup, pause, group_size)
    return comm.allgather(dict(rank=comm.Get_rank(), slowed=pause > 0, **full, **partial))


def _steps(comm, buf, iterations, warmup, pause, reduce, *, barrier):
    # Warm-up, Barrier, then timed steps; returns (s/step, s/call, all valid).
    # No Barrier with a partial reducer: a rank still waiting for a group
    # would never reach it.
    for _ in range(warmup):
        buf.fill(comm.Get_rank())
        reduce(buf)
    if barrier:
        comm.Barrier()
    in_call, valid = 0.0, True
    start = MPI.Wtime()
    for _ in range(iterations):
        time.sleep(pause)
        buf.fill(comm.Get_rank())
        begin = MPI.Wtime()
        want = reduce(buf)
        in_call += MPI.Wtime() - begin
        valid &= bool(buf[0] == want and buf[-1] == want)
    return (MPI.Wtime() - start) / iterations, in_call / iterations, valid


def _time_full(comm, buf, iterations, warmup, pause):
    def reduce(b):
        collectives.allreduce(b, comm, op="avg")
        return np.float32((comm.Get_size() - 1) / 2)

    step, call, valid = _steps(comm, buf, iterations, warmup, pause, reduce, barrier=True)
    return dict(step_allreduce=step, call_allreduce=call, valid_allreduce=valid)


def _time_partial(comm, buf, iterations, warmup, pause, group_size):
    sizes = []
    comm.Barrier()
    with collectives.PartialReducer(comm, group_size) as reducer:
        def reduce(b):
            record = reducer.reduce(b)
            sizes.append(record.size)
            return np.float32(np.mean(record.members))

        step, call, valid = _steps(comm, buf, iterations, warmup, pause, reduce,
                                   barrier=False)
    return dict(step_partial=step, call_partial=call, valid_partial=valid,
                mean_group=float(np.mean(sizes[warmup:])), group_size=group_size)


def _table(rows, nbytes, iterations, slow_rank, delay):
    ms = 1e3
    lines = [f"# partial reduce vs all-reduce: {len(rows)} ranks, {format_bytes(nbytes)} "
             f"float32, {iterations} steps, rank {slow_rank} slowed by "
             f"{delay * ms:.1f} ms/step, groups of {rows[0]['group_size']}",
             f"{'rank':>6} {'allreduce ms/step':>18} {'in call':>8} "
             f"{'partial ms/step':>16} {'in call':>8} {'group':>6} {'valid':>6}"]
    for r in rows + [_maxima(rows)]:
        lines.append(f"{r['rank']:>6} {r['step_allreduce'] * ms:>18.2f} "
                     f"{r['call_allreduce'] * ms:>8.2f} {r['step_partial'] * ms:>16.2f} "
                     f"{r['call_partial'] * ms:>8.2f} {r['mean_group']:>6.2f} "
                     f"{'ok' if r['valid_allreduce'] and r['valid_partial'] else 'FAIL':>6}")
    return "\n".join(lines)


def _maxima(rows):
    keys = ("step_allreduce", "call_allreduce", "step_partial", "call_partial", "mean_group")
    row = {k: max(r[k] for r in rows) for k in keys}
    row.update(rank="max", valid_allreduce=all(r["valid_allreduce"] for r in rows),
               valid_partial=all(r["valid_partial"] for r in rows))
    return row


def main(argv=None, comm=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.partial",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", default="64K", type=parse_size,
                        help="buffer size (e.g. 4K, 1M; default 64K)")
    parser.add_argument("-i", "--iterations", type=int, default=50)
    parser.add_argument("--slow-rank", type=int, default=None,
                        help="the straggler (default: the last rank)")
    parser.add_argument("--delay", type=float, default=10.0,
                        help="the straggler's extra milliseconds per step (default 10)")
    parser.add_argument("--group-size", type=int, default=None,
                        help="ranks per partial group (default: max(2, size // 2))")
    args = parser.parse_args(argv)
    comm = comm or MPI.COMM_WORLD
    slow = comm.Get_size() - 1 if args.slow_rank is None else args.slow_rank
    rows = run(comm, nbytes=args.bytes, iterations=args.iterations, slow_rank=slow,
               delay=args.delay / 1e3, group_size=args.group_size)
    if comm.Get_rank() == 0:
        print(_table(rows, args.bytes, args.iterations, slow, args.delay / 1e3), flush=True)
    # The exit status, as benchmarks.collectives expects: 1 if any result was wrong.
    return 0 if all(r["valid_allreduce"] and r["valid_partial"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
