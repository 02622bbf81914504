"""Multi-rank tests of the optimizers (run under mpiexec, 1-5 ranks).

SyncSGD and ParameterServerSGD: each rank trains on its slice of a global
batch; the result must match single-process SGD on the whole batch, and
the parameters must be bitwise identical on every rank after every step.
PartialSyncSGD: with the whole communicator as its group it must be
synchronous model averaging; with smaller groups, the members of each
group must end with the same bytes.
"""

import time
import zlib

import numpy as np
import pytest
from conftest import assert_same_on_every_rank
from mpi4py import MPI

import collectives
import optim

GLOBAL_BATCH = 60  # divisible by every communicator size used (1..5)
SIZES = [8, 16, 4]
STEPS = 25
PARTIAL_STEPS = 12

CONFIGS = [
    {"lr": 0.1},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    {"lr": 0.1, "weight_decay": 1e-2},
]


def global_batch(step):
    rng = np.random.default_rng([11, step])
    return rng.standard_normal((GLOBAL_BATCH, SIZES[0])), rng.integers(0, SIZES[-1],
                                                                       GLOBAL_BATCH)


def local_batch(step, comm):
    x, y = global_batch(step)
    b = GLOBAL_BATCH // comm.Get_size()
    rows = slice(comm.Get_rank() * b, (comm.Get_rank() + 1) * b)
    return x[rows], y[rows]


def reference_run(hyper, steps=STEPS, *, ignore_momentum=False):
    """Single-process SGD (torch's rule, in NumPy) on every whole global batch."""
    model = optim.MLP(SIZES, seed=3, dtype=np.float64)
    p, v = model.flat.data, np.zeros(model.flat.size)
    lr, m = hyper["lr"], 0.0 if ignore_momentum else hyper.get("momentum", 0.0)
    wd, nesterov = hyper.get("weight_decay", 0.0), hyper.get("nesterov", False)
    for step in range(steps):
        model.loss_and_grad(*global_batch(step))
        d = model.flat.grad + wd * p
        v = m * v + d
        p -= lr * (d + m * v if nesterov else v)
    return p.copy()


def make_model(comm, *, bucket_bytes=None):
    # Rank 0 starts from the reference's weights, the others from their own:
    # broadcast_parameters must make them equal.
    seed = 3 if comm.Get_rank() == 0 else 100 + comm.Get_rank()
    return optim.MLP(SIZES, seed=seed, dtype=np.float64, bucket_bytes=bucket_bytes)


def train(model, opt, comm, steps=STEPS, *, first=0):
    for step in range(first, first + steps):
        model.loss_and_grad(*local_batch(step, comm))
        opt.step()
        if opt.steps % getattr(opt, "period", 1) == 0:  # after every averaging
            assert_same_on_every_rank(model.flat.data, comm)


def make_optimizer(kind, model, comm, hyper):
    if kind == "sync":
        return optim.SyncSGD(model.flat, comm, **hyper)
    if kind == "partial":  # the whole communicator as the group: deterministic
        return optim.PartialSyncSGD(model.flat, comm, group_size=comm.Get_size(), period=2,
                                    **hyper)
    return optim.ParameterServerSGD(model.flat, comm, root=comm.Get_size() - 1, **hyper)


# Tolerance: the distributed run differs from the reference only in the
# summation order of each gradient (per-rank partial sums, then a tree or
# ring average, instead of one sum over the batch).  In float64 each
# gradient then differs by a few ulps (~1e-16 relative); over 25 steps the
# dynamics (lr <= 0.1, momentum <= 0.9) can amplify that by at most a few
# orders of magnitude (measured at 1-5 ranks: at most 3.3e-16 absolute on
# parameters of size ~1.5, i.e. one or two ulps), so 1e-10 leaves a wide
# margin.  Any real error is
# far larger: summing instead of averaging, or dropping momentum, moves
# the parameters by > 1e-3 (checked in test_tolerance_discriminates).
RTOL, ATOL = 1e-10, 1e-12


