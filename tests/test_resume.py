"""Kill a rank mid-training, resume from the checkpoints, get the same bits.

Synchronous SGD is deterministic (fixed sharding per epoch and seed, fixed
reduction order), so a run that is killed and resumed from its newest
valid checkpoint must end with parameters bitwise equal to a run that was
never interrupted.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from launch import ROOT, mpiexec, rank_of, rank_pids, run_mpi

JOB = ["-m", "optim.train", "--optimizer", "sync", "--epochs", "8", "--hidden", "64",
       "--seed", "3"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    # The reference run, shared by the tests of this module.
    out = tmp_path_factory.mktemp("full") / "full.npy"
    result = run_mpi(4, JOB + ["--save-params", str(out)], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)


def _resume(directory, out):
    result = run_mpi(4, JOB + ["--checkpoint-dir", str(directory), "--checkpoint-every", "20",
                               "--resume", "--save-params", str(out)], timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    match = re.search(r"resumed from step (\d+)", result.stdout)
    return np.load(out), int(match.group(1)) if match else 0


def _start(extra, *, env=None, launcher=()):
    # Start a slowed 4-rank job in the background (rank 2 computes 40x slower).
    full_env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    cmd = [mpiexec(), *launcher, "-n", "4", sys.executable, "-m", "mpi4py", *JOB, *extra,
           "--slow-rank", "2", "--slow-factor", "40"]
    return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _no_orphans(marker):
    # Every rank process of the job is gone shortly after mpiexec exits.
    deadline = time.monotonic() + 10
    while rank_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not rank_pids(marker)


def test_sigkill_then_resume_is_bitwise_equal(tmp_path, uninterrupted):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    job = _start(["--checkpoint-dir", str(directory), "--checkpoint-every", "20"])
    deadline = time.monotonic() + 60
    while not list(directory.glob("*.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.3))  # a random later step
    victims = rank_pids(str(directory))
    assert len(victims) == 4, victims
    killed_at = time.monotonic()
    os.kill(random.choice(victims), signal.SIGKILL)
    output, _ = job.communicate(timeout=330)
    assert job.returncode != 0, output[-2000:]
    assert time.monotonic() - killed_at < 330  # within the default timeout + 30 s
    assert _no_orphans(str(directory))
    got, step = _resume(directory, tmp_path / "resumed.npy")
    assert step > 0
    assert got.tobytes() == uninterrupted.tobytes()


def test_truncated_newest_checkpoint_falls_back(tmp_path, uninterrupted):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    partial = JOB[:JOB.index("8")] + ["3"] + JOB[JOB.index("8") + 1:]  # stop after 3 epochs
    result = run_mpi(4, partial + ["--checkpoint-dir", str(directory),
                                   "--checkpoint-every", "20"], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(directory.glob("*.ckpt"))
    newest, previous = files[-1], files[-2]
    newest.write_bytes(newest.read_bytes()[:100])
    got, step = _resume(directory, tmp_path / "resumed.npy")
    assert step == int(previous.stem.split("-")[1])
    assert got.tobytes() == uninterrupted.tobytes()


def test_bad_checkpoint_options_one_line(tmp_path):
    unreadable = tmp_path / "unreadable"
    (unreadable / "ckpt-0000000020.ckpt").mkdir(parents=True)  # not a readable file
    for extra, words in [(["--resume"], "--resume needs --checkpoint-dir"),
                         (["--checkpoint-dir", str(tmp_path / "nope")], "does not exist"),
                         (["--save-params", str(tmp_path / "nope" / "p.npy")],
                          "does not exist"),
                         (["--checkpoint-dir", str(unreadable), "--resume"],
                          "none of the 1 checkpoint(s)")]:
        result = run_mpi(2, JOB + extra, timeout=60)
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if "optim.train" in line]
        assert len(lines) == 1 and words in lines[0], result.stderr[-2000:]


def test_sigterm_writes_a_checkpoint_then_resume_is_bitwise_equal(tmp_path, uninterrupted):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    job = _start(["--checkpoint-dir", str(directory), "--checkpoint-every", "1000"])
    deadline = time.monotonic() + 60
    victims = rank_pids(str(directory))
    while not (len(victims) == 4 and all(map(_catches_sigterm, victims))):
        assert time.monotonic() < deadline, victims
        time.sleep(0.05)
        victims = rank_pids(str(directory))
    time.sleep(random.uniform(0.0, 0.3))  # a random step
    for pid in victims:  # as a batch system's SIGTERM reaches every rank
        os.kill(pid, signal.SIGTERM)
    output, _ = job.communicate(timeout=120)
    assert job.returncode != 0, output[-2000:]
    assert "continue with --resume" in output
    files = sorted(directory.glob("*.ckpt"))
    assert len(files) == 1 and int(files[0].stem.split("-")[1]) % 1000 != 0
    got, step = _resume(directory, tmp_path / "resumed.npy")
    assert step == int(files[0].stem.split("-")[1])
    assert got.tobytes() == uninterrupted.tobytes()


def test_survivors_name_the_killed_rank(tmp_path):
    # MPICH's mpiexec kills the whole job as soon as a rank dies of a
    # signal, so survivors never get to speak.  Under a launcher that
    # leaves them running they must warn, then time out naming it.  Here:
    # -disable-auto-cleanup, each rank under a shell (as batch wrappers run
    # it) that ignores SIGUSR1, hydra's failure notice, which would
    # otherwise kill a Python rank silently.
    directory = tmp_path / "ckpt"
    directory.mkdir()
    long_job = JOB[:JOB.index("8")] + ["200"] + JOB[JOB.index("8") + 1:]
    command = " ".join(["trap '' USR1;", sys.executable, "-m", "mpi4py", *long_job,
                        "--checkpoint-dir", str(directory), "--checkpoint-every", "20",
                        "--slow-rank", "2", "--slow-factor", "40"])
    env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               MPI_COLLECTIVES_TIMEOUT="4", MPI_COLLECTIVES_WARN="1")
    job = subprocess.Popen([mpiexec(), "-disable-auto-cleanup", "-n", "4", "sh", "-c", command],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not list(directory.glob("*.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.01)  # every rank is past MPI_Init and training
    by_rank = {rank_of(pid): pid for pid in rank_pids(str(directory))}
    assert sorted(by_rank) == [0, 1, 2, 3], by_rank
    killed = random.randrange(4)
    killed_at = time.monotonic()
    os.kill(by_rank[killed], signal.SIGKILL)
    output, _ = job.communicate(timeout=120)
    assert job.returncode != 0, output[-2000:]
    assert time.monotonic() - killed_at < 4 + 30
    assert f"timed out after 4.0 s waiting for rank(s) {killed}" in output, output[-3000:]
    speakers = set(re.findall(rf"on rank (\d+): (?:waiting|timed out).*rank\(s\) {killed}\b",
                              output))
    assert speakers == {str(rank) for rank in range(4)} - {str(killed)}, output[-3000:]
    assert _no_orphans(str(directory))


def _catches_sigterm(pid):
    # The job installed its SIGTERM handler (bit 15 of the caught-signals mask).
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(mask, 16) & 1 << (signal.SIGTERM - 1))
