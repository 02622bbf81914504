"""Single-process tests of optim: validation, flat buffers, sharding, the MLP."""

import functools
import math

import numpy as np
import pytest
from mpi4py import MPI

import optim

SELF = MPI.COMM_SELF


def small_flat(dtype=np.float64):
    rng = np.random.default_rng(0)
    return optim.FlatParameters([rng.standard_normal((3, 4)), rng.standard_normal(4),
                                 rng.standard_normal((4, 2))], dtype=dtype)


# ------------------------------------------------------------ validation ---

BAD_HYPER = [
    ({"lr": 0.0}, ValueError, "lr must be > 0.0"),
    ({"lr": -0.1}, ValueError, "got -0.1"),
    ({"lr": math.nan}, ValueError, "lr must be"),
    ({"lr": math.inf}, ValueError, "lr must be"),
    ({"lr": "0.1"}, TypeError, "lr must be a real number"),
    ({"lr": True}, TypeError, "lr must be a real number"),
    ({"lr": 0.1, "momentum": -0.5}, ValueError, "momentum must be >= 0.0 and < 1.0"),
    ({"lr": 0.1, "momentum": 1.0}, ValueError, "without bound"),
    ({"lr": 0.1, "weight_decay": -1e-4}, ValueError, "weight_decay must be >= 0.0"),
    ({"lr": 0.1, "nesterov": True}, ValueError, "needs momentum > 0"),
    ({"lr": 0.1, "momentum": 0.9, "nesterov": 1}, TypeError, "nesterov must be True"),
    ({"lr": 0.1, "timeout": 0}, ValueError, "timeout must be > 0"),
    ({"lr": 0.1, "timeout": "5"}, TypeError, "timeout must be a number"),
]

OPTIMIZERS = [optim.SyncSGD, optim.ParameterServerSGD,
              functools.partial(optim.PartialSyncSGD, group_size=1)]


@pytest.mark.parametrize("cls", OPTIMIZERS)
@pytest.mark.parametrize("kwargs,error,text", BAD_HYPER)
def test_bad_hyperparameters_raise(cls, kwargs, error, text):
    with pytest.raises(error, match=text):
        cls(small_flat(), SELF, **kwargs)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_bad_params_and_comm_raise(cls):
    with pytest.raises(TypeError, match="optim.FlatParameters"):
        cls([np.zeros(3)], SELF, lr=0.1)
    with pytest.raises(TypeError, match="comm must be"):
        cls(small_flat(), "world", lr=0.1)


def test_optimizer_specific_options_raise():
    with pytest.raises(ValueError, match="unknown algorithm 'butterfly'"):
        optim.SyncSGD(small_flat(), SELF, lr=0.1, algorithm="butterfly")
    with pytest.raises(ValueError, match="root 1 is out of range .* size 1"):
        optim.ParameterServerSGD(small_flat(), SELF, lr=0.1, root=1)
    with pytest.raises(ValueError, match="group_size 2 is larger than the communicator"):
        optim.PartialSyncSGD(small_flat(), SELF, lr=0.1, group_size=2)
    with pytest.raises(ValueError, match="staleness must be >= 0.0, got -1.0"):
        optim.PartialSyncSGD(small_flat(), SELF, lr=0.1, group_size=1, staleness=-1)
    with pytest.raises(TypeError, match="period must be an int"):
        optim.PartialSyncSGD(small_flat(), SELF, lr=0.1, group_size=1, period=1.5)


def test_lr_setter_validates():
    opt = optim.SyncSGD(small_flat(), SELF, lr=0.1)
    opt.lr = 0.05
    assert opt.lr == 0.05
    with pytest.raises(ValueError, match="lr must be > 0.0, got -1.0"):
        opt.lr = -1.0
    assert opt.lr == 0.05


# ------------------------------------------------------------ flat views ---

