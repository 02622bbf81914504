"""optim.dp and SyncSGD(dp=...): per-sample gradients, clipping, noise, accountant, CLI.

The multi-rank checks (noise added once after the average, replicas
bitwise identical, equal to one process) are in tests/mpi/test_dp_sgd.py,
run at 1-5 ranks by tests/test_under_mpiexec.py.
"""

import json

import numpy as np
import pytest
from launch import run_mpi
from mpi4py import MPI
from scipy.stats import kstest, norm

import optim
from optim.dp import DPConfig, clip_per_sample, clipped_loss_and_grad, epsilon, per_sample_gradients
from optim.mlp import MLP
from optim.train import UsageError, parse_args

SIZES = [7, 9, 6, 4]
SELF = MPI.COMM_SELF


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, SIZES[0])) * 3, rng.integers(0, SIZES[-1], n)


def test_per_sample_gradients_average_to_the_batch_gradient():
    model = MLP(SIZES, seed=1, dtype=np.float64)
    x, y = batch(13)
    grads = per_sample_gradients(model, x, y)
    model.loss_and_grad(x, y)
    np.testing.assert_allclose(grads.mean(axis=0), model.flat.grad, rtol=1e-12, atol=1e-14)
    one = per_sample_gradients(model, x[4:5], y[4:5])[0]
    model.loss_and_grad(x[4:5], y[4:5])
    np.testing.assert_allclose(one, model.flat.grad, rtol=1e-12, atol=1e-14)


def test_clipping_bounds_every_per_sample_gradient():
    model = MLP(SIZES, seed=1, dtype=np.float32)
    grads = per_sample_gradients(model, *batch(50))
    before = grads.copy()
    clip = float(np.median(np.linalg.norm(before, axis=1)))  # half get clipped
    norms = clip_per_sample(grads, clip)
    after = np.linalg.norm(grads.astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(before.astype(np.float64), axis=1),
                               rtol=1e-5)
    assert np.all(after <= clip * (1 + 1e-6))
    small = norms <= clip
    assert 10 < small.sum() < 40
    np.testing.assert_array_equal(grads[small], before[small])
    np.testing.assert_allclose(after[~small], clip, rtol=1e-5)
    np.testing.assert_allclose(grads[~small] * norms[~small, None] / clip,
                               before[~small], rtol=1e-4, atol=1e-6)


def test_clipped_loss_and_grad_writes_the_mean_of_clipped_gradients():
    model = MLP(SIZES, seed=1, dtype=np.float64)
    x, y = batch(20)
    clipped = per_sample_gradients(model, x, y)
    clip_per_sample(clipped, 0.3)
    loss = clipped_loss_and_grad(model, x, y, clip_norm=0.3)
    np.testing.assert_allclose(model.flat.grad, clipped.mean(axis=0), rtol=1e-12)
    assert np.linalg.norm(model.flat.grad) <= 0.3 * (1 + 1e-12)
    plain = model.loss_and_grad(x, y)
    assert loss == pytest.approx(plain, rel=1e-12)
    clipped_loss_and_grad(model, x, y, clip_norm=1e9)  # nothing clipped: the plain mean
    grad = model.flat.grad.copy()
    model.loss_and_grad(x, y)
    np.testing.assert_allclose(grad, model.flat.grad, rtol=1e-12, atol=1e-15)


