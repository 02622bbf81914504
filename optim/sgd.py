"""Synchronous data-parallel SGD: average the gradients, same update everywhere.

Each step all-reduces the gradient buffer (one call per bucket, op
"avg"), then every rank applies the same SGD update to the same
parameters.  The all-reduce gives every rank the same bytes, and the
update is deterministic, so parameters that start equal (see
:func:`broadcast_parameters`) stay bitwise equal on every rank, and the
run equals single-process SGD on the whole global batch up to the
rounding of the reduction order.

With ``compression`` (a codec of :mod:`collectives.compression`) each
bucket is averaged by its own codec instead (one instance per bucket, so
top-k's error-feedback residual belongs to one bucket), and
:attr:`SyncSGD.bytes_sent` counts what this rank put on the wire.

With ``overlap=True`` the backward pass calls :meth:`SyncSGD.grad_ready`
for each gradient tensor it has written; as soon as all tensors of a
bucket are written, that bucket's ``collectives.iallreduce`` starts (on
the communicator's progress thread), so the reduction of late layers runs
while early layers' gradients are computed, and :meth:`SyncSGD.step`
waits for the handles.  Same algorithm, same buckets: the result is
bitwise equal to the blocking run.

With ``dp`` (an :class:`optim.DPConfig`) the step is DP-SGD: the caller
writes the mean of its samples' CLIPPED gradients
(:func:`optim.dp.clipped_loss_and_grad`), the all-reduce averages them as
usual, and then, once, after the average and before the update, every
rank adds the same Gaussian noise of standard deviation ``sigma * C / B``
to the averaged gradient, drawn from a generator seeded identically on
every rank (checked collectively at construction).  Same averaged bytes
plus same noise keeps the replicas bitwise identical; see
:mod:`optim.dp` for the whole recipe and the privacy accounting
(:meth:`SyncSGD.epsilon`).
"""

import bisect
import copy
import dataclasses
from collections.abc import Sequence

import numpy as np

import collectives
from collectives.compression import CODECS, NoCompression, ring_bytes
from collectives.nonblocking import close_progress
from optim import _kernels as K
from optim._base import DistributedSGD
from optim._checks import check_comm, check_timeout
from optim.dp import DPConfig, check_same_config
from optim.flat import FlatParameters

__all__ = ["SyncSGD", "broadcast_parameters"]


