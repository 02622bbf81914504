"""Non-blocking all-reduce: bitwise equal to the blocking call, several in flight."""

import numpy as np
import pytest
from conftest import rank_data

import collectives as C
from collectives.nonblocking import close_progress, iallreduce


@pytest.mark.parametrize("algorithm", ["ring", "tree", "auto"])
def test_many_in_flight_equal_blocking_bitwise(comm, algorithm):
    inputs = [rank_data(comm, n, dt, seed=7)
              for n in (0, 1, 5, 4099, 100_003) for dt in ("float32", "float64", "float16")]
    blocking = [C.allreduce(x.copy(), comm, op="avg", algorithm=algorithm) for x in inputs]
    buffers = [x.copy() for x in inputs]
    handles = [iallreduce(b, comm, op="avg", algorithm=algorithm) for b in buffers]
    busy = rank_data(comm, 200_000, "float64")  # compute while they run
    busy = np.sqrt(np.abs(busy)).sum()
    for handle, buf, want in zip(handles[::-1], buffers[::-1], blocking[::-1]):
        assert handle.wait(timeout=60) is buf
        assert handle.test()
        assert buf.tobytes() == want.tobytes()
    assert [h.sequence for h in handles] == sorted(h.sequence for h in handles)


def test_completion_in_start_order(comm):
    buffers = [np.full(50_000, comm.Get_rank() + i, np.float64) for i in range(6)]
    handles = [iallreduce(b, comm) for b in buffers]
    handles[-1].wait(timeout=60)
    assert all(h.test() for h in handles)  # earlier ones finished first
    size = comm.Get_size()
    for i, buf in enumerate(buffers):
        assert np.all(buf == sum(r + i for r in range(size)))


def test_local_errors_raise_at_start(world):
    with pytest.raises(ValueError, match="unsupported op 'mean'"):
        iallreduce(np.zeros(3), world, op="mean")
    with pytest.raises(ValueError, match="unknown algorithm 'x'"):
        iallreduce(np.zeros(3), world, algorithm="x")
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros(3)
        ro.flags.writeable = False
        iallreduce(ro, world)


def test_mismatch_raised_by_wait_on_every_rank(world):
    if world.Get_size() == 1:
        pytest.skip("needs two ranks")
    comm = world.Dup()
    handle = iallreduce(np.zeros(4 + (world.Get_rank() == 1)), comm)
    with pytest.raises(C.CollectiveMismatchError, match="count: rank 0 has 4, rank 1 has 5"):
        handle.wait(timeout=60)
    close_progress(comm)
    comm.Free()