def test_flat_views_share_the_buffers():
    flat = small_flat()
    assert [p.shape for p in flat.params] == [(3, 4), (4,), (4, 2)]
    assert flat.offsets == [0, 12, 16, 24]
    for view, gview in zip(flat.params, flat.grads):
        assert np.shares_memory(view, flat.data) and np.shares_memory(gview, flat.grad)
    flat.params[1][...] = 7
    flat.grads[2][...] = 3
    assert np.all(flat.data[12:16] == 7) and np.all(flat.grad[16:] == 3)
    flat.zero_grad()
    assert not flat.grad.any()


def test_flat_copies_the_initial_values():
    arrays = [np.arange(6.0).reshape(2, 3), np.ones(2)]
    flat = optim.FlatParameters(arrays, dtype=np.float32)
    assert flat.data.dtype == np.float32
    np.testing.assert_array_equal(flat.data, [0, 1, 2, 3, 4, 5, 1, 1])
    arrays[0][...] = -1  # the originals are no longer used
    assert flat.data[0] == 0


@pytest.mark.parametrize("bucket_bytes", [1, 8, 40, 48, 64, 96, 192, 10_000])
def test_buckets_hold_whole_tensors_within_the_limit(bucket_bytes):
    sizes = [5, 1, 12, 3, 3, 7]
    flat = optim.FlatParameters([np.zeros(s) for s in sizes], bucket_bytes=bucket_bytes)
    limit = bucket_bytes // 8
    bounds = [0] + [b.stop for b in flat.buckets]
    assert [b.start for b in flat.buckets] == bounds[:-1] and bounds[-1] == sum(sizes)
    for b in flat.buckets:
        assert b.start in flat.offsets and b.stop in flat.offsets  # tensor boundaries
        tensors = flat.offsets.index(b.stop) - flat.offsets.index(b.start)
        assert tensors >= 1 and (b.stop - b.start <= limit or tensors == 1)
    # greedy: merging a bucket with the next tensor would break the limit
    for b, nxt in zip(flat.buckets, flat.buckets[1:]):
        first = flat.offsets[flat.offsets.index(nxt.start) + 1]
        assert first - b.start > limit
    views = flat.grad_buckets()
    assert sum(v.size for v in views) == flat.size
    assert all(np.shares_memory(v, flat.grad) for v in views)


def test_one_bucket_by_default():
    flat = small_flat()
    assert flat.buckets == [slice(0, 24)]
    assert flat.data_buckets()[0].size == 24


@pytest.mark.parametrize("arrays,kwargs,error,text", [
    (np.zeros(3), {}, TypeError, "wrap it in a list"),
    ([], {}, ValueError, "empty"),
    ([np.zeros(3), [1.0]], {}, TypeError, r"arrays\[1\] is a list"),
    ([np.zeros(3, dtype=np.int64)], {}, TypeError, "float32 or float64, got int64"),
    ([np.zeros(3)], {"dtype": np.float16}, TypeError, "got float16"),
    ([np.zeros(3)], {"bucket_bytes": 0}, ValueError, "bucket_bytes must be >= 1"),
    ([np.zeros(3)], {"bucket_bytes": 1.5}, TypeError, "bucket_bytes must be an int"),
])
def test_flat_bad_input(arrays, kwargs, error, text):
    with pytest.raises(error, match=text):
        optim.FlatParameters(arrays, **kwargs)


# ---------------------------------------------------------- the SGD rule ---

