"""Partial reduce: explicit member lists, and groups formed by PartialReducer.

Values are checked against NumPy on inputs every rank gathered; each
group's members must hold identical bytes; non-members keep theirs.  The
tolerance (``group_log.check_values``): each weighted input is scaled
with two roundings, then ``p - 1`` additions, so the error is within
``2 (p + 2) eps sum_i |w_i x_i|``.
"""

import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import rank_data
from mpi4py import MPI

import collectives as C

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))
from group_log import check_log, check_values, entry  # noqa: E402


def gather(x, comm):
    table = np.empty((comm.Get_size(),) + x.shape, dtype=x.dtype)
    comm.Allgather(x, table)
    return table


def member_sets(comm):
    """Every non-empty subset of the ranks, each listed in a shuffled order."""
    rng = np.random.default_rng([7, comm.Get_rank()])  # orders differ across ranks
    ranks = range(comm.Get_size())
    subsets = [list(s) for k in range(1, comm.Get_size() + 1)
               for s in itertools.combinations(ranks, k)]
    return [list(rng.permutation(s)) for s in subsets]


def assert_partial(before, after, result, table, outputs, members, comm, weights=None):
    """Members: weighted mean, identical bytes; others: untouched, None returned."""
    members = sorted(int(m) for m in members)
    if comm.Get_rank() not in members:
        assert result is None
        assert after.tobytes() == before.tobytes()
        return
    assert result is after
    w = np.ones(len(members)) if weights is None else np.asarray(weights, float)
    check_values("static", [table[m] for m in members], w / w.sum(), after)
    assert all(outputs[m].tobytes() == after.tobytes() for m in members)


# ------------------------------------------------------- partial_reduce ---

@pytest.mark.parametrize("dtype, algorithm", [("float16", "auto"), ("float32", "ring"),
                                              ("float32", "tree"), ("float64", "auto")])
def test_every_member_set(comm, algorithm, dtype):
    # "auto" takes the tree up to 128 KiB and the ring above
    for count in (0, 1, 3 * comm.Get_size() + 1, 20_000):
        for members in member_sets(comm):
            x = rank_data(comm, count, dtype, seed=len(members))
            before, table = x.copy(), gather(x, comm)
            result = C.partial_reduce(x, comm, members, algorithm=algorithm)
            assert_partial(before, x, result, table, gather(x, comm), members, comm)


@pytest.mark.parametrize("op", ["sum", "max", MPI.MIN])
def test_integer_ops_are_exact(comm, op):
    for members in member_sets(comm):
        x = rank_data(comm, 257, "int64")
        before, table = x.copy(), gather(x, comm)
        result = C.partial_reduce(x, comm, members, op=op)
        outputs = gather(x, comm)
        ranks = sorted(members)
        if comm.Get_rank() in ranks:
            name = op if isinstance(op, str) else "min"
            assert result is x
            np.testing.assert_array_equal(x, getattr(table[ranks], name)(axis=0))
            assert all(outputs[m].tobytes() == x.tobytes() for m in ranks)
        else:
            assert result is None and x.tobytes() == before.tobytes()


@pytest.mark.parametrize("dtype, algorithm", [("float16", "auto"), ("float32", "ring"),
                                              ("float64", "tree")])
def test_weighted_average(comm, algorithm, dtype):
    for members in member_sets(comm):
        weights = [0.5 + (3 * m) % 5 for m in members]  # the same on every rank
        x = rank_data(comm, 1000, dtype)
        before, table = x.copy(), gather(x, comm)
        result = C.partial_reduce(x, comm, members, weights=weights, algorithm=algorithm)
        order = np.argsort(members)
        assert_partial(before, x, result, table, gather(x, comm), members, comm,
                       weights=np.asarray(weights)[order])


@pytest.mark.parametrize("algorithm, allreduce", [("ring", C.ring_allreduce),
                                                  ("tree", C.tree_allreduce)])
