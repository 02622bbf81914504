"""Inject faults and bad input into real multi-rank jobs; measure what happens.

Run from the repository root::

    .venv/bin/python scripts/faults.py [--markdown FILE] [--repeat 3]

Every scenario is a real ``mpiexec`` job (MPICH, 4 ranks) under ``timeout``:
a rank killed mid-training, SIGTERM to every rank, damaged checkpoints, a
rank that skips a collective, ranks that disagree, bad local input, a
killed rank under the partial optimizer, and bad options of the training
job.  For each it records what the user sees (the decisive lines, cut
short), the time from the fault to the end of the job or to the error,
the exit status, whether rank processes are left behind and what work is
lost.  Resumed runs are compared bitwise with an uninterrupted run.  The
table goes to stdout (and to FILE with ``--markdown``); RELIABILITY.md
holds a copy.

The same file is the worker of the collective scenarios: under ``mpiexec``
it runs with ``--worker skip|mismatch|local|finalize``.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from launch import mpiexec, rank_of, rank_pids  # noqa: E402  (the test helpers)

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
RANKS = 4
JOB = ["-m", "optim.train", "--optimizer", "sync", "--epochs", "8", "--hidden", "64",
       "--seed", "3"]
SLOW = ["--slow-rank", "2", "--slow-factor", "40"]
EVERY = 20  # --checkpoint-every in the kill scenarios
_JSON = "FAULTS-JSON "
_SAY = "FAULTS-RANK "
_SKIPPED = "skipped"  # returned by a worker call that sends nothing on purpose


@dataclass
class Row:
    """One line of the table: a fault and what it did."""

    fault: str
    sees: str
    seconds: list = field(default_factory=list)
    status: str = ""
    lost: str = ""
    test: str = ""
    found: str = ""  # a defect, if this row shows one
    when: str = ""  # instead of the measured seconds

    def cells(self):
        seconds = self.when or _seconds(self.seconds)
        sees = self.sees + (f" **Found:** {self.found}" if self.found else "")
        return [self.fault, sees, seconds, self.status, self.lost, self.test]


def _seconds(values):
    # "median (min-max, n runs)" of the measured times.
    if not values:
        return "-"
    if len(values) == 1:
        return _fmt(values[0])
    return (f"{_fmt(statistics.median(values))} (median of {len(values)}; "
            f"{_fmt(min(values))}-{_fmt(max(values))})")


def _fmt(seconds):
    if seconds >= 1.0:
        return f"{seconds:.1f} s"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


# ---------------------------------------------------------------- launching

def _env(**extra):
    return dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


def _run(args, *, limit=120, env=None, nranks=RANKS):
    # Run `python -m mpi4py ARGS` to the end; return (status, stdout, stderr, seconds).
    cmd = ["timeout", "-k", "5", str(limit), mpiexec(), "-n", str(nranks),
           sys.executable, "-m", "mpi4py", *args]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True,
                          timeout=limit + 30)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - t0


class _Background:
    """A job started in the background, its output in a file."""

    def __init__(self, cmd, log, *, env=None, limit=120):
        self.log = log
        self.limit = limit
        with open(log, "w") as out:
            self.process = subprocess.Popen(["timeout", "-k", "5", str(limit), *cmd],
                                            cwd=ROOT, env=env or _env(), stdout=out,
                                            stderr=subprocess.STDOUT, text=True)

    def wait(self):
        """Return (status, output) once the job has ended."""
        status = self.process.wait(timeout=self.limit + 30)
        return status, Path(self.log).read_text(errors="replace")

    def output(self):
        return Path(self.log).read_text(errors="replace")


def _start_training(extra, log):
    # A slowed 4-rank training job (rank 2 computes 40x slower).
    cmd = [mpiexec(), "-n", str(RANKS), sys.executable, "-m", "mpi4py", *JOB,
           *extra, *SLOW]
    return _Background(cmd, log)


def _ranks_by_number(marker, *, wait=30.0):
    # {rank: pid} once all RANKS rank processes are up.
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            found = {rank_of(pid): pid for pid in rank_pids(marker)}
        except (OSError, KeyError, ValueError):
            found = {}
        if len(found) == RANKS:
            return found
        time.sleep(0.02)
    raise RuntimeError(f"expected {RANKS} rank processes with {marker!r}, found {found}")


def _orphans(marker):
    # Rank processes still alive 10 s after mpiexec ended (then killed).
    deadline = time.monotonic() + 10
    while rank_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = rank_pids(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return len(left)


def _kill(job, marker, rank, signum=signal.SIGKILL):
    # Signal one rank (or all with rank None); return (seconds to the end, status,
    # output, rank processes left).
    pids = _ranks_by_number(marker)
    killed_at = time.monotonic()
    for pid in pids.values() if rank is None else [pids[rank]]:
        os.kill(pid, signum)
    status, output = job.wait()
    return time.monotonic() - killed_at, status, output, _orphans(marker)


def _wait_until(predicate, *, wait=60.0):
    deadline = time.monotonic() + wait
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("the job did not get there in time")
        time.sleep(0.01)


def _checkpoint_steps(directory):
    return sorted(int(p.stem.split("-")[1]) for p in Path(directory).glob("ckpt-*.ckpt"))


def _lines(text, pattern, *, limit=3, width=110):
    # The first `limit` distinct lines matching `pattern`, cut to `width`.
    seen = []
    for line in text.splitlines():
        line = re.sub(r"[^\s']*/(ckpt-\d+\.ckpt)", r"\1", line.strip())  # file names only
        if re.search(pattern, line) and line not in seen:
            seen.append(line)
    return [_cut(line, width) for line in seen[:limit]]


def _cut(text, width=110):
    return text if len(text) <= width else text[:width - 3] + "..."


def _quote(lines):
    return " / ".join(f"`{line.replace('|', '/')}`" for line in lines) or "(nothing)"


# ------------------------------------------------------------- training jobs

class _Reference:
    """The uninterrupted run's final parameters (computed once)."""

    def __init__(self, tmp):
        out = Path(tmp) / "reference.npy"
        status, _, err, _ = _run(JOB + ["--save-params", str(out)])
        if status != 0:
            raise RuntimeError(f"the reference run failed ({status}): {err[-2000:]}")
        self.bytes = out.read_bytes()

    def resume(self, directory, tmp):
        """Resume from `directory`; return (from_step, bitwise_equal, stderr)."""
        out = Path(tmp) / f"resumed-{time.monotonic_ns()}.npy"
        status, stdout, err, _ = _run(JOB + ["--checkpoint-dir", str(directory),
                                             "--checkpoint-every", str(EVERY), "--resume",
                                             "--save-params", str(out)])
        if status != 0:
            return None, False, err
        match = re.search(r"resumed from step (\d+)", stdout)
        return int(match.group(1)) if match else 0, out.read_bytes() == self.bytes, err


