"""Differentially private SGD (DP-SGD): clipping, noise config, accountant.

Each step (Abadi et al. 2016) of ``SyncSGD(..., dp=DPConfig(...))``:

1. every rank computes the per-sample gradients ``g_i`` of its local batch
   (:func:`per_sample_gradients`, from the MLP's public ``weights`` and
   ``biases``, laid out like ``model.flat``), clips each to norm ``C``
   (``g_i * min(1, C / |g_i|)``, :func:`clip_per_sample`) and writes their
   mean into ``model.flat.grad``: :func:`clipped_loss_and_grad`;
2. :class:`optim.SyncSGD` averages that over the ranks (the all-reduce,
   unchanged), which gives the mean of the ``B`` clipped gradients of the
   global batch;
3. then, once, AFTER the all-reduce and before the update, SyncSGD adds
   Gaussian noise of standard deviation ``sigma * C / B`` to the averaged
   gradient (``sigma * C`` on the sum; ``C / B`` is the sensitivity of
   the average to one sample).

Why the replicas stay bitwise identical: the all-reduce gives every rank
the same bytes, and every rank draws the same noise, from its own
generator ``numpy.random.default_rng([seed, NOISE_STREAM])`` that starts
in the same state everywhere (SyncSGD checks at construction that all
ranks hold the same :class:`DPConfig`, seed included) and advances by one
draw of the gradient's size per step.  Same gradient plus same noise,
then the same deterministic update: same parameters.  The noise is added
exactly once, after the average, so its scale does not depend on the
number of ranks.  The generator's state is part of
:meth:`optim.SyncSGD.state_dict`, so a resumed run draws the same noise.

The privacy holds against whoever sees the updates but not the seed (or
a checkpoint, which holds the generator's state): keep both secret.

Privacy accounting: :func:`epsilon` asks Google's ``dp-accounting``
library (RDP accountant) for the epsilon of ``steps`` Poisson-subsampled
Gaussian mechanisms with sampling rate ``B / N``.  Training with shuffled
fixed-size batches (as the training job does, dropping short batches), as
most DP-SGD code does, is the usual approximation of Poisson sampling.
"""

import dataclasses

import numpy as np

import collectives
from optim._checks import check_comm, check_int, check_number
from optim.mlp import MLP

__all__ = ["NOISE_STREAM", "DPConfig", "check_same_config", "clip_per_sample",
           "clipped_loss_and_grad", "epsilon", "per_sample_gradients"]

NOISE_STREAM = 0x44505347  # "DPSG": keeps the noise apart from other uses of the seed


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPConfig:
    """The DP-SGD settings of one run, for ``optim.SyncSGD(..., dp=config)``.

    Parameters
    ----------
    clip_norm : float
        ``C`` > 0, the bound on each per-sample gradient's L2 norm.
    noise_multiplier : float
        ``sigma`` > 0; the noise on the averaged gradient has standard
        deviation ``sigma * C / batch_size``.
    batch_size : int
        ``B`` >= 1, the global batch (all ranks together) of every step.
    dataset_size : int
        ``N`` >= ``batch_size``, the training samples (for the sampling
        rate ``B / N`` of the accountant).
    seed : int
        >= 0, seed of the noise generator; the same on every rank.

    Raises
    ------
    TypeError, ValueError
        For a bad value (local check, no message sent).

    Examples
    --------
    >>> dp = optim.DPConfig(clip_norm=1.0, noise_multiplier=1.1, batch_size=64,
    ...                     dataset_size=1438, seed=0)
    >>> opt = optim.SyncSGD(model.flat, comm, lr=0.1, dp=dp)   # collective
    >>> clipped_loss_and_grad(model, x_local, y_local, clip_norm=dp.clip_norm)
    >>> opt.step()                       # average, + noise once, update
    >>> opt.epsilon(delta=1e-5)

    """

    clip_norm: float
    noise_multiplier: float
    batch_size: int
    dataset_size: int
    seed: int

    def __post_init__(self):
        checked = {
            "clip_norm": check_number("clip_norm", self.clip_norm, low=0.0, low_open=True),
            "noise_multiplier": check_number(
                "noise_multiplier", self.noise_multiplier, low=0.0, low_open=True,
                because=" because without noise there is no privacy"),
            "batch_size": check_int("batch_size", self.batch_size, low=1),
            "dataset_size": check_int("dataset_size", self.dataset_size, low=1),
            "seed": check_int("seed", self.seed, low=0)}
        if checked["batch_size"] > checked["dataset_size"]:
            raise ValueError(f"batch_size {self.batch_size} is larger than dataset_size "
                             f"{self.dataset_size}; the sampling rate must be <= 1")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def noise_std(self):
        """``sigma * C / B``: the noise's standard deviation on the average."""
        return self.noise_multiplier * self.clip_norm / self.batch_size

    @property
    def sample_rate(self):
        """``B / N``, the accountant's sampling rate."""
        return self.batch_size / self.dataset_size

    def noise_generator(self):
        """Return a new noise generator (the same on every rank)."""
        return np.random.default_rng([self.seed, NOISE_STREAM])

    def epsilon(self, steps, *, delta):
        """Return the epsilon at ``delta`` after ``steps`` steps (:func:`epsilon`)."""
        return epsilon(noise_multiplier=self.noise_multiplier,
                       sample_rate=self.sample_rate, steps=steps, delta=delta)


