r"""Train a small MLP on scikit-learn's digits with data-parallel SGD.

Run::

    NUMBA_NUM_THREADS=1 mpiexec -n 4 python -m mpi4py -m optim.train \\
        --optimizer partial --group-size 2 --epochs 10

The digits (1797 8x8 images, bundled with scikit-learn: no download) are
split once into 80% train and 20% test (stratified, the same split for
every run).  Every
epoch each rank trains on its :func:`optim.shard` of the training set, in
local batches of ``--batch-size / ranks``.

Optimizers (``--optimizer``):

- ``sync``: :class:`optim.SyncSGD`, gradients averaged every step.
- ``ps``: :class:`optim.ParameterServerSGD`, gradients reduced to rank 0.
- ``partial``: :class:`optim.PartialSyncSGD` with ``--group-size``: each rank
  steps on its own gradient and averages its parameters with whichever
  ranks are ready.  Ranks go at their own pace; the job ends when rank 0
  has done ``--epochs`` epochs (it then tells the others to stop after
  their current step).
- ``local``: local SGD, :class:`optim.PartialSyncSGD` with the group of all
  ranks, averaging every ``--period`` steps (default 4).

``--compression none|fp16|topk`` (sync only; ``--topk-density``, default
0.01) averages the gradients with that codec of
:mod:`collectives.compression`; the summary then reports the bytes this
rank sent per step (``bytes_per_step`` in the JSON).

``--overlap`` (sync, no compression) starts each gradient bucket's
all-reduce from the backward pass as soon as its layers are done
(:meth:`optim.SyncSGD.grad_ready`); ``--bucket-bytes N`` cuts the
gradients into buckets of at most N bytes (default: one bucket).
``--timeline FILE`` writes a Chrome trace (rank 0) of each step's
forward/backward and optimizer step and of the collectives' phases.

``--dp-clip C --dp-noise SIGMA`` (sync, no compression) trains with
DP-SGD (:mod:`optim.dp`): each sample's gradient clipped to norm C,
Gaussian noise of standard deviation ``SIGMA * C / batch-size`` added once
to the averaged gradient (noise seeded by ``--seed``), whole batches only
(short ones dropped); the summary reports the epsilon at ``--dp-delta``
(default 1e-5) from dp-accounting's RDP accountant.

``--slow-rank R --slow-factor F`` makes rank R sleep ``F - 1`` times its
forward/backward time after each one, so it computes F times slower.

Rank 0 prints one line per epoch: its training loss (mean over its
batches), the test accuracy of its model, samples/s (its own rate times
the rank count; exact for the lock-step optimizers) and the elapsed
seconds since the synchronised start.  At the end all ranks average their
parameters once (a no-op for sync and ps), and the summary reports that
model's test accuracy and the time to ``--target`` accuracy.  ``--json
FILE`` writes all of it (rank 0).  Bad options print one line and exit 2.
"""

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

import collectives
from collectives.compression import CODECS, TopKCompression
from collectives.timeline import Timeline
from optim._checks import check_number
from optim.checkpoint import CheckpointManager
from optim.dp import DPConfig, clipped_loss_and_grad
from optim.mlp import MLP
from optim.partial import PartialSyncSGD
from optim.ps import ParameterServerSGD
from optim.sgd import SyncSGD, broadcast_parameters
from optim.shard import shard

__all__ = ["main", "parse_args"]

OPTIMIZERS = ("sync", "partial", "ps", "local")
_STOP_TAG = 77