def kill_default(tmp, reference, repeat):
    """SIGKILL one rank mid-training under MPICH's default mpiexec, then resume."""
    times, statuses, orphans, notes, banner = [], set(), 0, [], []
    for i in range(repeat):
        directory = Path(tmp, f"kill{i}")
        directory.mkdir()
        job = _start_training(["--checkpoint-dir", str(directory), "--checkpoint-every",
                               str(EVERY)], directory / "log")
        _wait_until(lambda: _checkpoint_steps(directory)[-1:] >= [EVERY * (i + 1)])
        time.sleep(0.03 + 0.07 * i)  # a later step each run
        victim = (i + 1) % RANKS
        seconds, status, output, left = _kill(job, str(directory), victim)
        times.append(seconds)
        statuses.add(status)
        orphans += left
        banner = _lines(output, r"BAD TERMINATION|EXIT CODE|KILLED BY SIGNAL", limit=2)
        newest = _checkpoint_steps(directory)[-1]
        temporaries = len(list(directory.glob(".*.tmp")))
        step, equal, _ = reference.resume(directory, tmp)
        notes.append(f"rank {victim}: resumed from step {step} (newest {newest}), "
                     f"bitwise {'equal' if equal else 'DIFFERENT'}"
                     + (f", {temporaries} temp file(s) left" if temporaries else ""))
    sees = (f"mpiexec kills the other ranks at once and prints {_quote(banner)}; "
            f"{orphans} rank processes left. Resume: " + "; ".join(notes) + ".")
    return Row("SIGKILL one rank mid-training (`--optimizer sync`, default mpiexec), "
               "then `--resume`", sees, times, _statuses(statuses),
               f"the steps since the newest checkpoint (< {EVERY} with "
               f"`--checkpoint-every {EVERY}`); resumed result bitwise equal: "
               f"{_all_equal(notes)}",
               "tests/test_resume.py::test_sigkill_then_resume_is_bitwise_equal",
               "" if orphans == 0 and _all_equal(notes) == "yes" else "see above")


def _statuses(statuses):
    return ", ".join(str(s) for s in sorted(statuses))


def _all_equal(notes):
    return "yes" if all("bitwise equal" in n for n in notes) else "NO"


def _survivor_command(prefix, directory):
    # Each rank under a shell (that ignores SIGUSR1 with the trap prefix).
    long_job = JOB[:JOB.index("8")] + ["200"] + JOB[JOB.index("8") + 1:]
    return " ".join([*prefix, sys.executable, "-m", "mpi4py", *long_job, *SLOW,
                     "--checkpoint-dir", str(directory), "--checkpoint-every", str(EVERY)])


