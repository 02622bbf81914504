"""Non-blocking all-reduce: start it, compute, then wait for the result.

Design: one progress thread per communicator runs the queued reductions,
in the order they were started, with the same algorithms as the blocking
calls, on a private duplicate of the communicator (so its messages never
meet the caller's).  A thread, rather than MPI requests driven by
``test()``, because our algorithms do work between messages (a Numba
reduction after every ring step): with requests alone, nothing would move
while the caller computes and does not call ``test()``.  The thread needs
``MPI_THREAD_MULTIPLE``, which mpi4py asks for by default and MPICH and
Open MPI provide; :func:`iallreduce` raises ``RuntimeError`` otherwise.
The Numba kernels release the GIL and mpi4py releases it inside MPI
calls, so the reduction really runs beside the caller's NumPy compute.

Completion order is the start order, on every rank; each result is
bitwise equal to the blocking call's (same algorithm, same data).  Like
MPI's non-blocking collectives, every rank must start the same reductions
in the same order, and a buffer must not be touched until its handle is
done.
"""

import queue
import threading

from mpi4py import MPI

from collectives._agree import check_comm
from collectives._ops import check_buffer, resolve_op
from collectives.allreduce import ALGORITHMS, allreduce
from collectives.timeline import phase

__all__ = ["iallreduce", "AllreduceHandle", "close_progress"]

_KEYVAL = MPI.Comm.Create_keyval()


class AllreduceHandle:
    """The pending result of :func:`iallreduce`."""

    def __init__(self, buf, sequence):
        self.buf = buf
        self.sequence = sequence
        self._done = threading.Event()
        self._error = None

    def test(self):
        """Return True once the reduction has finished (or failed)."""
        return self._done.is_set()

    def wait(self, timeout=None):
        """Block until done; return the reduced buffer or raise its error.

        ``timeout`` (seconds) bounds this wait only; ``TimeoutError`` if the
        reduction is still running then.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"iallreduce #{self.sequence} still running after "
                               f"{timeout} s")
        if self._error is not None:
            raise self._error
        return self.buf

    def _finish(self, error=None):
        self._error = error
        self._done.set()


class _Worker:
    """A progress thread that runs one communicator's reductions in order."""

    def __init__(self, comm):
        self.parent = comm
        self.comm = comm.Dup()
        self.jobs = queue.SimpleQueue()
        self.started = 0
        self.thread = threading.Thread(target=self._run, name="collectives-progress",
                                       daemon=True)
        self.thread.start()

    def submit(self, buf, options):
        handle = AllreduceHandle(buf, self.started)
        self.started += 1
        self.jobs.put((handle, options))
        return handle

    def _run(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            handle, options = job
            try:
                with phase(self.parent, f"iallreduce #{handle.sequence}", lane=1,
                           bytes=handle.buf.nbytes):
                    allreduce(handle.buf, self.comm, **options)
            except Exception as error:  # handed to the caller in wait()
                handle._finish(error)
            else:
                handle._finish()

    def stop(self):
        self.jobs.put(None)
        self.thread.join()
        self.comm.Free()


def _worker(comm):
    worker = comm.Get_attr(_KEYVAL)
    if worker is None:
        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise RuntimeError("iallreduce needs MPI_THREAD_MULTIPLE; the MPI library "
                               f"gave thread level {MPI.Query_thread()}")
        worker = _Worker(comm)
        comm.Set_attr(_KEYVAL, worker)
    return worker


def iallreduce(buf, comm, *, op="sum", algorithm="auto", check=True, timeout=None):
    """Start an in-place all-reduce of ``buf``; return an :class:`AllreduceHandle`.

    Arguments are those of :func:`collectives.allreduce`.  Local checks
    (buffer, op, algorithm) raise here, before anything starts; errors
    found while running (mismatch between ranks, timeout) are raised by
    ``handle.wait()``.  The first call on a communicator duplicates it,
    which is collective.

    Examples
    --------
    >>> handle = iallreduce(grad, comm, op="avg")
    >>> ...  # compute something else
    >>> handle.wait()

    """
    check_comm(comm)
    check_buffer(buf)
    resolve_op(op, buf.dtype)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; use one of "
                         + ", ".join(repr(a) for a in ALGORITHMS))
    options = dict(op=op, algorithm=algorithm, check=check, timeout=timeout)
    return _worker(comm).submit(buf, options)


def close_progress(comm):
    """Stop ``comm``'s progress thread, after its queued reductions finish."""
    worker = comm.Get_attr(_KEYVAL)
    if worker is not None:
        comm.Delete_attr(_KEYVAL)
        worker.stop()