class UsageError(Exception):
    """A bad command-line option; the message is the one line to print."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parse_args(argv, size):
    """Parse and check the options for a job of ``size`` ranks.

    Raises :class:`UsageError` with a one-line message for bad input.
    """
    p = _Parser(prog="optim.train", description="Train an MLP on digits with MPI.")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sync")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--group-size", type=int, default=2, help="partial: ranks per group")
    p.add_argument("--period", type=int, default=None,
                   help="steps between averagings (partial: 1, local: 4)")
    p.add_argument("--hidden", default="128", help="hidden widths, e.g. 128 or 256,128")
    p.add_argument("--algorithm", choices=collectives.ALGORITHMS, default="auto")
    p.add_argument("--compression", choices=CODECS, default=None,
                   help="sync: gradient codec (none, fp16, topk)")
    p.add_argument("--topk-density", type=float, default=0.01)
    p.add_argument("--overlap", action="store_true",
                   help="sync: all-reduce buckets during backward")
    p.add_argument("--bucket-bytes", type=int, default=None)
    p.add_argument("--shared-grad", action="store_true",
                   help="keep the gradient in a collectives.shared_array (one node): "
                        "the all-reduce skips its copy into shared memory")
    p.add_argument("--timeline", default=None, metavar="FILE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slow-rank", type=int, default=None)
    p.add_argument("--slow-factor", type=float, default=1.0)
    p.add_argument("--target", type=float, default=0.95, help="accuracy for time-to")
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="sync/ps/local: rank 0 writes checkpoints here")
    p.add_argument("--checkpoint-every", type=int, default=50, metavar="STEPS")
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint in --checkpoint-dir")
    p.add_argument("--save-params", default=None, metavar="FILE",
                   help="rank 0 writes the final parameters (.npy)")
    p.add_argument("--dp-clip", type=float, default=None, metavar="C",
                   help="sync: DP-SGD, clip each sample's gradient to norm C")
    p.add_argument("--dp-noise", type=float, default=None, metavar="SIGMA",
                   help="sync: DP-SGD noise multiplier (std SIGMA*C/batch-size)")
    p.add_argument("--dp-delta", type=float, default=None, metavar="DELTA",
                   help="DP-SGD: report epsilon at this delta (default 1e-5)")
    args = p.parse_args(argv)
    _check_args(args, size)
    return args


def _check_args(args, size):
    # Everything a rank can check alone, with the numbers in the message.
    for name in ("epochs", "batch_size", "group_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, "
                             f"got {getattr(args, name)}")
    _check_hyperparameters(args)
    if args.batch_size % size:
        raise UsageError(f"--batch-size {args.batch_size} is not a multiple of the "
                         f"{size} ranks; each rank takes batch-size / ranks samples")
    if args.optimizer == "partial" and args.group_size > size:
        raise UsageError(f"--group-size {args.group_size} is larger than the {size} ranks")
    if args.period is None:
        args.period = 4 if args.optimizer == "local" else 1
    if args.period < 1:
        raise UsageError(f"--period must be >= 1, got {args.period}")
    if args.slow_rank is not None and not 0 <= args.slow_rank < size:
        raise UsageError(f"--slow-rank {args.slow_rank} is not a rank of this "
                         f"{size}-rank job (0..{size - 1})")
    if not args.slow_factor >= 1.0:
        raise UsageError(f"--slow-factor must be >= 1, got {args.slow_factor}")
    if args.compression is not None and args.optimizer != "sync":
        raise UsageError(f"--compression works with --optimizer sync, not {args.optimizer}")
    if args.overlap and (args.optimizer != "sync" or args.compression is not None):
        raise UsageError("--overlap works with --optimizer sync and no --compression")
    if args.bucket_bytes is not None and args.bucket_bytes < 1:
        raise UsageError(f"--bucket-bytes must be >= 1, got {args.bucket_bytes}")
    if not 0.0 < args.topk_density <= 1.0:
        raise UsageError(f"--topk-density must be in (0, 1], got {args.topk_density}")
    _check_checkpoint_args(args)
    _check_output_paths(args)
    _check_dp_args(args)
    if not 0.0 < args.target <= 1.0:
        raise UsageError(f"--target must be in (0, 1], got {args.target}")
    try:
        args.hidden = [int(w) for w in args.hidden.split(",")]
    except ValueError:
        raise UsageError(f"--hidden must be comma-separated ints, got {args.hidden!r}") from None
    if min(args.hidden) < 1:
        raise UsageError(f"--hidden widths must be >= 1, got {args.hidden}")


def _check_output_paths(args):
    # Files written after training: their folder must exist before it starts.
    for option in ("save_params", "json"):
        path = getattr(args, option)
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            raise UsageError(f"--{option.replace('_', '-')} {path!r}: directory "
                             f"{folder!r} does not exist")


def _check_checkpoint_args(args):
    # Checkpoints need lock-step optimizers: every rank holds the same state.
    if args.checkpoint_dir is None:
        if args.resume:
            raise UsageError("--resume needs --checkpoint-dir")
        return
    if args.optimizer == "partial":
        raise UsageError("--checkpoint-dir works with sync, ps and local, not partial "
                         "(partial ranks hold different models)")
    if not os.path.isdir(args.checkpoint_dir):
        raise UsageError(f"--checkpoint-dir {args.checkpoint_dir!r} does not exist")
    if args.checkpoint_every < 1 or args.keep < 1:
        raise UsageError(f"--checkpoint-every and --keep must be >= 1, got "
                         f"{args.checkpoint_every} and {args.keep}")


def _check_dp_args(args):
    # DP-SGD needs both --dp-clip and --dp-noise, > 0, with plain sync.
    given = [name for name in ("dp_clip", "dp_noise", "dp_delta")
             if getattr(args, name) is not None]
    if not given:
        return
    if args.dp_clip is None or args.dp_noise is None:
        raise UsageError(f"--{given[0].replace('_', '-')} needs both --dp-clip and "
                         "--dp-noise (DP-SGD)")
    if args.optimizer != "sync" or args.compression is not None:
        raise UsageError(f"--dp-clip/--dp-noise work with --optimizer sync and no "
                         f"--compression, not {args.optimizer}"
                         + (f" with {args.compression}" if args.compression else "")
                         + ", because the noise goes on the exact average of the gradients")
    if args.dp_delta is None:
        args.dp_delta = 1e-5
    try:
        check_number("--dp-clip", args.dp_clip, low=0.0, low_open=True)
        check_number("--dp-noise", args.dp_noise, low=0.0, low_open=True)
        check_number("--dp-delta", args.dp_delta, low=0.0, high=1.0, low_open=True,
                     high_open=True)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _check_hyperparameters(args):
    # The optimizers' own checks, reported as option errors.
    try:
        check_number("--lr", args.lr, low=0.0, low_open=True)
        check_number("--momentum", args.momentum, low=0.0, high=1.0, high_open=True)
        check_number("--weight-decay", args.weight_decay, low=0.0)
    except ValueError as error:
        raise UsageError(str(error)) from None


def load_digits():
    """Return (x_train, y_train, x_test, y_test): float32 pixels in [0, 1].

    The data are scikit-learn's bundled digits; the test set is a fixed,
    stratified 20% (the first ``round(0.2 * n_c)`` of each class ``c`` in a
    permutation seeded with 0), the same for every run and optimizer.
    """
    data = _read_digits()
    x, y = (data[:, :-1] / 16.0).astype(np.float32), data[:, -1].astype(np.int64)
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        test[members[:round(0.2 * len(members))]] = True
    return x[~test], y[~test], x[test], y[test]


def _read_digits():
    # The CSV file inside scikit-learn, read without importing scikit-learn
    # (its import costs each rank a second); its loader if the file moved.
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise RuntimeError("the training job needs scikit-learn's digits data: "
                           "pip install scikit-learn (the 'train' extra)")
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    if path.exists():
        return np.loadtxt(path, delimiter=",")
    from sklearn.datasets import load_digits as _load
    x, y = _load(return_X_y=True)
    return np.column_stack([x, y])


def build_optimizer(args, model, comm, *, dataset_size=None):
    """Return the optimizer ``--optimizer`` names, on ``model``'s parameters.

    ``dataset_size`` (training samples) is needed with ``--dp-clip``.
    """
    hyper = {"lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay}
    if args.optimizer == "sync":
        return SyncSGD(model.flat, comm, algorithm=args.algorithm,
                       compression=_codec(args), overlap=args.overlap,
                       dp=_dp_config(args, dataset_size), **hyper)
    if args.optimizer == "ps":
        return ParameterServerSGD(model.flat, comm, **hyper)
    group = args.group_size if args.optimizer == "partial" else comm.Get_size()
    return PartialSyncSGD(model.flat, comm, group_size=group, period=args.period, **hyper)


def _dp_config(args, dataset_size):
    # The DP-SGD settings --dp-clip / --dp-noise ask for (None: no DP).
    if args.dp_clip is None:
        return None
    return DPConfig(clip_norm=args.dp_clip, noise_multiplier=args.dp_noise,
                    batch_size=args.batch_size, dataset_size=dataset_size, seed=args.seed)


def _codec(args):
    # The codec --compression names (None: the plain all-reduce).
    if args.compression == "topk":
        return TopKCompression(density=args.topk_density)
    return args.compression


class _Job:
    """One rank's training run: data, model, optimizer, clock and log."""

    def __init__(self, args, comm):
        self.args, self.comm = args, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.x, self.y, self.x_test, self.y_test = load_digits()
        self.model = MLP([self.x.shape[1], *args.hidden, 10], seed=args.seed,
                         bucket_bytes=args.bucket_bytes,
                         grad_comm=comm if args.shared_grad else None)
        broadcast_parameters(self.model.flat, comm)
        if args.dp_clip is not None and args.batch_size > len(self.y):
            raise UsageError(f"--batch-size {args.batch_size} is larger than the "
                             f"{len(self.y)} training samples, which DP-SGD needs")
        self.opt = build_optimizer(args, self.model, comm, dataset_size=len(self.y))
        self.local_batch = args.batch_size // self.size
        self.slow = args.slow_factor - 1.0 if args.slow_rank == self.rank else 0.0
        self.stop = _StopFlag(comm) if args.optimizer == "partial" else None
        self.samples = self.steps = 0
        self.log = []
        self.timeline = Timeline(comm).attach(comm) if args.timeline else None
        self.ready = self.opt.grad_ready if args.overlap else None
        self.checkpoints = (CheckpointManager(args.checkpoint_dir, keep=args.keep)
                            if args.checkpoint_dir else None)
        self.stop_signal = _SignalFlag() if self.checkpoints else None
        self.signalled = np.zeros(1, dtype=np.int32)
        self.resume_at = self._resume() if args.resume else (0, 0)

    def _resume(self):
        # Every rank reads the newest valid checkpoint (a shared directory).
        found = self.checkpoints.load_latest(warn=False)
        skipped = self.checkpoints.skipped
        if found is None:
            if skipped:  # start over only where nothing was saved yet
                raise UsageError(f"--resume: none of the {len(skipped)} checkpoint(s) in "
                                 f"{self.args.checkpoint_dir!r} can be read (newest: "
                                 f"{skipped[0][1]}); move them away to start over")
            return 0, 0
        if self.rank == 0:
            for name, reason in skipped:
                print(f"optim.train: skipped checkpoint {name}: {reason}", file=sys.stderr,
                      flush=True)
        arrays, meta = found
        self.model.flat.data[:] = arrays["params"]
        state = dict(meta["optimizer"], momentum_buffer=arrays.get("momentum_buffer"))
        self.opt.load_state_dict(state)
        self.steps, self.samples = meta["step"], meta["samples"]
        if self.rank == 0:
            print(f"resumed from step {meta['step']} (epoch {meta['epoch'] + 1}, "
                  f"batch {meta['position']})", flush=True)
        return meta["epoch"], meta["position"]

    def _checkpoint(self, epoch, position):
        # Rank 0 saves the state after a step (every N steps, or when any rank
        # got SIGTERM/SIGINT: the ranks agree on that with a 4-byte all-reduce,
        # so all stop after the same step); all ranks hold the same state.
        self.signalled[0] = self.stop_signal.received  # 0 until a signal came
        collectives.allreduce(self.signalled, self.comm, op="max")
        stopping = int(self.signalled[0])
        if self.rank == 0 and (stopping or self.steps % self.args.checkpoint_every == 0):
            self._save(epoch, position)
        if stopping:
            raise _SignalStopError(stopping)

    def _save(self, epoch, position):
        state = self.opt.state_dict()
        arrays = {"params": self.model.flat.data}
        if state.get("momentum_buffer") is not None:
            arrays["momentum_buffer"] = state["momentum_buffer"]
        meta = {"optimizer": {k: v for k, v in state.items() if k != "momentum_buffer"},
                "epoch": epoch, "position": position, "samples": self.samples,
                "shard_rule": "optim.shard(seed, epoch): no other random state"}
        self.checkpoints.save(self.steps, arrays, meta)

    def run(self):
        """Train; return the summary dict (meaningful on rank 0)."""
        self.start = _synchronised_start(self.comm)
        for epoch in range(self.resume_at[0], self.args.epochs):
            t0, samples0 = time.perf_counter(), self.samples
            loss = self._epoch(epoch)
            if loss is None:
                break
            if self.rank == 0:
                self._report(epoch, loss, time.perf_counter() - t0, self.samples - samples0)
        if self.stop is not None and self.rank == 0:
            self.stop.send()
        _close(self.opt)
        if self.timeline is not None:
            self.timeline.detach(self.comm)
            self.timeline.write(self.args.timeline)
        return self._summary()

    def _epoch(self, epoch):
        # One pass over this rank's shard; None if told to stop.
        dp = self.args.dp_clip is not None  # DP: each sample once, whole batches only
        indices = shard(len(self.y), self.rank, self.size, epoch=epoch, seed=self.args.seed,
                        drop_last=dp)
        first = self.resume_at[1] if epoch == self.resume_at[0] else 0
        end = len(indices) - (len(indices) % self.local_batch if dp else 0)
        starts = range(0, end, self.local_batch)
        losses = []
        for position, k in enumerate(starts):
            if position < first:
                continue  # done before the checkpoint we resumed from
            if self.stop is not None and self.rank != 0 and self.stop.received():
                return None
            batch = indices[k:k + self.local_batch]
            losses.append(self._step(batch))
            if self.checkpoints is not None:  # where to go on after this step
                done = position + 1 == len(starts)
                self._checkpoint(epoch + done, 0 if done else position + 1)
        return float(np.mean(losses)) if losses else float("nan")

    def _step(self, batch):
        # Forward/backward (slowed on the slow rank), then the optimizer.
        t0 = time.perf_counter()
        with self._span("forward/backward"):
            if self.args.dp_clip is not None:  # mean of clipped per-sample gradients
                loss = clipped_loss_and_grad(self.model, self.x[batch], self.y[batch],
                                             clip_norm=self.args.dp_clip)
            else:
                loss = self.model.loss_and_grad(self.x[batch], self.y[batch],
                                                grad_ready=self.ready)
        if self.slow:
            time.sleep(self.slow * (time.perf_counter() - t0))
        with self._span("step"):
            self.opt.step()
        self.samples += len(batch)
        self.steps += 1
        return loss

    def _span(self, name):
        # A timeline span, or nothing without --timeline.
        if self.timeline is None:
            return contextlib.nullcontext()
        return self.timeline.span(name)

    def _report(self, epoch, loss, seconds, samples):
        accuracy = self.model.accuracy(self.x_test, self.y_test)
        elapsed = time.perf_counter() - self.start
        rate = samples * self.size / seconds
        self.log.append({"epoch": epoch + 1, "loss": loss, "test_accuracy": accuracy,
                         "samples_per_s": rate, "elapsed_s": elapsed})
        print(f"epoch {epoch + 1:3d}/{self.args.epochs}  loss {loss:.4f}  "
              f"test acc {100 * accuracy:6.2f}%  samples/s {rate:9,.0f}  "
              f"elapsed {elapsed:7.2f} s", flush=True)

    def _summary(self):
        # Average the models once, count everyone's work, time to target.
        seconds = time.perf_counter() - self.start
        rank0_accuracy = self.model.accuracy(self.x_test, self.y_test)
        collectives.allreduce(self.model.flat.data, self.comm, op="avg")
        counts = np.array([self.samples, self.steps], dtype=np.int64)
        collectives.allreduce(counts, self.comm, op="sum")
        if self.stop is not None:
            self.stop.finish()
        reached = [e for e in self.log if e["test_accuracy"] >= self.args.target]
        return {"optimizer": self.args.optimizer, "ranks": self.size,
                "options": {k: v for k, v in vars(self.args).items() if k != "json"},
                "epochs": self.log, "seconds": seconds,
                "samples": int(counts[0]), "steps": int(counts[1]),
                "rank0_accuracy": rank0_accuracy,
                "final_accuracy": self.model.accuracy(self.x_test, self.y_test),
                "time_to_target_s": reached[0]["elapsed_s"] if reached else None,
                "bytes_per_step": self._bytes_per_step(), "dp": self._dp_summary()}

    def _dp_summary(self):
        # The privacy spent (rank 0 asks the accountant; None without DP).
        if self.args.dp_clip is None or self.rank != 0:
            return None
        return {"clip_norm": self.args.dp_clip, "noise_multiplier": self.args.dp_noise,
                "steps": self.opt.steps, "sample_rate": self.opt.dp.sample_rate,
                "delta": self.args.dp_delta,
                "epsilon": self.opt.epsilon(delta=self.args.dp_delta)}

    def _bytes_per_step(self):
        # Rank 0's gradient bytes on the wire per step (sync only).
        sent = getattr(self.opt, "bytes_sent", None)
        return None if sent is None or not self.steps else sent / self.steps