def kill_survivors(tmp, repeat, *, ignore_usr1=True):
    """SIGKILL one rank where the launcher leaves the others running."""
    times, statuses, orphans, heard, lines, counts = [], set(), 0, [], [], []
    env = _env(MPI_COLLECTIVES_TIMEOUT="10", MPI_COLLECTIVES_WARN="2")
    for i in range(repeat):
        directory = Path(tmp, f"survivors{i}-{ignore_usr1}")
        directory.mkdir()
        shell = _survivor_command(["trap '' USR1;"] if ignore_usr1 else [], directory)
        cmd = [mpiexec(), "-disable-auto-cleanup", "-n", str(RANKS), "sh", "-c", shell]
        job = _Background(cmd, directory / "log", env=env, limit=90)
        _wait_until(lambda: _checkpoint_steps(directory))
        victim = (i + 1) % RANKS
        seconds, status, output, left = _kill(job, str(directory), victim)
        times.append(seconds)
        statuses.add(status)
        orphans += left
        heard.append(_who_spoke(output, victim))
        lines = (_lines(output, rf"on rank \d+: waiting .* rank\(s\) {victim}\b", limit=1)
                 + _lines(output, r"CollectiveTimeoutError: ", limit=1))
        counts.append(len(output.splitlines()))
    sees = (f"{_quote(lines)}; " + "; ".join(heard) + f". The first survivor to time out "
            f"makes `python -m mpi4py` abort the job ({statistics.median(counts):.0f} lines "
            f"of output, tracebacks included); {orphans} rank processes left.")
    if ignore_usr1:
        fault = ("SIGKILL one rank, survivors left running (`mpiexec -disable-auto-cleanup`, "
                 "ranks under `sh -c \"trap '' USR1; ...\"`, MPI_COLLECTIVES_TIMEOUT=10, "
                 "MPI_COLLECTIVES_WARN=2)")
        test = "tests/test_resume.py::test_survivors_name_the_killed_rank"
        found = "" if all("silent: none" in h for h in heard) and not orphans else \
            "a survivor said nothing, or processes were left"
    else:
        fault = "As above, but the ranks do not ignore SIGUSR1 (no `trap`)"
        test, found = "-", ""
    return Row(fault, sees, times, _statuses(statuses),
               "the steps since the newest checkpoint (as above)", test, found)


def _who_spoke(output, victim):
    # Which survivors warned, which timed out, which vanished without a word.
    survivors = [r for r in range(RANKS) if r != victim]
    warned = sorted({int(r) for r in re.findall(
        rf"on rank (\d+): waiting [\d.]+ s for rank\(s\) {victim}\b", output)})
    timed_out = sorted({int(r) for r in re.findall(
        rf"on rank (\d+): timed out after [\d.]+ s waiting for rank\(s\) {victim}\b",
        output)})
    silent = [r for r in survivors if r not in warned and r not in timed_out]
    return (f"rank {victim} killed: warned {warned or 'none'}, timed out "
            f"{timed_out or 'none'}, silent: {silent or 'none'}")


def sigterm_all(tmp, reference, repeat):
    """SIGTERM every rank (as a batch system does), then resume."""
    times, statuses, notes, line, orphans = [], set(), [], [], 0
    for i in range(repeat):
        directory = Path(tmp, f"term{i}")
        directory.mkdir()
        job = _start_training(["--checkpoint-dir", str(directory), "--checkpoint-every",
                               "1000"], directory / "log")
        _wait_until(lambda: "epoch   1/" in job.output())
        time.sleep(0.2 * i)
        seconds, status, output, left = _kill(job, str(directory), None, signal.SIGTERM)
        times.append(seconds)
        statuses.add(status)
        orphans += left
        line = _lines(output, r"continue with --resume", limit=1)
        steps = _checkpoint_steps(directory)
        step, equal, _ = reference.resume(directory, tmp)
        notes.append(f"checkpoint at step {steps}, resumed from {step}, bitwise "
                     f"{'equal' if equal else 'DIFFERENT'}")
    sees = f"{_quote(line)}; " + "; ".join(notes) + f"; {orphans} rank processes left."
    return Row("SIGTERM to every rank mid-training (as a batch system does), then "
               "`--resume`", sees, times, _statuses(statuses),
               f"none: the checkpoint is of the step all ranks agreed on; resumed result "
               f"bitwise equal: {_all_equal(notes)}",
               "tests/test_resume.py::test_sigterm_writes_a_checkpoint_then_resume_is_"
               "bitwise_equal", "" if _all_equal(notes) == "yes" else "see above")


