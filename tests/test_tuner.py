"""The run-time tuner of "auto": trials, choice by median, exploration, change."""

import pytest

from collectives._tuner import Tuner

MIB = 1 << 20


def _run(tuner, nbytes, cost, calls):
    # Make ``calls`` calls; cost[name] is the time of each candidate.
    picks = []
    for _ in range(calls):
        i = tuner.propose(nbytes)
        picks.append(tuner.candidates[i])
        tuner.record(nbytes, i, cost[tuner.candidates[i]])
    return picks


def test_tries_each_candidate_then_runs_the_faster():
    tuner = Tuner(("shm", "ring"), trials=3, explore_every=4, explore_share=0.25)
    picks = _run(tuner, 4 * MIB, {"shm": 2.0, "ring": 1.0}, 8)
    # Each tried in a row, after an untimed first call (a switch).
    assert picks == ["shm"] * 4 + ["ring"] * 4
    assert tuner.best(4 * MIB) == "ring"
    picks = _run(tuner, 4 * MIB, {"shm": 2.0, "ring": 1.0}, 24)
    # shm, 2x slower, costs 2 (2 - 1) = 2 calls' worth per retry: with a
    # quarter of the time for retries, one every 8 calls, run twice
    # (untimed, then timed) since it was last tried (call 3, then 12, 21).
    assert [i for i, p in enumerate(picks, start=8) if p == "shm"] == [11, 12, 20, 21, 29, 30]
    assert tuner.chosen(4 * MIB) == picks[-1]


@pytest.mark.parametrize("slower, interval", [(1.1, 4), (2.0, 8), (3.0, 16), (999.0, 1024)])
def test_retries_cost_a_share_of_the_time(slower, interval):
    # Calls between retries: 2 (ratio - 1) / share, at least explore_every,
    # at most EXPLORE_MAX; so a near-tie is retried often, a bad one rarely.
    tuner = Tuner(("shm", "ring"), trials=2, explore_every=4, explore_share=0.25)
    picks = _run(tuner, MIB, {"shm": slower, "ring": 1.0}, 6 + 2 * 1100)
    retries = [i for i, p in enumerate(picks) if p == "shm" and i >= 6]
    assert retries[0] - 2 == interval  # shm last tried at call 2 of its trials
    assert retries[1] - retries[0] == 1  # the timed second call


def test_notices_when_the_machine_changes():
    tuner = Tuner(("shm", "ring"), trials=2, keep=3, explore_every=4)
    _run(tuner, MIB, {"shm": 1.0, "ring": 2.0}, 10)
    assert tuner.best(MIB) == "shm"
    _run(tuner, MIB, {"shm": 5.0, "ring": 2.0}, 14)  # shm got slow
    assert tuner.best(MIB) == "ring"
    picks = _run(tuner, MIB, {"shm": 5.0, "ring": 2.0}, 8)
    assert picks.count("ring") >= 4 and tuner.best(MIB) == "ring", picks  # retries: 2 in 4


def test_sizes_are_tuned_apart_and_outliers_do_not_decide():
    tuner = Tuner(("shm", "ring"), trials=3)
    _run(tuner, MIB, {"shm": 1.0, "ring": 2.0}, 8)
    _run(tuner, 64 * MIB, {"shm": 3.0, "ring": 2.0}, 8)
    assert (tuner.best(MIB), tuner.best(64 * MIB)) == ("shm", "ring")
    assert tuner.best(2 * MIB) is None and tuner.chosen(2 * MIB) is None
    tuner.record(MIB, 0, 100.0)  # one slow call (a page fault storm) among fast ones
    assert tuner.best(MIB) == "shm"


def test_bad_settings():
    with pytest.raises(ValueError, match="at least one candidate"):
        Tuner(())
    with pytest.raises(ValueError, match="trials=4, keep=3"):
        Tuner(("a", "b"), trials=4, keep=3)
    with pytest.raises(ValueError, match="explore_share=0"):
        Tuner(("a", "b"), explore_share=0)


def test_first_call_of_each_candidate_is_not_timed():
    # It pays one-off costs (a window to grow, buffers to allocate), and
    # so does every call after a switch (a cold cache).
    tuner = Tuner(("shm", "ring"), trials=2, explore_every=8)
    for i in (0, 1):  # each candidate's first call: very slow
        tuner.record(MIB, i, 50.0 if i == 0 else 1.0)
    _run(tuner, MIB, {"shm": 0.5, "ring": 1.0}, 5)
    assert tuner.best(MIB) == "shm"


def test_dropped_candidate_is_never_proposed_again():
    # "cma" where ranks may not read each other: dropped after one proposal,
    # even though its (recorded) times would be the best; the last one stays.
    tuner = Tuner(("shm", "ring", "cma"), trials=2, explore_every=4, explore_share=0.5)
    _run(tuner, MIB, {"shm": 2.0, "ring": 3.0, "cma": 1.0}, 9)
    assert tuner.best(MIB) == "cma"
    tuner.drop(2)
    picks = _run(tuner, MIB, {"shm": 2.0, "ring": 3.0, "cma": 1.0}, 16)
    assert "cma" not in picks and tuner.best(MIB) == "shm" and "ring" in picks
    tuner.drop(0)
    tuner.drop(1)  # never the last candidate
    assert set(_run(tuner, MIB, {"shm": 2.0, "ring": 3.0, "cma": 1.0}, 5)) == {"ring"}


def test_the_shortest_time_decides():
    # A candidate's first timed calls at a size may still be warming up
    # (caches, page faults); noise only adds time, so its best time counts.
    tuner = Tuner(("shm", "ring"), trials=3, keep=5)
    for seconds in (9.0, 4.8, 3.7, 2.2):  # untimed, then warming up
        tuner.record(MIB, 0, seconds)
    for seconds in (9.0, 2.5, 2.4, 2.6):
        tuner.record(MIB, 1, seconds)
    assert tuner.best(MIB) == "shm"


def test_retry_intervals_use_typical_times():
    # shm was fast once (1.2) but takes 3.0 mostly: its retries cost 3.0
    # against ring's 1.0, so they come every 2 (3 - 1) / 0.25 = 16 calls,
    # not every 4 as its shortest time would suggest.
    tuner = Tuner(("shm", "ring"), trials=3, explore_every=4, explore_share=0.25)
    for seconds in (9.0, 1.2, 3.0, 3.0):  # untimed switch, then timed
        tuner.record(MIB, 0, seconds)
    picks = _run(tuner, MIB, {"shm": 3.0, "ring": 1.0}, 4 + 20)
    assert picks[:4] == ["ring"] * 4 and tuner.best(MIB) == "ring"
    assert [i for i, p in enumerate(picks, start=4) if p == "shm"][:2] == [3 + 16, 3 + 17]