class _SignalStopError(Exception):
    """The ranks agreed to stop after a signal; the checkpoint is written."""

    def __init__(self, signum):
        super().__init__(f"stopped by signal {signum} after a checkpoint")
        self.signum = signum


class _SignalFlag:
    """Remember a SIGTERM/SIGINT instead of dying mid-step."""

    def __init__(self):
        self.received = 0
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._note)

    def _note(self, signum, frame):
        self.received = signum


class _StopFlag:
    """Rank 0 tells the others to stop (partial mode), on a private duplicate.

    Rank 0 sends an empty message to every other rank when it is done;
    they test for it before each step.  :meth:`finish` (after a collective
    that rank 0 enters only after sending) completes the messages.
    """

    def __init__(self, comm):
        self.comm = comm.Dup()
        self.requests = []
        self.seen = False

    def send(self):
        empty = [np.zeros(0, np.uint8), MPI.BYTE]
        self.requests = [self.comm.Isend(empty, r, _STOP_TAG)
                         for r in range(1, self.comm.Get_size())]

    def received(self):
        self.seen = self.seen or self.comm.Iprobe(source=0, tag=_STOP_TAG)
        return self.seen

    def finish(self):
        if self.comm.Get_rank() == 0:
            MPI.Request.Waitall(self.requests)
        else:
            self.comm.Recv([np.zeros(0, np.uint8), MPI.BYTE], source=0, tag=_STOP_TAG)
        self.comm.Free()


