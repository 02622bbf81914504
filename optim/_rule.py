"""The SGD update rule: hyperparameters, momentum state, one fused kernel.

Every optimizer applies this same rule; they differ only in what they
average (gradients or parameters) and with whom.  The rule is
``torch.optim.SGD`` with dampening 0::

    d = grad + weight_decay * param
    v = momentum * v + d                (v starts at zero)
    d = d + momentum * v if nesterov else v
    param -= lr * d
"""

import numpy as np

from optim import _kernels as K
from optim._checks import check_flag, check_flat, check_int, check_number

__all__ = ["SGDRule"]


class SGDRule:
    """Validated SGD hyperparameters and the momentum buffer for ``flat``.

    Raises ``TypeError``/``ValueError`` for a bad hyperparameter: ``lr``
    must be > 0, ``momentum`` in [0, 1), ``weight_decay`` >= 0, all finite;
    ``nesterov`` needs ``momentum`` > 0.
    """

    def __init__(self, flat, *, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        check_flat(flat)
        self.flat = flat
        self.velocity = None
        self.configure(lr=lr, momentum=momentum, weight_decay=weight_decay,
                       nesterov=nesterov)

    def configure(self, *, lr, momentum, weight_decay, nesterov):
        """Validate and set all hyperparameters."""
        lr = check_number("lr", lr, low=0.0, low_open=True)
        momentum = check_number("momentum", momentum, low=0.0, high=1.0, high_open=True,
                                because=" because momentum >= 1 makes the steps grow "
                                        "without bound")
        weight_decay = check_number("weight_decay", weight_decay, low=0.0)
        nesterov = check_flag("nesterov", nesterov)
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0, got momentum=0.0, "
                             "because Nesterov's look-ahead is a momentum method")
        self.lr, self.momentum = lr, momentum
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def apply(self):
        """Update ``flat.data`` in place from ``flat.grad``."""
        data, grad = self.flat.data, self.flat.grad
        scalar = data.dtype.type
        if self.momentum == 0:
            K.sgd_step(data, grad, scalar(self.lr), scalar(self.weight_decay))
            return
        if self.velocity is None:
            self.velocity = np.zeros_like(data)
        K.sgd_momentum_step(data, grad, self.velocity, scalar(self.lr),
                            scalar(self.momentum), scalar(self.weight_decay),
                            self.nesterov)

    def state_dict(self, kind, steps):
        """Return hyperparameters, ``steps`` and a copy of the momentum buffer."""
        velocity = None if self.velocity is None else self.velocity.copy()
        return {"optimizer": kind, "steps": steps, "lr": self.lr,
                "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov, "momentum_buffer": velocity}

    def load_state_dict(self, kind, state):
        """Restore what :meth:`state_dict` returned; return its step count."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = sorted({"optimizer", "steps", "lr", "momentum", "weight_decay",
                          "nesterov", "momentum_buffer"} - set(state))
        if missing:
            raise ValueError(f"state is missing {', '.join(missing)}")
        if state["optimizer"] != kind:
            raise ValueError(f"state was saved by {state['optimizer']}, not {kind}")
        steps = check_int("steps", state["steps"], low=0)
        velocity = self._check_velocity(state["momentum_buffer"])
        self.configure(lr=state["lr"], momentum=state["momentum"],
                       weight_decay=state["weight_decay"], nesterov=state["nesterov"])
        self.velocity = velocity
        return steps

    def _check_velocity(self, velocity):
        if velocity is None:
            return None
        data = self.flat.data
        if not isinstance(velocity, np.ndarray) or velocity.shape != data.shape:
            shape = getattr(velocity, "shape", type(velocity).__name__)
            raise ValueError(f"momentum_buffer has shape {shape}, but the parameters "
                             f"have {data.shape}")
        return np.array(velocity, dtype=data.dtype, order="C")
