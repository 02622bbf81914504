"""DP-SGD on the synchronous optimizer, multi-rank (run under mpiexec, 1-5 ranks).

The noise goes on once, after the all-reduce: with zero gradients a step
moves the parameters by exactly ``-lr * sigma*C/B * z`` with ``z`` the
configured generator's draws, on every rank, whatever the rank count.
Training on slices of a global batch keeps the replicas bitwise identical
and equals one process on the whole batch with the same noise seed.
"""

import numpy as np
import pytest
from conftest import assert_same_on_every_rank
from mpi4py import MPI

import optim
from optim.dp import clipped_loss_and_grad

GLOBAL_BATCH = 60  # divisible by every communicator size used (1..5)
SIZES = [8, 16, 4]
STEPS = 5


def config(**changes):
    settings = dict(clip_norm=0.5, noise_multiplier=1.3, batch_size=GLOBAL_BATCH,
                    dataset_size=600, seed=11)
    return optim.DPConfig(**dict(settings, **changes))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_is_added_once_after_the_average(comm, dtype):
    dp = config()
    flat = optim.FlatParameters([np.zeros(4000), np.zeros(1000)], dtype=dtype)
    opt = optim.SyncSGD(flat, comm, lr=2.0, dp=dp)
    expected = np.zeros(flat.size, dtype=dtype)
    generator = dp.noise_generator()
    for _ in range(2):
        flat.zero_grad()
        opt.step()
        z = generator.standard_normal(flat.size, dtype=dtype)
        expected -= dtype(2.0) * (z * dtype(dp.noise_std))
    assert_same_on_every_rank(flat.data, comm)
    # exactly the configured draws, once: not averaged down by 1/sqrt(p) or
    # summed up by p (single rounding per operation: a few ulps at most)
    np.testing.assert_allclose(flat.data, expected, rtol=1e-5 if dtype == np.float32
                               else 1e-13, atol=0)
    step = flat.data / (-2.0 * np.sqrt(2.0))  # two independent draws of std noise_std
    assert abs(step.std() / dp.noise_std - 1) < 5 / np.sqrt(2 * flat.size)


def test_training_keeps_replicas_identical_and_equals_one_process(comm):
    mine, rank, size = train(comm), comm.Get_rank(), comm.Get_size()
    assert_same_on_every_rank(mine, comm)
    alone = train(MPI.COMM_SELF, rows=slice(None))
    np.testing.assert_allclose(mine, alone, rtol=1e-10, atol=1e-12)
    start = optim.MLP(SIZES, seed=2, dtype=np.float64).flat.data
    assert np.abs(mine - start).max() > 1e-3, (rank, size)


def train(comm, rows=None):
    # STEPS DP-SGD steps with momentum; this rank takes its slice of each batch.
    b = GLOBAL_BATCH // comm.Get_size()
    rows = rows or slice(comm.Get_rank() * b, (comm.Get_rank() + 1) * b)
    model = optim.MLP(SIZES, seed=2, dtype=np.float64)
    opt = optim.SyncSGD(model.flat, comm, lr=0.3, momentum=0.5, dp=config())
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        x = rng.standard_normal((GLOBAL_BATCH, SIZES[0])) * 3
        y = rng.integers(0, SIZES[-1], GLOBAL_BATCH)
        clipped_loss_and_grad(model, x[rows], y[rows], clip_norm=0.5)
        opt.step()
    return model.flat.data.copy()


def test_a_different_seed_on_one_rank_raises_on_every_rank(comm):
    if comm.Get_size() == 1:
        pytest.skip("needs two ranks to disagree")
    flat = optim.FlatParameters([np.zeros(3)])
    seed = 11 + (comm.Get_rank() == comm.Get_size() - 1)
    with pytest.raises(ValueError, match=r"DPConfig.seed must be the same on every rank.*"
                                         r"range from 11 to 12"):
        optim.SyncSGD(flat, comm, lr=0.1, dp=config(seed=seed))
    with pytest.raises(ValueError, match="DPConfig.noise_multiplier must be the same"):
        optim.SyncSGD(flat, comm, lr=0.1,
                      dp=config(noise_multiplier=1.0 + comm.Get_rank()))
