"""Pipeline model parallelism: the MLP's layers split into stages, one per rank.

Stage ``s`` of a ``p``-rank pipeline communicator holds a contiguous slice
of the layers of :class:`optim.MLP` (``numpy.array_split`` of the layer
indices, so stages differ by at most one layer).  A step cuts the batch
into ``micro_batches`` equal micro-batches; forward sends each
micro-batch's activations to the next stage, backward sends the gradient
with respect to a stage's input (already multiplied by the ReLU mask) to
the previous one.  Messages are buffer ``Isend``/``Irecv`` on a private
duplicate of the communicator, into buffers allocated once; every wait is
bounded (:func:`collectives._wait.wait_all`).

Schedules: ``"gpipe"`` runs all forwards, then all backwards; ``"1f1b"``
runs ``p - s - 1`` warm-up forwards, then alternates one forward and one
backward, then drains the backwards (same result, fewer stashed
activations).  The gradients of the micro-batches are summed and divided by
``micro_batches``, so a step's gradient is that of the mean loss over the
whole batch, as :meth:`optim.MLP.loss_and_grad` computes it.

Data parallelism: :func:`grid` splits a communicator into pipeline groups
and data-parallel groups; give each stage a :class:`optim.SyncSGD` on its
data-parallel group, which averages that stage's gradient over its
replicas with the collectives.

The parameters are those of ``optim.MLP(sizes, seed=seed)`` (the same
random draws), so a pipeline and a single-process model start equal.
"""

import time

import numpy as np
from mpi4py import MPI

from collectives._wait import wait_all
from optim._checks import check_comm, check_int
from optim.flat import FlatParameters
from optim.mlp import _check_sizes, _softmax_cross_entropy

__all__ = ["PipelineMLP", "grid"]

SCHEDULES = ("gpipe", "1f1b")
_FORWARD, _BACKWARD = 0, 1


