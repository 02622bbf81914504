"""Pick between algorithms by timing them on the calls themselves (run-time tuning).

Which all-reduce is fastest for a large message on one node depends on
the machine, and here even on its state: the shared-memory pipeline hands
hot cache lines from core to core and ran at 0.55x MPI's time at 16 MiB
one hour and at 1.7x the next, while the ring (one large copy per step)
stayed put.  A fixed threshold is wrong half the time, so "auto" times
its candidates on live calls, as STAR-MPI does for MPI's collectives
(Faraj, Yuan and Lowenthal, ICS 2006): per message size (a power-of-two
bucket) it tries every candidate ``TRIALS`` times in a row, then runs the
one with the shortest median of its last ``KEEP`` times, and re-tries
the others now and then so that a change in the machine is noticed.  A
retry costs what its calls take beyond the best's typical time, so each
candidate is retried at a rate that keeps the cost of all retries near
``EXPLORE_SHARE`` of the time: with four others, one that costs two of
the best's calls per retry every 400 calls, a near-tie every
``EXPLORE_EVERY``.  The cost is measured, not assumed: it is the excess
of every call from leaving the best to coming back, the switches
included.  (Costs taken from the timed calls alone, 2 (ratio - 1), were
half the real ones: at 1 MiB, 2 ranks, a round of retries of four
candidates cost 15 of the best's calls, not 8, because a call right after
a switch runs on a cold cache, and so does the best's first call back;
"auto" took 1.15-1.25x the time of its best candidate.  Retrying one in
every 32 calls, in turn, cost 6-10% at 1-4 MiB.)  When the best slows
down, the costs shrink against its time and the others are retried
sooner.  A best that loses its place is tried again ``RECHECK_FIRST``
calls later whatever its retries cost, then after twice and four times
as many calls, up to ``RECHECK_AFTER``: a slow spell of the machine may
have made it lose.  A call that follows a call of another candidate
is not timed, and the candidate runs once more: it pays the switch (one-off
costs such as growing the shared window, and a cold cache: at 2 MiB, 2
ranks, "shm" took 240-380 us right after other candidates and 174 us
after itself), and a tuner that timed it would favour the candidates that
keep little state over the ones that keep it warm.

Only rank 0's tuner decides: its choice travels in the agreement
exchange that starts the call, so every rank runs the same algorithm.
Every rank waits for rank 0's tuner between calls, so "auto" may time
only one in ``sample`` calls of a steady best (``allreduce.TUNER_SAMPLE``).
"""

from collections import deque

__all__ = ["Tuner", "trial_calls", "typical_time", "TRIALS", "KEEP", "IMPROVING", "SWITCH_MARGIN",
           "EXPLORE_EVERY", "EXPLORE_MAX", "RECHECK_FIRST", "RECHECK_AFTER",
           "EXPLORE_SHARE"]

