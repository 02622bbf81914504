"""Polite, bounded waiting on MPI requests.

MPICH's blocking waits spin on the CPU.  With ranks oversubscribed, a rank
that waits long (for a straggler, in a barrier, in a partial reduce) steals
the core from the rank it waits for.  :class:`Deadline` waits the way a
good neighbour does: it spins on ``Test`` for a short while (a message in
flight finishes at full speed), then sleeps between tests with a growing
pause, and gives up with :class:`CollectiveTimeoutError` when the timeout
expires, naming the ranks still missing.  Past a warning threshold it logs
once which ranks it waits for, then keeps waiting.

Timeouts: ``timeout=None`` means the default from the environment variable
``MPI_COLLECTIVES_TIMEOUT`` (seconds, default 300; "inf" or "0" waits
forever).  The stall warning comes after ``MPI_COLLECTIVES_WARN`` seconds
(default 60, never later than the timeout).
"""

import logging
import math
import os
import time

from mpi4py import MPI

from collectives.errors import CollectiveTimeoutError

__all__ = ["Deadline", "wait_all", "resolve_timeout"]

_LOG = logging.getLogger("collectives")
# Spin this long before the first sleep: MPI moves data only inside MPI
# calls, so a transfer in flight must be tested often to finish at speed.
_SPIN_SECONDS = 0.02
_MAX_PAUSE = 0.001  # longest sleep between two tests
_QUICK_TESTS = 64  # tests before a Deadline is even set up


def _env_seconds(name, default):
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not a number "
                         "of seconds") from None
    return math.inf if value <= 0 or math.isinf(value) else value


def resolve_timeout(timeout):
    """Return ``timeout`` in seconds, the environment's default for ``None``."""
    if timeout is None:
        return _env_seconds("MPI_COLLECTIVES_TIMEOUT", 300.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    return float(timeout)


class Deadline:
    """Pace a polling loop and bound how long it may wait.

    Call :meth:`pause` between two tests of pending requests, with the
    ranks still pending; it returns after a short pause or raises
    :class:`CollectiveTimeoutError` once ``timeout`` seconds have passed.
    """

    def __init__(self, operation, *, timeout=None, comm=None, spin=_SPIN_SECONDS):
        self.operation = operation
        self.spin = spin
        self.timeout = resolve_timeout(timeout)
        self.warn_after = min(_env_seconds("MPI_COLLECTIVES_WARN", 60.0), self.timeout)
        self.start = time.monotonic()
        self.rank = None if comm is None else comm.Get_rank()
        self._pause = 0.0
        self._warned = False

    def elapsed(self):
        return time.monotonic() - self.start

    def pause(self, peers):
        """Wait a little before the next test; raise once the time is up.

        ``peers`` is the list of ranks still pending, or a function that
        returns it (called only when it is needed for a message).
        """
        waited = self.elapsed()
        if waited >= self.timeout:
            raise CollectiveTimeoutError(self._where(), _list(peers), waited)
        if waited >= self.warn_after and not self._warned:
            self._warned = True
            _LOG.warning("%s: waiting %.1f s for rank(s) %s", self._where(), waited,
                         ", ".join(str(p) for p in _list(peers)))
        if waited < self.spin:
            os.sched_yield()  # let an oversubscribed peer on this core run
            return
        self._pause = min(_MAX_PAUSE, max(self._pause * 2, 2e-5))
        time.sleep(self._pause)

    def _where(self):
        who = "" if self.rank is None else f" on rank {self.rank}"
        return f"{self.operation}{who}"


def _list(peers):
    return peers() if callable(peers) else peers


def wait_all(requests, peers, *, operation, timeout=None, comm=None):
    """Complete every request, or cancel the rest and raise a timeout.

    ``peers[i]`` is the rank that ``requests[i]`` sends to or receives
    from (or a list of ranks, for a collective request); the timeout error
    names the peers whose requests are pending.
    """
    for _ in range(_QUICK_TESTS):  # most waits end here, at no extra cost
        if MPI.Request.Testall(requests):
            return
    deadline = Deadline(operation, timeout=timeout, comm=comm)
    while not MPI.Request.Testall(requests):
        try:
            deadline.pause(lambda: _pending(requests, peers))
        except CollectiveTimeoutError:
            _cancel(requests)
            raise


def _pending(requests, peers):
    # Test each request alone (this frees the completed ones).
    pending = set()
    for request, peer in zip(requests, peers):
        if request != MPI.REQUEST_NULL and not request.Test():
            pending.update(peer if isinstance(peer, (list, tuple)) else [peer])
    return sorted(pending)


def _cancel(requests):
    for request in requests:
        if request != MPI.REQUEST_NULL:
            request.Cancel()