def test_all_members_is_bitwise_allreduce(comm, algorithm, allreduce):
    members = list(reversed(range(comm.Get_size())))
    for count in (5, 40_000):
        x = rank_data(comm, count, "float32")
        y = x.copy()
        C.partial_reduce(x, comm, members, algorithm=algorithm)
        allreduce(y, comm, op="avg")
        assert x.tobytes() == y.tobytes()


def test_member_mismatch_raises_on_members(world):
    if world.Get_size() < 2:
        pytest.skip("needs two ranks")
    rank = world.Get_rank()
    x = np.zeros(10 + (rank == 1))
    if rank in (0, 1):
        with pytest.raises(C.CollectiveMismatchError,
                           match="count: rank 0 has 10, rank 1 has 11"):
            C.partial_reduce(x, world, [1, 0])
    else:
        assert C.partial_reduce(x, world, [1, 0]) is None
    world.Barrier()


def test_members_disagreeing_on_membership_fail_without_hanging(world):
    # Rank 0 names [0, 1], ranks 1 and 2 name [0, 1, 2]: rank 0 and rank 1
    # find the mismatch; rank 2 waits for rank 0 until its timeout.
    if world.Get_size() < 3:
        pytest.skip("needs three ranks")
    rank = world.Get_rank()
    members = [0, 1] if rank == 0 else [0, 1, 2]
    if rank == 2:
        with pytest.raises(C.CollectiveTimeoutError, match="rank.s. 0"):
            C.partial_reduce(np.ones(5), world.Dup(), members, timeout=0.3)
    elif rank < 2:
        with pytest.raises(C.CollectiveMismatchError,
                           match=r"members: rank 0 has \[0, 1\], rank 1 has \[0, 1, 2\]"):
            C.partial_reduce(np.ones(5), world.Dup(), members, timeout=0.3)
    else:
        world.Dup()
    world.Barrier()


@pytest.mark.parametrize("members, error, words", [
    ([0, 0], ValueError, r"members lists rank\(s\) \[0\] more than once"),
    ([-1], ValueError, "member rank -1 is out of range for a communicator of size"),
    ([0, 99], ValueError, "member rank 99 is out of range"),
    ([], ValueError, "members is empty"),
    ([0.0], TypeError, "members must be int ranks, got 0.0"),
    ([True], TypeError, "members must be int ranks, got True"),
    ("01", TypeError, "members must be a sequence of int ranks"),
    (3, TypeError, "members must be a sequence of int ranks, got 3"),
])
def test_bad_members(world, members, error, words):
    with pytest.raises(error, match=words):
        C.partial_reduce(np.zeros(4), world, members)
    assert_no_message_sent(world)


@pytest.mark.parametrize("weights, error, words", [
    ([0.0], ValueError, "weight of member rank 0 must be a finite number > 0, got 0.0"),
    ([-1], ValueError, "must be a finite number > 0, got -1.0"),
    ([float("nan")], ValueError, "got nan"),
    ([float("inf")], ValueError, "got inf"),
    (["1"], TypeError, "must be a real number, got '1'"),
    ([1.0, 2.0], ValueError, "weights has 2 entries but members has 1"),
])
def test_bad_weights(world, weights, error, words):
    with pytest.raises(error, match=words):
        C.partial_reduce(np.zeros(4), world, [0], weights=weights)
    assert_no_message_sent(world)


def test_bad_op_and_algorithm(world):
    with pytest.raises(ValueError, match="weights need op 'avg', got op 'sum'"):
        C.partial_reduce(np.zeros(4), world, [0], op="sum", weights=[1.0])
    with pytest.raises(TypeError, match="'avg' needs a floating dtype, got int32"):
        C.partial_reduce(np.zeros(4, np.int32), world, [0])
    with pytest.raises(ValueError, match="unknown algorithm 'fast'"):
        C.partial_reduce(np.zeros(4), world, [0], algorithm="fast")
    with pytest.raises(TypeError, match="intracommunicator"):
        C.partial_reduce(np.zeros(4), None, [0])
    assert_no_message_sent(world)


def assert_no_message_sent(world):
    world.Barrier()
    assert not world.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG)
    world.Barrier()