#: Calls of each candidate per size before the tuner trusts its times.
TRIALS = 3
#: Times kept per candidate and size; their median decides (of an even
#: number, the mean of the middle two: ``typical_time``).  Not the
#: shortest: a call's time on rank 0 depends on when the others arrive and
#: get a core, so the shortest of a few calls is luck, most of all for the
#: candidates whose time varies most (at 1 MiB, 4 ranks on 2 cores, "cma"
#: took 500 us a call, rank 0's median 480, shortest 421-439; "shm" 400,
#: median 379-422, shortest 291: the shortest ran "cma").  Nor the median
#: of fewer: with three, two slow calls of the best let a near-tie take
#: over (at 1 MiB, 2 ranks, "shm-pipelined" at 118 us ran for 50 calls at a
#: time where "shm" took 100).  A candidate that slows down for good is
#: noticed after KEEP // 2 + 1 calls.  Nor the median of five: oversubscribed,
#: rank 0's times alternate (AMD Zen 4 VM, 1 MiB, 4 ranks on 2 cores: "shm"
#: 388, 580, 395, 596, 380, 593 ... us), so the median of an odd number
#: of them jumped between the low and the high time on every call, and
#: "cma", steady at 480, took over and gave back the best in turns (one
#: traced launch: "auto" 585 us a call, "shm" 501, "cma" 575).  Of six,
#: the middle two are one low and one high time, and two slow calls still
#: do not count.  (On the machine, against five, within the noise:
#: BENCHMARKS.md, "AMD Zen 4 run, stop 21".)
KEEP = 6
#: A timed call this much shorter than every kept time of its candidate
#: supersedes them: they were warming up, as at the first size a process
#: tunes (at 1 MiB, 2 ranks, "shm" took 401, 190 and 156 us on its timed
#: trial calls and about 100 after them; in one benchmark run it lost its
#: trials to "shm-pipelined"), or the machine has changed in its favour.
#: The candidate runs on until it has ``TRIALS`` times again (at most KEEP
#: timed calls in a row); until then its typical time can only fall: the
#: best, steady at 166-185 us (2 MiB, 2 ranks), took 152 once, then 304,
#: and the median of those two made it lose to "cma" at 214.
IMPROVING = 0.95
#: How much shorter another candidate's time must be to take over from the
#: best: near-ties here differ by less than the noise (three candidates at
#: 16 MiB within 10%, each call +-15%), and every switch costs a call on a
#: cold cache.
SWITCH_MARGIN = 0.03
#: Fewest calls between two retries of a candidate that is not the best.
EXPLORE_EVERY = 16
#: Most calls between two retries of a candidate.
EXPLORE_MAX = 1024
#: Calls after a best lost its place until it is tried again, whatever its
#: retries cost: the times that made it lose may come from a passing slow
#: spell of the machine (at 2 MiB, 2 ranks, a spell of 2-6 ms calls where
#: "cma" took 490 us made "ring", at 620 us, the best for 285 calls).  If
#: it loses again, the wait doubles, up to ``RECHECK_AFTER`` calls, the
#: last of these rechecks.  A benchmark gives a size 40-60 calls: on the
#: AMD VM at 4 MiB, 2 ranks, a spell of 660-990 us calls of "shm" (350 us
#: before it) made "ring", at 555, the best at call 40, for good.  Each
#: best that lost its place has its own rechecks, so a later change of the
#: best does not cancel them.
RECHECK_FIRST = 16
RECHECK_AFTER = 64
#: Share of the time that retries of the candidates other than the best may
#: cost.  At 4% they took 3-4.7% of 600-call traces at 1 MiB, 2 ranks, where
#: "auto" has little room (the best, "shm", took 0.7x MPI's time); the best
#: slowing down (``_SLOWED``) brings the retries forward anyway.
EXPLORE_SHARE = 0.02


#: The best's typical time grown by this much since the last check of the
#: retries: check again at once (the others' costs shrink against it).
_SLOWED = 1.25
#: A call of a retry counts as at most this many of its candidate's typical
#: calls.  A switch costs up to 2.5 (a cold cache); a call that lost its
#: core costs what the machine did, not the candidate (at 2 MiB, 2 ranks,
#: "cma" took 400-500 us a call and once 22,700): counted whole, one such
#: call made a retry cost 50 of the best's calls and held the candidate
#: back for EXPLORE_MAX calls, while it was the fastest.
_OUTLIER = 4.0
#: A retry whose first timed call comes within this factor of the best's
#: typical time starts its kept times afresh, and so runs on to ``TRIALS``
#: of them: the machine drifts (at 2 MiB, 2 ranks, "cma" took 730, then
#: 530, then 380 us a call within one run), and with old times in its
#: median a retry that beat the best by 20% still lost to it.
_CONTENDER = 1.5


def typical_time(times):
    """The median of ``times``: of an even number, the mean of the middle two."""
    ordered, half = sorted(times), len(times) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


