"""Partial-synchronous SGD (P-Reduce style) and local SGD.

Each step, a rank applies the SGD update with its *own* gradient, then
averages its parameters with the group of ranks that
:class:`collectives.PartialReducer` forms from whoever is ready: no rank
waits for the slowest one, only for ``group_size - 1`` partners.  The
momentum buffer stays local, as in torch's post-local SGD.

With ``group_size == comm.size`` every averaging includes all ranks, and
``period = k`` averages after every k-th local step: plain periodic model
averaging (local SGD); ``period = 1`` is synchronous model averaging.
"""

from collectives import PartialReducer
from optim._base import DistributedSGD
from optim._checks import check_int, check_number

__all__ = ["PartialSyncSGD"]


class PartialSyncSGD(DistributedSGD):
    """Step locally, then average parameters with the group that is ready.

    Parameters
    ----------
    params, comm, lr, momentum, weight_decay, nesterov, timeout
        As in :class:`optim.SyncSGD`.
    group_size : int
        Ranks per averaging group, 1 to ``comm.size``.
    period : int, default 1
        Average after every ``period``-th step (local steps in between).
    staleness : float, default 0
        Staleness weighting exponent: each averaging passes this rank's
        step count, and the reducer weights a member ``lag`` steps behind
        the group's most advanced one by ``(1 + lag) ** -staleness``
        (0: plain average).
    **reducer_options
        Passed on to :class:`collectives.PartialReducer`:
        ``min_group_size``, ``group_timeout``, ``full_sync_every``,
        ``connect_within``, ``thread``.

    Notes
    -----
    Parameters are not identical across ranks during training; average
    them once at the end (``collectives.allreduce(params.data, comm,
    op="avg")``) for one model.  Call :meth:`close` (or use ``with``) when
    this rank is done, so the reducer stops grouping it.

    Examples
    --------
    >>> with optim.PartialSyncSGD(model.flat, comm, lr=0.05, group_size=2) as opt:
    ...     for x, y in batches:
    ...         model.loss_and_grad(x, y)
    ...         group = opt.step()        # the group's record, or None

    """

    def __init__(self, params, comm, *, lr, group_size, period=1, momentum=0.0,
                 weight_decay=0.0, nesterov=False, staleness=0.0, timeout=None,
                 **reducer_options):
        super().__init__(params, comm, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, nesterov=nesterov, timeout=timeout)
        self.group_size = check_int("group_size", group_size, low=1)
        if self.group_size > comm.Get_size():
            raise ValueError(f"group_size {group_size} is larger than the communicator "
                             f"({comm.Get_size()} ranks)")
        self.period = check_int("period", period, low=1)
        self.staleness = check_number("staleness", staleness, low=0.0)
        self.reducer = PartialReducer(comm, self.group_size, staleness=self.staleness,
                                      timeout=self.timeout, **reducer_options)
        self.last_group = None

    def step(self):
        """Update with this rank's gradient; every ``period`` steps, average.

        Returns the reducer's :class:`collectives.GroupRecord` (members,
        sequence number, weights, wait) after an averaging, else None.
        """
        self.rule.apply()
        self.steps += 1
        if self.steps % self.period:
            return None
        self.last_group = self.reducer.reduce(self.params.data, step=self.steps)
        return self.last_group

    def close(self):
        """Leave the group generator: this rank will average no more."""
        self.reducer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