def grid(comm, stages):
    """Split ``comm`` into pipeline groups of ``stages`` ranks and data groups.

    Rank ``r`` is stage ``r % stages`` of replica ``r // stages``.

    Returns
    -------
    (pipe_comm, data_comm) : tuple of mpi4py.MPI.Intracomm
        ``pipe_comm`` holds the stages of this rank's replica (rank = stage);
        ``data_comm`` holds this stage in every replica (rank = replica).

    """
    check_comm(comm)
    stages = check_int("stages", stages, low=1)
    size = comm.Get_size()
    if size % stages:
        raise ValueError(f"{size} ranks do not split into pipelines of {stages} stages, "
                         f"because {size} is not a multiple of {stages}")
    rank = comm.Get_rank()
    pipe = comm.Split(rank // stages, rank % stages)
    data = comm.Split(rank % stages, rank // stages)
    return pipe, data


class PipelineMLP:
    """Hold and train this rank's stage of an :class:`optim.MLP` split over ``comm``.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, as for :class:`optim.MLP`; needs at least as many
        layers (``len(sizes) - 1``) as ``comm`` has ranks.
    comm : mpi4py.MPI.Intracomm
        The pipeline: rank ``s`` is stage ``s``.
    micro_batch : int
        Rows per micro-batch (every step's batch is a multiple of it).
    micro_batches : int
        Micro-batches per step.
    seed : int, default 0
        As for :class:`optim.MLP`.
    dtype : numpy dtype, default float32
    schedule : {"gpipe", "1f1b"}, default "gpipe"
    timeout : float, optional
        Seconds a stage waits for a neighbour before
        ``collectives.CollectiveTimeoutError``.

    Attributes
    ----------
    flat : optim.FlatParameters
        This stage's weights and biases (give it to an optimizer).
    layers : range
        The global indices of this stage's layers.
    idle_seconds, busy_seconds : float
        Time of the last step spent waiting for a neighbour, and in total.

    Examples
    --------
    >>> pipe = PipelineMLP([64, 64, 64, 10], comm, micro_batch=16, micro_batches=4)
    >>> opt = optim.SyncSGD(pipe.flat, MPI.COMM_SELF, lr=0.1)
    >>> loss = pipe.loss_and_grad(x, y)   # x used on stage 0, y on the last
    >>> opt.step()

    """

    def __init__(self, sizes, comm, *, micro_batch, micro_batches, seed=0,
                 dtype=np.float32, schedule="gpipe", timeout=None):
        check_comm(comm)
        self.sizes = _check_sizes(sizes)
        self.micro_batch = check_int("micro_batch", micro_batch, low=1)
        self.micro_batches = check_int("micro_batches", micro_batches, low=1)
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
        self.schedule, self.timeout = schedule, timeout
        self.stage, self.stages = comm.Get_rank(), comm.Get_size()
        nlayers = len(self.sizes) - 1
        if nlayers < self.stages:
            raise ValueError(f"the MLP has {nlayers} layers, fewer than the "
                             f"{self.stages} stages; each stage needs at least one")
        self.layers = _stage_layers(nlayers, self.stages, self.stage)
        self.flat = FlatParameters(_initial_arrays(self.sizes, seed, self.layers),
                                   dtype=dtype)
        self.weights, self.biases = self.flat.params[0::2], self.flat.params[1::2]
        self.comm = comm.Dup()
        self._allocate()
        self.idle_seconds = self.busy_seconds = 0.0

    @property
    def first(self):
        return self.stage == 0

    @property
    def last(self):
        return self.stage == self.stages - 1

    def _allocate(self):
        # Receive buffers (one per micro-batch) and gradient scratch, once.
        m, b, dtype = self.micro_batches, self.micro_batch, self.flat.dtype
        w_in, w_out = self.sizes[self.layers[0]], self.sizes[self.layers[-1] + 1]
        self._inputs = np.empty((m, b, w_in), dtype)      # received activations
        self._deltas = np.empty((m, b, w_out), dtype)     # received gradients
        self._scratch = [np.empty_like(p) for p in self.flat.params]
        self._stash = [None] * m                          # activations per micro-batch
        self._sent = []                                   # pending Isend requests

    def loss_and_grad(self, x=None, y=None):
        """Run one pipelined forward/backward; write this stage's gradient.

        ``x`` (micro_batch * micro_batches rows) is read on stage 0 only and
        ``y`` on the last stage only; other stages may pass None.  Returns
        the mean loss over the batch on the last stage, None elsewhere.
        The gradient replaces ``self.flat.grad``.
        """
        x, y = self._check_batch(x, y)
        self.flat.zero_grad()
        self.idle_seconds, start, self._losses = 0.0, time.perf_counter(), []
        for kind, k in self._order():
            if kind == _FORWARD:
                self._forward(k, x, y)
            else:
                self._backward(k)
        self._wait([r for r, _, _ in self._sent], [d for _, d, _ in self._sent], "send")
        self._sent = []
        self.flat.grad /= self.micro_batches
        self.busy_seconds = time.perf_counter() - start
        return float(np.mean(self._losses)) if self.last else None

    def _order(self):
        # The schedule: a list of (forward or backward, micro-batch).
        m = self.micro_batches
        if self.schedule == "gpipe":
            return [(_FORWARD, k) for k in range(m)] + [(_BACKWARD, k) for k in range(m)]
        warm = min(self.stages - self.stage - 1, m)
        order = [(_FORWARD, k) for k in range(warm)]
        for k in range(m - warm):
            order += [(_FORWARD, warm + k), (_BACKWARD, k)]
        return order + [(_BACKWARD, k) for k in range(m - warm, m)]

    def _forward(self, k, x, y):
        # Receive (or slice) the input, run this stage's layers, pass it on.
        if self.first:
            a = x[k * self.micro_batch:(k + 1) * self.micro_batch]
        else:
            a = self._receive(self._inputs[k], self.stage - 1, _FORWARD, k)
        acts = [a]
        final = len(self.sizes) - 2
        for w, b, i in zip(self.weights, self.biases, self.layers):
            z = acts[-1] @ w
            z += b
            acts.append(z if i == final else np.maximum(z, 0, out=z))
        if self.last:
            yk = y[k * self.micro_batch:(k + 1) * self.micro_batch]
            loss, acts[-1] = _softmax_cross_entropy(acts[-1], yk)
            self._losses.append(loss)
        else:
            self._send(acts[-1], self.stage + 1, _FORWARD, k)
        self._stash[k] = acts

    def _backward(self, k):
        # Receive dLoss/dz of the last layer, accumulate, send the input's.
        acts, self._stash[k] = self._stash[k], None
        if self.last:
            delta = acts[-1]  # the loss gradient, stored by _forward
        else:
            delta = self._receive(self._deltas[k], self.stage + 1, _BACKWARD, k)
        for j in range(len(self.weights) - 1, -1, -1):
            self._accumulate(2 * j, np.matmul(acts[j].T, delta, out=self._scratch[2 * j]))
            self._accumulate(2 * j + 1, np.sum(delta, axis=0, out=self._scratch[2 * j + 1]))
            if j or not self.first:
                delta = delta @ self.weights[j].T
                delta *= acts[j] > 0
        if not self.first:
            self._send(delta, self.stage - 1, _BACKWARD, k)

    def _accumulate(self, index, value):
        self.flat.grads[index] += value

    def _receive(self, buf, source, kind, k):
        # A bounded wait; the time counts as idle (the bubble).
        t0 = time.perf_counter()
        request = self.comm.Irecv(buf, source, 2 * k + kind)
        self._wait([request], [source], "receive")
        self.idle_seconds += time.perf_counter() - t0
        return buf

    def _send(self, array, dest, kind, k):
        self._sent.append((self.comm.Isend(array, dest, 2 * k + kind), dest, array))

    def _wait(self, requests, peers, what):
        wait_all(requests, peers, operation=f"pipeline {what} on stage {self.stage}",
                 timeout=self.timeout, comm=self.comm)

    def _check_batch(self, x, y):
        n = self.micro_batch * self.micro_batches
        if self.first:
            x = np.ascontiguousarray(x, dtype=self.flat.dtype)
            if x.shape != (n, self.sizes[0]):
                raise ValueError(f"x has shape {x.shape}, expected ({n}, {self.sizes[0]}): "
                                 f"{self.micro_batches} micro-batches of {self.micro_batch}")
        if self.last:
            y = np.asarray(y)
            if y.shape != (n,):
                raise ValueError(f"y has shape {y.shape}, expected ({n},)")
        return x, y

    def free(self):
        """Free the private communicator."""
        if self.comm != MPI.COMM_NULL:
            self.comm.Free()

    def __repr__(self):
        return (f"PipelineMLP(stage {self.stage}/{self.stages}, layers "
                f"{self.layers.start}..{self.layers.stop - 1}, {self.micro_batches} x "
                f"{self.micro_batch}, {self.schedule})")


def _stage_layers(nlayers, stages, stage):
    # Contiguous, balanced slices of the layer indices.
    bounds = [len(c) for c in np.array_split(np.arange(nlayers), stages)]
    lo = sum(bounds[:stage])
    return range(lo, lo + bounds[stage])


def _initial_arrays(sizes, seed, layers):
    # The same draws as optim.MLP; keep only this stage's layers.
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    arrays = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
        if i in layers:
            arrays += [w, np.zeros(fan_out)]
    return arrays
