"""Which samples each rank trains on in an epoch (a distributed sampler).

The rule, the same as torch's ``DistributedSampler``:

1. Permute ``range(n)`` with a generator seeded by ``(seed, epoch)``: a new
   order every epoch, the same order on every rank and every run
   (``shuffle=False`` keeps ``0..n-1``).
2. Make the length a multiple of ``size``.  By default
   (``drop_last=False``) the permutation is extended to
   ``ceil(n / size) * size`` by repeating it from its start, so every
   sample is used and the first ``(-n) % size`` of the permutation are used
   twice.  With ``drop_last=True`` it is cut to ``(n // size) * size``, so
   no sample is used twice and the last ``n % size`` of the permutation
   are skipped this epoch.
3. Rank ``r`` takes every ``size``-th entry starting at ``r``.

Every rank gets the same number of indices; the shards are disjoint
(apart from the padding repeats of step 2) and together cover all
samples (apart from the drops of step 2).
"""

import numpy as np

from optim._checks import check_flag, check_int

__all__ = ["shard"]


def shard(n, rank, size, *, epoch=0, seed=0, shuffle=True, drop_last=False):
    """Return rank ``rank``'s sample indices for ``epoch`` (see the module rule).

    Parameters
    ----------
    n : int
        Number of samples (>= 0).
    rank, size : int
        This rank and the number of ranks (``0 <= rank < size``).
    epoch : int, default 0
        Epoch number (>= 0); each epoch has its own order.
    seed : int, default 0
        Seed (>= 0); the same on every rank.
    shuffle : bool, default True
        Permute the samples (else keep their order).
    drop_last : bool, default False
        Cut the order to a multiple of ``size`` instead of padding it.

    Returns
    -------
    numpy.ndarray of int64
        ``ceil(n / size)`` indices (``n // size`` with ``drop_last``).

    Examples
    --------
    >>> shard(10, 1, 4, shuffle=False)
    array([1, 5, 9])
    >>> shard(10, 3, 4, shuffle=False)   # padded with sample 0
    array([3, 7, 1])

    """
    n = check_int("n", n, low=0)
    size = check_int("size", size, low=1)
    rank = check_int("rank", rank, low=0)
    if rank >= size:
        raise ValueError(f"rank {rank} is out of range for size {size} (0..{size - 1})")
    epoch = check_int("epoch", epoch, low=0)
    seed = check_int("seed", seed, low=0)
    order = _order(n, epoch, seed, check_flag("shuffle", shuffle))
    total = (n // size if check_flag("drop_last", drop_last) else -(-n // size)) * size
    return np.resize(order, total)[rank::size] if n else order


def _order(n, epoch, seed, shuffle):
    # The same permutation on every rank: the generator depends only on
    # (seed, epoch).
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)