def trial_calls(candidates):
    """The most calls the trials of ``candidates`` candidates take at one size.

    Each: one untimed call after the switch, then ``TRIALS`` timed calls,
    or up to ``KEEP`` while it improves.  A benchmark that warms "auto" up
    by this many calls times it past its trials.
    """
    return candidates * (KEEP + 1)


class Tuner:
    """Times of ``candidates`` per message size, and the choice they imply.

    Parameters
    ----------
    candidates : sequence of str
        Algorithm names; on a tie the earlier one wins.
    enabled : bool
        False: the caller picks by its own rule (and still records).
    smallest : mapping of str to int, optional
        A candidate's smallest message size in bytes: it is not tried in a
        size bucket that starts below it (one that never wins there costs
        retries, and a near-tie hands over to it on noise).
    sample : int
        Time one in ``sample`` calls of a best that runs with nothing due
        (the others count as calls, for the retries' schedule, untimed):
        the tuner's own work is then off most calls, and a best that slows
        down is noticed that many times later.  1: time every call.

    """

    def __init__(self, candidates, *, enabled=True, smallest=None, trials=TRIALS, keep=KEEP,
                 explore_every=EXPLORE_EVERY, explore_share=EXPLORE_SHARE, sample=1):
        if len(candidates) < 1:
            raise ValueError("a tuner needs at least one candidate")
        if (trials < 1 or keep < trials or explore_every < 2 or not 0 < explore_share <= 1
                or sample < 1):
            raise ValueError(f"need 1 <= trials <= keep, explore_every >= 2, "
                             f"0 < explore_share <= 1 and sample >= 1, got trials={trials}, "
                             f"keep={keep}, explore_every={explore_every}, "
                             f"explore_share={explore_share}, sample={sample}")
        self.candidates = tuple(candidates)
        self.enabled = enabled
        self.smallest = [int((smallest or {}).get(name, 0)) for name in self.candidates]
        self.trials, self.keep, self.explore_every = trials, keep, explore_every
        self.explore_share, self.sample = explore_share, sample
        self._sizes = {}  # bucket -> _Bucket
        self._live = list(range(len(self.candidates)))  # not dropped

    def drop(self, index):
        """Never propose candidate ``index`` again (it cannot run here)."""
        if index in self._live and len(self._live) > 1:
            self._live.remove(index)
            for bucket in self._sizes.values():
                if index in bucket.live and len(bucket.live) > 1:
                    bucket.live.remove(index)
                self._settle(bucket)

    def propose(self, nbytes):
        """Return the index of the candidate to run next for ``nbytes``."""
        bucket = self._bucket(nbytes)
        last, best = bucket.last, bucket.best
        if last in bucket.live and (bucket.warming or (bucket.run_on
                                                      and bucket.streak < self.keep)):
            return last  # time the one just switched to, or go on trying it
        if best is None:
            return min(bucket.live, key=bucket.timed.__getitem__)  # the next to try
        if bucket.calls < bucket.next_check:
            return best  # nothing due yet (this runs on every call: keep it short)
        recheck = bucket.due_recheck()
        if recheck is not None:
            return recheck  # a best that lost its place, tried again (RECHECK_FIRST)
        due, since, wait = best, -1, EXPLORE_MAX
        for i in bucket.live:
            if i != best:
                idle = bucket.calls - bucket.last_tried[i]
                left = self._interval(bucket, i, best) - idle
                if left <= 0 and idle > since:
                    due, since = i, idle  # the longest untried of those due
                wait = min(wait, max(left, 1))
        bucket.next_check = bucket.calls + (0 if due != best else wait)
        if bucket.rechecks:
            bucket.next_check = min(bucket.next_check, *(at for at, _ in bucket.rechecks.values()))
        bucket.checked_at = bucket.typical[best]
        return due

    def _interval(self, bucket, index, best):
        # Calls between retries of `index`: what its last retry took beyond
        # as many calls of the best at its typical time, in calls of the
        # best; the others share the budget.  Until a retry is measured, a
        # retry is taken to be two calls (a switch and a timed call) at its
        # typical time.
        spent, calls = bucket.retry[index] or (2 * bucket.typical[index], 2)
        typical = max(bucket.typical[best], 1e-12)
        calls = (spent / typical - calls) * (len(bucket.live) - 1) / self.explore_share
        return max(self.explore_every, min(EXPLORE_MAX, int(calls)))

    def record(self, nbytes, index, seconds):
        """Note that candidate ``index`` took ``seconds`` for ``nbytes``."""
        bucket = self._bucket(nbytes)
        if bucket.untimed and index == bucket.last:
            bucket.untimed -= 1  # the best again, nothing due: counted, not timed (sample)
            bucket.last_tried[index] = bucket.calls
            bucket.calls += 1
            return
        bucket.warming = bucket.last != index  # a switch: not timed
        bucket.streak = 0 if bucket.warming else bucket.streak + 1
        if not bucket.warming:
            best = bucket.best
            if (bucket.streak == 1 and best is not None and index != best
                    and seconds < _CONTENDER * bucket.typical[best]):
                bucket.restart(index)  # a close retry decides on fresh times
            before = bucket.typical[index]
            bucket.add(index, seconds)
            if index != best or bucket.typical[index] > before:
                self._settle(bucket)  # else nothing it compares has moved its way
            best = bucket.best
            if index == best and bucket.typical[index] > _SLOWED * bucket.checked_at:
                bucket.next_check = 0  # the best slowed down: the others may be due
            # Run on while short of its trials (after improving, too), or
            # while a retry beats the best: its median is then all fresh
            # times, not the stale ones that made it lose, nor one lucky call.
            bucket.run_on = len(bucket.times[index]) < self.trials or (
                best is not None and index != best and seconds < bucket.typical[best])
        if bucket.best is not None and (index != bucket.best or bucket.warming):
            bucket.account(index, seconds)  # (the best's own timed calls cost nothing)
        bucket.last = index
        bucket.last_tried[index] = bucket.calls
        bucket.calls += 1
        bucket.chosen = index
        steady = index == bucket.best and not bucket.warming and not bucket.run_on
        bucket.untimed = self.sample - 1 if steady else 0

    def chosen(self, nbytes):
        """The candidate run last for ``nbytes`` (None before the first call)."""
        bucket = self._sizes.get(nbytes.bit_length())
        return None if bucket is None or bucket.chosen is None else self.candidates[bucket.chosen]

    def best(self, nbytes):
        """The candidate the times favour for ``nbytes`` (None while still trying)."""
        bucket = self._sizes.get(nbytes.bit_length())
        return None if bucket is None or bucket.best is None else self.candidates[bucket.best]

    def _settle(self, bucket):
        # The best once every live candidate has its trials (shortest median
        # wins); the retries are then checked again at once.
        bucket.tried = bucket.tried or all(bucket.timed[i] >= self.trials
                                           for i in bucket.live)
        best = min(bucket.live, key=bucket.typical.__getitem__) if bucket.tried else None
        held = bucket.best
        if best is not None and held in bucket.live and (
                bucket.typical[best] > (1 - SWITCH_MARGIN) * bucket.typical[held]):
            best = held  # not enough faster to pay for the switch
        if best != bucket.best:
            if held in bucket.live:
                bucket.rechecks[held] = (bucket.calls + RECHECK_FIRST, RECHECK_FIRST)
            bucket.rechecks.pop(best, None)
            bucket.best, bucket.next_check = best, 0
            bucket.excursion.clear()  # a retry that found a new best is no cost

    def _bucket(self, nbytes):
        key = nbytes.bit_length()
        bucket = self._sizes.get(key)
        if bucket is None:
            low = 1 << max(key - 1, 0)  # the bucket's smallest size
            live = [i for i in self._live if self.smallest[i] <= low] or list(self._live)
            bucket = self._sizes[key] = _Bucket(len(self.candidates), self.keep, self.trials, live)
        return bucket


