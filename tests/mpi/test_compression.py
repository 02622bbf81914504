"""Gradient codecs: identical results on every rank, right averages, fewer bytes."""

import numpy as np
import pytest
from conftest import rank_data
from test_allreduce import gather_inputs

from collectives.compression import (
    Fp16Compression,
    NoCompression,
    TopKCompression,
    ring_bytes,
)


def test_fp16_average_within_float16_rounding(comm):
    grad = rank_data(comm, 10_007, "float32")
    table = gather_inputs(grad, comm)
    sent = Fp16Compression().allreduce(grad, comm)
    exact = table.astype(np.float64).mean(axis=0)
    # p inputs rounded once to float16 after scaling, p-1 float16 additions:
    # each error at most 2**-11 relative to the sum of |x_i| / p.
    bound = (2 * comm.Get_size()) * 2.0**-11 * np.abs(table).mean(axis=0) + 1e-7
    assert np.all(np.abs(grad - exact) <= bound)
    assert sent == ring_bytes(grad.nbytes // 2, comm.Get_size())
    assert gather_inputs(grad, comm).std(axis=0).max() == 0


def test_topk_sends_k_largest_and_keeps_residual(comm):
    n, density = 5000, 0.01
    grad = rank_data(comm, n, "float32")
    original = grad.copy()
    codec = TopKCompression(density=density)
    sent = codec.allreduce(grad, comm)
    k = 50
    assert sent == (comm.Get_size() - 1) * k * 6
    table = gather_inputs(grad, comm)
    assert all(table[r].tobytes() == grad.tobytes() for r in range(comm.Get_size()))
    # This rank's k largest entries are exactly the ones it did not keep.
    mine = np.argsort(-np.abs(original), kind="stable")[:k]
    kept = np.abs(codec.residual) > np.abs(original) * 2.0**-10 + 1e-30
    assert not kept[mine].any()
    assert kept.sum() == n - k
    np.testing.assert_array_equal(codec.residual[~np.isin(np.arange(n), mine)],
                                  original[~np.isin(np.arange(n), mine)])


def test_topk_error_feedback_sends_everything_eventually(comm):
    # With a constant gradient, error feedback makes the running mean of
    # the decoded updates converge to the true average.
    grad0 = rank_data(comm, 400, "float32", seed=3)
    exact = gather_inputs(grad0, comm).astype(np.float64).mean(axis=0)
    codec = TopKCompression(density=0.05)
    total = np.zeros(400)
    steps = 200
    for _ in range(steps):
        g = grad0.copy()
        codec.allreduce(g, comm)
        total += g
    assert np.abs(total / steps - exact).max() < 0.05 * np.abs(exact).max() + 1e-3


def test_none_is_plain_average(comm):
    grad = rank_data(comm, 999, "float32")
    table = gather_inputs(grad, comm)
    NoCompression().allreduce(grad, comm)
    np.testing.assert_allclose(grad, table.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_bad_input(world):
    with pytest.raises(TypeError, match="float32 gradients, got float64"):
        Fp16Compression().allreduce(np.zeros(3), world)
    with pytest.raises(ValueError, match="density must be in"):
        TopKCompression(density=0)
