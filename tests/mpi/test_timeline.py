"""Timeline: spans of every rank, collective phases, in a Chrome trace file."""

import json
import os
import tempfile

import numpy as np

import collectives as C
from collectives.timeline import Timeline


def test_trace_has_every_rank_and_phase(world):
    timeline = Timeline(world).attach(world)
    try:
        with timeline.span("compute", step=1):
            x = np.ones(10_000)
        C.ring_allreduce(x, world)
        C.tree_allreduce(x, world)
        C.iallreduce(x, world).wait(timeout=60)
    finally:
        timeline.detach(world)
    C.ring_allreduce(x, world)  # after detach: not recorded
    path = os.path.join(tempfile.gettempdir(), f"timeline-{os.getpid()}.json")
    path = world.bcast(path)
    written = timeline.write(path, root=0)
    if world.Get_rank() == 0:
        with open(written) as f:
            events = json.load(f)["traceEvents"]
        os.remove(written)
        spans = [e for e in events if e["ph"] == "X"]
        for rank in range(world.Get_size()):
            names = [e["name"] for e in spans if e["tid"] in (2 * rank, 2 * rank + 1)]
            assert names.count("compute") == 1
            if world.Get_size() > 1:
                assert names.count("ring reduce-scatter") == 1
                assert names.count("ring all-gather") == 1
                assert "tree reduce" in names and "tree bcast" in names
                assert "agreement check" in names
            assert any(n.startswith("iallreduce #") for n in names)
        assert all(e["dur"] >= 0 for e in spans)
    else:
        assert written is None
