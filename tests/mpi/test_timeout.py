"""A rank that never joins gives every waiting rank a timeout naming a peer.

Each case runs on a fresh ``Dup`` of COMM_WORLD: the messages the waiting
ranks already sent to the absent rank stay behind on that communicator
and cannot be mistaken for a later collective's data.
"""

import numpy as np
import pytest

import collectives as C

CASES = {
    "ring": lambda b, c, **kw: C.ring_allreduce(b, c, **kw),
    "tree": lambda b, c, **kw: C.tree_allreduce(b, c, **kw),
    "reduce": lambda b, c, **kw: C.tree_reduce(b, c, root=0, **kw),
    "bcast": lambda b, c, **kw: C.tree_bcast(b, c, root=0, **kw),
}


@pytest.mark.parametrize("check", [True, False])
@pytest.mark.parametrize("name", sorted(CASES))
def test_absent_rank_times_out(world, name, check):
    size = world.Get_size()
    if size == 1:
        pytest.skip("needs two ranks")
    if not check and name in ("reduce", "bcast"):
        pytest.skip("without the check only the absent rank's tree neighbours wait")
    comm = world.Dup()
    absent = size - 1
    if world.Get_rank() != absent:
        with pytest.raises(C.CollectiveTimeoutError) as info:
            CASES[name](np.ones(1000), comm, timeout=0.3, check=check)
        error = info.value
        assert error.waited >= 0.3
        assert "timed out after" in str(error) and "waiting for rank" in str(error)
        assert all(0 <= p < size for p in error.peers)
        if check and world.Get_rank() == (absent + 1) % size:
            assert absent in error.peers  # round 0 of the check waits on it
    world.Barrier()


def test_bad_timeout_values(world):
    with pytest.raises(ValueError, match="timeout must be > 0 seconds, got -1"):
        C.ring_allreduce(np.ones(3), world, timeout=-1)
    with pytest.raises(TypeError, match="timeout must be a number"):
        C.tree_bcast(np.ones(3), world, timeout="soon")


@pytest.mark.parametrize("others", ["skip", "ring"])
def test_absent_from_the_first_auto_call_is_named(world, others):
    # The first "auto" call on a communicator splits it by node, a blocking
    # MPI collective: the arrival check before it must name the absent rank.
    size = world.Get_size()
    if size == 1:
        pytest.skip("needs two ranks")
    comm = world.Dup()
    absent = size - 1
    if world.Get_rank() != absent:
        with pytest.raises(C.CollectiveTimeoutError) as info:
            C.allreduce(np.ones(10), comm, timeout=0.3)
        assert info.value.peers == (absent,)
    elif others == "ring":
        with pytest.raises(C.CollectiveTimeoutError):
            C.ring_allreduce(np.ones(10), comm, timeout=0.3)
    world.Barrier()