# ------------------------------------------------------- PartialReducer ---

def run_reducer(comm, group_size, calls, *, dtype="float64", count=33, sleep=0.002,
                delay=None, weight=lambda rank, call: 1.0, step=lambda rank, call: None,
                **options):
    """Make ``calls`` reduce calls on this rank; return every rank's log and the reducer.

    Before each call a rank sleeps ``delay(rank, call)`` seconds, or a random
    time up to ``sleep``.
    """
    rank = comm.Get_rank()
    rng = np.random.default_rng([11, rank])
    log = []
    with C.PartialReducer(comm, group_size, **options) as reducer:
        for call in range(calls):
            time.sleep(delay(rank, call) if delay else sleep * rng.random())
            x = rank_data(comm, count, dtype, seed=call)
            before = x.copy()
            record = reducer.reduce(x, weight=weight(rank, call), step=step(rank, call))
            assert rank in record.members and record.wait >= 0
            log.append(entry(record, before, x))
    return comm.allgather(log), reducer


@pytest.mark.parametrize("dtype, count, thread", [
    ("float64", 33, True), ("float32", 33_000, True), ("float16", 9, True),
    ("float64", 33, False)])
@pytest.mark.parametrize("group", ["one", "two", "all"])
def test_reducer_groups_and_values(comm, group, dtype, count, thread):
    size = comm.Get_size()
    group_size = {"one": 1, "two": min(2, size), "all": size}[group]
    calls = [6 + r for r in range(size)]
    logs, reducer = run_reducer(comm, group_size, calls[comm.Get_rank()], dtype=dtype,
                                count=count, thread=thread,
                                weight=lambda rank, call: 1.0 + (rank + call) % 3)
    groups = check_log(logs, group_size, calls)
    passed = {(e.sequence, r): 1.0 + (r + call) % 3
              for r, log in enumerate(logs) for call, e in enumerate(log)}
    for sequence, by_rank in groups.items():
        want = np.array([passed[sequence, r] for r in sorted(by_rank)])
        got = next(iter(by_rank.values())).weights
        np.testing.assert_allclose(got, want / want.sum(), rtol=1e-15)
    assert reducer.closed and reducer.calls == calls[comm.Get_rank()]
    assert len(reducer.wait_times) == reducer.calls and reducer.mean_wait >= 0
    assert reducer.groups_formed <= len(groups)
    assert 1 <= reducer.mean_group_size <= group_size


def test_staleness_weights(comm):
    size = comm.Get_size()
    logs, _ = run_reducer(comm, size, 2, staleness=1.0, weight=lambda rank, call: 2.0,
                          step=lambda rank, call: 3 * rank + call)
    for e in logs[comm.Get_rank()]:
        newest = 3 * (size - 1)
        want = np.array([1.0 / (1 + newest - 3 * m) for m in e.members])
        np.testing.assert_allclose(e.weights, want / want.sum(), rtol=1e-15)


@pytest.mark.parametrize("thread", [True, False])
def test_last_ranks_get_smaller_groups(comm, thread):
    # Rank r makes r + 1 calls: group k is ranks k.. size - 1.
    size, rank = comm.Get_size(), comm.Get_rank()
    logs, _ = run_reducer(comm, size, rank + 1, sleep=0.0, thread=thread)
    groups = check_log(logs, size, [r + 1 for r in range(size)])
    for k in range(size):
        assert tuple(sorted(groups[k])) == tuple(range(k, size))
        assert next(iter(groups[k].values())).reason == ("ready" if k == 0 else "shutdown")


@pytest.mark.parametrize("minimum", [1, 2])
def test_group_timeout_closes_early(world, minimum):
    size = world.Get_size()
    if size < minimum + 1:
        pytest.skip(f"needs {minimum + 1} ranks")
    late = size - 1
    logs, _ = run_reducer(world, size, 1, delay=lambda r, call: 1.0 * (r == late),
                          group_timeout=0.2, min_group_size=minimum)
    groups = check_log(logs, size, [1] * size)
    for by_rank in groups.values():
        e = next(iter(by_rank.values()))
        if late in by_rank:
            # the others have closed by the time it comes
            assert e.members == (late,) and e.reason in ("timeout", "shutdown")
        else:
            assert e.reason == "timeout" and len(e.members) >= minimum