_AGREED = (("seed", np.int64), ("batch_size", np.int64), ("dataset_size", np.int64),
           ("clip_norm", np.float64), ("noise_multiplier", np.float64))


def check_same_config(config, comm):
    """Raise ``ValueError`` unless every rank of ``comm`` holds ``config`` (collective).

    Two small all-reduces, the max of each value and of its negative: the
    integers as int64, the norms as float64 (exact comparisons).
    """
    if not isinstance(config, DPConfig):
        raise TypeError(f"dp must be an optim.DPConfig or None, got {type(config).__name__}")
    check_comm(comm)
    for dtype in (np.int64, np.float64):
        names = [name for name, kind in _AGREED if kind is dtype]
        mine = np.array([getattr(config, name) for name in names], dtype=dtype)
        both = np.concatenate([mine, -mine])
        collectives.allreduce(both, comm, op="max")
        for name, value, high, low in zip(names, mine, both[:len(names)],
                                          -both[len(names):]):
            if high != low:
                raise ValueError(f"DPConfig.{name} must be the same on every rank, because "
                                 f"the noise must be; rank {comm.Get_rank()} has {value}, "
                                 f"the ranks range from {low} to {high}")


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


def clipped_loss_and_grad(model, x, y, *, clip_norm):
    """Write the mean of the clipped per-sample gradients; return the mean loss.

    The DP replacement of :meth:`optim.MLP.loss_and_grad`: ``model.flat.grad``
    becomes the mean over the rows of ``x`` of each sample's gradient
    clipped to norm ``clip_norm``.  Every rank must pass the same number of
    samples, ``DPConfig.batch_size / ranks``, so that SyncSGD's average is
    the mean over the global batch; SyncSGD then adds the noise.

    Raises
    ------
    TypeError, ValueError
        For a model that is not an :class:`optim.MLP`, a batch of the wrong
        shape or a bad ``clip_norm``.

    """
    if not isinstance(model, MLP):
        raise TypeError(f"model must be an optim.MLP, got {type(model).__name__}")
    grads = per_sample_gradients(model, x, y)
    clip_per_sample(grads, clip_norm)
    np.mean(grads, axis=0, out=model.flat.grad)
    return _mean_loss(model, x, y)


def epsilon(*, noise_multiplier, sample_rate, steps, delta):
    """Return the epsilon of DP-SGD at ``delta`` (dp-accounting's RDP accountant).

    ``steps`` Poisson-subsampled Gaussian mechanisms of noise multiplier
    ``noise_multiplier`` and sampling rate ``sample_rate`` (batch / dataset);
    0.0 for no steps.  Needs ``pip install dp-accounting`` (the ``dp``
    extra).
    """
    import dp_accounting

    noise_multiplier = check_number("noise_multiplier", noise_multiplier, low=0.0,
                                    low_open=True)
    sample_rate = check_number("sample_rate", sample_rate, low=0.0, high=1.0,
                               low_open=True)
    steps = check_int("steps", steps, low=0)
    delta = check_number("delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)
    if steps == 0:
        return 0.0  # nothing released yet
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