def dp_config(**changes):
    settings = dict(clip_norm=0.7, noise_multiplier=2.0, batch_size=8, dataset_size=800,
                    seed=5)
    return DPConfig(**dict(settings, **changes))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_on_the_averaged_gradient_has_the_configured_std(dtype):
    # Zero gradients, lr 1, no momentum: each step moves the parameters by
    # minus the noise.  n = 20000 draws per step: the sample std of n normal
    # draws has relative standard error 1/sqrt(2n) = 0.5%, the mean has
    # standard error std/sqrt(n); both bounds are 5 standard errors, so a
    # correct generator fails with probability < 1e-6, while a noise scaled
    # by a rank count, by sqrt(B) or left out of the average misses by far.
    dp = dp_config()
    flat = optim.FlatParameters([np.zeros(20000)], dtype=dtype)
    opt = optim.SyncSGD(flat, SELF, lr=1.0, dp=dp)
    steps = []
    for _ in range(2):
        before = flat.data.copy()
        flat.zero_grad()
        opt.step()
        steps.append((before - flat.data).astype(np.float64))
    n, scale = flat.size, 2.0 * 0.7 / 8
    assert dp.noise_std == scale
    for noise in steps:
        assert abs(noise.mean()) < 5 * scale / np.sqrt(n)
        assert abs(noise.std() / scale - 1) < 5 / np.sqrt(2 * n)
        assert kstest(noise / scale, "norm").pvalue > 1e-4  # Gaussian, not uniform
    # a new draw every step (correlation ~ N(0, 1/n))
    assert abs(np.corrcoef(steps[0], steps[1])[0, 1]) < 5 / np.sqrt(n)
    # the same config (seed) gives the same noise
    twin = optim.FlatParameters([np.zeros(20000)], dtype=dtype)
    optim.SyncSGD(twin, SELF, lr=1.0, dp=dp).step()
    np.testing.assert_array_equal(-twin.data, steps[0].astype(dtype))


def test_state_dict_round_trip_resumes_the_same_noise():
    # Through JSON, as the training job's checkpoints store it.
    dp = dp_config(batch_size=13, dataset_size=130)
    model = MLP(SIZES, seed=1, dtype=np.float64)
    opt = optim.SyncSGD(model.flat, SELF, lr=0.2, momentum=0.9, dp=dp)
    batches = [batch(13, seed) for seed in range(6)]
    for x, y in batches[:3]:
        clipped_loss_and_grad(model, x, y, clip_norm=dp.clip_norm)
        opt.step()
    state = opt.state_dict()
    saved = model.flat.data.copy()
    meta = json.loads(json.dumps({k: v for k, v in state.items() if k != "momentum_buffer"}))
    for x, y in batches[3:]:
        clipped_loss_and_grad(model, x, y, clip_norm=dp.clip_norm)
        opt.step()

    resumed = MLP(SIZES, seed=1, dtype=np.float64)
    resumed.flat.data[:] = saved
    opt2 = optim.SyncSGD(resumed.flat, SELF, lr=0.2, momentum=0.9, dp=dp)
    opt2.load_state_dict(dict(meta, momentum_buffer=state["momentum_buffer"]))
    for x, y in batches[3:]:
        clipped_loss_and_grad(resumed, x, y, clip_norm=dp.clip_norm)
        opt2.step()
    np.testing.assert_array_equal(resumed.flat.data, model.flat.data)
    assert opt2.steps == opt.steps == 6
    assert opt2.epsilon(delta=1e-5) == opt.epsilon(delta=1e-5)


def test_load_state_dict_rejects_other_dp_settings():
    flat = optim.FlatParameters([np.zeros(5)])
    private = optim.SyncSGD(flat, SELF, lr=0.1, dp=dp_config())
    plain = optim.SyncSGD(flat, SELF, lr=0.1)
    with pytest.raises(ValueError, match="both must be DP or neither"):
        private.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="both must be DP or neither"):
        plain.load_state_dict(private.state_dict())
    other = optim.SyncSGD(flat, SELF, lr=0.1, dp=dp_config(noise_multiplier=0.5))
    with pytest.raises(ValueError, match="differ from this optimizer's.*privacy accounting"):
        private.load_state_dict(other.state_dict())
    broken = private.state_dict()
    broken["dp"] = dict(broken["dp"], generator={"bit_generator": "MT19937"})
    with pytest.raises(ValueError, match="not a PCG64 state"):
        private.load_state_dict(broken)


