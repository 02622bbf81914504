"""Deliberately wrong all-reduce functions, for the benchmark's ``-c`` test.

Loaded by ``benchmarks.collectives -a bench_broken:NAME`` with ``tests/``
on ``PYTHONPATH``; never imported by library code.
"""

import collectives


def skew(buf, comm, *, op="sum"):
    """A correct ring all-reduce, then the last rank changes one element."""
    collectives.ring_allreduce(buf, comm, op=op)
    if comm.Get_rank() == comm.Get_size() - 1 and buf.size:
        buf.reshape(-1)[-1] += 1
    return buf


def plus_one(buf, comm, *, op="sum"):
    """The same wrong answer on every rank: bitwise equal, but not the sum."""
    collectives.ring_allreduce(buf, comm, op=op)
    if buf.size:
        buf.reshape(-1)[0] += 1
    return buf


def local(buf, comm, *, op="sum"):
    """No communication at all: right only on one rank."""
    return buf


def picky(buf, comm, *, op="sum"):
    """Rejects every input, as an algorithm with a missing dtype would."""
    raise TypeError(f"picky takes no {buf.dtype}")
