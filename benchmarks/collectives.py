"""Benchmark the collectives against the MPI library's own (OSU / nccl-tests style).

Run under mpiexec, one subcommand per test::

    mpiexec -n 4 python -m mpi4py -m benchmarks.collectives allreduce -m 8:64M -c
    mpiexec -n 4 python -m mpi4py -m benchmarks.collectives reduce -a tree,mpi -d float64
    mpiexec -n 2 python -m mpi4py -m benchmarks.collectives pingpong -m 1:16M
    mpiexec -n 2 python -m mpi4py -m benchmarks.collectives membw -m 64M

``allreduce``/``reduce``/``bcast`` print one row per (size, algorithm):
bytes, count, iterations, time per call (avg/min/max over ranks), algbw
(bytes / max time) and busbw (nccl-tests: algbw * 2(p-1)/p for all-reduce,
algbw for reduce and broadcast), the time relative to "mpi" at that size,
and with ``-c`` a pass/FAIL column; any failure makes the exit status 1.
"mpi" is the MPI library's raw ``Allreduce``/``Reduce``/``Bcast``, with no
argument or agreement check, so the baseline is MPI's own.  The other
all-reduce algorithms are read from ``collectives.ALGORITHMS`` at run time
and called through ``collectives.allreduce`` with its default checks on
(``--no-agree`` turns the agreement check off); "mpi-checked" is
``collectives.allreduce(algorithm="mpi")``, "auto-shared" is "auto" on a
``collectives.shared_array``, "shm-whole", "shm-pipelined" and
"shm-streaming" are the shared-memory variants that "auto"'s tuner tries
(:data:`SHM_VARIANTS`), and ``module:function`` any function with the
signature of ``collectives.allreduce`` (reduce: ``tree_reduce``, bcast:
``tree_bcast``).

Timing: per size, ``-r`` repeats, each timing every algorithm in turn
(interleaved, so a change in the machine's load hits all alike) with ``-x``
warm-up calls and ``-i`` timed calls (both fewer above 256 KiB, in
proportion to the size); a row shows the medians over repeats.  Timed
buffers hold values a repeated in-place reduction keeps stable (0 for sum,
1 for prod and avg, the rank for min/max), so nothing overflows.  The ``-c``
check is a separate call on random small integers (exact in every dtype),
compared with MPI's ``Allreduce`` of the same input (float16, which MPI
lacks: NumPy on the gathered inputs): exactly, or within 4 ulp for "avg";
all-reduce results must also be bitwise identical on every rank.  An
algorithm that rejects the input up front (``TypeError``/``ValueError``,
the same on every rank) is skipped with a note; under ``-c`` that is a
failure too, except for "mpi" on float16.
"""

import argparse
import importlib
import os
import sys
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

import collectives
from benchmarks import pingpong
from benchmarks._harness import (
    iterations,
    machine_info,
    median_stats,
    parse_sizes,
    rank_stats,
    time_block,
)
from benchmarks._output import Column, Report
from collectives import shared_memory as _SHM
from collectives._nodes import one_node_layout
from collectives._prepare import prepare_local
from collectives._tuner import trial_calls

_ALLREDUCE = importlib.import_module("collectives.allreduce")  # the module, not the function

__all__ = ["main", "algorithm_names", "make_runner", "validate", "validation_input", "Setup",
           "COLUMNS"]

DTYPES = ("float16", "float32", "float64", "int32", "int64")
OPS = ("sum", "prod", "min", "max", "avg")
_MPI_OPS = {"sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX,
            "avg": MPI.SUM}

COLUMNS = [
    Column("bytes", "bytes", 10), Column("count", "count", 9),
    Column("algorithm", "algorithm", 12), Column("iters", "iters", 5),
    Column("time_avg_us", "avg us", 10, ".1f"), Column("time_min_us", "min us", 10, ".1f"),
    Column("time_max_us", "max us", 10, ".1f"), Column("algbw_GBps", "algbw", 7, ".3f"),
    Column("busbw_GBps", "busbw", 7, ".3f"), Column("vs_mpi", "vs mpi", 6, ".2f"),
    Column("check", "check", 5), Column("chose", "auto->", 13), Column("load", "load", 5, ".2f"),
]


# ------------------------------------------------------------ algorithms ---