def test_epsilon_matches_the_library_and_the_gaussian_mechanism():
    import dp_accounting

    eps = epsilon(noise_multiplier=1.1, sample_rate=256 / 60000, steps=14062, delta=1e-5)
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        256 / 60000, dp_accounting.GaussianDpEvent(1.1)), 14062)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event)
    assert eps == accountant.get_epsilon(1e-5)
    assert 2.0 < eps < 3.5  # MNIST DP-SGD, 60 epochs of 256 at sigma 1.1: eps ~ 2.6 (RDP)
    # One unsampled step is the Gaussian mechanism, whose exact epsilon at
    # delta (Balle & Wang 2018) the RDP bound must not undercut by much.
    one = epsilon(noise_multiplier=1.0, sample_rate=1.0, steps=1, delta=1e-5)
    exact = _gaussian_epsilon(1.0, 1e-5)
    assert exact <= one <= 1.15 * exact, (one, exact)


def test_optimizer_reports_the_epsilon_of_its_steps():
    import dp_accounting

    dp = DPConfig(clip_norm=1.0, noise_multiplier=1.1, batch_size=64, dataset_size=1438,
                  seed=0)
    flat = optim.FlatParameters([np.zeros(3)])
    opt = optim.SyncSGD(flat, SELF, lr=0.1, dp=dp)
    assert opt.epsilon(delta=1e-5) == 0.0
    for _ in range(220):
        opt.step()
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        64 / 1438, dp_accounting.GaussianDpEvent(1.1)), 220))
    assert opt.epsilon(delta=1e-5) == accountant.get_epsilon(1e-5)
    assert 4.0 < opt.epsilon(delta=1e-5) < 4.2  # the digits job's 10 epochs at 4 ranks


def _gaussian_epsilon(sigma, delta):
    def delta_of(e):
        return norm.cdf(-e * sigma + 0.5 / sigma) - np.exp(e) * norm.cdf(-e * sigma - 0.5 / sigma)
    lo, hi = 0.0, 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


def test_bad_arguments():
    model = MLP(SIZES)
    with pytest.raises(ValueError, match="clip_norm must be > 0.0, got 0.0"):
        dp_config(clip_norm=0)
    with pytest.raises(ValueError, match="noise_multiplier must be > 0.0, got 0.0 because "
                                         "without noise"):
        dp_config(noise_multiplier=0)
    with pytest.raises(ValueError, match="batch_size 900 is larger than dataset_size 800"):
        dp_config(batch_size=900)
    with pytest.raises(TypeError, match="seed must be an int"):
        dp_config(seed=1.5)
    with pytest.raises(TypeError, match="optim.DPConfig or None, got dict"):
        optim.SyncSGD(model.flat, SELF, lr=0.1, dp={"clip_norm": 1.0})
    with pytest.raises(ValueError, match="dp needs compression=None, got 'fp16'"):
        optim.SyncSGD(model.flat, SELF, lr=0.1, compression="fp16", dp=dp_config())
    with pytest.raises(ValueError, match="epsilon needs an optimizer built with dp"):
        optim.SyncSGD(model.flat, SELF, lr=0.1).epsilon(delta=1e-5)
    with pytest.raises(ValueError, match="delta must be"):
        optim.SyncSGD(model.flat, SELF, lr=0.1, dp=dp_config()).epsilon(delta=0)
    with pytest.raises(TypeError, match="optim.MLP"):
        clipped_loss_and_grad(model.flat, *batch(3), clip_norm=1.0)
    with pytest.raises(ValueError, match=r"x has shape \(3, 5\), expected \(batch, 7\)"):
        clipped_loss_and_grad(model, np.zeros((3, 5)), np.zeros(3, int), clip_norm=1.0)
    with pytest.raises(ValueError, match="sample_rate must be"):
        epsilon(noise_multiplier=1.0, sample_rate=1.5, steps=1, delta=1e-5)


