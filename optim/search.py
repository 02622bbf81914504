r"""Parallel hyperparameter search: groups of k ranks, one configuration each.

Run::

    NUMBA_NUM_THREADS=1 mpiexec -n 4 python -m mpi4py -m optim.search \\
        --group-size 2 --grid lr=0.02,0.05,0.1 --grid momentum=0,0.9 --epochs 3

``COMM_WORLD`` is split into groups of ``--group-size`` consecutive ranks;
each group trains one configuration at a time with :class:`optim.SyncSGD`
on its sub-communicator (the digits MLP of :mod:`optim.train`, same data,
same sharding).  The configurations are the Cartesian product of the
``--grid`` lists, numbered in that order.

The queue: world rank 0 is both the leader of group 0 and the
coordinator; it serves the queue from a thread (MPI_THREAD_MULTIPLE,
mpi4py's default), on a private duplicate of ``COMM_WORLD``.  Each group's
leader (its rank 0) sends ``("ready", group, result)`` to the coordinator
and gets back the next configuration, or ``None`` when the queue is empty;
it broadcasts that to its group.  So a group that finishes first gets the
next configuration first.  These control messages are small pickled
objects; the training itself uses the buffer collectives.

A configuration whose training raises (a bad hyperparameter, a
non-finite loss) is reported with its error and does not stop the
search; the error must happen on every rank of its group alike, as it
does for data-parallel training, where all replicas hold the same bytes.

Rank 0 prints a table (one row per configuration) and the best one (the
highest test accuracy), and ``--json FILE`` writes all of it.
"""

import argparse
import hashlib
import itertools
import json
import sys
import threading
import time

import numpy as np
from mpi4py import MPI

import collectives
from optim.mlp import MLP
from optim.sgd import SyncSGD, broadcast_parameters
from optim.shard import shard
from optim.train import UsageError, load_digits, usage_error

__all__ = ["configurations", "main", "train_configuration"]

#: hyperparameters a --grid may name, with their types and defaults.
KEYS = {"lr": (float, 0.05), "momentum": (float, 0.9), "weight_decay": (float, 0.0),
        "batch_size": (int, 64), "hidden": (int, 64), "epochs": (int, 3), "seed": (int, 0)}
_READY, _ASSIGN = 31, 32


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def configurations(grids, defaults):
    """Return the Cartesian product of ``grids`` as a list of dicts.

    ``grids`` is a list of ``"key=v1,v2"`` strings, ``defaults`` a dict of
    every key's value when no grid names it.
    """
    axes = {}
    for text in grids:
        key, _, values = text.partition("=")
        key = key.strip().replace("-", "_")
        if key not in KEYS or not values:
            raise UsageError(f"--grid {text!r}: expected KEY=V1,V2,... with KEY one of "
                             + ", ".join(KEYS))
        try:
            axes[key] = [KEYS[key][0](v) for v in values.split(",")]
        except ValueError:
            raise UsageError(f"--grid {text!r}: values of {key} must be "
                             f"{KEYS[key][0].__name__}s") from None
    return [dict(defaults, **dict(zip(axes, combo)))
            for combo in itertools.product(*axes.values())]


def parse_args(argv, size):
    """Parse the options; raise :class:`UsageError` for bad ones."""
    p = _Parser(prog="optim.search", description="Hyperparameter search on rank groups.")
    p.add_argument("--group-size", type=int, default=1, help="ranks per configuration")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2")
    for key, (kind, default) in KEYS.items():
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=default)
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds a rank waits in one collective")
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)
    if args.group_size < 1 or size % args.group_size:
        raise UsageError(f"--group-size {args.group_size} does not divide the {size} ranks "
                         "into equal groups")
    args.configs = configurations(args.grid, {k: getattr(args, k) for k in KEYS})
    return args


def train_configuration(config, comm, data, *, timeout=None):
    """Train the digits MLP with ``config`` on ``comm``; return its result dict.

    ``data`` is :func:`optim.train.load_digits`'s tuple.  Raises what the
    optimizer raises for a bad hyperparameter, ``ValueError`` for a batch
    size that ``comm``'s ranks do not divide or a non-finite loss.
    """
    x, y, x_test, y_test = data
    size, rank = comm.Get_size(), comm.Get_rank()
    if config["batch_size"] % size:
        raise ValueError(f"batch_size {config['batch_size']} is not a multiple of the "
                         f"{size} ranks of a group")
    model = MLP([x.shape[1], config["hidden"], 10], seed=config["seed"])
    opt = SyncSGD(model.flat, comm, lr=config["lr"], momentum=config["momentum"],
                  weight_decay=config["weight_decay"], timeout=timeout)
    broadcast_parameters(model.flat, comm, timeout=timeout)
    local = config["batch_size"] // size
    for epoch in range(config["epochs"]):
        indices = shard(len(y), rank, size, epoch=epoch, seed=config["seed"])
        losses = [_step(model, opt, x, y, indices[k:k + local])
                  for k in range(0, len(indices), local)]
    loss = np.array([np.mean(losses)])
    collectives.allreduce(loss, comm, op="avg", timeout=timeout)
    if not np.isfinite(loss[0]):
        raise ValueError(f"the loss is {loss[0]} after {config['epochs']} epochs")
    return {"loss": float(loss[0]), "test_accuracy": model.accuracy(x_test, y_test),
            "params_sha256": hashlib.sha256(model.flat.data.tobytes()).hexdigest()}