def algorithm_names(collective):
    """Return the default algorithms of ``collective``: "mpi" first."""
    if collective == "allreduce":
        ours = [a for a in collectives.ALGORITHMS if a not in ("auto", "mpi")]
        return ["mpi", *ours, "auto"]
    return ["mpi", "tree"]


#: Benchmark-only all-reduce names: the shared-memory variants that "auto"'s
#: tuner tries (``collectives.allreduce.TUNED``), so that a table can set
#: "auto" against each of its candidates.  The algorithm "shm" is the whole
#: buffer as one block up to ``WHOLE_BYTES`` and pipelined above; the tuner's
#: "shm" is "shm-whole" here.  Same checks as ``allreduce(algorithm="shm")``.
SHM_VARIANTS = {"shm-whole": dict(block_bytes="whole"),
                "shm-pipelined": dict(block_bytes=_SHM.BLOCK_BYTES),
                "shm-streaming": dict(streaming=True)}


def _known(collective):
    extra = ["mpi-checked", "auto-shared", *SHM_VARIANTS] if collective == "allreduce" else []
    return algorithm_names(collective) + extra


def _ours(collective, name):
    # The in-place function ``fn(buf, comm, *, op, root, check)`` behind ``name``.
    if ":" in name:
        module, _, attr = name.partition(":")
        custom = getattr(importlib.import_module(module), attr)
        if collective == "bcast":
            return lambda buf, comm, op, root, check: custom(buf, comm, root=root)
        if collective == "reduce":
            return lambda buf, comm, op, root, check: custom(buf, comm, root=root, op=op)
        return lambda buf, comm, op, root, check: custom(buf, comm, op=op)
    if collective == "bcast":
        return lambda buf, comm, op, root, check: collectives.tree_bcast(
            buf, comm, root=root, check=check)
    if collective == "reduce":
        return lambda buf, comm, op, root, check: collectives.tree_reduce(
            buf, comm, root=root, op=op, check=check)
    if name in SHM_VARIANTS:
        return _shm_variant(SHM_VARIANTS[name])
    algorithm = "mpi" if name == "mpi-checked" else name
    return lambda buf, comm, op, root, check: collectives.allreduce(
        buf, comm, op=op, algorithm=algorithm, check=check)


def _shm_variant(options):
    # shm_allreduce's checks, then its run with the variant's options.
    def run(buf, comm, op, root, check):
        reduction = prepare_local("shm_allreduce", buf, comm, op=op, timeout=None)
        one_node_layout(comm, "shm_allreduce", timeout=None)
        whole = options.get("block_bytes") == "whole"
        _SHM.run(buf, comm, reduction, operation="shm_allreduce", check=check, timeout=None,
                 **(dict(options, block_bytes=buf.nbytes) if whole else options))
    return run


@dataclass(frozen=True)
class Setup:
    """What every call of one benchmark shares."""

    collective: str
    comm: object
    dtype: np.dtype
    op: str
    root: int
    inplace: bool
    agree: bool
    rewrite: bool = False


def make_runner(setup, name, send, recv):
    """Return a no-argument callable that runs ``name`` once on ``send``/``recv``.

    In-place runs work on ``recv`` alone; out-of-place runs of our
    algorithms copy ``send`` into ``recv`` first (they are in-place only).
    Raises ``TypeError`` where "mpi" cannot take the dtype (float16).
    """
    if name == "mpi":
        return _mpi_runner(setup, send, recv)
    if name == "auto-shared":
        return _shared_runner(setup, send, recv)
    fn = _ours(setup.collective, name)
    s = setup

    def run():
        if not s.inplace:
            np.copyto(recv, send)
        fn(recv, s.comm, s.op, s.root, s.agree)
    return run


def _shared_runner(s, send, recv):
    # "auto" on a collectives.shared_array holding recv's data (allocated
    # here, collective): the zero-copy path.  The result stays in the shared
    # array, which the runner carries as ``result`` for validation.
    shared = collectives.shared_array(s.comm, recv.shape, recv.dtype)
    shared[...] = recv

    def run():
        if not s.inplace:
            np.copyto(shared, send)
        collectives.allreduce(shared, s.comm, op=s.op, check=s.agree)
    run.result = shared
    return run