def _synchronised_start(comm):
    # A polite barrier (an all-reduce waits without spinning), then the clock.
    collectives.allreduce(np.zeros(1, np.float64), comm, op="sum")
    return time.perf_counter()


def _close(opt):
    close = getattr(opt, "close", None)
    if close is not None:
        close()


def _print_summary(s, target):
    to = (f"{100 * target:.0f}% after {s['time_to_target_s']:.2f} s"
          if s["time_to_target_s"] is not None else f"{100 * target:.0f}% not reached")
    print(f"summary: {s['optimizer']}, {s['ranks']} ranks, {len(s['epochs'])} epochs on "
          f"rank 0, {s['steps']} steps and {s['samples']:,} samples on all ranks, "
          f"{s['seconds']:.2f} s ({s['samples'] / s['seconds']:,.0f} samples/s); "
          f"test accuracy {100 * s['final_accuracy']:.2f}% (averaged model), "
          f"{100 * s['rank0_accuracy']:.2f}% (rank 0's); {to}"
          + (f"; {s['bytes_per_step']:,.0f} bytes/step sent per rank"
             if s["bytes_per_step"] is not None else "")
          + (f"; DP epsilon {s['dp']['epsilon']:.2f} at delta {s['dp']['delta']:g} "
             f"(noise {s['dp']['noise_multiplier']:g}, clip {s['dp']['clip_norm']:g}, "
             f"{s['dp']['steps']} steps)" if s.get("dp") else ""), flush=True)