@pytest.mark.parametrize("kind", ["sync", "ps"])
@pytest.mark.parametrize("hyper", CONFIGS)
def test_matches_single_process_sgd(comm, kind, hyper):
    model = make_model(comm)
    optim.broadcast_parameters(model.flat, comm)
    opt = make_optimizer(kind, model, comm, hyper)
    train(model, opt, comm)
    np.testing.assert_allclose(model.flat.data, reference_run(hyper), rtol=RTOL, atol=ATOL)
    assert opt.steps == STEPS


@pytest.mark.parametrize("algorithm", ["ring", "tree", "mpi"])
def test_buckets_and_algorithms_match(comm, algorithm):
    hyper = CONFIGS[2]
    model = make_model(comm, bucket_bytes=256)
    assert len(model.flat.buckets) == 4
    optim.broadcast_parameters(model.flat, comm)
    opt = optim.SyncSGD(model.flat, comm, algorithm=algorithm, **hyper)
    train(model, opt, comm, steps=10)
    np.testing.assert_allclose(model.flat.data, reference_run(hyper, steps=10), rtol=RTOL,
                               atol=ATOL)


def test_tolerance_discriminates():
    hyper = CONFIGS[1]
    gap = np.abs(reference_run(hyper) - reference_run(hyper, ignore_momentum=True)).max()
    assert gap > 1e-3


def test_broadcast_parameters(comm):
    model = make_model(comm)
    root = comm.Get_size() - 1
    theirs = model.flat.data.copy()
    comm.Bcast(theirs, root=root)
    assert optim.broadcast_parameters(model.flat, comm, root=root) is model.flat
    assert model.flat.data.tobytes() == theirs.tobytes()
    arrays = [np.full(3, comm.Get_rank(), dtype=np.float32), np.arange(4.0) * comm.Get_rank()]
    optim.broadcast_parameters(arrays, comm, root=root)
    np.testing.assert_array_equal(arrays[0], np.full(3, root))
    np.testing.assert_array_equal(arrays[1], np.arange(4.0) * root)


@pytest.mark.parametrize("kind", ["sync", "ps", "partial"])
def test_state_dict_round_trip(comm, kind):
    hyper = CONFIGS[2]
    model = make_model(comm)
    optim.broadcast_parameters(model.flat, comm)
    opt = make_optimizer(kind, model, comm, hyper)
    train(model, opt, comm, steps=5)
    # a checkpoint: the root's state (the PS keeps momentum on its root
    # only); partial SGD's momentum is each rank's own
    saved = opt.state_dict()
    if kind != "partial":
        saved = comm.bcast(saved, root=comm.Get_size() - 1)
    saved_params = model.flat.data.copy()
    train(model, opt, comm, steps=4, first=5)

    resumed = make_model(comm)
    resumed.flat.data[...] = saved_params
    opt2 = make_optimizer(kind, resumed, comm, {"lr": 1.0})
    opt2.load_state_dict(saved)
    assert opt2.steps == 5 and opt2.lr == hyper["lr"]
    train(resumed, opt2, comm, steps=4, first=5)
    assert resumed.flat.data.tobytes() == model.flat.data.tobytes()
    assert opt2.steps == opt.steps == 9
    if kind == "partial":
        opt.close()
        opt2.close()


def test_ps_momentum_lives_on_the_root(comm):
    model = make_model(comm)
    optim.broadcast_parameters(model.flat, comm)
    opt = optim.ParameterServerSGD(model.flat, comm, lr=0.1, momentum=0.9)
    train(model, opt, comm, steps=2)
    buffer = opt.state_dict()["momentum_buffer"]
    assert (buffer is not None) == (comm.Get_rank() == 0)


def test_mismatched_models_raise_on_every_rank(comm):
    if comm.Get_size() == 1:
        pytest.skip("needs two ranks")
    width = 16 if comm.Get_rank() == 0 else 17
    model = optim.MLP([8, width, 4], seed=0)
    opt = optim.SyncSGD(model.flat, comm, lr=0.1)
    with pytest.raises(collectives.CollectiveMismatchError):
        opt.step()
    comm.Barrier()