class SyncSGD(DistributedSGD):
    """Average gradients over ``comm`` every step, then update.

    Parameters
    ----------
    params : optim.FlatParameters
        The model's parameters and gradients (views into flat buffers).
    comm : mpi4py.MPI.Intracomm
        The ranks that train together.
    lr : float
        Learning rate, > 0.
    momentum : float, default 0.0
        In [0, 1); the momentum buffer starts at zero.
    weight_decay : float, default 0.0
        L2 penalty >= 0, added to the gradient after the averaging.
    nesterov : bool, default False
        Nesterov momentum (needs ``momentum`` > 0).
    algorithm : str, default "auto"
        All-reduce algorithm, one of ``collectives.ALGORITHMS``.
    timeout : float, optional
        Seconds a rank waits for the others in one all-reduce before
        ``collectives.CollectiveTimeoutError``; ``None`` for the default.
    compression : str or codec, optional
        ``None`` (the plain all-reduce, the default), a name of
        ``collectives.compression.CODECS`` ("none", "fp16", "topk") or a
        codec instance (copied once per bucket).
    overlap : bool, default False
        Start each bucket's reduction from :meth:`grad_ready` (see the
        module docstring); needs ``compression=None``.
    dp : optim.DPConfig, optional
        Differentially private SGD (see the module docstring): add noise
        of standard deviation ``dp.noise_std`` to the averaged gradient
        once per step.  Needs ``compression=None``; makes the constructor
        collective (it checks that every rank holds the same config).

    Attributes
    ----------
    bytes_sent : int
        Bytes this rank sent for gradients over all steps (ring estimate
        for the uncompressed all-reduce).
    last_bytes_sent : int
        The same for the last step.
    dp : optim.DPConfig or None
        The DP settings.

    Raises
    ------
    TypeError, ValueError
        For a bad hyperparameter or argument, before any message is sent.

    Examples
    --------
    >>> model = optim.MLP([64, 32, 10], seed=0)
    >>> opt = optim.SyncSGD(model.flat, comm, lr=0.1, momentum=0.9)
    >>> optim.broadcast_parameters(model.flat, comm)
    >>> loss = model.loss_and_grad(x, y)    # fills model.flat.grad
    >>> opt.step()

    """

    def __init__(self, params, comm, *, lr, momentum=0.0, weight_decay=0.0,
                 nesterov=False, algorithm="auto", timeout=None, compression=None,
                 overlap=False, dp=None):
        super().__init__(params, comm, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, nesterov=nesterov, timeout=timeout)
        if algorithm not in collectives.ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; use one of "
                             + ", ".join(repr(a) for a in collectives.ALGORITHMS))
        self.algorithm = algorithm
        self._checked = False
        self.codecs = _bucket_codecs(compression, len(params.buckets), algorithm)
        self.bytes_sent = self.last_bytes_sent = 0
        self.overlap = _check_overlap(overlap, compression)
        starts = [b.start for b in params.buckets]
        self._bucket_of = [bisect.bisect_right(starts, o) - 1 for o in params.offsets[:-1]]
        self._reset_overlap()
        self.dp = _check_dp(dp, compression, comm)
        self._noise_rng = None if dp is None else dp.noise_generator()
        self._noise = None if dp is None else np.empty_like(params.grad)

    def grad_ready(self, tensor):
        """Note that gradient ``tensor`` (an index into ``params.grads``) is written.

        With ``overlap``, a bucket whose tensors are all written starts its
        non-blocking all-reduce now; without, this does nothing.  Every rank
        must report the tensors in the same order, and must not write a
        reported gradient again before :meth:`step`.
        """
        if not self.overlap:
            return
        bucket = self._bucket_of[tensor]
        self._waiting[bucket].discard(tensor)
        if not self._waiting[bucket] and bucket not in self._handles:
            self._start(bucket)

    def close(self):
        """Stop the progress thread that ``overlap`` started (collective)."""
        if self.overlap:
            close_progress(self.comm)

    def step(self):
        """Average ``params.grad`` over the ranks (+ DP noise), then update ``params``."""
        self._average_gradients()
        if self.dp is not None:
            self._add_noise()
        self.rule.apply()
        self.steps += 1

    def epsilon(self, *, delta):
        """Return the DP epsilon at ``delta`` of the steps taken so far.

        dp-accounting's RDP accountant for :attr:`steps` steps at sampling
        rate ``dp.sample_rate`` (see :func:`optim.dp.epsilon`).  Raises
        ``ValueError`` without ``dp``.
        """
        if self.dp is None:
            raise ValueError("epsilon needs an optimizer built with dp=optim.DPConfig(...)")
        return self.dp.epsilon(self.steps, delta=delta)

    def state_dict(self):
        """Return :meth:`DistributedSGD.state_dict`, plus ``"dp"`` with ``dp``.

        ``"dp"`` holds the config's values and the noise generator's state
        (plain ints and strings, JSON-safe), so a resumed run draws the
        same noise as one never interrupted.
        """
        state = super().state_dict()
        if self.dp is not None:
            state["dp"] = dict(dataclasses.asdict(self.dp),
                               generator=self._noise_rng.bit_generator.state)
        return state

    def load_state_dict(self, state):
        """Restore a :meth:`state_dict`; with ``dp``, the same config's.

        Raises ``ValueError`` as :meth:`DistributedSGD.load_state_dict`
        does, and if the state's DP settings differ from ``dp`` (or one of
        the two has none), because a run's privacy accounting assumes one
        setting throughout.
        """
        generator = self._check_dp_state(state) if isinstance(state, dict) else None
        super().load_state_dict(state)
        if generator is not None:
            self._noise_rng.bit_generator.state = generator

    def _add_noise(self):
        # The same draw on every rank, added once to the averaged gradient.
        self._noise_rng.standard_normal(dtype=self._noise.dtype, out=self._noise)
        grad = self.params.grad
        K.add_scaled(grad, self._noise, grad.dtype.type(self.dp.noise_std))

    def _check_dp_state(self, state):
        # The noise generator's saved state, after checking it fits this run.
        saved = state.get("dp")
        settings = ({k: v for k, v in saved.items() if k != "generator"}
                    if isinstance(saved, dict) else saved)
        if (saved is None) != (self.dp is None):
            raise ValueError(f"state has dp settings {settings}, but this optimizer has "
                             f"dp={self.dp}; both must be DP or neither")
        if saved is None:
            return None
        mine = dataclasses.asdict(self.dp)
        if settings != mine:
            raise ValueError(f"state's dp settings {settings} differ from this optimizer's "
                             f"{mine}, because a run's privacy accounting assumes one "
                             "setting throughout")
        generator = saved.get("generator")
        if not isinstance(generator, dict) or generator.get("bit_generator") != \
                type(self._noise_rng.bit_generator).__name__:
            raise ValueError(f"state's dp generator {generator!r} is not a "
                             f"{type(self._noise_rng.bit_generator).__name__} state")
        return generator

    def _reset_overlap(self):
        # Per bucket, the tensors not yet reported ready; no reduction running.
        self._waiting = [set() for _ in self.params.buckets]
        for tensor, bucket in enumerate(self._bucket_of):
            self._waiting[bucket].add(tensor)
        self._handles = {}

    def _start(self, k):
        # Launch bucket k's all-reduce on the progress thread.
        self._handles[k] = collectives.iallreduce(
            self.params.grad[self.params.buckets[k]], self.comm, op="avg",
            algorithm=self.algorithm, check=not self._checked, timeout=self.timeout)

    def _finish_overlapped(self):
        # Start what backward did not report (last bucket first), wait for all.
        for k in reversed(range(len(self.params.buckets))):
            if k not in self._handles:
                self._start(k)
        for handle in self._handles.values():
            handle.wait()
        self._reset_overlap()

    def _average_gradients(self):
        if self.overlap:
            self._finish_overlapped()
            self._checked = True
            self._count_bytes(sum(ring_bytes(b.nbytes, self.comm.Get_size())
                                  for b in self.params.grad_buckets()))
            return
        # The first call checks that all ranks agree on the buckets; the
        # sizes never change afterwards, so later calls skip the check.
        sent = 0
        for k, bucket in enumerate(self.params.grad_buckets()):
            if self.codecs is None:
                collectives.allreduce(bucket, self.comm, op="avg", algorithm=self.algorithm,
                                      check=not self._checked, timeout=self.timeout)
                sent += ring_bytes(bucket.nbytes, self.comm.Get_size())
            else:
                sent += self.codecs[k].allreduce(bucket, self.comm)
        self._checked = True
        self._count_bytes(sent)

    def _count_bytes(self, sent):
        self.last_bytes_sent = sent
        self.bytes_sent += sent


