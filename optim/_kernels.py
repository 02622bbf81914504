"""Numba kernels for the optimizers' parameter updates.

One fused pass over the flat buffers per step, instead of four NumPy
passes with temporaries.  Kernels trust their input (same length, same
dtype, C-contiguous 1-D arrays); the optimizers check everything first.
The arithmetic is exactly that of ``torch.optim.SGD`` with dampening 0, in
the parameters' dtype, so every rank that applies the same gradient to the
same parameters gets the same bytes.
"""

import numba as nb

from collectives._compile import kernel

__all__ = ["add_scaled", "sgd_step", "sgd_momentum_step"]

_FLOATS = (nb.float32, nb.float64)


def _jit(nargs, nscalars, *, flag=False):
    """A kernel for float32 and float64 arrays, scalars of that type."""
    sigs = [nb.void(*([t[::1]] * nargs), *([t] * nscalars), *([nb.boolean] if flag else []))
            for t in _FLOATS]
    return kernel(sigs, nogil=True, boundscheck=False)


@_jit(2, 1)
def add_scaled(target, source, scale):
    """Target += scale * source (e.g. DP noise onto the averaged gradient)."""
    for i in range(target.size):
        target[i] = target[i] + scale * source[i]


@_jit(2, 2)
def sgd_step(param, grad, lr, weight_decay):
    """Param -= lr * (grad + weight_decay * param)."""
    for i in range(param.size):
        d = grad[i] + weight_decay * param[i]
        param[i] = param[i] - lr * d


@_jit(3, 3, flag=True)
def sgd_momentum_step(param, grad, velocity, lr, momentum, weight_decay, nesterov):
    """Heavy-ball or Nesterov step; ``velocity`` starts at zero."""
    for i in range(param.size):
        d = grad[i] + weight_decay * param[i]
        v = momentum * velocity[i] + d
        velocity[i] = v
        if nesterov:
            d = d + momentum * v
        else:
            d = v
        param[i] = param[i] - lr * d
