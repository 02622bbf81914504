"""optim.search under mpiexec: the queue, the results, a failing configuration."""

import json

import pytest
from launch import run_mpi

from optim.search import UsageError, configurations, parse_args

COMMON = ["--epochs", "2", "--hidden", "32", "--batch-size", "32"]


def search(tmp_path, nranks, *options, name="search.json"):
    out = tmp_path / name
    result = run_mpi(nranks, ["-m", "optim.search", "--json", str(out), *COMMON, *options],
                     timeout=90)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    # 6 configurations (2 fail: lr < 0) on 2 groups of 2 ranks.
    return search(tmp_path_factory.mktemp("search"), 4, "--group-size", "2",
                  "--grid", "lr=-1,0.05,0.1", "--grid", "momentum=0,0.9")


def test_every_configuration_runs_exactly_once(four_ranks):
    summary, stdout = four_ranks
    assert summary["groups"] == 2 and summary["group_size"] == 2
    assert [r["index"] for r in summary["results"]] == list(range(6))
    ran = sorted(i for runs in summary["runs_by_group"] for i in runs)
    assert ran == list(range(6)), summary["runs_by_group"]
    assert {r["group"] for r in summary["results"]} <= {0, 1}
    assert len(stdout.splitlines()) == 8  # header, 6 rows, best


def test_failing_configuration_is_reported_not_fatal(four_ranks):
    results = four_ranks[0]["results"]
    failed = [r["index"] for r in results if r["status"] == "failed"]
    assert failed == [0, 1]
    assert all("lr must be > 0.0, got -1.0" in results[i]["error"] for i in failed)
    ok = [r for r in results if r["status"] == "ok"]
    assert len(ok) == 4 and all(0.1 < r["test_accuracy"] <= 1 for r in ok)
    best = four_ranks[0]["best"]
    assert best["test_accuracy"] == max(r["test_accuracy"] for r in ok)


def test_result_equals_training_alone(tmp_path, four_ranks):
    # Configuration 5 (lr 0.1, momentum 0.9) alone on 2 ranks, same seed:
    # the same bytes, whichever group ran it in the search.
    alone, _ = search(tmp_path, 2, "--group-size", "2", "--grid", "lr=0.1",
                      "--grid", "momentum=0.9")
    [single] = alone["results"]
    searched = four_ranks[0]["results"][5]
    assert single["config"] == searched["config"]
    for key in ("params_sha256", "loss", "test_accuracy"):
        assert single[key] == searched[key], key


def test_bad_grid_and_group_size():
    with pytest.raises(UsageError, match="KEY one of"):
        configurations(["colour=red"], {})
    with pytest.raises(UsageError, match="values of lr must be floats"):
        configurations(["lr=fast"], {})
    assert configurations(["lr=1,2", "seed=3"], {"lr": 0, "seed": 0}) == [
        {"lr": 1.0, "seed": 3}, {"lr": 2.0, "seed": 3}]
    with pytest.raises(UsageError, match="--group-size 3 does not divide the 2 ranks"):
        parse_args(["--group-size", "3"], 2)
    with pytest.raises(UsageError, match="invalid float value"):
        parse_args(["--lr", "fast"], 2)
