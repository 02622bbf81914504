"""Data-parallel optimizers on top of the collectives.

Parameters and gradients live in one flat buffer (:class:`FlatParameters`);
the optimizers differ in what they average and with whom:
:class:`SyncSGD` (gradients, all ranks, every step),
:class:`ParameterServerSGD` (gradients reduced to a root that updates),
:class:`PartialSyncSGD` (parameters, with the group that is ready).
``SyncSGD(..., dp=DPConfig(...))`` is differentially private SGD
(:mod:`optim.dp`).
"""

from optim.dp import DPConfig
from optim.flat import FlatParameters
from optim.mlp import MLP
from optim.partial import PartialSyncSGD
from optim.ps import ParameterServerSGD
from optim.sgd import SyncSGD, broadcast_parameters
from optim.shard import shard

__all__ = [
    "DPConfig",
    "FlatParameters",
    "MLP",
    "ParameterServerSGD",
    "PartialSyncSGD",
    "SyncSGD",
    "broadcast_parameters",
    "shard",
]
