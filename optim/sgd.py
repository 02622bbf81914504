"""Synchronous data-parallel SGD: average the gradients, same update everywhere.

Each step all-reduces the gradient buffer (one call per bucket, op
"avg"), then every rank applies the same SGD update to the same
parameters.  The all-reduce gives every rank the same bytes, and the
update is deterministic, so parameters that start equal (see
:func:`broadcast_parameters`) stay bitwise equal on every rank, and the
run equals single-process SGD on the whole global batch up to the
rounding of the reduction order.
"""

from collections.abc import Sequence

import numpy as np

import collectives
from optim._base import DistributedSGD
from optim._checks import check_comm, check_timeout
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
                 nesterov=False, algorithm="auto", timeout=None):
        super().__init__(params, comm, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, nesterov=nesterov, timeout=timeout)
        if algorithm not in collectives.ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; use one of "
                             + ", ".join(repr(a) for a in collectives.ALGORITHMS))
        self.algorithm = algorithm
        self._checked = False

    def step(self):
        """Average ``params.grad`` over the ranks, then update ``params``."""
        self._average_gradients()
        self.rule.apply()
        self.steps += 1

    def _average_gradients(self):
        # The first call checks that all ranks agree on the buckets; the
        # sizes never change afterwards, so later calls skip the check.
        for bucket in self.params.grad_buckets():
            collectives.allreduce(bucket, self.comm, op="avg", algorithm=self.algorithm,
                                  check=not self._checked, timeout=self.timeout)
        self._checked = True


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
