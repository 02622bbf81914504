"""The run-time tuner of "auto": trials, choice by median, exploration, change."""

import pytest

from collectives._tuner import RECHECK_AFTER, RECHECK_FIRST, Tuner

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


def test_the_median_decides():
    # A lucky short call (rank 0 came late: the others had done most of the
    # work) does not make a candidate the best; warm-up calls are dropped
    # once a call is 5% shorter than all of them.
    tuner = Tuner(("cma", "shm"), trials=3, keep=5)
    for seconds in (9.0, 2.0, 4.9, 5.0):  # untimed, then one lucky call
        tuner.record(MIB, 0, seconds)
    for seconds in (9.0, 4.0, 4.1, 3.9):
        tuner.record(MIB, 1, seconds)
    assert tuner.best(MIB) == "shm"
    tuner = Tuner(("shm", "ring"), trials=3, keep=5)
    for seconds in (9.0, 4.8, 3.7, 2.2, 2.1, 2.2):  # untimed, warming up, then steady
        tuner.record(MIB, 0, seconds)
    for seconds in (9.0, 2.5, 2.4, 2.6):
        tuner.record(MIB, 1, seconds)
    assert tuner.best(MIB) == "shm"


def test_two_slow_calls_of_the_best_do_not_hand_over_to_a_near_tie():
    # shm takes 1.0 but two calls in a row in every 20 take 1.5 (another
    # process had the core); shm-pipelined takes 1.15.  The median of five
    # keeps shm; one of three handed over after each pair of slow calls.
    tuner = Tuner(("shm", "shm-pipelined"), trials=3, keep=5, explore_every=16)
    picks = []
    for call in range(400):
        i = tuner.propose(MIB)
        name = tuner.candidates[i]
        picks.append(name)
        slow = name == "shm" and call % 20 in (10, 11)
        tuner.record(MIB, i, 1.5 if slow else {"shm": 1.0, "shm-pipelined": 1.15}[name])
    assert tuner.best(MIB) == "shm"
    assert picks[8:].count("shm-pipelined") <= 2 * 392 // 16, picks


def _takeovers_by_a_steady_near_tie(keep):
    # shm's calls alternate 0.8 and 1.2 (1.0 on average: oversubscribed,
    # rank 0 is first or last on every other call); cma takes 1.05 always.
    # Returns how often cma ran longer than a retry (its calls and the
    # switch): it had taken over as the best.
    tuner = Tuner(("shm", "cma"), trials=3, keep=keep, explore_every=16)
    picks, shm_calls = [], 0
    for _ in range(400):
        i = tuner.propose(MIB)
        name = tuner.candidates[i]
        picks.append(name)
        shm_calls += name == "shm"
        tuner.record(MIB, i, (0.8 if shm_calls % 2 else 1.2) if name == "shm" else 1.05)
    runs = "".join("c" if p == "cma" else " " for p in picks[10:]).split()
    return sum(len(run) > keep + 1 for run in runs)


def test_a_best_whose_times_alternate_mostly_keeps_its_place():
    # Of six kept times the middle two are one low and one high: shm's
    # median is 1.0.  A median of five jumped between 0.8 and 1.2 from call
    # to call, and cma took over after every retry (17 times in 390 calls).
    # Of six, the trials of a restarted retry are still three and may
    # be all high once (6 times).
    assert _takeovers_by_a_steady_near_tie(keep=6) <= 6
    assert _takeovers_by_a_steady_near_tie(keep=5) >= 15  # what this prevents


def test_a_retry_that_beats_the_best_runs_on_until_it_takes_over():
    # shm was slow for a while (another process had the core), so
    # shm-pipelined took over; shm is fast again.  At its first retry it
    # beats the best and runs on until its median is all fresh times, then
    # takes over for good: one retry, not one per stale time.
    tuner = Tuner(("shm", "shm-pipelined"), trials=3, keep=5, explore_every=16)
    cost = {"shm": 1.0, "shm-pipelined": 1.2}
    _run(tuner, MIB, cost, 8)
    cost["shm"] = 1.5
    _run(tuner, MIB, cost, 4)  # a switch back, then three slow calls
    assert tuner.best(MIB) == "shm-pipelined"
    cost["shm"] = 1.0
    picks = []
    while tuner.best(MIB) != "shm" and len(picks) < 100:
        picks += _run(tuner, MIB, cost, 1)
    first = picks.index("shm")
    assert picks[first:] == ["shm"] * 4, picks  # a switch and three timed calls
    assert _run(tuner, MIB, cost, 16).count("shm") >= 14  # one retry at most


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


