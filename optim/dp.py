"""Differentially private SGD (DP-SGD) for :class:`optim.MLP` with SyncSGD.

Each step (Abadi et al. 2016):

1. per-sample gradients ``g_i`` of the loss (computed here from the MLP's
   public ``weights`` and ``biases``, in the layout of ``model.flat``);
2. each clipped to norm ``C``: ``g_i * min(1, C / |g_i|)``;
3. the clipped gradients averaged over the global batch of ``B`` samples
   (locally here, then across the ranks by :class:`optim.SyncSGD`), plus
   Gaussian noise of standard deviation ``sigma * C`` on the sum, i.e.
   ``sigma * C / B`` on the average, added once per step.

The noise is the SAME on every rank: each rank draws it from its own
``numpy.random.default_rng(seed)`` (the seed is checked to agree across
ranks when the helper is built), one draw per step, and adds
``sigma * C * z / B`` to its local average before SyncSGD averages.  The
average of identical values is that value, so the averaged gradient holds
the noise exactly once (up to the rounding of the all-reduce), and since
the all-reduce gives every rank the same bytes the replicas stay bitwise
identical.  (SyncSGD has no hook between averaging and the update; with
one, the noise would be added after the average instead.)

Privacy: :func:`epsilon` asks Google's ``dp-accounting`` library (RDP
accountant) for the epsilon of ``steps`` Poisson-subsampled Gaussian
mechanisms with sampling rate ``B / N``.  The training job shuffles and
takes fixed-size batches, as most DP-SGD code does; the accountant's
Poisson-sampling assumption is the usual approximation of that.
"""

import numpy as np

import collectives
from optim._checks import check_comm, check_int, check_number
from optim.mlp import MLP

__all__ = ["DPGradient", "clip_per_sample", "epsilon", "per_sample_gradients"]


def per_sample_gradients(model, x, y):
    """Return the (n, model.flat.size) gradients of each sample's loss.

    Row ``i`` is the gradient of the cross-entropy of sample ``i`` alone,
    laid out like ``model.flat.grad``; the mean of the rows is what
    :meth:`optim.MLP.loss_and_grad` writes.
    """
    x, y = _check_batch(model, x, y)
    acts = _forward(model, x)
    delta = _softmax(acts[-1])
    delta[np.arange(len(y)), y] -= 1
    out = np.empty((len(y), model.flat.size), dtype=model.flat.dtype)
    offsets = model.flat.offsets
    for i in range(len(model.weights) - 1, -1, -1):
        w_lo, b_lo, b_hi = offsets[2 * i], offsets[2 * i + 1], offsets[2 * i + 2]
        np.einsum("ni,nj->nij", acts[i], delta,
                  out=out[:, w_lo:b_lo].reshape(len(y), *model.weights[i].shape))
        out[:, b_lo:b_hi] = delta
        if i:
            delta = delta @ model.weights[i].T
            delta *= acts[i] > 0
    return out


def clip_per_sample(grads, clip_norm):
    """Scale each row of ``grads`` in place to norm at most ``clip_norm``.

    Returns the rows' norms before clipping.
    """
    clip_norm = check_number("clip_norm", clip_norm, low=0.0, low_open=True)
    norms = np.sqrt(np.einsum("ij,ij->i", grads, grads))
    grads *= (clip_norm / np.maximum(norms, clip_norm))[:, None].astype(grads.dtype)
    return norms