def _mpi_runner(s, send, recv):
    # The MPI library's own collective, raw: no checks of ours around it.
    if s.dtype == np.float16:
        raise TypeError("MPI has no standard float16 type")
    comm, op, root, size = s.comm, _MPI_OPS[s.op], s.root, s.comm.Get_size()
    is_root = comm.Get_rank() == root
    source = MPI.IN_PLACE if s.inplace else send
    if s.collective == "bcast":
        return lambda: comm.Bcast(recv, root)
    if s.collective == "reduce":
        if s.inplace and not is_root:
            source, target = recv, None
        else:
            target = recv
        average = s.op == "avg" and is_root

        def reduce():
            comm.Reduce(source, target, op, root)
            if average:
                np.divide(recv, size, out=recv)
        return reduce
    average = s.op == "avg"

    def allreduce():
        comm.Allreduce(source, recv, op)
        if average:
            np.divide(recv, size, out=recv)
    return allreduce


# ------------------------------------------------------------ validation ---

def validation_input(count, dtype, op, rank):
    """Return this rank's random small integers, exact under the op in any dtype."""
    rng = np.random.default_rng(7919 * (rank + 1) + count)
    values = rng.choice([-1, 1, 2], count) if op == "prod" else rng.integers(-4, 5, count)
    return values.astype(dtype)


def _timing_input(count, dtype, op, rank):
    # Values that repeated in-place reductions keep unchanged.
    fill = {"sum": 0, "prod": 1, "avg": 1}.get(op, rank)
    return np.full(count, fill, dtype=dtype)


def _reduced(send, comm, op):
    # The all-reduce of ``send`` by MPI's Allreduce (NumPy for float16).
    size = comm.Get_size()
    if send.dtype == np.float16:
        every = np.empty((size, send.size), np.float16)
        comm.Allgather(send.view(np.uint16), every.view(np.uint16))
        ufunc = {"prod": np.multiply, "min": np.minimum, "max": np.maximum}.get(op, np.add)
        total = ufunc.reduce(every.astype(np.float64), axis=0)
    else:
        total = np.empty_like(send)
        comm.Allreduce(send, total, _MPI_OPS[op])
    if op == "avg":
        total = total.astype(np.float64) / size
    return total.astype(send.dtype)


def _expected(setup, send):
    # What ``recv`` must hold on this rank, or None where nothing is defined.
    comm, rank = setup.comm, setup.comm.Get_rank()
    if setup.collective == "bcast":
        data = send.copy()
        comm.Bcast(data.view(np.uint8), setup.root)
        return data
    total = _reduced(send, comm, setup.op)
    if setup.collective == "reduce" and rank != setup.root:
        return send if setup.inplace else None
    return total


def _matches(out, expected, op):
    if expected is None:
        return True
    if op == "avg":
        ulp = np.finfo(out.dtype).eps * 4
        return bool(np.allclose(out, expected, rtol=ulp, atol=0))
    return bool(np.array_equal(out, expected))


def _same_everywhere(out, comm):
    # All-reduce results must be bitwise identical on every rank.
    first = out.copy()
    comm.Bcast(first.view(np.uint8), 0)
    return bool(np.array_equal(first.view(np.uint8), out.view(np.uint8)))


def validate(setup, run_on, count):
    """Run once on test input; return True on every rank iff every rank is right.

    ``run_on(send, recv)`` returns the runner for those buffers (see
    :func:`make_runner`).
    """
    rank = setup.comm.Get_rank()
    send = validation_input(count, setup.dtype, setup.op, rank)
    recv = send.copy() if setup.inplace else np.zeros_like(send)
    runner = run_on(send, recv)
    runner()
    out = getattr(runner, "result", recv)  # auto-shared's result is in its own array
    good = _matches(out, _expected(setup, send), setup.op)
    if setup.collective == "allreduce":
        good = _same_everywhere(out, setup.comm) and good
    verdict = np.array([int(good)], dtype=np.int32)
    setup.comm.Allreduce(MPI.IN_PLACE, verdict, MPI.MIN)
    return bool(verdict[0])


# ---------------------------------------------------------- measurement ---

def _bus_factor(collective, size):
    return 2 * (size - 1) / size if collective == "allreduce" else 1.0