def damaged_checkpoints(tmp, reference):
    """Truncate the newest checkpoint, or flip one byte in it; resume."""
    source = Path(tmp, "three-epochs")
    source.mkdir()
    three = JOB[:JOB.index("8")] + ["3"] + JOB[JOB.index("8") + 1:]
    status, _, err, _ = _run(three + ["--checkpoint-dir", str(source), "--checkpoint-every",
                                      str(EVERY)])
    if status != 0:
        raise RuntimeError(f"the 3-epoch run failed ({status}): {err[-2000:]}")
    rows = []
    for name, damage in [("truncated to 100 bytes", _truncate),
                         ("one byte flipped in the middle", _flip)]:
        directory = Path(tmp, f"damaged-{damage.__name__}")
        shutil.copytree(source, directory)
        steps = _checkpoint_steps(directory)
        damage(directory / f"ckpt-{steps[-1]:010d}.ckpt")
        t0 = time.monotonic()
        step, equal, err = reference.resume(directory, tmp)
        seconds = time.monotonic() - t0
        warning = _lines(err, r"skipped checkpoint", limit=1, width=130)
        count = sum("skipped checkpoint" in line for line in err.splitlines())
        rows.append(Row(
            f"Newest checkpoint {name}, then `--resume`",
            f"{_quote(warning)} ({count} line(s), from rank 0); resumed from step "
            f"{step} (previous file; newest was {steps[-1]}); result bitwise "
            f"{'equal' if equal else 'DIFFERENT'}.",
            [], "0", f"the {steps[-1] - (step or 0)} steps of the damaged file are "
            "redone", "tests/test_resume.py::test_truncated_newest_checkpoint_falls_back, "
            "tests/test_checkpoint.py::test_damaged_newest_falls_back_to_previous",
            "" if equal and step == steps[-2] else "did not fall back",
            when=f"at start-up (the whole resumed run: {seconds:.1f} s)"))
    return rows


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def kill_partial(tmp, repeat):
    """SIGKILL one rank under the partial optimizer (default mpiexec)."""
    times, statuses, orphans, banner = [], set(), 0, []
    for i in range(repeat):
        directory = Path(tmp, f"partial{i}")
        directory.mkdir()
        cmd = [mpiexec(), "-n", str(RANKS), sys.executable, "-m", "mpi4py", "-m",
               "optim.train", "--optimizer", "partial", "--group-size", "2", "--epochs",
               "200", "--hidden", "64", "--json", str(directory / "summary.json"), *SLOW]
        job = _Background(cmd, directory / "log")
        _wait_until(lambda: "epoch   1/" in job.output())
        seconds, status, output, left = _kill(job, str(directory), (i + 1) % RANKS)
        times.append(seconds)
        statuses.add(status)
        orphans += left
        banner = _lines(output, r"BAD TERMINATION|EXIT CODE|timed out", limit=2)
    return Row("SIGKILL one rank under `--optimizer partial --group-size 2` (default "
               "mpiexec)", f"{_quote(banner)}; {orphans} rank processes left.", times,
               _statuses(statuses), "the whole run (partial has no checkpoints: "
               "`--checkpoint-dir` is refused for it)", "- (none for partial)",
               "" if not orphans else "processes left")


def bad_options(tmp):
    """Try each bad option of the training job: one line and exit status 2."""
    directory = Path(tmp, "options")
    directory.mkdir()
    corrupt = directory / "corrupt"
    corrupt.mkdir()
    (corrupt / "ckpt-0000000020.ckpt").write_bytes(b"not a checkpoint\n")
    unreadable = directory / "unreadable"
    (unreadable / "ckpt-0000000020.ckpt").mkdir(parents=True)  # reading it fails
    short = ["-m", "optim.train", "--epochs", "1", "--hidden", "16"]
    one_line = "tests/test_resume.py::test_bad_checkpoint_options_one_line"
    cases = [
        ("unknown optimizer `--optimizer adam`", ["--optimizer", "adam"], "none", "-"),
        ("`--optimizer partial --group-size 8` on 2 ranks",
         ["--optimizer", "partial", "--group-size", "8"], "none", "-"),
        ("missing checkpoint dir", ["--checkpoint-dir", str(directory / "missing")], "none",
         one_line),
        ("`--resume` without `--checkpoint-dir`", ["--resume"], "none", one_line),
        ("`--resume`, the only checkpoint is corrupt",
         ["--checkpoint-dir", str(corrupt), "--resume"], "none (it refuses to start over)",
         "-"),
        ("`--resume`, the checkpoint cannot be read (a directory in its place, as "
         "an unreadable file)", ["--checkpoint-dir", str(unreadable), "--resume"], "none",
         one_line),
        ("`--save-params` into a missing directory",
         ["--save-params", str(directory / "missing" / "p.npy")],
         "none (checked before training)", one_line),
        ("`--json` into a missing directory", ["--json", str(directory / "missing" / "s.json")],
         "none (checked before training)", "-"),
    ]
    return [_option_row(name, short + extra, lost, test)
            for name, extra, lost, test in cases]


