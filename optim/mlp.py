"""A small NumPy multilayer perceptron with explicit forward and backward.

ReLU hidden layers, a linear output layer and softmax cross-entropy loss
averaged over the batch.  Weights and biases live in one
:class:`optim.FlatParameters`; :meth:`MLP.loss_and_grad` writes the
gradients straight into its flat gradient buffer, ready for an optimizer.
"""

import numpy as np

from optim._checks import check_int
from optim.flat import FlatParameters

__all__ = ["MLP"]


class MLP:
    """Fully connected network ``sizes[0] -> ... -> sizes[-1]``.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first, classes last (at least two, each >= 1).
    seed : int, default 0
        Seed of the initial weights (He normal; biases zero).
    dtype : numpy dtype, default float32
        float32 or float64.
    bucket_bytes, grad_comm : optional
        Passed to :class:`optim.FlatParameters` (``grad_comm``: the
        gradient in shared memory, for the zero-copy all-reduce).

    Examples
    --------
    >>> model = MLP([64, 32, 10], seed=0)
    >>> loss = model.loss_and_grad(x, y)      # fills model.flat.grad
    >>> model.accuracy(x_test, y_test)

    """

    def __init__(self, sizes, *, seed=0, dtype=np.float32, bucket_bytes=None, grad_comm=None):
        self.sizes = _check_sizes(sizes)
        rng = np.random.default_rng(check_int("seed", seed, low=0))
        arrays = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            arrays.append(rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in))
            arrays.append(np.zeros(fan_out))
        self.flat = FlatParameters(arrays, dtype=dtype, bucket_bytes=bucket_bytes,
                                   grad_comm=grad_comm)
        self.weights, self.biases = self.flat.params[0::2], self.flat.params[1::2]
        self.weight_grads, self.bias_grads = self.flat.grads[0::2], self.flat.grads[1::2]

    def forward(self, x):
        """Return the logits for inputs ``x`` of shape (batch, sizes[0])."""
        return self._forward(self._input(x))[-1]

    def loss_and_grad(self, x, y, *, grad_ready=None):
        """Return the mean cross-entropy on (x, y); write its gradient.

        The gradient replaces (does not add to) ``self.flat.grad``.
        ``grad_ready(tensor)``, if given, is called with the index into
        ``self.flat.grads`` of each gradient as soon as it is written, last
        layer first (e.g. :meth:`optim.SyncSGD.grad_ready`).
        """
        x = self._input(x)
        y = np.asarray(y)
        if y.shape != (x.shape[0],):
            raise ValueError(f"y has shape {y.shape}, expected ({x.shape[0]},) "
                             "to match x")
        activations = self._forward(x)
        loss, delta = _softmax_cross_entropy(activations[-1], y)
        self._backward(activations, delta, grad_ready)
        return loss

    def predict(self, x):
        """Return the predicted class of each row of ``x``."""
        return np.argmax(self.forward(x), axis=1)

    def accuracy(self, x, y):
        """Return the fraction of rows of ``x`` classified as ``y``."""
        return float(np.mean(self.predict(x) == np.asarray(y)))

    def _input(self, x):
        x = np.asarray(x, dtype=self.flat.dtype)
        if x.ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"x has shape {x.shape}, expected (batch, {self.sizes[0]})")
        return x

    def _forward(self, x):
        # activations[0] = x; hidden layers keep their ReLU outputs; the
        # last entry is the logits.
        activations = [x]
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = activations[-1] @ w
            z += b
            activations.append(z if i == last else np.maximum(z, 0, out=z))
        return activations

    def _backward(self, activations, delta, grad_ready=None):
        # delta is dLoss/dz of the current layer; walk the layers backwards.
        for i in range(len(self.weights) - 1, -1, -1):
            np.matmul(activations[i].T, delta, out=self.weight_grads[i])
            np.sum(delta, axis=0, out=self.bias_grads[i])
            if grad_ready is not None:
                grad_ready(2 * i + 1)
                grad_ready(2 * i)
            if i:
                delta = delta @ self.weights[i].T
                delta *= activations[i] > 0


def _softmax_cross_entropy(logits, y):
    # Mean loss and its gradient with respect to the logits.
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_norm
    rows = np.arange(len(y))
    loss = -float(np.mean(log_probs[rows, y]))
    delta = np.exp(log_probs)
    delta[rows, y] -= 1
    delta /= len(y)
    return loss, delta


def _check_sizes(sizes):
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output width, got {sizes}")
    return [check_int(f"sizes[{i}]", s, low=1) for i, s in enumerate(sizes)]