def reference_sgd(p, grads, *, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD (dampening 0) in NumPy, one step per gradient."""
    p, v = p.copy(), np.zeros_like(p)
    for g in grads:
        d = g + weight_decay * p
        if momentum:
            v = momentum * v + d
            d = d + momentum * v if nesterov else v
        p = p - lr * d
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hyper", [
    {"lr": 0.1}, {"lr": 0.05, "weight_decay": 0.01}, {"lr": 0.1, "momentum": 0.9},
    {"lr": 0.02, "momentum": 0.8, "weight_decay": 1e-3, "nesterov": True}])
def test_single_rank_step_is_torch_sgd(dtype, hyper):
    flat = small_flat(dtype)
    start = flat.data.copy()
    grads = [np.random.default_rng(i).standard_normal(flat.size).astype(dtype)
             for i in range(6)]
    opt = optim.SyncSGD(flat, SELF, **hyper)
    for g in grads:
        flat.grad[...] = g
        opt.step()
    cast = {k: dtype(v) if isinstance(v, float) else v for k, v in hyper.items()}
    expected = reference_sgd(start, grads, **cast)
    assert expected.dtype == dtype
    # same operations in the same order and dtype: bitwise equal
    np.testing.assert_array_equal(flat.data, expected)
    assert opt.steps == 6


def test_state_dict_round_trip_single_rank():
    flat = small_flat()
    opt = optim.SyncSGD(flat, SELF, lr=0.1, momentum=0.9, weight_decay=1e-3)
    for i in range(3):
        flat.grad[...] = i + 1.0
        opt.step()
    state = opt.state_dict()
    assert state["steps"] == 3 and state["optimizer"] == "SyncSGD"
    saved = flat.data.copy()
    flat.grad[...] = 0.5
    opt.step()
    after_one = flat.data.copy()

    flat2 = small_flat()
    flat2.data[...] = saved
    opt2 = optim.SyncSGD(flat2, SELF, lr=1.0)
    opt2.load_state_dict(state)
    assert (opt2.lr, opt2.steps) == (0.1, 3)
    flat2.grad[...] = 0.5
    opt2.step()
    np.testing.assert_array_equal(flat2.data, after_one)
    state["momentum_buffer"][...] = 99  # state_dict returned a copy
    assert not np.any(opt.rule.velocity == 99)


def test_load_state_dict_rejects_mismatches():
    opt = optim.SyncSGD(small_flat(), SELF, lr=0.1, momentum=0.5)
    opt.step()
    state = opt.state_dict()
    with pytest.raises(ValueError, match="saved by SyncSGD, not ParameterServerSGD"):
        optim.ParameterServerSGD(small_flat(), SELF, lr=0.1).load_state_dict(state)
    other = optim.FlatParameters([np.zeros(5)])
    with pytest.raises(ValueError, match=r"shape \(24,\), but the parameters have \(5,\)"):
        optim.SyncSGD(other, SELF, lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match="missing lr"):
        opt.load_state_dict({k: v for k, v in state.items() if k != "lr"})
    with pytest.raises(ValueError, match="momentum must be"):
        opt.load_state_dict(dict(state, momentum=2.0))


# -------------------------------------------------------------- sharding ---

@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("n", [0, 1, 3, 7, 16, 101])
def test_shard_pads_to_cover_every_sample(n, size):
    shards = [optim.shard(n, r, size, epoch=2, seed=5) for r in range(size)]
    length = -(-n // size)
    assert all(len(s) == length and s.dtype == np.int64 for s in shards)
    everything = np.concatenate(shards)
    assert set(everything.tolist()) == set(range(n))  # covering
    order = np.random.default_rng([5, 2]).permutation(n)
    extra = len(everything) - n
    counts = np.bincount(everything, minlength=n)
    # the padding repeats the first `extra` samples of this epoch's order once
    # (several times when n < size)
    assert counts.sum() == length * size
    if n >= size:
        assert sorted(np.flatnonzero(counts == 2).tolist()) == sorted(order[:extra].tolist())
        assert counts.max() <= 2


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("n", [0, 1, 3, 7, 16, 101])
def test_shard_drop_last_is_disjoint(n, size):
    shards = [optim.shard(n, r, size, epoch=1, seed=3, drop_last=True) for r in range(size)]
    assert all(len(s) == n // size for s in shards)
    everything = np.concatenate(shards)
    assert len(set(everything.tolist())) == len(everything)  # disjoint
    order = np.random.default_rng([3, 1]).permutation(n)
    assert set(everything.tolist()) == set(order[:(n // size) * size].tolist())


def test_shard_order_is_reproducible_and_changes_per_epoch():
    a = optim.shard(1000, 2, 4, epoch=3, seed=7)
    np.testing.assert_array_equal(a, optim.shard(1000, 2, 4, epoch=3, seed=7))
    assert not np.array_equal(a, optim.shard(1000, 2, 4, epoch=4, seed=7))
    assert not np.array_equal(a, optim.shard(1000, 2, 4, epoch=3, seed=8))
    # 10 samples, 3 ranks: the order 0..9 is padded with 0, 1
    np.testing.assert_array_equal(optim.shard(10, 0, 3, shuffle=False), [0, 3, 6, 9])
    np.testing.assert_array_equal(optim.shard(10, 1, 3, shuffle=False), [1, 4, 7, 0])
    np.testing.assert_array_equal(optim.shard(10, 2, 3, shuffle=False), [2, 5, 8, 1])


@pytest.mark.parametrize("args,kwargs,error,text", [
    ((10, 4, 4), {}, ValueError, "rank 4 is out of range for size 4"),
    ((10, -1, 4), {}, ValueError, "rank must be >= 0"),
    ((10, 0, 0), {}, ValueError, "size must be >= 1"),
    ((-1, 0, 2), {}, ValueError, "n must be >= 0"),
    ((10.0, 0, 2), {}, TypeError, "n must be an int"),
    ((10, 0, 2), {"epoch": -1}, ValueError, "epoch must be >= 0"),
    ((10, 0, 2), {"seed": 1.5}, TypeError, "seed must be an int"),
    ((10, 0, 2), {"shuffle": "yes"}, TypeError, "shuffle must be True or False"),
])
def test_shard_bad_input(args, kwargs, error, text):
    with pytest.raises(error, match=text):
        optim.shard(*args, **kwargs)


# ------------------------------------------------------------------- MLP ---

def test_mlp_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    model = optim.MLP([5, 7, 6, 3], seed=2, dtype=np.float64)
    x, y = rng.standard_normal((9, 5)), rng.integers(0, 3, 9)
    model.loss_and_grad(x, y)
    analytic = model.flat.grad.copy()
    numeric = np.empty_like(analytic)
    h = 1e-6
    for i in range(model.flat.size):
        keep = model.flat.data[i]
        model.flat.data[i] = keep + h
        up = model.loss_and_grad(x, y)
        model.flat.data[i] = keep - h
        down = model.loss_and_grad(x, y)
        model.flat.data[i] = keep
        numeric[i] = (up - down) / (2 * h)
    # central differences: error O(h^2) plus rounding O(eps / h) ~ 1e-10;
    # ReLU kinks are not crossed for this seed (checked by the tight bound)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
    assert np.abs(analytic).max() > 1e-2  # a real gradient, not zeros


def test_mlp_loss_and_accuracy_basics():
    model = optim.MLP([4, 8, 3], seed=0)
    x = np.zeros((6, 4), dtype=np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    # zero input and zero biases: uniform softmax, loss log(3)
    assert model.loss_and_grad(x, y) == pytest.approx(math.log(3), rel=1e-6)
    assert 0.0 <= model.accuracy(x, y) <= 1.0
    assert model.flat.dtype == np.float32 and model.flat.size == 4 * 8 + 8 + 8 * 3 + 3
    with pytest.raises(ValueError, match=r"x has shape \(6, 5\), expected \(batch, 4\)"):
        model.loss_and_grad(np.zeros((6, 5)), y)
    with pytest.raises(ValueError, match=r"y has shape \(5,\)"):
        model.loss_and_grad(x, y[:5])
    with pytest.raises(ValueError, match="at least an input and an output"):
        optim.MLP([4])