def _option_row(name, args, lost, test):
    status, stdout, err, seconds = _run(args, limit=60, nranks=2)
    lines = err.splitlines()
    first = _lines(err, r"optim\.train: error|Error|skipp", limit=1, width=130)
    trained = "summary:" in stdout
    sees = (f"{_quote(first)}; {len(lines)} line(s) on stderr"
            + (", with tracebacks" if "Traceback" in err else "")
            + ("; then it trains from step 0" if trained and "--resume" in args else "")
            + ".")
    found = "" if status == 2 and len(lines) == 1 else "not one line and exit status 2"
    return Row(f"Training CLI: {name}", sees, [seconds], str(status), lost, test, found)


# ------------------------------------------------------- collective workers

def _run_worker(name, *, limit=90, extra=()):
    # Run this file as a worker on RANKS ranks; return (records, status, output).
    status, out, err, seconds = _run([str(Path(__file__).resolve()), "--worker", name,
                                      *extra], limit=limit)
    records = None
    for line in out.splitlines():
        if line.startswith(_JSON):
            records = json.loads(line[len(_JSON):])
    return records, status, out + err, seconds


def skipped_collective(timeout):
    """One rank skips a collective; the others time out naming a rank."""
    records, status, output, _ = _run_worker("skip", extra=["--timeout", str(timeout)])
    if records is None:
        raise RuntimeError(f"skip worker failed ({status}): {output[-3000:]}")
    rows = []
    for case, per_rank in records.items():
        waiting = {r: v for r, v in per_rank.items() if r != "1"}
        times = [v["seconds"] for v in waiting.values()]
        naming = sorted(int(r) for r, v in waiting.items() if "rank(s) 1" in v["message"]
                        and "CollectiveTimeoutError" in v["type"])
        others = sorted({v["message"].rsplit("rank(s) ", 1)[-1] for r, v in waiting.items()
                         if int(r) not in naming})
        example = next(v for v in waiting.values())
        sees = (f"`{example['type']}: {_cut(example['message'])}`; ranks naming rank 1: "
                f"{naming}" + (f"; the others name rank(s) {', '.join(others)}"
                               if others else "") + ".")
        rows.append(Row(f"Rank 1 skips {case} (timeout={timeout:g} s)", sees, times,
                        "raised (caught here)", "none (no state)",
                        _SKIP_TESTS.get(case.split()[0], "tests/mpi/test_timeout.py"),
                        "" if len(naming) == RANKS - 1 else
                        "not every waiting rank names the rank that skipped"))
    return rows


_SKIP_TESTS = {
    "allreduce": "tests/mpi/test_fast_algorithms.py::test_absent_rank_times_out",
    "ring_allreduce": "tests/mpi/test_timeout.py::test_absent_rank_times_out",
    "tree_reduce": "tests/mpi/test_timeout.py::test_absent_rank_times_out",
}


def mismatches():
    """Ranks disagree on count, dtype, op, root, algorithm, members."""
    records, status, output, _ = _run_worker("mismatch")
    if records is None:
        raise RuntimeError(f"mismatch worker failed ({status}): {output[-3000:]}")
    return [_error_row(f"Ranks disagree: {case}", per_rank, _MISMATCH_TESTS.get(case, "-"),
                       expect="CollectiveMismatchError")
            for case, per_rank in records.items()]


_MISMATCH_TESTS = {
    "count (allreduce)": "tests/mpi/test_bad_input.py::test_count_mismatch, "
                         "tests/mpi/test_fast_algorithms.py::test_mismatch_across_paths",
    "dtype (allreduce)": "tests/mpi/test_bad_input.py::test_dtype_mismatch",
    "op (allreduce)": "tests/mpi/test_bad_input.py::test_op_and_root_mismatch",
    "root (tree_reduce)": "tests/mpi/test_bad_input.py::test_op_and_root_mismatch",
    "algorithm (allreduce auto vs ring, after a first auto call)":
        "tests/mpi/test_bad_input.py::test_algorithm_mismatch_with_auto",
    "members (partial_reduce)": "tests/mpi/test_partial.py::"
                                "test_member_mismatch_raises_on_members",
}


def bad_local_input():
    """Bad input on every rank: a local error before any message."""
    records, status, output, _ = _run_worker("local")
    if records is None:
        raise RuntimeError(f"local worker failed ({status}): {output[-3000:]}")
    rows = []
    for case, per_rank in records.items():
        row = _error_row(f"Bad input on every rank: {case}", per_rank,
                         "tests/mpi/test_bad_input.py", expect=("ValueError", "TypeError"))
        quiet = all(not v["message_pending"] for v in per_rank.values())
        row.sees = row.sees.rstrip(".") + (f"; messages sent: {'none' if quiet else 'SOME'}.")
        if not quiet:
            row.found = (row.found + " " if row.found else "") + "a message was sent"
        rows.append(row)
    return rows


