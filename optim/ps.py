"""Parameter-server SGD, the classic baseline: reduce to a root, update there.

Each step tree-reduces the gradients onto the root (op "avg"), the root
alone applies the SGD update (and alone keeps the momentum buffer), then
tree-broadcasts the parameters.  The same numbers as :class:`SyncSGD` with
the tree algorithm, but all update work is on one rank, which every other
rank waits for, and the parameters cross the tree a second time.
"""

import collectives
from optim._base import DistributedSGD
from optim._checks import check_int

__all__ = ["ParameterServerSGD"]


class ParameterServerSGD(DistributedSGD):
    """Reduce gradients to ``root``, update there, broadcast the parameters.

    Arguments are those of :class:`optim.SyncSGD`, with ``root`` (the
    server rank, default 0) instead of ``algorithm``.  Only the root holds
    a momentum buffer: on other ranks ``state_dict()["momentum_buffer"]``
    is None, so save checkpoints from the root.
    """

    def __init__(self, params, comm, *, lr, momentum=0.0, weight_decay=0.0,
                 nesterov=False, root=0, timeout=None):
        super().__init__(params, comm, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, nesterov=nesterov, timeout=timeout)
        self.root = check_int("root", root, low=0)
        if self.root >= comm.Get_size():
            raise ValueError(f"root {root} is out of range for a communicator of size "
                             f"{comm.Get_size()} (0..{comm.Get_size() - 1})")
        self._checked = False

    def step(self):
        """Reduce gradients to the root, update there, broadcast parameters."""
        self._reduce_gradients()
        if self.comm.Get_rank() == self.root:
            self.rule.apply()
        self._broadcast_parameters()
        self._checked = True
        self.steps += 1

    def _reduce_gradients(self):
        # Averaged gradient lands on the root; other ranks' buffers are kept.
        for bucket in self.params.grad_buckets():
            collectives.tree_reduce(bucket, self.comm, root=self.root, op="avg",
                                    check=not self._checked, timeout=self.timeout)

    def _broadcast_parameters(self):
        # The root's updated parameters replace everyone else's.
        for bucket in self.params.data_buckets():
            collectives.tree_bcast(bucket, self.comm, root=self.root,
                                   check=not self._checked, timeout=self.timeout)