def _runnable(setup, names, send, recv, report):
    # Drop algorithms that reject this dtype/op/size up front (same on all ranks).
    runners = {}
    for name in names:
        try:
            runners[name] = make_runner(setup, name, send, recv)
            runners[name]()
        except (TypeError, ValueError) as error:
            report.note(f"{name} skipped at {send.nbytes} bytes: {error}")
            runners.pop(name, None)
    return runners


def _skips_pass(names, runners, report):
    # Under -c, only "mpi" may skip (float16, which MPI lacks); ours may not.
    missing = [n for n in names if n not in runners and n != "mpi"]
    for name in missing:
        report.note(f"check FAILS: {name} rejected input every algorithm must take")
    return not missing


def _measure(runners, comm, nbytes, args, rewrites=None):
    # Median over repeats of (avg, min, max) over ranks, algorithms interleaved.
    # "auto" and "auto-shared" are warmed up past their tuners' trials on the first repeat, as a
    # training job is after its first few steps (the retries of the other
    # candidates, collectives._tuner.EXPLORE_SHARE of the time, stay in the timing).
    # With ``rewrites`` (name -> the rewrite alone, which each runner then
    # makes before its call) the rewrite's own time is taken off.
    warmup, iters = iterations(nbytes, args.warmup, floor=1), iterations(nbytes, args.iters)
    trials = {"auto": trial_calls(len(_ALLREDUCE.TUNED)),
              "auto-shared": trial_calls(len(_ALLREDUCE.SHARED_TUNED))}
    samples = {name: [] for name in runners}
    for repeat in range(args.repeats):
        for name, run in runners.items():
            extra = trials.get(name, 0) if repeat == 0 and args.warmup else 0
            seconds = time_block(run, comm, warmup + extra, iters)
            if rewrites:
                seconds -= time_block(rewrites[name], comm, warmup, iters)
            samples[name].append(rank_stats(seconds, comm))
    return iters, {name: median_stats(s) for name, s in samples.items()}


def _rewriting(runners, send, recv):
    # Each runner rewrites its buffer from ``send`` before its call, as a
    # training step writes its gradients before the all-reduce: the data
    # is then in the writer's cache, not where the last call left it.
    # Returns the new runners and, per name, the rewrite alone.
    wrapped, alone = {}, {}
    for name, run in runners.items():
        target = getattr(run, "result", recv)

        def rewrite(target=target):
            np.copyto(target, send)

        def both(run=run, rewrite=rewrite):
            rewrite()
            run()
        both.result = target
        wrapped[name], alone[name] = both, rewrite
    return wrapped, alone


def _row(setup, name, nbytes, count, iters, stats, base, check):
    avg, low, high = stats
    size = setup.comm.Get_size()
    algbw = nbytes / high / 1e9
    chose = None
    if setup.collective == "allreduce" and name == "auto":
        chose = collectives.auto_choice(setup.comm, nbytes)  # the tuner's, above 1 MiB
    return {"collective": setup.collective, "algorithm": name, "dtype": str(setup.dtype),
            "op": setup.op, "inplace": setup.inplace, "ranks": size, "bytes": nbytes,
            "count": count, "iters": iters, "time_avg_us": avg * 1e6,
            "time_min_us": low * 1e6, "time_max_us": high * 1e6, "algbw_GBps": algbw,
            "busbw_GBps": algbw * _bus_factor(setup.collective, size),
            "vs_mpi": high / base if base else None, "check": check, "chose": chose,
            "load": os.getloadavg()[0]}


def run_collective(setup, names, args, report):
    """Measure every size and algorithm; return False if any check failed."""
    comm, all_good = setup.comm, True
    for nbytes in parse_sizes(args.sizes):
        count = nbytes // setup.dtype.itemsize
        if count == 0:
            report.note(f"{nbytes} bytes is less than one {setup.dtype} element: skipped")
            continue
        send = _timing_input(count, setup.dtype, setup.op, comm.Get_rank())
        recv = send.copy()
        runners = _runnable(setup, names, send, recv, report)
        checks = {}
        if args.check:
            all_good = _skips_pass(names, runners, report) and all_good
            for name in runners:
                ok = validate(setup, lambda s, r, n=name: make_runner(setup, n, s, r), count)
                checks[name] = "pass" if ok else "FAIL"
                all_good = all_good and ok
        rewrites = None
        if setup.rewrite:
            runners, rewrites = _rewriting(runners, send, recv)
        iters, stats = _measure(runners, comm, nbytes, args, rewrites)
        base = stats["mpi"][2] if "mpi" in stats else None
        for name in runners:
            report.add(_row(setup, name, nbytes, count, iters, stats[name], base,
                            checks.get(name)))
    return all_good