# ------------------------------------------------------ partial-synchronous ---

@pytest.mark.parametrize("period", [1, 3])
def test_full_group_is_synchronous_model_averaging(comm, period):
    # The twin steps locally and averages with a plain all-reduce every
    # `period` steps; the reducer's weighted average of equal weights may
    # round differently from the all-reduce's sum / size by an ulp per
    # averaging, hence the tolerance (float64, 12 steps).
    hyper = CONFIGS[2]
    model, twin = make_model(comm), make_model(comm)
    optim.broadcast_parameters(model.flat, comm)
    optim.broadcast_parameters(twin.flat, comm)
    local = optim.SyncSGD(twin.flat, MPI.COMM_SELF, **hyper)
    with optim.PartialSyncSGD(model.flat, comm, group_size=comm.Get_size(), period=period,
                              **hyper) as opt:
        for step in range(PARTIAL_STEPS):
            batch = local_batch(step, comm)
            model.loss_and_grad(*batch)
            record = opt.step()
            twin.loss_and_grad(*batch)
            local.step()
            if (step + 1) % period:
                assert record is None
                continue
            collectives.allreduce(twin.flat.data, comm, op="avg")
            assert sorted(record.members) == list(range(comm.Get_size()))
            np.testing.assert_allclose(model.flat.data, twin.flat.data, rtol=1e-12,
                                       atol=1e-14)
    if period == 1:
        # averaging after every step is synchronous SGD: the update is linear
        # in the gradient (momentum and weight decay too)
        np.testing.assert_allclose(model.flat.data, reference_run(hyper, steps=PARTIAL_STEPS),
                                   rtol=RTOL, atol=ATOL)


def test_partial_groups_end_with_identical_bytes(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    group_size = min(2, size)
    model = make_model(comm)
    optim.broadcast_parameters(model.flat, comm)
    log = []
    with optim.PartialSyncSGD(model.flat, comm, lr=0.05, momentum=0.9,
                              group_size=group_size) as opt:
        for step in range(12):
            model.loss_and_grad(*local_batch(step, comm))
            if (step + rank) % 3 == 0:
                time.sleep(0.002 * (rank + 1))  # vary who arrives first
            record = opt.step()
            assert rank in record.members and len(record.members) <= group_size
            log.append((record.sequence, tuple(sorted(record.members)),
                        zlib.crc32(model.flat.data.tobytes())))
        assert opt.steps == 12
    groups = {}
    for r, entries in enumerate(comm.allgather(log)):
        for sequence, members, crc in entries:
            groups.setdefault(sequence, []).append((r, members, crc))
    for sequence, entries in groups.items():
        members = entries[0][1]
        assert sorted(r for r, _, _ in entries) == list(members), (sequence, entries)
        assert len({crc for _, _, crc in entries}) == 1, (sequence, entries)


def test_partial_bad_options(comm):
    model = make_model(comm)
    with pytest.raises(ValueError, match="group_size .* is larger than the communicator"):
        optim.PartialSyncSGD(model.flat, comm, lr=0.1, group_size=comm.Get_size() + 1)
    with pytest.raises(ValueError, match="period must be >= 1"):
        optim.PartialSyncSGD(model.flat, comm, lr=0.1, group_size=1, period=0)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        optim.PartialSyncSGD(model.flat, comm, lr=0.1, group_size=0)


def test_sync_sgd_times_out_naming_the_absent_rank(world):
    # The last rank never steps: every other rank's step raises the
    # timeout error naming it, instead of waiting forever.
    size = world.Get_size()
    if size == 1:
        pytest.skip("needs two ranks")
    comm = world.Dup()
    absent = size - 1
    model = make_model(comm)
    opt = optim.SyncSGD(model.flat, comm, lr=0.1, timeout=0.3)
    if comm.Get_rank() != absent:
        model.flat.grad[:] = 1.0
        with pytest.raises(collectives.CollectiveTimeoutError) as info:
            opt.step()
        assert absent in info.value.peers
    world.Barrier()