def test_retry_intervals_count_the_switches():
    # A call right after a switch runs on a cold cache: here it takes 3.0
    # more, the best's first call back too.  A retry of ring (2.0 timed,
    # best 1.0) then costs (5 - 1) + (2 - 1) + (4 - 1) = 8 of the best's
    # calls, not the 2 (2 - 1) = 2 its timed calls suggest: with a quarter
    # of the time for retries, one every 32 calls instead of every 8.
    tuner = Tuner(("shm", "ring"), trials=2, explore_every=4, explore_share=0.25)
    picks, last = [], None
    for _ in range(120):
        i = tuner.propose(MIB)
        name = tuner.candidates[i]
        picks.append(name)
        tuner.record(MIB, i, {"shm": 1.0, "ring": 2.0}[name] + (3.0 if i != last else 0.0))
        last = i
    retries = [i for i, p in enumerate(picks) if p == "ring" and i >= 6]
    # After the trials (ring last at call 5) only part of a retry was seen,
    # ring's last timed call and shm's switch back: (2 - 1) + (4 - 1) = 4,
    # so 16 calls; from then on whole retries, 32 calls after the last.
    assert retries == [21, 22, 54, 55, 87, 88]


def test_a_slower_best_brings_the_retries_forward():
    # ring's retries cost 2 (3 - 1) = 4 calls of shm: with 1% of the time
    # for retries, one every 400 calls.  When shm slows to 2.9 a call, the
    # same retry costs almost nothing against it, and ring is tried again
    # (and taken) within a few calls, not at call 400.
    tuner = Tuner(("shm", "ring"), trials=2, keep=3, explore_every=4, explore_share=0.01)
    _run(tuner, MIB, {"shm": 1.0, "ring": 3.0}, 40)
    assert tuner.best(MIB) == "shm"
    picks = _run(tuner, MIB, {"shm": 2.9, "ring": 2.0}, 12)
    assert tuner.best(MIB) == "ring" and picks[-1] == "ring", picks


def test_a_call_that_lost_its_core_does_not_hold_a_candidate_back():
    # One call of a retry of ring took 100x its time (the machine, not
    # ring).  Counted whole, the retry would cost 150 of shm's calls, and
    # ring, fast again, would wait about 600 calls for its next retry;
    # counted as 4 of ring's calls, the retry costs 5.5 and the next comes
    # 22 calls later (with a quarter of the time for retries).
    tuner = Tuner(("shm", "ring"), trials=2, keep=3, explore_every=4, explore_share=0.25)
    _run(tuner, MIB, {"shm": 1.0, "ring": 1.5}, 12)
    assert tuner.best(MIB) == "shm"
    picks = []
    while picks.count("ring") < 2:  # one retry of ring: a switch, then a slow call
        picks += _run(tuner, MIB, {"shm": 1.0, "ring": 150.0 if "ring" in picks else 1.5}, 1)
    picks = _run(tuner, MIB, {"shm": 1.0, "ring": 0.5}, 40)  # ring got faster
    assert tuner.best(MIB) == "ring" and 20 <= picks.index("ring") <= 24, picks


def test_a_best_that_lost_in_a_slow_spell_is_tried_again_soon():
    # A slow spell of the machine hits shm's calls: ring takes over.  By
    # its cost shm's next retry would be about 570 calls away (1% of the
    # time for retries); as the best that lost its place it is tried again
    # RECHECK_FIRST calls later, and takes over again.
    tuner = Tuner(("shm", "ring"), trials=2, keep=3, explore_every=4, explore_share=0.01)
    _run(tuner, MIB, {"shm": 1.0, "ring": 1.3}, 12)
    assert tuner.best(MIB) == "shm"
    _run(tuner, MIB, {"shm": 5.0, "ring": 1.3}, 3)  # the spell
    assert tuner.best(MIB) == "ring"
    picks = _run(tuner, MIB, {"shm": 1.0, "ring": 1.3}, 100)
    assert RECHECK_FIRST - 4 <= picks.index("shm") <= RECHECK_FIRST, picks
    assert tuner.best(MIB) == "shm" and picks[-1] == "shm"


def test_a_best_that_lost_for_good_is_rechecked_ever_less_often():
    # shm really got slower (ring takes over for good): it is rechecked
    # RECHECK_FIRST calls later, then after twice and four times that
    # (RECHECK_AFTER), then only when its retry cost allows (about 570
    # calls at 1% of the time for retries).
    tuner = Tuner(("shm", "ring"), trials=2, keep=3, explore_every=4, explore_share=0.01)
    _run(tuner, MIB, {"shm": 1.0, "ring": 1.3}, 12)
    _run(tuner, MIB, {"shm": 5.0, "ring": 1.3}, 3)
    assert tuner.best(MIB) == "ring"
    picks = _run(tuner, MIB, {"shm": 5.0, "ring": 1.3}, 800)
    tried = [i for i, name in enumerate(picks) if name == "shm" and picks[i - 1] != "shm"]
    gaps = [b - a for a, b in zip(tried, tried[1:])]
    assert tried[0] <= RECHECK_FIRST and gaps[:2] == [2 * RECHECK_FIRST, RECHECK_AFTER], tried
    assert len(tried) == 4 and gaps[2] > 500, tried