class DPGradient:
    """Write DP-SGD gradients into ``model.flat.grad`` for a SyncSGD step.

    Parameters
    ----------
    model : optim.MLP
    comm : mpi4py.MPI.Intracomm
        The data-parallel ranks (those of the :class:`optim.SyncSGD`).
    clip_norm : float
        ``C`` > 0, the per-sample gradient norm bound.
    noise_multiplier : float
        ``sigma`` >= 0; the noise on the summed gradient has standard
        deviation ``sigma * C``.
    seed : int
        Seed of the noise generator; must be the same on every rank
        (checked here, collectively).

    Examples
    --------
    >>> dp = DPGradient(model, comm, clip_norm=1.0, noise_multiplier=1.1, seed=0)
    >>> opt = optim.SyncSGD(model.flat, comm, lr=0.1)
    >>> loss = dp.loss_and_grad(x_local, y_local)
    >>> opt.step()      # averages: mean clipped gradient + noise once

    """

    def __init__(self, model, comm, *, clip_norm, noise_multiplier, seed):
        if not isinstance(model, MLP):
            raise TypeError(f"model must be an optim.MLP, got {type(model).__name__}")
        check_comm(comm)
        self.model, self.comm = model, comm
        self.clip_norm = check_number("clip_norm", clip_norm, low=0.0, low_open=True)
        self.noise_multiplier = check_number("noise_multiplier", noise_multiplier, low=0.0)
        self.seed = check_int("seed", seed, low=0)
        _check_same_seed(self.seed, comm)
        self.rng = np.random.default_rng(self.seed)
        self.steps = 0
        self.last_norms = None

    def loss_and_grad(self, x, y):
        """Write this rank's share of the private gradient; return the mean loss.

        Every rank must pass the same number of samples (the global batch
        is that times the rank count).
        """
        grads = per_sample_gradients(self.model, x, y)
        loss = _mean_loss(self.model, x, y)
        self.last_norms = clip_per_sample(grads, self.clip_norm)
        global_batch = len(grads) * self.comm.Get_size()
        noise = self.rng.standard_normal(self.model.flat.size)  # same on every rank
        noise *= self.noise_multiplier * self.clip_norm / global_batch
        np.mean(grads, axis=0, out=self.model.flat.grad)
        self.model.flat.grad += noise.astype(self.model.flat.dtype)
        self.steps += 1
        return loss


def epsilon(*, noise_multiplier, sample_rate, steps, delta):
    """Return the epsilon of DP-SGD at ``delta`` (dp-accounting's RDP accountant).

    ``steps`` Poisson-subsampled Gaussian mechanisms of noise multiplier
    ``noise_multiplier`` and sampling rate ``sample_rate`` (batch / dataset).
    """
    import dp_accounting

    noise_multiplier = check_number("noise_multiplier", noise_multiplier, low=0.0,
                                    low_open=True)
    sample_rate = check_number("sample_rate", sample_rate, low=0.0, high=1.0,
                               low_open=True)
    steps = check_int("steps", steps, low=0)
    delta = check_number("delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def _check_batch(model, x, y):
    x = np.asarray(x, dtype=model.flat.dtype)
    y = np.asarray(y)
    if x.ndim != 2 or x.shape[1] != model.sizes[0]:
        raise ValueError(f"x has shape {x.shape}, expected (batch, {model.sizes[0]})")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y has shape {y.shape}, expected ({x.shape[0]},) to match x")
    return x, y


def _forward(model, x):
    # The MLP's forward from its public weights: inputs of every layer, logits.
    acts = [x]
    last = len(model.weights) - 1
    for i, (w, b) in enumerate(zip(model.weights, model.biases)):
        z = acts[-1] @ w + b
        acts.append(z if i == last else np.maximum(z, 0))
    return acts


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _mean_loss(model, x, y):
    # Mean cross-entropy from a log-softmax (no log of an underflowed 0).
    logits = model.forward(x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -float(np.mean(log_probs[np.arange(len(y)), np.asarray(y)]))


def _check_same_seed(seed, comm):
    # Max of (seed, -seed) over the ranks gives the largest and smallest.
    both = np.array([seed, -seed], dtype=np.int64)
    collectives.allreduce(both, comm, op="max")
    if both[0] != seed or -both[1] != seed:
        raise ValueError(f"seed must be the same on every rank, because the noise must "
                         f"be; rank {comm.Get_rank()} has {seed}, the ranks range from "
                         f"{-both[1]} to {both[0]}")
