"""Per-communicator caches that own MPI resources, released with the communicator.

A cache lives in an MPI attribute of the communicator, whose delete
callback releases what it holds (persistent requests, shared windows)
when the communicator is freed.  ``COMM_WORLD`` is never freed, and by the
time ``MPI_Finalize`` runs the interpreter can no longer call back, so
MPICH reports the persistent requests left on it.  Caches that hold only
local resources (``at_exit=True``) are therefore also released by an
``atexit`` hook; collective resources (windows) are not, because ranks
leave in no agreed order.
"""

import atexit

from mpi4py import MPI

__all__ = ["cached", "release_keyval"]


def release_keyval():
    """Return a keyval whose attribute values are released with ``value.release()``."""

    def delete(comm, keyval, value):
        value.release()
        return MPI.SUCCESS

    return MPI.Comm.Create_keyval(delete_fn=delete)


def cached(comm, keyval, make, *, at_exit=False):
    """Return ``comm``'s attribute under ``keyval``, made by ``make()`` the first time."""
    value = comm.Get_attr(keyval)
    if value is None:
        value = make()
        comm.Set_attr(keyval, value)
        if at_exit and comm == MPI.COMM_WORLD:
            _exit_list().append((comm, keyval))
    return value


class _ExitList(list):
    """(communicator, keyval) pairs to delete at interpreter exit."""

    def release(self):
        for comm, keyval in self:
            if not MPI.Is_finalized() and comm.Get_attr(keyval) is not None:
                comm.Delete_attr(keyval)
        self.clear()


_EXIT_KEY = release_keyval()


def _exit_list():
    entries = MPI.COMM_SELF.Get_attr(_EXIT_KEY)
    if entries is None:
        entries = _ExitList()
        MPI.COMM_SELF.Set_attr(_EXIT_KEY, entries)
    return entries


@atexit.register
def _release_at_exit():
    if MPI.Is_initialized() and not MPI.Is_finalized():
        entries = MPI.COMM_SELF.Get_attr(_EXIT_KEY)
        if entries is not None:
            entries.release()