def _step(model, opt, x, y, batch):
    loss = model.loss_and_grad(x[batch], y[batch])
    opt.step()
    return loss


class _Coordinator:
    """Rank 0's queue, served from a thread: next configuration to who asks."""

    def __init__(self, ctrl, configs, groups):
        self.ctrl, self.configs, self.groups = ctrl, configs, groups
        self.results = {}
        self.thread = threading.Thread(target=self._serve, name="search-queue", daemon=True)
        self.thread.start()

    def _serve(self):
        # Answer "ready" messages until every group has been told to stop.
        queue, stopped, sends = list(range(len(self.configs))), 0, []
        status = MPI.Status()
        while stopped < self.groups:
            if not self.ctrl.Iprobe(MPI.ANY_SOURCE, _READY, status):
                time.sleep(0.001)
                continue
            group, result = self.ctrl.recv(source=status.Get_source(), tag=_READY)
            if result is not None:
                self.results[result["index"]] = dict(result, group=group)
            task = None
            if queue:
                index = queue.pop(0)
                task = (index, self.configs[index])
            stopped += task is None
            sends.append(self.ctrl.isend(task, status.Get_source(), _ASSIGN))
        MPI.Request.waitall(sends)

    def join(self):
        self.thread.join()
        return [self.results[i] for i in sorted(self.results)]


def _run_group(args, ctrl, group_comm, group, data):
    # Ask for work, train it, report it; until the queue is empty.
    runs, result = [], None
    leader = group_comm.Get_rank() == 0
    while True:
        task = _ask(ctrl, group, result) if leader else None
        task = group_comm.bcast(task, root=0)
        if task is None:
            return runs
        index, config = task
        runs.append(index)
        result = _attempt(index, config, group_comm, data, args.timeout)


def _ask(ctrl, group, result):
    # Send "ready" with the last result; wait politely for the answer.
    ctrl.send((group, result), 0, _READY)
    request = ctrl.irecv(source=0, tag=_ASSIGN)
    while True:
        done, task = request.test()
        if done:
            return task
        time.sleep(0.0005)


def _attempt(index, config, comm, data, timeout):
    # One configuration; a raised error becomes a "failed" result.
    t0 = time.perf_counter()
    try:
        result = dict(train_configuration(config, comm, data, timeout=timeout),
                      status="ok")
    except Exception as error:  # noqa: BLE001 - reported, not fatal
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    return dict(result, index=index, config=config, seconds=time.perf_counter() - t0)


def _table(results, best):
    lines = [f"{'#':>3}  {'group':>5}  {'status':<7} {'loss':>8} {'acc %':>7} "
             f"{'s':>6}  configuration"]
    for r in results:
        cfg = " ".join(f"{k}={v}" for k, v in r["config"].items())
        if r["status"] == "ok":
            numbers = f"{r['loss']:8.4f} {100 * r['test_accuracy']:7.2f}"
        else:
            numbers = f"{'-':>8} {'-':>7}"
        lines.append(f"{r['index']:3d}  {r['group']:5d}  {r['status']:<7} {numbers} "
                     f"{r['seconds']:6.2f}  {cfg}"
                     + ("" if r["status"] == "ok" else f"  ({r['error']})"))
    lines.append("best: " + ("none (every configuration failed)" if best is None else
                             f"#{best['index']} {best['config']} test accuracy "
                             f"{100 * best['test_accuracy']:.2f}%"))
    return "\n".join(lines)


def main(argv=None, comm=MPI.COMM_WORLD):
    """Run the search; return the exit status."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv, comm.Get_size())
    except UsageError as error:
        return usage_error("optim.search", error, comm)
    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        raise RuntimeError("optim.search needs MPI_THREAD_MULTIPLE: rank 0 serves the "
                           "queue from a thread")
    rank, groups = comm.Get_rank(), comm.Get_size() // args.group_size
    ctrl = comm.Dup()
    group_comm = comm.Split(rank // args.group_size, rank)
    coordinator = _Coordinator(ctrl, args.configs, groups) if rank == 0 else None
    runs = _run_group(args, ctrl, group_comm, rank // args.group_size, load_digits())
    leaders_runs = ctrl.gather(runs if group_comm.Get_rank() == 0 else None, root=0)
    if rank == 0:
        _report(args, coordinator.join(), [r for r in leaders_runs if r is not None])
    group_comm.Free()
    ctrl.Free()
    return 0


def _report(args, results, runs_by_group):
    ok = [r for r in results if r["status"] == "ok"]
    best = max(ok, key=lambda r: (r["test_accuracy"], -r["index"])) if ok else None
    print(_table(results, best), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"group_size": args.group_size, "groups": len(runs_by_group),
                       "results": results, "best": best,
                       "runs_by_group": runs_by_group}, f, indent=1)


if __name__ == "__main__":
    _status = main()
    if _status:
        MPI.Finalize()
    sys.exit(_status)
