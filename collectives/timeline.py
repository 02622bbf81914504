"""Timeline: per-rank spans of compute, waiting and collective phases, as a Chrome trace.

Like Horovod's timeline: the JSON that :meth:`Timeline.write` produces
opens in ``chrome://tracing`` or https://ui.perfetto.dev, one row per rank.
The caller marks its own spans (``with timeline.span("backward"):``); once
:meth:`Timeline.attach` has put the timeline on a communicator, the
collectives called on that communicator add their phases (e.g. the ring's
"reduce-scatter" and "all-gather") by themselves.  Nothing is recorded on
communicators without one, at the cost of one attribute lookup per call.
"""

import contextlib
import json
import time

from mpi4py import MPI

__all__ = ["Timeline", "phase"]

_KEYVAL = MPI.Comm.Create_keyval()


class Timeline:
    """Collect spans on this rank; gather and write them from one rank.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The ranks whose spans are gathered by :meth:`write`.

    """

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.events = []
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def span(self, name, *, category="compute", lane=0, **args):
        """Record the time spent in the ``with`` block.

        ``lane`` 0 is the rank's main row, 1 its progress thread's row
        (spans on one row must nest, and background reductions overlap).
        """
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, begin, time.perf_counter(), category=category, lane=lane,
                     **args)

    def add(self, name, begin, end, *, category="compute", lane=0, **args):
        """Record a span between two ``time.perf_counter()`` readings."""
        self.events.append({"name": name, "cat": category, "ph": "X", "pid": 0,
                            "tid": 2 * self.rank + lane,
                            "ts": (begin - self._start) * 1e6,
                            "dur": (end - begin) * 1e6, "args": args})

    def attach(self, comm):
        """Let collectives on ``comm`` record their phases here."""
        comm.Set_attr(_KEYVAL, self)
        return self

    def detach(self, comm):
        """Stop recording collective phases on ``comm``."""
        if comm.Get_attr(_KEYVAL) is not None:
            comm.Delete_attr(_KEYVAL)

    def write(self, path, *, root=0):
        """Gather every rank's spans and write the trace on ``root`` (collective)."""
        gathered = self.comm.gather(self.events, root=root)  # once per run: pickle is fine
        if self.rank != root:
            return None
        names = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": 2 * r + lane,
                  "args": {"name": f"rank {r}" + (" progress" if lane else "")}}
                 for r in range(len(gathered)) for lane in (0, 1)]
        events = names + [e for rank_events in gathered for e in rank_events]
        with open(path, "w") as f:
            json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
        return path


#: The span of a phase on a communicator with no timeline: one, reused
#: (making a nullcontext per phase was a third of a phase's cost).
_NO_SPAN = contextlib.nullcontext()


def phase(comm, name, *, lane=0, **args):
    """A span for a collective's phase on ``comm``'s timeline, if it has one."""
    timeline = comm.Get_attr(_KEYVAL)
    if timeline is None:
        return _NO_SPAN
    return timeline.span(name, category="collective", lane=lane, **args)
