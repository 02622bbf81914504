"""Stress a PartialReducer: random sleeps, uneven call counts, one slow rank.

Run by ``tests/test_partial_stress.py`` as
``mpiexec -n N python -m mpi4py tests/workers/partial_stress.py OPTIONS``
with OPTIONS a JSON object: ``group_size``, ``calls`` (the fewest calls a
rank makes), ``sleep`` (seconds, the most a rank sleeps before a call),
``slow_rank`` and ``slow`` (its extra sleep per call), ``count``, and
``reducer`` (keyword options of the reducer).  Every rank checks the
gathered group log; rank 0 prints ``STRESS OK`` and a JSON summary.  A
failed check raises, and ``-m mpi4py`` aborts every rank.
"""

import json
import sys
import time

import numpy as np
from group_log import check_log, entry
from mpi4py import MPI

import collectives as C


def call_counts(base, size):
    """Different call counts per rank, all at least ``base``."""
    return [base + (37 * r) % 23 for r in range(size)]


def run(comm, options):
    """Make this rank's calls; return its log and its reducer."""
    rank = comm.Get_rank()
    rng = np.random.default_rng([5, rank])
    extra = options["slow"] if rank == options["slow_rank"] else 0.0
    log = []
    with C.PartialReducer(comm, options["group_size"], **options["reducer"]) as reducer:
        for call in range(call_counts(options["calls"], comm.Get_size())[rank]):
            time.sleep(extra + options["sleep"] * rng.random())
            x = rng.standard_normal(options["count"])
            before = x.copy()
            record = reducer.reduce(x, weight=1.0 + 0.5 * ((rank + call) % 4), step=call)
            log.append(entry(record, before, x))
    return log, reducer


def check_slow_rank(groups, slow, group_size):
    """While enough ranks are left, the slow rank is grouped with others.

    Left: up to the first "shutdown" group, and while at least
    ``group_size`` ranks still have a group to come (the others may all
    have made their last call before the slow rank's next one, which then
    forms alone, as a "sync" group too when one is due).
    """
    ordered = [groups[s] for s in sorted(groups)]
    ends = [s for s, g in enumerate(ordered)
            if next(iter(g.values())).reason == "shutdown"]
    end = ends[0] if ends else len(ordered)
    last = {}  # rank -> the index of its last group
    for index, group in enumerate(ordered):
        last.update(dict.fromkeys(group, index))
    mixed = [g for index, g in enumerate(ordered[:end]) if slow in g
             and sum(at >= index for at in last.values()) >= group_size]
    assert mixed, f"rank {slow} made no call before the first shutdown group {end}"
    sizes = [len(g) for g in mixed]
    assert min(sizes) >= min(2, group_size), (slow, sizes)
    return len(mixed)


def main():
    options = json.loads(sys.argv[1])
    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    start = MPI.Wtime()
    log, reducer = run(comm, options)
    elapsed = MPI.Wtime() - start
    logs = comm.allgather(log)  # every rank checks the whole log
    calls = call_counts(options["calls"], size)
    groups = check_log(logs, options["group_size"], calls)
    mixed = check_slow_rank(groups, options["slow_rank"], options["group_size"])
    waits = comm.gather(max(reducer.wait_times), root=0)
    reasons = [next(iter(g.values())).reason for g in groups.values()]
    if comm.Get_rank() == 0:
        summary = dict(ranks=size, calls=sum(calls), groups=len(groups),
                       mean_group_size=round(sum(calls) / len(groups), 3),
                       reasons={r: reasons.count(r) for r in sorted(set(reasons))},
                       slow_rank_mixed_groups=mixed, max_wait_s=round(max(waits), 3),
                       seconds=round(elapsed, 2))
        print("STRESS OK " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