class _Bucket:
    """One message size's times, retry costs, call count and last choice."""

    def __init__(self, n, keep, trials, live):
        self.live = live  # the candidates tried at this size
        self.trials = trials  # timed calls that renew a restarted typical time
        self.times = [deque(maxlen=keep) for _ in range(n)]
        self.timed = [0] * n  # timed calls so far
        self.typical = [float("inf")] * n  # typical_time of the kept times
        self.fresh = [0] * n  # timed calls due since a restart before typical renews
        self.falling = [False] * n  # times dropped by IMPROVING: typical only falls
        self.retry = [None] * n  # the last retry's (seconds, calls)
        self.excursion = {}  # candidate -> (seconds, calls) since leaving the best
        self.best = None  # index, once every candidate has had its trials
        self.tried = False  # whether every candidate has had its trials
        self.next_check = 0  # no retry is due before this call
        self.checked_at = float("inf")  # the best's typical time then
        self.rechecks = {}  # bests that lost their place -> (call due, calls waited)
        self.last = None  # the candidate of the last call
        self.warming = False  # whether that call was a switch (so not timed)
        self.streak = 0  # timed calls of that candidate since the switch
        self.run_on = False  # whether that candidate is to run again (see record)
        self.last_tried = [-1] * n
        self.calls = 0
        self.chosen = None
        self.untimed = 0  # the best's calls to come that are not timed (Tuner's sample)

    def restart(self, index):
        # Drop the kept times; the typical time stays for TRIALS timed calls.
        # Calls, not kept times: while a restarted candidate improves, each
        # call drops the ones before (IMPROVING), and counting kept times
        # left its stale typical in place (AMD VM, 1 MiB, 2 ranks: "shm"
        # retried at 179, 173, 123, 116, 122 us kept a typical of 199 and
        # lost to "cma" at 160).
        self.times[index].clear()
        self.fresh[index] = self.trials

    def due_recheck(self):
        # The first of the bests that lost their place whose recheck is due,
        # its next one scheduled after twice the wait.  Every one of them,
        # not just the last: after a slow spell of the best, two near-ties
        # that take turns as the best would otherwise push it out of the
        # list (at 2 MiB, 4 ranks: "cma" at 1.6 ms, three calls of 4-5.6 ms,
        # then "shm" and "shm-streaming" at 2.5-3.5 ms in turns for the 60
        # calls left, "cma" never tried again).
        for index, (at, wait) in list(self.rechecks.items()):
            if self.calls >= at:
                if 2 * wait > RECHECK_AFTER:
                    del self.rechecks[index]  # that was its last recheck
                else:
                    self.rechecks[index] = (self.calls + 2 * wait, 2 * wait)
                if index in self.live and index != self.best:
                    return index
        return None

    def add(self, index, seconds):
        times = self.times[index]
        if times and seconds < IMPROVING * min(times):
            times.clear()  # warming up, or the machine changed: see IMPROVING
            self.falling[index] = True
        times.append(seconds)
        self.timed[index] += 1
        self.fresh[index] = max(self.fresh[index] - 1, 0)
        self.falling[index] = self.falling[index] and len(times) < self.trials
        if not self.fresh[index]:
            typical = typical_time(times)
            self.typical[index] = (min(typical, self.typical[index]) if self.falling[index]
                                   else typical)

    def account(self, index, seconds):
        # A retry's calls, from leaving the best to its first call back (a
        # switch, shared by the candidates tried since leaving it): their
        # seconds and number, so that their cost can be taken against the
        # best's typical time of the moment; each call at most _OUTLIER of
        # its candidate's typical ones.
        seconds = min(seconds, _OUTLIER * self.typical[index])
        if index != self.best:
            spent, calls = self.excursion.get(index, (0.0, 0))
            self.excursion[index] = (spent + seconds, calls + 1)
        elif self.warming and self.excursion:
            share = 1 / len(self.excursion)
            for q, (spent, calls) in self.excursion.items():
                self.retry[q] = (spent + seconds * share, calls + share)
            self.excursion.clear()
