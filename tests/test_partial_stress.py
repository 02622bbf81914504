"""PartialReducer under stress at 4, 5 and 8 ranks (its own mpiexec each).

Each rank makes 200+ calls with random sleeps; call counts differ per rank
and one rank is slowed.  The worker (``tests/workers/partial_stress.py``)
checks that every call is in a group all ranks agree on, with the right
values, and that the slow rank is grouped with others while enough ranks
are left.  A deadlock shows up as the launch's timeout.
"""

import json

import pytest
from launch import run_mpi

CASES = {
    # rank 0 hosts the controller: slowing it checks that its thread serves
    4: dict(group_size=2, slow_rank=0, reducer=dict(full_sync_every=25, staleness=0.5)),
    # no thread: rank 0 serves the controller inside its own calls
    5: dict(group_size=3, slow_rank=3,
            reducer=dict(thread=False, group_timeout=0.05, min_group_size=2,
                         connect_within=10)),
    8: dict(group_size=4, slow_rank=5, reducer=dict(full_sync_every=40)),
}


@pytest.mark.parametrize("nranks", sorted(CASES))
def test_partial_reducer_stress(nranks):
    options = dict(calls=200, sleep=0.002, slow=0.004, count=16, **CASES[nranks])
    result = run_mpi(nranks, ["tests/workers/partial_stress.py", json.dumps(options)],
                     timeout=120)
    assert result.returncode == 0 and "STRESS OK" in result.stdout, (
        f"stress at {nranks} ranks exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}")
    summary = json.loads(result.stdout.split("STRESS OK", 1)[1].splitlines()[0])
    assert summary["slow_rank_mixed_groups"] >= 10, summary
    print(f"{nranks} ranks: {summary}")


def test_benchmark_prints_valid_rows():
    result = run_mpi(3, ["-m", "benchmarks.partial", "-i", "5", "--delay", "5",
                         "--bytes", "4K"], timeout=60)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == ["0", "1", "2", "max"], result.stdout
    assert all(r[-1] == "ok" for r in rows), result.stdout