# ------------------------------------------------------------- commands ---

def _common(parser, default_sizes):
    parser.add_argument("-m", "--sizes", default=default_sizes,
                        help=f"MIN:MAX bytes, powers of two, units K/M/G "
                             f"(default {default_sizes})")
    parser.add_argument("-x", "--warmup", type=int, default=10,
                        help="warm-up calls per block (fewer above 256K; default 10)")
    parser.add_argument("-i", "--iters", type=int, default=100,
                        help="timed calls per block (fewer above 256K, at least 3; "
                             "default 100)")
    parser.add_argument("-r", "--repeats", type=int, default=1,
                        help="blocks per size; rows show the medians (default 1)")
    parser.add_argument("--csv", metavar="FILE", help="write the rows as CSV")
    parser.add_argument("--json", metavar="FILE", help="write rows and metadata as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")


def _collective_parser(sub, name, text):
    parser = sub.add_parser(name, help=text, description=text)
    _common(parser, "8:64M")
    parser.add_argument("-a", "--algorithms", help="comma-separated (default: "
                        "every algorithm of the collective, 'mpi' first); also "
                        "'module:function'")
    parser.add_argument("-d", "--dtype", default="float32", choices=DTYPES)
    parser.add_argument("-o", "--op", default="sum", choices=OPS)
    parser.add_argument("--root", type=int, default=0, help="root of reduce/bcast")
    parser.add_argument("-O", "--out-of-place", action="store_true",
                        help="separate send and receive buffers (default in place)")
    parser.add_argument("-c", "--check", action="store_true",
                        help="validate every result against MPI's own; exit 1 on failure")
    parser.add_argument("--no-agree", action="store_true",
                        help="turn off our count/dtype agreement check (check=False)")
    parser.add_argument("--rewrite", action="store_true",
                        help="every rank rewrites its buffer before each call, as a "
                             "training step writes its gradients (that rewrite's own time, "
                             "measured alone, is taken off); in place only")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="plot busbw against size, one line per algorithm")


def _parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.collectives",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _collective_parser(sub, "allreduce", "all-reduce: every rank gets the reduction")
    _collective_parser(sub, "reduce", "reduce onto --root")
    _collective_parser(sub, "bcast", "broadcast from --root (in place only)")
    sub.add_parser("partial", help="partial reduce: the arguments go to "
                   "benchmarks/partial.py's main(argv, comm=...)")
    ping = sub.add_parser("pingpong", help="ping-pong latency and Sendrecv "
                          "bandwidth between ranks 0 and 1")
    _common(ping, "1:16M")
    mem = sub.add_parser("membw", help="STREAM-style memory bandwidth, all ranks at once")
    mem.add_argument("-m", "--sizes", default="64M", help="bytes per array (default 64M)")
    mem.add_argument("-r", "--repeats", type=int, default=11)
    mem.add_argument("--json", metavar="FILE")
    mem.add_argument("--csv", metavar="FILE")
    mem.add_argument("--markdown", metavar="FILE")
    return parser


def _resolve_algorithms(parser, args):
    known = _known(args.command)
    if not args.algorithms:
        return algorithm_names(args.command)
    names = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    for name in names:
        if name not in known and ":" not in name:
            parser.error(f"unknown algorithm {name!r} for {args.command}; use "
                         + ", ".join(known) + " or module:function")
    return names


def _check_args(parser, args, comm):
    if args.op == "avg" and np.dtype(args.dtype).kind != "f":
        parser.error(f"op 'avg' needs a floating dtype, got {args.dtype}")
    if args.command == "bcast" and args.out_of_place:
        parser.error("bcast has no out-of-place form; drop -O")
    if args.rewrite and args.out_of_place:
        parser.error("--rewrite is for in-place runs (out of place, ours copy anyway); drop -O")
    if not 0 <= args.root < comm.Get_size():
        parser.error(f"--root {args.root} is out of range for {comm.Get_size()} ranks")
    if min(args.iters, args.repeats) < 1 or args.warmup < 0:
        parser.error("need -i >= 1, -r >= 1 and -x >= 0")