def usage_error(program, error, comm):
    """Print a bad option once, as one line (rank 0); return exit status 2."""
    if comm.Get_rank() == 0:
        print(f"{program}: error: {error}", file=sys.stderr, flush=True)
    return 2


def main(argv=None, comm=MPI.COMM_WORLD):
    """Run the job; return the exit status."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv, comm.Get_size())
        _limit_blas_threads()
        job = _Job(args, comm)  # every rank finds the same data-dependent errors
    except UsageError as error:
        return usage_error("optim.train", error, comm)
    # What import and set-up made stays: out of the collector's sight, so a
    # full collection, which walked it all (25-80 ms on the AMD Zen 3 VM),
    # does not stop one rank while the others wait in a collective.
    gc.freeze()
    try:
        summary = job.run()
    except _SignalStopError as stopped:
        if comm.Get_rank() == 0:
            print(f"optim.train: {stopped}; continue with --resume", file=sys.stderr,
                  flush=True)
        return 128 + stopped.signum
    if comm.Get_rank() == 0 and args.save_params:
        np.save(args.save_params, job.model.flat.data)
    if comm.Get_rank() == 0:
        _print_summary(summary, args.target)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(summary, f, indent=1)
    return 0


def _limit_blas_threads():
    # One BLAS thread per rank: ranks already share the cores.
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


if __name__ == "__main__":
    _status = main()
    if _status:
        # Every rank found the same bad option: leave cleanly, so that
        # `python -m mpi4py` does not abort the job with its own message.
        MPI.Finalize()
    sys.exit(_status)