@pytest.mark.parametrize("every", [1, 2])
def test_full_sync_every(comm, every):
    size = comm.Get_size()
    logs, _ = run_reducer(comm, 1, 7, full_sync_every=every)
    groups = check_log(logs, 1, [7] * size)
    reasons = [next(iter(groups[s].values())).reason for s in sorted(groups)]
    assert reasons == (["ready"] * every + ["sync"]) * (len(reasons) // (every + 1)) + [
        "ready"] * (len(reasons) % (every + 1))
    first_sync = groups[every]
    assert tuple(sorted(first_sync)) == tuple(range(size))


def test_connect_within(comm):
    # Groups of one never connect two ranks: a sync after every 3 groups.
    size = comm.Get_size()
    logs, _ = run_reducer(comm, 1, 5, connect_within=3)
    groups = check_log(logs, 1, [5] * size)
    reasons = [next(iter(groups[s].values())).reason for s in sorted(groups)]
    if size == 1:
        assert set(reasons) == {"ready"}
    else:
        assert reasons[:4] == ["ready", "ready", "ready", "sync"]
        assert tuple(sorted(groups[3])) == tuple(range(size))


def test_reducer_mismatch_raises_on_members(world):
    size, rank = world.Get_size(), world.Get_rank()
    if size < 2:
        pytest.skip("needs two ranks")
    with C.PartialReducer(world, size) as reducer:
        with pytest.raises(C.CollectiveMismatchError,
                           match="count: rank 0 has 5, rank 1 has 4"):
            reducer.reduce(np.ones(5 if rank == 0 else 4))
        record = reducer.reduce(np.ones(4))  # still usable
        assert record.sequence == 1 and record.members == tuple(range(size))


@pytest.mark.parametrize("bad, error, words", [
    (dict(group_size=0), ValueError, "group_size must be in 1..[0-9]+, got 0"),
    (dict(group_size=99), ValueError, "group_size must be in 1..[0-9]+, got 99"),
    (dict(group_size=1.5), TypeError, "group_size must be an int, got 1.5"),
    (dict(group_size=1, min_group_size=2), ValueError, "min_group_size must be in 1..1"),
    (dict(group_size=1, group_timeout=0), ValueError, "group_timeout must be a finite"),
    (dict(group_size=1, group_timeout=float("nan")), ValueError, "got nan"),
    (dict(group_size=1, full_sync_every=0), ValueError, "full_sync_every must be in 1"),
    (dict(group_size=1, connect_within=-2), ValueError, "connect_within must be in 1"),
    (dict(group_size=1, staleness=-1), ValueError, "staleness must be a finite number >= 0"),
    (dict(group_size=1, timeout=-1), ValueError, "timeout must be > 0 seconds"),
])
def test_reducer_bad_options(world, bad, error, words):
    with pytest.raises(error, match=words):
        C.PartialReducer(world, **bad)


def test_reducer_bad_calls_send_nothing(comm):
    with C.PartialReducer(comm, comm.Get_size()) as reducer:
        for value in (0.0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"weight must be a finite number > 0, "
                                                 f"got {value}"):
                reducer.reduce(np.ones(3), weight=value)
        with pytest.raises(TypeError, match="weight must be a real number"):
            reducer.reduce(np.ones(3), weight="1")
        with pytest.raises(ValueError, match="step must be in 0"):
            reducer.reduce(np.ones(3), step=-1)
        with pytest.raises(TypeError, match="'avg' needs a floating dtype"):
            reducer.reduce(np.ones(3, np.int64))
        record = reducer.reduce(np.ones(3))  # no stray READY came first
        assert record.sequence == 0 and reducer.calls == 1
    with pytest.raises(RuntimeError, match="is closed"):
        reducer.reduce(np.ones(3))
    reducer.close()  # idempotent