def _command(args):
    return "python -m benchmarks.collectives " + " ".join(args.argv)


def _finish(report, args):
    report.write(csv_path=args.csv, json_path=args.json, markdown_path=args.markdown)
    if getattr(args, "plot", None) and report.enabled:
        from benchmarks.plot import plot_rows

        plot_rows(report.rows, args.plot, title=_title(report.meta))


def _title(meta):
    return (f"{meta.get('collective', '')} {meta.get('dtype', '')} {meta.get('op', '')}, "
            f"{meta['ranks']} ranks, {meta['cpu']}")


def _run_collective_command(parser, args, comm):
    _check_args(parser, args, comm)
    names = _resolve_algorithms(parser, args)
    setup = Setup(args.command, comm, np.dtype(args.dtype), args.op, args.root,
                  not args.out_of_place, not args.no_agree, args.rewrite)
    meta = dict(machine_info(comm), command=_command(args), collective=args.command,
                dtype=args.dtype, op=args.op, inplace=setup.inplace, agree=setup.agree,
                rewrite=setup.rewrite, repeats=args.repeats, algorithms=names)
    report = Report(COLUMNS, meta, enabled=comm.Get_rank() == 0)
    report.header(f"{args.command}, {args.dtype} {args.op}, "
                  f"{'in place' if setup.inplace else 'out of place'}"
                  f"{', buffer rewritten before each call' if setup.rewrite else ''}, "
                  f"{comm.Get_size()} ranks, median of {args.repeats} repeat(s); "
                  "time per call over ranks, GB/s from max")
    good = run_collective(setup, names, args, report)
    report.meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    _finish(report, args)
    return 0 if good else 1


def _run_pingpong(args, comm):
    if comm.Get_size() < 2:
        raise SystemExit("pingpong needs at least 2 ranks")
    pair = comm.Split(0 if comm.Get_rank() < 2 else MPI.UNDEFINED, comm.Get_rank())
    meta = dict(machine_info(comm), command=_command(args), test="pingpong")
    report = Report(pingpong.COLUMNS, meta, enabled=comm.Get_rank() == 0)
    report.header(f"ping-pong and Sendrecv between ranks 0 and 1, median of "
                  f"{args.repeats} repeat(s)")
    for nbytes in parse_sizes(args.sizes):
        report.add(pingpong.pingpong_row(comm, pair, nbytes, warmup=args.warmup,
                                         iters=args.iters, repeats=args.repeats))
    _finish(report, args)
    return 0


def _run_membw(args, comm):
    from benchmarks.kernels import STREAM_COLUMNS, stream_rows

    columns = STREAM_COLUMNS + [Column("total_GBps", "all ranks GB/s", 14, ".2f")]
    meta = dict(machine_info(comm), command=_command(args), test="membw")
    report = Report(columns, meta, enabled=comm.Get_rank() == 0)
    report.header(f"STREAM-style, float64, every rank at once; GB/s of rank 0 and the "
                  f"sum over ranks; median of {args.repeats}")
    for nbytes in parse_sizes(args.sizes):
        for row in stream_rows(nbytes, args.repeats, barrier=comm.Barrier):
            every = np.empty(comm.Get_size())
            comm.Allgather(np.array([row["GBps"]]), every)
            report.add(dict(row, ranks=comm.Get_size(), total_GBps=float(every.sum())))
    _finish(report, args)
    return 0


def _run_partial(parser, argv, comm):
    # Everything after "partial" belongs to benchmarks/partial.py (imported
    # only now: it is written separately and may not exist yet).
    try:
        partial = importlib.import_module("benchmarks.partial")
    except ModuleNotFoundError as error:
        if error.name != "benchmarks.partial":
            raise
        parser.error("the partial reduce benchmark (benchmarks/partial.py) is not "
                     "in this checkout")
    return partial.main(argv, comm=comm)


def main(argv=None, comm=None):
    """Run one benchmark; return the exit status (1 if a -c check failed)."""
    comm = comm or MPI.COMM_WORLD
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["partial"]:
        return _run_partial(parser, argv[1:], comm)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command == "pingpong":
        return _run_pingpong(args, comm)
    if args.command == "membw":
        return _run_membw(args, comm)
    return _run_collective_command(parser, args, comm)


if __name__ == "__main__":
    sys.exit(main())
