"""optim.pipeline under mpiexec: stages (x replicas) equal single-process training."""

import pytest
from launch import run_mpi
from mpi4py import MPI

from optim.pipeline import PipelineMLP, grid

# ranks -> cases "stages:micro-batches:schedule", one launch per rank count.
CASES = {
    2: ["2:3:gpipe", "2:1:1f1b"],
    3: ["3:4:1f1b", "3:2:gpipe"],
    4: ["4:2:gpipe", "4:5:1f1b", "2:3:1f1b", "2:4:gpipe"],  # the last two: 2 x 2 replicas
}


@pytest.mark.parametrize("ranks", sorted(CASES))
def test_pipeline_matches_single_process(ranks):
    result = run_mpi(ranks, ["tests/workers/pipeline_check.py", *CASES[ranks]], timeout=90)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for case in CASES[ranks]:
        stages, micro, schedule = case.split(":")
        assert (f"pipeline ok: {stages} stages x {ranks // int(stages)} replicas, "
                f"{micro} micro-batches, {schedule}") in result.stdout


def test_bad_arguments_raise_before_sending():
    comm = MPI.COMM_SELF
    with pytest.raises(ValueError, match="schedule"):
        PipelineMLP([4, 3], comm, micro_batch=2, micro_batches=2, schedule="zigzag")
    with pytest.raises(ValueError, match="micro_batches must be >= 1"):
        PipelineMLP([4, 3], comm, micro_batch=2, micro_batches=0)
    pipe = PipelineMLP([4, 3], comm, micro_batch=2, micro_batches=2)
    with pytest.raises(ValueError, match=r"x has shape \(3, 4\), expected \(4, 4\)"):
        pipe.loss_and_grad(pipe.flat.data[:12].reshape(3, 4), [0, 1, 2])
    with pytest.raises(ValueError, match="not a multiple of 2"):
        grid(comm, 2)
    pipe.free()


def test_one_stage_equals_mlp():
    import numpy as np

    from optim.mlp import MLP
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    pipe = PipelineMLP([5, 6, 3], MPI.COMM_SELF, micro_batch=2, micro_batches=4,
                       seed=1, dtype=np.float64)
    ref = MLP([5, 6, 3], seed=1, dtype=np.float64)
    np.testing.assert_array_equal(pipe.flat.data, ref.flat.data)
    loss = pipe.loss_and_grad(x, y)
    assert abs(loss - ref.loss_and_grad(x, y)) < 1e-12
    np.testing.assert_allclose(pipe.flat.grad, ref.flat.grad, rtol=1e-12, atol=1e-14)
    pipe.free()
