"""Pick between algorithms by timing them on the calls themselves (run-time tuning).

Which all-reduce is fastest for a large message on one node depends on
the machine, and here even on its state: the shared-memory pipeline hands
hot cache lines from core to core and ran at 0.55x MPI's time at 16 MiB
one hour and at 1.7x the next, while the ring (one large copy per step)
stayed put.  A fixed threshold is wrong half the time, so "auto" times
its candidates on live calls, as STAR-MPI does for MPI's collectives
(Faraj, Yuan and Lowenthal, ICS 2006): per message size (a power-of-two
bucket) it tries every candidate ``TRIALS`` times in a row, then runs the
one with the shortest of its last ``KEEP`` times, and re-tries
the others now and then so that a change in the machine is noticed.  A
retry costs what the candidate is slower than the best, so each is retried
at a rate that keeps the cost of all retries near ``EXPLORE_SHARE`` of the
time: a candidate that is 2x slower every 200 calls (with five candidates),
one within 10% every ``EXPLORE_EVERY``.  (Retrying one in every 32 calls,
in turn, cost 6-10% of the time at 1-4 MiB here, where some candidates
take 2-3x the best's time.)  When the best slows down, the others' ratios
shrink and they are retried sooner.  A call that follows a call of another candidate
is not timed, and the candidate runs once more: it pays the switch (one-off
costs such as growing the shared window, and a cold cache: at 2 MiB, 2
ranks, "shm" took 240-380 us right after other candidates and 174 us
after itself), and a tuner that timed it would favour the candidates that
keep little state over the ones that keep it warm.

Only rank 0's tuner decides: its choice travels in the agreement
exchange that starts the call, so every rank runs the same algorithm.
"""

from collections import deque
from statistics import median

__all__ = ["Tuner", "TRIALS", "KEEP", "EXPLORE_EVERY", "EXPLORE_MAX", "EXPLORE_SHARE"]

#: Calls of each candidate per size before the tuner trusts its times.
TRIALS = 3
#: Times kept per candidate and size.  The shortest decides, as in FFTW's
#: planner: noise here only adds time (another process on the core, the
#: first calls of a size warming caches and faulting in pages: "shm" took
#: 476, 375, then 224 us on its first three timed calls at 2 MiB, 165 us
#: after that, and with the median it lost to a candidate taking 250).
#: A candidate that slows down for good is noticed after KEEP calls.
KEEP = 5
#: Fewest calls between two retries of a candidate that is not the best.
EXPLORE_EVERY = 16
#: Most calls between two retries of a candidate.
EXPLORE_MAX = 1024
#: Share of the time that retries of the candidates other than the best may cost.
EXPLORE_SHARE = 0.04


class Tuner:
    """Times of ``candidates`` per message size, and the choice they imply.

    Parameters
    ----------
    candidates : sequence of str
        Algorithm names; on a tie the earlier one wins.
    enabled : bool
        False: the caller picks by its own rule (and still records).

    """

    def __init__(self, candidates, *, enabled=True, trials=TRIALS, keep=KEEP,
                 explore_every=EXPLORE_EVERY, explore_share=EXPLORE_SHARE):
        if len(candidates) < 1:
            raise ValueError("a tuner needs at least one candidate")
        if trials < 1 or keep < trials or explore_every < 2 or not 0 < explore_share <= 1:
            raise ValueError(f"need 1 <= trials <= keep, explore_every >= 2 and "
                             f"0 < explore_share <= 1, got trials={trials}, keep={keep}, "
                             f"explore_every={explore_every}, explore_share={explore_share}")
        self.candidates = tuple(candidates)
        self.enabled = enabled
        self.trials, self.keep, self.explore_every = trials, keep, explore_every
        self.explore_share = explore_share
        self._sizes = {}  # bucket -> _Bucket
        self._live = list(range(len(self.candidates)))  # not dropped

    def drop(self, index):
        """Never propose candidate ``index`` again (it cannot run here)."""
        if index in self._live and len(self._live) > 1:
            self._live.remove(index)

    def propose(self, nbytes):
        """Return the index of the candidate to run next for ``nbytes``."""
        bucket = self._bucket(nbytes)
        last = bucket.last
        if last in self._live and (bucket.warming or len(bucket.times[last]) < self.trials):
            return last  # time the one just switched to, or go on trying it
        fewest = min(self._live, key=lambda i: len(bucket.times[i]))
        if len(bucket.times[fewest]) < self.trials:
            return fewest  # the next one to try
        best = self._best(bucket)
        due = [i for i in self._live if i != best and (
            bucket.calls - bucket.last_tried[i] >= self._interval(bucket, i, best))]
        return min(due, key=lambda i: bucket.last_tried[i]) if due else best

    def _interval(self, bucket, index, best):
        # Calls between retries of `index`: a retry runs it twice (a switch,
        # then a timed call) at `ratio` times the best's time, so it costs
        # 2 (ratio - 1) of the best's calls; the others share the budget.
        # Costs are typical times (medians): a retry of a candidate that was
        # fast once and is slow mostly costs its slow time.
        ratio = median(bucket.times[index]) / max(median(bucket.times[best]), 1e-12)
        calls = 2 * (ratio - 1) * (len(self._live) - 1) / self.explore_share
        return max(self.explore_every, min(EXPLORE_MAX, int(calls)))

    def record(self, nbytes, index, seconds):
        """Note that candidate ``index`` took ``seconds`` for ``nbytes``."""
        bucket = self._bucket(nbytes)
        bucket.warming = bucket.last != index  # a switch: not timed
        if not bucket.warming:
            bucket.times[index].append(seconds)
        bucket.last = index
        bucket.last_tried[index] = bucket.calls
        bucket.calls += 1
        bucket.chosen = index

    def chosen(self, nbytes):
        """The candidate run last for ``nbytes`` (None before the first call)."""
        bucket = self._sizes.get(nbytes.bit_length())
        return None if bucket is None or bucket.chosen is None else self.candidates[bucket.chosen]

    def best(self, nbytes):
        """The candidate the times favour for ``nbytes`` (None while still trying)."""
        bucket = self._sizes.get(nbytes.bit_length())
        if bucket is None or any(len(bucket.times[i]) < self.trials for i in self._live):
            return None
        return self.candidates[self._best(bucket)]

    def _best(self, bucket):
        return min(self._live, key=lambda i: min(bucket.times[i]))

    def _bucket(self, nbytes):
        key = nbytes.bit_length()
        bucket = self._sizes.get(key)
        if bucket is None:
            bucket = self._sizes[key] = _Bucket(len(self.candidates), self.keep)
        return bucket


class _Bucket:
    """One message size's times, call count and last choice."""

    def __init__(self, n, keep):
        self.times = [deque(maxlen=keep) for _ in range(n)]
        self.last = None  # the candidate of the last call
        self.warming = False  # whether that call was a switch (so not timed)
        self.last_tried = [-1] * n
        self.calls = 0
        self.chosen = None