@pytest.mark.parametrize("options, message", [
    (["--dp-clip", "1"], "--dp-clip needs both --dp-clip and --dp-noise"),
    (["--dp-delta", "1e-5"], "--dp-delta needs both"),
    (["--dp-clip", "1", "--dp-noise", "1", "--optimizer", "partial"],
     "work with --optimizer sync and no --compression, not partial, because"),
    (["--dp-clip", "1", "--dp-noise", "1", "--compression", "topk"],
     "not sync with topk, because"),
    (["--dp-clip", "0", "--dp-noise", "1"], "--dp-clip must be > 0.0, got 0.0"),
    (["--dp-clip", "1", "--dp-noise", "-1"], "--dp-noise must be > 0.0, got -1.0"),
    (["--dp-clip", "1", "--dp-noise", "1", "--dp-delta", "1"],
     "--dp-delta must be > 0.0 and < 1.0, got 1.0"),
])
def test_job_rejects_bad_dp_options(options, message):
    with pytest.raises(UsageError, match=message):
        parse_args(options, 4)
    args = parse_args(["--dp-clip", "1", "--dp-noise", "1.1"], 4)
    assert (args.dp_clip, args.dp_noise, args.dp_delta) == (1.0, 1.1, 1e-5)


def test_job_prints_one_line_for_bad_dp_options():
    result = run_mpi(2, ["-m", "optim.train", "--optimizer", "ps", "--dp-clip", "1",
                         "--dp-noise", "1"], timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "optim.train: error: --dp-clip/--dp-noise work with --optimizer sync and no "
        "--compression, not ps, because the noise goes on the exact average of the "
        "gradients")
    assert result.stdout == ""


def test_digits_job_with_dp_reaches_documented_accuracy(tmp_path):
    # Documented in the README: 4 ranks, MLP 64-128-10, C = 1, sigma = 1.1,
    # batch 64, lr 0.1, momentum 0.9, 10 epochs of 22 steps: ~90% test
    # accuracy at epsilon 4.11 (delta 1e-5); the non-private job reaches ~97%.
    out = tmp_path / "dp.json"
    result = run_mpi(4, ["-m", "optim.train", "--dp-clip", "1", "--dp-noise", "1.1",
                         "--lr", "0.1", "--json", str(out)], timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(out.read_text())
    dp = summary["dp"]
    assert dp["steps"] == 220 and dp["delta"] == 1e-5
    assert dp["epsilon"] == epsilon(noise_multiplier=1.1, sample_rate=64 / 1438, steps=220,
                                    delta=1e-5)
    assert 4.0 < dp["epsilon"] < 4.2
    assert summary["final_accuracy"] >= 0.86, summary["final_accuracy"]
    assert f"DP epsilon {dp['epsilon']:.2f} at delta 1e-05" in result.stdout.splitlines()[-1]


def test_job_resumed_from_a_checkpoint_draws_the_same_noise(tmp_path):
    # Stop after 2 epochs (checkpoints at steps 15 and 30), resume from step
    # 30 (mid-epoch) to 3 epochs: bitwise equal to a run never stopped, which
    # needs the noise generator's state in the checkpoint.
    job = ["-m", "optim.train", "--dp-clip", "1", "--dp-noise", "1.1", "--lr", "0.1",
           "--hidden", "32", "--seed", "3", "--checkpoint-every", "15"]
    full, resumed, directory = tmp_path / "full.npy", tmp_path / "resumed.npy", tmp_path / "ck"
    directory.mkdir()
    runs = [["--epochs", "3", "--save-params", str(full)],
            ["--epochs", "2", "--checkpoint-dir", str(directory)],
            ["--epochs", "3", "--checkpoint-dir", str(directory), "--resume",
             "--save-params", str(resumed)]]
    for options in runs:
        result = run_mpi(2, job + options, timeout=60)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed from step 30 (epoch 2, batch 8)" in result.stdout
    np.testing.assert_array_equal(np.load(resumed), np.load(full))