def test_a_restarted_candidate_still_improving_renews_its_typical_time():
    # ring took over from cma in a spell of cma's; cma, retried, comes
    # back close (1.3, restarting its times) and improves on every call
    # (1.2, 1.1, 1.0, 0.95: each drops the times before it).  Its typical
    # time renews after TRIALS timed calls, as if none had been dropped, and
    # it takes over; counting kept times, its stale 2.0 had stayed.
    tuner = Tuner(("cma", "ring"), trials=3, keep=5, explore_every=4, explore_share=0.05)
    _run(tuner, MIB, {"cma": 1.0, "ring": 1.2}, 12)
    _run(tuner, MIB, {"cma": 2.0, "ring": 1.2}, 12)
    assert tuner.best(MIB) == "ring"
    steps = iter([1.3, 1.2, 1.1, 1.0, 0.95])
    picks = []
    while len(picks) < 40:
        i = tuner.propose(MIB)
        picks.append(tuner.candidates[i])
        warming = len(picks) > 1 and picks[-2] != picks[-1]
        tuner.record(MIB, i, 1.2 if i else (2.0 if warming else next(steps, 0.95)))
    assert tuner.best(MIB) == "cma" and picks[-5:] == ["cma"] * 5, picks


def test_a_close_retry_decides_on_fresh_times():
    # cma had a slow spell (1.6) and ring (1.2) took over; cma is fast
    # again, but the third timed call of a retry is slow (1.25).  With its
    # old times in its median the retry, stopped at that call, keeps a
    # median of 1.25 and loses; starting afresh, its median is 1.0 and it
    # takes over at once.
    tuner = Tuner(("cma", "ring"), trials=3, keep=5, explore_every=4, explore_share=0.05)
    _run(tuner, MIB, {"cma": 1.0, "ring": 1.2}, 12)
    _run(tuner, MIB, {"cma": 1.6, "ring": 1.2}, 12)
    assert tuner.best(MIB) == "ring"
    picks, streak = [], 0
    while len(picks) < 40:
        i = tuner.propose(MIB)
        streak = streak + 1 if picks and picks[-1] == tuner.candidates[i] else 0
        picks.append(tuner.candidates[i])
        tuner.record(MIB, i, (1.25 if streak == 3 else 1.0) if i == 0 else 1.2)
    first = picks.index("cma")  # its first retry takes over (before: its second)
    assert picks[first:first + RECHECK_FIRST] == ["cma"] * RECHECK_FIRST, "".join(
        p[0] for p in picks)
    assert tuner.best(MIB) == "cma" and picks[-1] == "cma"


@pytest.mark.parametrize("ring, best", [(0.99, "shm"), (0.95, "ring")])
def test_a_near_tie_does_not_take_over(ring, best):
    # Within SWITCH_MARGIN (3%) of the best, a candidate is noise, and a
    # switch costs a call on a cold cache; 5% faster takes over.
    tuner = Tuner(("shm", "ring"), trials=2, keep=3, explore_every=4, explore_share=0.25)
    _run(tuner, MIB, {"shm": 1.0, "ring": 1.5}, 8)
    assert tuner.best(MIB) == "shm"
    _run(tuner, MIB, {"shm": 1.0, "ring": ring}, 40)
    assert tuner.best(MIB) == best


