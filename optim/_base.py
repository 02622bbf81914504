"""What every optimizer shares: the flat parameters, the rule, the step count."""

from optim._checks import check_comm, check_number, check_timeout
from optim._rule import SGDRule

__all__ = ["DistributedSGD"]


class DistributedSGD:
    """Base of the optimizers: holds ``params``, ``comm``, the rule and ``steps``.

    Subclasses define :meth:`step`.  Arguments are those of
    :class:`optim.SyncSGD`.
    """

    def __init__(self, params, comm, *, lr, momentum=0.0, weight_decay=0.0,
                 nesterov=False, timeout=None):
        check_comm(comm)
        self.rule = SGDRule(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                            nesterov=nesterov)
        self.params = params
        self.comm = comm
        self.timeout = check_timeout(timeout)
        self.steps = 0

    @property
    def lr(self):
        """The learning rate; assign to change it (for a schedule)."""
        return self.rule.lr

    @lr.setter
    def lr(self, value):
        self.rule.lr = check_number("lr", value, low=0.0, low_open=True)

    def zero_grad(self):
        """Set every gradient to zero."""
        self.params.zero_grad()

    def state_dict(self):
        """Return hyperparameters, step count and a copy of the momentum buffer.

        The dict holds plain Python numbers and one NumPy array (or None),
        so it pickles and saves with ``numpy.savez``.
        """
        return self.rule.state_dict(type(self).__name__, self.steps)

    def load_state_dict(self, state):
        """Restore a :meth:`state_dict` of the same optimizer class and model.

        Raises ``ValueError`` if it came from another optimizer class or a
        model of another size, and for bad hyperparameters.
        """
        self.steps = self.rule.load_state_dict(type(self).__name__, state)

    def __repr__(self):
        r = self.rule
        return (f"{type(self).__name__}(lr={r.lr}, momentum={r.momentum}, "
                f"weight_decay={r.weight_decay}, nesterov={r.nesterov}, "
                f"steps={self.steps}, ranks={self.comm.Get_size()})")