def _error_row(fault, per_rank, test, *, expect):
    # A row for "every rank raises this error": message, times, who raised it.
    per_rank = {r: v for r, v in per_rank.items() if v["type"] != "skipped"}
    example = per_rank["0"]
    same = sorted(r for r, v in per_rank.items() if v["type"] == example["type"])
    where = ("every rank" if len(same) == len(per_rank) == RANKS else
             f"ranks {', '.join(same)} (of {', '.join(sorted(per_rank))} taking part)")
    sees = f"`{example['type']}: {_cut(example['message'], 150)}` on {where}."
    raised = [r for r, v in per_rank.items() if v["type"] in _names(expect)]
    found = "" if len(raised) == len(per_rank) else \
        f"{' or '.join(_names(expect))} expected, got {example['type']}"
    times = [t for v in per_rank.values() for t in v["times"]]
    return Row(fault, sees, times, "raised (caught here)", "none (no state)", test, found)


def _names(expect):
    return expect if isinstance(expect, tuple) else (expect,)


def hanging_cases(*, limit=8, timeout=2.0):
    """Cases found to hang: each its own job, ended by an outer timeout."""
    rows = []
    for worker, fault, test in _HANGS:
        args = [str(Path(__file__).resolve()), "--worker", worker, "--timeout", str(timeout),
                "--dump-after", str(limit - 3)]
        status, out, err, seconds = _run(args, limit=limit)
        said = [m.split("\n")[0].strip() for m in out.split(_SAY)[1:]]  # may interleave
        stuck = _stuck_frames(err)
        if status == 124:
            sees = (f"{'; '.join(f'rank {_cut(s, 150)}' for s in said) or 'no rank returns'}"
                    f". Still waiting after {limit - 3} s (timeout={timeout:g}), in "
                    + ", ".join(f"`{where}`" for where in stuck) + ".")
            rows.append(Row(fault, sees, [], f"{status} (outer `timeout {limit}`)", "-",
                            test, "hangs: no timeout applies there",
                            when=f"never (job ended by `timeout` at {seconds:.1f} s)"))
        else:
            rows.append(Row(fault, "; ".join(said) or err[-300:], [seconds], str(status),
                            "-", test))
    return rows


_HANGS = [
    ("first-skip", "Rank 1 skips the *first* `allreduce` (auto) on a communicator",
     "tests/mpi/test_timeout.py::test_absent_from_the_first_auto_call_is_named"),
    ("first-mismatch", "Ranks disagree: algorithm, rank 1 `ring`, others `auto`, as the "
     "communicator's first call",
     "tests/mpi/test_bad_input.py::test_algorithm_mismatch_with_auto"),
    ("members", "Ranks disagree: members of `partial_reduce` (rank 0 passes [0, 1], ranks "
     "1 and 2 pass [0, 1, 2], rank 3 not called)",
     "tests/mpi/test_partial.py::test_members_disagreeing_on_membership_fail_without_hanging"),
]


def _stuck_frames(text):
    # The innermost frames in collectives/ of faulthandler's stack dumps.
    stuck = []
    for block in text.split("Timeout (")[1:]:
        frames = re.findall(r'File "[^"]*/(collectives/[^"]+)", line (\d+) in (\w+)', block)
        where = f"{frames[0][0]}:{frames[0][1]} {frames[0][2]}" if frames else None
        if where and where not in stuck:
            stuck.append(where)
    return stuck


def finalize_after_death():
    """A rank dies after the work while the others are in MPI_Finalize."""
    limit = 8
    cmd = ["timeout", "-k", "5", str(limit), mpiexec(), "-disable-auto-cleanup", "-n",
           str(RANKS), "sh", "-c", f"trap '' USR1; {sys.executable} -m mpi4py "
           f"{Path(__file__).resolve()} --worker finalize"]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=limit + 30)
    seconds = time.monotonic() - t0
    finalizing = done.stdout.count("finalizing")
    orphans = _orphans("--worker finalize")
    hung = done.returncode == 124
    sees = (f"No message. {finalizing} ranks reached MPI_Finalize, rank 1 then died; "
            + (f"the others were still there when the outer `timeout {limit}` ended the "
               "job" if hung else "the job ended") + f"; {orphans} rank processes left.")
    return Row("A rank dies after the work while the others are in `MPI_Finalize` "
               "(`-disable-auto-cleanup`, SIGUSR1 ignored)", sees, [], str(done.returncode),
               "none (the work was done)", "-",
               "hangs until an outer timeout (in MPICH's MPI_Finalize, below the library)"
               if hung else "",
               when=f"never (ended by `timeout` at {seconds:.1f} s)" if hung else
               f"{seconds:.1f} s")