def test_a_candidate_still_warming_up_runs_on():
    # At the first size a process tunes, the first candidate tried is still
    # warming up during its trials (4, 3, 2 here, then 1): while each timed
    # call is its shortest by 5%, it runs on (up to keep calls in a row), so
    # its steady time, not its warm-up, meets the others'.
    times = {"shm": iter([9.0, 4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
             "ring": iter([1.5] * 10)}
    tuner = Tuner(("shm", "ring"), trials=3, keep=5)
    picks = []
    for _ in range(11):
        i = tuner.propose(MIB)
        picks.append(tuner.candidates[i])
        tuner.record(MIB, i, next(times[tuner.candidates[i]]))
    assert picks == ["shm"] * 6 + ["ring"] * 4 + ["shm"], picks
    assert tuner.best(MIB) == "shm"


def test_a_candidate_is_not_tried_below_its_smallest_size():
    # shm-pipelined from 8 MiB on: at 1 MiB (and 4-8 MiB) only the others
    # run, trials and retries alike; dropping the last one there keeps it.
    tuner = Tuner(("shm", "shm-pipelined", "ring"), smallest={"shm-pipelined": 8 * MIB},
                  trials=2, explore_every=4, explore_share=0.5)
    cost = {"shm": 2.0, "shm-pipelined": 1.0, "ring": 3.0}
    assert "shm-pipelined" not in _run(tuner, MIB, cost, 60)
    assert "shm-pipelined" not in _run(tuner, 6 * MIB, cost, 60)
    assert "shm-pipelined" in _run(tuner, 8 * MIB, cost, 12)
    assert tuner.best(MIB) == "shm" and tuner.best(8 * MIB) == "shm-pipelined"
    tuner.drop(0)
    assert set(_run(tuner, MIB, cost, 8)) == {"ring"}


def test_trial_calls_bound_the_trials():
    # Every candidate warming up all the way: the trials end within
    # trial_calls, which benchmarks use as the warm-up of "auto".
    from collectives._tuner import trial_calls
    tuner = Tuner(("a", "b", "c"), trials=3, keep=5)
    falling = {name: iter(10.0 * 0.5 ** k for k in range(99)) for name in tuner.candidates}
    for _ in range(trial_calls(3)):
        i = tuner.propose(MIB)
        tuner.record(MIB, i, next(falling[tuner.candidates[i]]))
    assert tuner.best(MIB) is not None


def test_one_slow_call_after_a_faster_one_does_not_unseat_the_best():
    # The best, steady at 1.0, takes 0.9 once (5% faster than all its kept
    # times: they are dropped) and then 2.0 once.  The median of those two
    # would be 2.0 and hand over to ring at 1.3; until it has TRIALS times
    # again its typical time can only fall, so shm stays the best.
    tuner = Tuner(("shm", "ring"), trials=3, keep=5, explore_every=4, explore_share=0.01)
    _run(tuner, MIB, {"shm": 1.0, "ring": 1.3}, 30)
    assert tuner.best(MIB) == "shm"
    _run(tuner, MIB, {"shm": 0.9, "ring": 1.3}, 1)
    _run(tuner, MIB, {"shm": 2.0, "ring": 1.3}, 1)
    assert tuner.best(MIB) == "shm"
    picks = _run(tuner, MIB, {"shm": 1.0, "ring": 1.3}, 20)
    assert picks == ["shm"] * 20 and tuner.best(MIB) == "shm", picks


def test_a_best_that_lost_in_a_spell_is_rechecked_while_near_ties_take_turns():
    # cma's slow spell hands over to shm; shm and its near-tie streaming
    # then take the lead from each other.  cma, the best before them, is
    # still tried again RECHECK_FIRST calls after it lost, and takes over.
    tuner = Tuner(("cma", "shm", "streaming"), trials=2, keep=3, explore_every=4,
                  explore_share=0.01)
    _run(tuner, MIB, {"cma": 1.0, "shm": 2.0, "streaming": 2.1}, 20)
    assert tuner.best(MIB) == "cma"
    _run(tuner, MIB, {"cma": 5.0, "shm": 2.0, "streaming": 2.1}, 3)  # the spell
    assert tuner.best(MIB) == "shm"
    picks = []
    for turn in range(6):  # shm and streaming faster in turns
        faster, slower = ("shm", "streaming") if turn % 2 else ("streaming", "shm")
        picks += _run(tuner, MIB, {"cma": 1.0, faster: 2.0, slower: 2.6}, 4)
    assert "cma" in picks[:RECHECK_FIRST + 1], picks
    picks = _run(tuner, MIB, {"cma": 1.0, "shm": 2.0, "streaming": 2.1}, 20)
    assert tuner.best(MIB) == "cma" and picks[-8:] == ["cma"] * 8, picks


def test_a_steady_best_is_timed_on_one_call_in_sample():
    # With sample=4, a best that runs with nothing due has only every fourth
    # call timed; the retries keep their schedule in calls (the same picks
    # as timing every call, where the times do not change), and a best that
    # slows down for good still loses its place, a few calls later.
    cost = {"shm": 1.0, "ring": 3.0}
    sampled, every = (Tuner(("shm", "ring"), trials=2, sample=s) for s in (4, 1))
    assert _run(sampled, MIB, cost, 600) == _run(every, MIB, cost, 600)
    timed = sampled._sizes[MIB.bit_length()].timed  # a private count, for the sampling
    before = timed[0]
    picks = _run(sampled, MIB, cost, 400)
    assert picks == _run(every, MIB, cost, 400) and 90 <= timed[0] - before <= 110, timed
    slow = {"shm": 9.0, "ring": 3.0}
    lost = [_run(tuner, MIB, slow, 30).index("ring") for tuner in (sampled, every)]
    assert lost[1] < lost[0] <= 4 * (sampled.keep // 2 + 1) + 4, lost
    with pytest.raises(ValueError, match="sample >= 1"):
        Tuner(("shm",), sample=0)
