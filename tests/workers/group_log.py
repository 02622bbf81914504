"""Check a :class:`collectives.PartialReducer` group log that every rank gathered.

Shared by ``tests/mpi/test_partial.py`` and the stress worker.  A log is
one list per rank of :func:`entry` tuples, one per reduce call.
"""

from collections import namedtuple

import numpy as np

__all__ = ["Entry", "entry", "check_log", "check_values"]

Entry = namedtuple("Entry", "sequence members weights reason before after")


def entry(record, before, after):
    """Log one call: the record, the input and the output buffer."""
    return Entry(record.sequence, tuple(record.members), tuple(record.weights),
                 record.reason, before.copy(), after.copy())


def check_log(logs, group_size, calls):
    """Assert the log is consistent and the values right; return {sequence: entries}.

    ``logs[r]`` is rank r's list of entries and ``calls[r]`` its call count.
    Every call is in a group; every group number from 0 is used; the ranks
    that logged a group are its members, agree on it, hold identical bytes
    and the weighted average of their inputs.
    """
    groups = {}
    for rank, log in enumerate(logs):
        assert len(log) == calls[rank], (rank, len(log), calls[rank])
        sequences = [e.sequence for e in log]
        assert sequences == sorted(set(sequences)), (rank, sequences)
        for e in log:
            groups.setdefault(e.sequence, {})[rank] = e
    assert sorted(groups) == list(range(len(groups))), sorted(groups)
    for sequence, by_rank in groups.items():
        _check_group(sequence, by_rank, group_size)
    assert sum(len(g) for g in groups.values()) == sum(calls)
    return groups


def _check_group(sequence, by_rank, group_size):
    first = next(iter(by_rank.values()))
    members = first.members
    assert tuple(sorted(by_rank)) == members, (sequence, sorted(by_rank), members)
    for e in by_rank.values():
        assert (e.members, e.weights, e.reason) == (members, first.weights, first.reason)
        assert e.after.tobytes() == first.after.tobytes(), f"group {sequence}: bytes differ"
    if first.reason == "ready":
        assert len(members) == group_size, (sequence, members)
    elif first.reason != "sync":
        assert len(members) <= group_size, (sequence, members)
    assert abs(sum(first.weights) - 1.0) < 1e-12, first.weights
    check_values(sequence, [by_rank[r].before for r in members], first.weights,
                  first.after)


def check_values(sequence, inputs, weights, result):
    """Assert ``result`` is the weighted sum of ``inputs`` within rounding."""
    # Each input is scaled (two roundings), then p - 1 additions.
    terms = np.array([w * x.astype(np.float64) for w, x in zip(weights, inputs)])
    eps = np.finfo(result.dtype).eps
    tol = 2 * (len(inputs) + 2) * eps * np.abs(terms).sum(axis=0) + np.finfo(
        result.dtype).tiny
    error = np.abs(result.astype(np.float64) - terms.sum(axis=0))
    assert np.all(error <= tol), f"group {sequence}: max error {error.max()}"