# -------------------------------------------------------- worker (under MPI)

def _worker(name, timeout, dump_after):
    # Runs on every rank under mpiexec; rank 0 prints the records as JSON.
    import faulthandler

    import numpy as np
    from mpi4py import MPI

    import collectives as C

    world = MPI.COMM_WORLD
    if dump_after:  # where each rank is stuck, if it is
        faulthandler.dump_traceback_later(dump_after)
    if name == "finalize":
        return _finalize_worker(world)
    cases = {"skip": _skip_cases, "mismatch": _mismatch_cases, "local": _local_cases,
             "first-skip": _first_cases, "first-mismatch": _first_cases,
             "members": _first_cases}[name]
    records = {}
    for case, call in cases(world.Get_rank(), world.Get_size(), timeout, name=name):
        comm = world.Dup()
        if not name.startswith("first-"):  # "auto" splits comm by node on its first call
            C.allreduce(np.ones(1), comm)
        records[case] = _attempt(call, comm, world, repeat=1 if "skip" in name else 3,
                                 say=bool(dump_after))
        _polite_barrier(world)
    table = world.gather(records, root=0)
    if world.Get_rank() == 0:
        merged = {case: {str(r): t[case] for r, t in enumerate(table)} for case in records}
        print(_JSON + json.dumps(merged), flush=True)


def _attempt(call, comm, world, *, repeat, say=False):
    # Call up to `repeat` times (all ranks stop after a timeout anywhere);
    # return the error (type, message) and the seconds to it.
    from mpi4py import MPI

    times, kind, text, skipped = [], "no error", "", False
    for _ in range(repeat):
        t0 = time.perf_counter()
        try:
            skipped = call(comm) is _SKIPPED
        except Exception as error:
            kind, text = type(error).__name__, str(error)
        times.append(time.perf_counter() - t0)
        if say:  # now: this job may never get to report
            print(f"{_SAY}{world.Get_rank()}: {kind}: {text} ({times[-1]:.3f} s)"
                  if not skipped else f"{_SAY}{world.Get_rank()}: skipped", flush=True)
        if _polite_any(world, kind == "CollectiveTimeoutError"):
            break  # the communicator holds stale messages now
    if skipped:
        return {"type": "skipped", "message": "", "times": [], "message_pending": False}
    pending = bool(comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG))
    return {"type": kind, "message": text, "seconds": times[0], "times": times,
            "message_pending": pending}


def _polite_any(comm, flag):
    # Whether `flag` is true on any rank; waits by sleeping, not spinning.
    import numpy as np
    from mpi4py import MPI

    mine, anyone = np.array([int(flag)]), np.zeros(1, dtype=int)
    request = comm.Iallreduce(mine, anyone, op=MPI.MAX)
    while not request.Test():
        time.sleep(0.002)
    return bool(anyone[0])


def _polite_barrier(comm):
    # A barrier that sleeps instead of spinning (2 cores, 4 ranks).
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(0.002)


def _skip_cases(rank, size, timeout, **_):
    import numpy as np

    import collectives as C

    def skipping(function):
        return lambda comm: _SKIPPED if rank == 1 else function(np.ones(1000), comm)

    return [
        ("allreduce (auto)", skipping(lambda b, c: C.allreduce(b, c, timeout=timeout))),
        ("ring_allreduce", skipping(lambda b, c: C.ring_allreduce(b, c, timeout=timeout))),
        ("tree_reduce (root 0)",
         skipping(lambda b, c: C.tree_reduce(b, c, root=0, timeout=timeout))),
    ]


def _mismatch_cases(rank, size, timeout, **_):
    import numpy as np

    import collectives as C

    one = rank == 1
    limit = 2.0  # a mismatch that is not detected must not hang the script
    return [
        ("count (allreduce)", lambda c: C.allreduce(np.zeros(10 + one, np.float32), c,
                                                    timeout=limit)),
        ("dtype (allreduce)", lambda c: C.allreduce(
            np.zeros(5, np.float32 if one else np.float64), c, timeout=limit)),
        ("op (allreduce)", lambda c: C.allreduce(np.zeros(5), c, op="max" if one else "sum",
                                                 timeout=limit)),
        ("root (tree_reduce)", lambda c: C.tree_reduce(np.zeros(5), c, root=int(one),
                                                       timeout=limit)),
        ("algorithm (allreduce ring vs tree)", lambda c: C.allreduce(
            np.zeros(5), c, algorithm="tree" if one else "ring", timeout=limit)),
        ("algorithm (allreduce auto vs ring, after a first auto call)",
         lambda c: C.allreduce(np.zeros(5), c, algorithm="ring" if one else "auto",
                               timeout=limit)),
    ]


