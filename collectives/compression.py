"""Compressed gradient all-reduce: codecs "none", "fp16" and "topk".

Each codec averages a float32 gradient over the communicator in place and
returns the bytes this rank put on the wire, so an optimizer can report
them.

- ``NoCompression``: the plain all-reduce ("avg").
- ``Fp16Compression``: scale by ``1/size`` *before* casting (as torch's
  fp16 hook does, so the sum cannot overflow float16), ring all-reduce of
  the float16 values (summed in float16 on the wire, by the float16
  kernels), decoded back into the float32 gradient.  Half the bytes.
- ``TopKCompression``: keep the ``k = ceil(density * n)`` largest
  magnitudes of gradient + residual, all-gather values (float16) and
  indices (int32) from every rank, since sparse vectors with different
  supports cannot be summed in a ring, and scatter-add them in rank order
  (so every rank gets identical bytes).  Error feedback: what was not sent
  (unselected entries and float16 rounding) is kept and added to the next
  step's gradient.  At density 1% and 4 ranks, ``(p-1)*6k`` bytes against
  ``2(p-1)/p*4n``: about 33x fewer.
"""

import math

import numpy as np

from collectives import _codec_kernels as CK
from collectives._agree import check_comm
from collectives._kernels import sum_into
from collectives._ops import check_buffer
from collectives._scratch import scratch
from collectives._wait import wait_all
from collectives.allreduce import allreduce
from collectives.ring import ring_allreduce

__all__ = ["CODECS", "NoCompression", "Fp16Compression", "TopKCompression",
           "ring_bytes"]


def ring_bytes(nbytes, size):
    """Bytes one rank sends in a ring all-reduce of ``nbytes``."""
    return 0 if size == 1 else 2 * (size - 1) * math.ceil(nbytes / size)


def _check_gradient(grad, comm):
    check_comm(comm)
    check_buffer(grad)
    if grad.dtype != np.float32:
        raise TypeError(f"gradient compression takes float32 gradients, got {grad.dtype}")


class NoCompression:
    """Average with the plain all-reduce."""

    name = "none"

    def __init__(self, *, algorithm="auto"):
        self.algorithm = algorithm

    def allreduce(self, grad, comm):
        """Average ``grad`` over ``comm`` in place; return bytes sent."""
        _check_gradient(grad, comm)
        allreduce(grad, comm, op="avg", algorithm=self.algorithm)
        return ring_bytes(grad.nbytes, comm.Get_size())


class Fp16Compression:
    """Average in float16 on the wire; see the module docstring."""

    name = "fp16"

    def allreduce(self, grad, comm):
        """Average ``grad`` over ``comm`` in place; return bytes sent."""
        _check_gradient(grad, comm)
        flat = grad.reshape(-1)
        half = scratch(comm, "fp16-codec", flat.size, np.float16)
        CK.encode_f16(flat, half.view(np.uint16), 1.0 / comm.Get_size())
        ring_allreduce(half, comm, op="sum")
        CK.decode_f16(half.view(np.uint16), flat, 1.0)
        return ring_bytes(half.nbytes, comm.Get_size())


class TopKCompression:
    """Top-k sparsification with error feedback; see the module docstring.

    Parameters
    ----------
    density : float
        Fraction of elements each rank sends, in (0, 1].

    """

    name = "topk"

    def __init__(self, *, density=0.01):
        if not 0 < density <= 1:
            raise ValueError(f"density must be in (0, 1], got {density}")
        self.density = density
        self.residual = None

    def allreduce(self, grad, comm, *, timeout=None):
        """Average ``grad`` over ``comm`` in place; return bytes sent."""
        _check_gradient(grad, comm)
        flat = grad.reshape(-1)
        if flat.size == 0:
            return 0
        k = max(1, math.ceil(self.density * flat.size))
        indices, values = self._select(flat, k, comm)
        all_indices, all_values = self._gather(indices, values, comm, timeout)
        CK.scatter_add_f16(CK.zero(flat), all_indices, all_values, 1.0 / comm.Get_size())
        return (comm.Get_size() - 1) * (indices.nbytes + values.nbytes)

    def _select(self, flat, k, comm):
        # Error feedback: add what the last step did not send, then pick.
        if self.residual is None or self.residual.size != flat.size:
            self.residual = np.zeros_like(flat)
        sum_into(self.residual, flat)
        indices, values = np.empty(k, np.int32), np.empty(k, np.uint16)
        work = scratch(comm, "topk-work", flat.size, np.float32)
        CK.select_topk(self.residual, work, indices, values)
        return indices, values

    @staticmethod
    def _gather(indices, values, comm, timeout):
        # Every rank's selection, in rank order, with a deadline.
        size = comm.Get_size()
        all_indices = np.empty(size * indices.size, np.int32)
        all_values = np.empty(size * values.size, np.uint16)
        requests = [comm.Iallgather(indices, all_indices),
                    comm.Iallgather(values, all_values)]
        others = [r for r in range(size) if r != comm.Get_rank()]
        wait_all(requests, [others, others], operation="topk allgather",
                 timeout=timeout, comm=comm)
        return all_indices, all_values


#: codec classes by name, for command lines.
CODECS = {"none": NoCompression, "fp16": Fp16Compression, "topk": TopKCompression}
