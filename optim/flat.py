"""Parameters and gradients as views into one flat buffer.

A model's tensors are copied once into a single C-contiguous buffer
(``data``) with a twin for the gradients (``grad``); the model then works
on ``params`` and ``grads``, shaped views into those buffers, so an
optimizer reduces the whole model in one call (or one call per bucket)
instead of one per tensor, and updates it in one kernel pass.

Buckets: with ``bucket_bytes`` the buffers are cut, at tensor boundaries,
into consecutive buckets of at most that many bytes (a tensor larger than
the limit gets a bucket of its own), as torch's DistributedDataParallel
does; ``bucket_bytes=None`` gives one bucket holding everything.
"""

import numpy as np

import collectives

__all__ = ["FlatParameters"]

#: parameter dtypes the optimizers update.
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class FlatParameters:
    """Copy ``arrays`` into one flat buffer; expose them as views.

    Parameters
    ----------
    arrays : sequence of numpy.ndarray
        The model's tensors: their shapes and initial values.  They are
        copied; use :attr:`params` from now on.
    dtype : numpy dtype, optional
        float32 or float64; by default the arrays' common dtype.
    bucket_bytes : int, optional
        Largest bucket, in bytes (see the module docstring); ``None`` for
        one bucket.
    grad_comm : mpi4py.MPI.Intracomm, optional
        Put ``grad`` in a :func:`collectives.shared_array` on this
        communicator (collective; all its ranks on one node, each with the
        same arrays), so that all-reducing it, or its buckets, skips the
        copy into shared memory.  Freed with the communicator.

    Attributes
    ----------
    data, grad : numpy.ndarray
        The flat 1-D parameter and gradient buffers (gradient starts at 0).
    params, grads : list of numpy.ndarray
        Views of ``data`` and ``grad`` with the arrays' shapes.
    buckets : list of slice
        Consecutive slices of the flat buffers, one per bucket.

    Examples
    --------
    >>> flat = FlatParameters([np.ones((3, 2)), np.zeros(2)])
    >>> flat.params[0].shape, flat.data.size
    ((3, 2), 8)
    >>> flat.params[1] += 5  # writes into flat.data
    >>> flat.data[-2:]
    array([5., 5.])

    """

    def __init__(self, arrays, *, dtype=None, bucket_bytes=None, grad_comm=None):
        arrays = _check_arrays(arrays)
        self.dtype = _check_dtype(arrays, dtype)
        self.shapes = [a.shape for a in arrays]
        sizes = [a.size for a in arrays]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
        self.data = np.empty(self.offsets[-1], dtype=self.dtype)
        self.grad = (np.zeros(self.offsets[-1], dtype=self.dtype) if grad_comm is None else
                     collectives.shared_array(grad_comm, self.offsets[-1], self.dtype))
        self.params = self._views(self.data)
        self.grads = self._views(self.grad)
        for view, array in zip(self.params, arrays):
            view[...] = array
        self.bucket_bytes = _check_bucket_bytes(bucket_bytes)
        self.buckets = _cut(sizes, self.offsets, self.dtype.itemsize, self.bucket_bytes)

    @property
    def size(self):
        """Number of scalars in the model."""
        return self.data.size

    def _views(self, flat):
        return [flat[lo:hi].reshape(shape) for lo, hi, shape
                in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    def data_buckets(self):
        """Return the parameter buffer as a list of bucket views."""
        return [self.data[b] for b in self.buckets]

    def grad_buckets(self):
        """Return the gradient buffer as a list of bucket views."""
        return [self.grad[b] for b in self.buckets]

    def zero_grad(self):
        """Set every gradient to zero."""
        self.grad.fill(0)

    def __repr__(self):
        return (f"FlatParameters({len(self.shapes)} tensors, {self.size} x {self.dtype}, "
                f"{len(self.buckets)} bucket(s))")


def _check_arrays(arrays):
    if isinstance(arrays, np.ndarray):
        raise TypeError("arrays must be a sequence of numpy arrays, got one array; "
                        "wrap it in a list")
    arrays = list(arrays)
    if not arrays:
        raise ValueError("arrays is empty; a model needs at least one tensor")
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"arrays[{i}] is a {type(a).__name__}, not a numpy.ndarray")
    return arrays


def _check_dtype(arrays, dtype):
    dtype = np.result_type(*arrays) if dtype is None else np.dtype(dtype)
    if dtype not in DTYPES:
        raise TypeError(f"parameters must be float32 or float64, got {dtype}; "
                        "pass dtype=np.float32 to convert")
    return dtype


def _check_bucket_bytes(bucket_bytes):
    if bucket_bytes is None:
        return None
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, (int, np.integer)):
        raise TypeError(f"bucket_bytes must be an int or None, got {bucket_bytes!r}")
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    return int(bucket_bytes)


def _cut(sizes, offsets, itemsize, bucket_bytes):
    # Greedily fill buckets with whole tensors up to the byte limit.
    if bucket_bytes is None:
        return [slice(0, offsets[-1])]
    limit = bucket_bytes // itemsize
    buckets, start = [], 0
    for i, size in enumerate(sizes):
        if offsets[i] > start and offsets[i] + size - start > limit:
            buckets.append(slice(start, offsets[i]))
            start = offsets[i]
    buckets.append(slice(start, offsets[-1]))
    return buckets