def _first_cases(rank, size, timeout, *, name):
    # Cases that may hang, each run as a job of its own: the first call of
    # allreduce(algorithm="auto") on a communicator when rank 1 skips it or
    # calls algorithm="ring" instead, and partial_reduce with members that
    # disagree.
    import numpy as np

    import collectives as C

    if name == "members":
        def call(comm):  # rank 0 names members [0, 1], ranks 1 and 2 [0, 1, 2]
            return _SKIPPED if rank == 3 else C.partial_reduce(
                np.zeros(5), comm, [0, 1] if rank == 0 else [0, 1, 2], timeout=timeout)
    elif name == "first-skip":
        def call(comm):
            return _SKIPPED if rank == 1 else C.allreduce(np.ones(10), comm, timeout=timeout)
    else:
        def call(comm):
            return C.allreduce(np.ones(10), comm, algorithm="ring" if rank == 1 else "auto",
                               timeout=timeout)
    return [(name, call)]


def _local_cases(rank, size, timeout, **_):
    import numpy as np

    import collectives as C

    read_only = np.zeros(4)
    read_only.flags.writeable = False
    return [
        ("unknown op `op=\"mean\"`", lambda c: C.allreduce(np.zeros(4), c, op="mean")),
        ("unsupported dtype complex64",
         lambda c: C.allreduce(np.zeros(4, np.complex64), c)),
        ("bad root `tree_reduce(root=size)`",
         lambda c: C.tree_reduce(np.zeros(4), c, root=size)),
        ("non-contiguous buffer", lambda c: C.allreduce(np.zeros((4, 4))[:, 0], c)),
        ("read-only buffer", lambda c: C.allreduce(read_only, c)),
        ("unknown algorithm", lambda c: C.allreduce(np.zeros(4), c, algorithm="fast")),
        ("negative timeout", lambda c: C.ring_allreduce(np.zeros(4), c, timeout=-1)),
    ]


def _finalize_worker(world):
    # Rank 1 dies 1 s in, after its work; the others go to MPI_Finalize.
    _polite_barrier(world)
    if world.Get_rank() == 1:
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)
    print(f"rank {world.Get_rank()} finalizing", flush=True)


# ------------------------------------------------------------------ report

_HEADER = ["Fault or bad input", "What the user sees", "Time to fail",
           "Exit status", "Data lost", "Test that covers it"]


def markdown(rows):
    """Return the rows as a Markdown table."""
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("\n", " ") for c in row.cells()) + " |")
    return "\n".join(lines) + "\n"


def _machine():
    # Cores, load, MPI library: the conditions of the measurement.
    from mpi4py import MPI

    load = os.getloadavg()
    version = MPI.Get_library_version().splitlines()[0].strip()
    return (f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
            f"{load[2]:.2f} at the start; {version}; Python {sys.version.split()[0]}")


def main(argv=None):
    """Run every scenario; print the table; return the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--markdown", metavar="FILE", help="also write the table here")
    p.add_argument("--repeat", type=int, default=3, help="runs of the timed kill scenarios")
    p.add_argument("--skip-timeout", type=float, default=5.0,
                   help="timeout of the skipped-collective scenario (s)")
    p.add_argument("--worker", choices=("skip", "mismatch", "local", "finalize", "members",
                                        "first-skip", "first-mismatch"),
                   help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--dump-after", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.timeout, args.dump_after)
        return 0
    return _report(args)


def _report(args):
    started = time.monotonic()
    machine = _machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        reference = _Reference(tmp)
        steps = [
            lambda: [kill_default(tmp, reference, args.repeat)],
            lambda: [kill_survivors(tmp, 1), kill_survivors(tmp, 1, ignore_usr1=False),
                     finalize_after_death()],
            lambda: [sigterm_all(tmp, reference, args.repeat)],
            lambda: damaged_checkpoints(tmp, reference),
            lambda: skipped_collective(args.skip_timeout),
            mismatches,
            hanging_cases,
            bad_local_input,
            lambda: [kill_partial(tmp, args.repeat)],
            lambda: bad_options(tmp),
        ]
        for step in steps:
            new = step()
            for row in new:
                print(f"[{time.monotonic() - started:6.1f} s] {row.fault}: "
                      f"{_seconds(row.seconds)}, status {row.status}"
                      + (f"  FOUND: {row.found}" if row.found else ""), flush=True)
            rows.extend(new)
    table = markdown(rows).replace(tmp, "$TMP")
    footer = (f"\nMachine: {machine}.  Script runtime {time.monotonic() - started:.0f} s.\n")
    print("\n" + table + footer)
    if args.markdown:
        Path(args.markdown).write_text(table + footer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