def _check_overlap(overlap, compression):
    if not isinstance(overlap, bool):
        raise TypeError(f"overlap must be a bool, got {type(overlap).__name__}")
    if overlap and compression is not None:
        raise ValueError(f"overlap needs compression=None, got {compression!r}")
    return overlap


def _check_dp(dp, compression, comm):
    # None, or a config every rank agrees on (collective), without a codec.
    if dp is None:
        return None
    if not isinstance(dp, DPConfig):
        raise TypeError(f"dp must be an optim.DPConfig or None, got {type(dp).__name__}")
    if compression is not None:
        raise ValueError(f"dp needs compression=None, got {compression!r}, because the "
                         "privacy analysis assumes the exact average of the clipped "
                         "gradients")
    check_same_config(dp, comm)
    return dp


def _bucket_codecs(compression, nbuckets, algorithm):
    # None, or one codec per bucket (from a CODECS name or copies of one).
    if compression is None:
        return None
    if isinstance(compression, str):
        if compression not in CODECS:
            raise ValueError(f"unknown compression {compression!r}; use None or one of "
                             + ", ".join(repr(c) for c in CODECS))
        make = (lambda: NoCompression(algorithm=algorithm)) if compression == "none" \
            else CODECS[compression]
        return [make() for _ in range(nbuckets)]
    if not callable(getattr(compression, "allreduce", None)):
        raise TypeError("compression must be None, a codec name or a codec with an "
                        f"allreduce(grad, comm) method, got {type(compression).__name__}")
    return [copy.deepcopy(compression) for _ in range(nbuckets)]


def broadcast_parameters(params, comm, *, root=0, timeout=None):
    """Copy root's parameters to every rank (a tree broadcast).

    Parameters
    ----------
    params : optim.FlatParameters or sequence of numpy.ndarray
        A flat model (one broadcast of its whole buffer) or arrays
        (one broadcast each).
    comm : mpi4py.MPI.Intracomm
        The ranks to copy to.
    root : int, default 0
        The rank whose parameters everyone gets.
    timeout : float, optional
        As in :class:`SyncSGD`.

    Returns
    -------
    params

    """
    check_comm(comm)
    check_timeout(timeout)
    arrays = [params.data] if isinstance(params, FlatParameters) else params
    if isinstance(arrays, np.ndarray) or not isinstance(arrays, Sequence):
        raise TypeError("params must be an optim.FlatParameters or a sequence of "
                        f"numpy arrays, got {type(params).__name__}")
    for array in arrays:
        collectives.tree_bcast(array, comm, root=root, timeout=timeout)
    return params
