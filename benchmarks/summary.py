"""Summarise ``benchmarks.collectives --json`` files as Markdown for BENCHMARKS.md.

``table R.json``: one row per size and one column per algorithm (time per
call, max over ranks, and the ratio to "mpi" measured in the same run),
then the worst ratio of "auto" to "mpi" in the size ranges the targets
name.  ``baseline DEFAULT.json TUNED.json``: MPI's own time under both
malloc settings side by side, and "auto" against each.  ``cost MEMBW.json
R.json``: each algorithm's time against the bound its memory traffic sets
(see :func:`traffic`).  ``update BENCHMARKS.md``: refill the include
blocks from the result files.
"""

import argparse
import json
import re
from pathlib import Path

__all__ = ["algorithm_table", "target_lines", "baseline_table", "cost_table", "traffic",
           "update_includes", "main"]

_INCLUDE = re.compile(r"(<!-- include: (\S+) -->\n)(.*?)(<!-- end include -->)", re.DOTALL)

#: (label, smallest bytes, largest bytes, the most "auto" may take vs "mpi")
TARGETS = (("8 B - 1 KiB", 8, 1 << 10, 1.5), ("1 MiB - 64 MiB", 1 << 20, 64 << 20, 0.8))


def _load(path):
    with open(path) as data:
        return json.load(data)


def _size(nbytes):
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} B"


def _time(us):
    return f"{us:,.0f}" if us >= 100 else f"{us:.1f}"


def _by_size(rows):
    table = {}
    for row in rows:
        table.setdefault(row["bytes"], {})[row["algorithm"]] = row
    return table


def _caption(meta):
    malloc = f"GLIBC_TUNABLES={meta['GLIBC_TUNABLES']}" if meta.get("GLIBC_TUNABLES") \
        else "default malloc"
    rewrite = ", buffer rewritten before each call" if meta.get("rewrite") else ""
    return (f"{meta['ranks']} ranks, {meta.get('dtype')} {meta.get('op')}, {malloc}{rewrite}, "
            f"median of {meta.get('repeats')}, load {meta['loadavg'][0]} -> "
            f"{meta.get('loadavg_end', ['?'])[0]}, {meta['time']}")


def algorithm_table(result):
    """Return Markdown: time in us (ratio to mpi) per size and algorithm."""
    names = result["meta"]["algorithms"]
    lines = [f"*{_caption(result['meta'])}*", "",
             "| size | " + " | ".join(names) + " | auto chose | check |",
             "|---:|" + "---:|" * len(names) + "---|---|"]
    for nbytes, row in sorted(_by_size(result["rows"]).items()):
        cells = []
        for name in names:
            r = row.get(name)
            ratio = f" ({r['vs_mpi']:.2f})" if r and r.get("vs_mpi") and name != "mpi" else ""
            cells.append(_time(r["time_max_us"]) + ratio if r else "-")
        chose = row.get("auto", {}).get("chose") or "-"
        checks = {r.get("check") for r in row.values()} - {None}
        verdict = "FAIL" if "FAIL" in checks else ("pass" if checks else "-")
        lines.append(f"| {_size(nbytes)} | " + " | ".join(cells) + f" | {chose} | {verdict} |")
    return "\n".join(lines) + "\n"


def _worst(rows, name, low, high, base):
    ratios = [(r["time_max_us"] / base[r["bytes"]], r["bytes"]) for r in rows
              if r["algorithm"] == name and low <= r["bytes"] <= high and r["bytes"] in base]
    return max(ratios) if ratios else None


def target_lines(result, baseline=None):
    """Return Markdown bullets: the worst auto/mpi ratio in each target range.

    "auto-shared" (auto on a shared array, where measured) gets its own bullets.
    """
    rows = result["rows"]
    base = {r["bytes"]: r["time_max_us"]
            for r in (baseline or result)["rows"] if r["algorithm"] == "mpi"}
    lines = []
    for name in ("auto", "auto-shared"):
        for label, low, high, limit in TARGETS:
            worst = _worst(rows, name, low, high, base)
            if worst is None:
                continue
            ratio, nbytes = worst
            verdict = "meets" if ratio <= limit else "MISSES"
            lines.append(f"- {label}: worst {name}/mpi = {ratio:.2f} at {_size(nbytes)} "
                         f"(target <= {limit}): {verdict}")
    extra = _against_candidates(rows) if baseline is None else []
    return "\n".join(lines + extra) + "\n"


#: Columns of the candidates of auto's tuner ("shm" is its whole-buffer
#: variant up to 4 MiB and its pipelined one above).
CANDIDATES = ("shm", "shm-streaming", "ring", "cma")


def _against_candidates(rows, low=1 << 20, high=64 << 20):
    # auto's time over the fastest of its candidates' columns, per size.
    by_size = _by_size([r for r in rows if low <= r["bytes"] <= high])
    ratios = []
    for nbytes, row in sorted(by_size.items()):
        times = [row[c]["time_max_us"] for c in CANDIDATES if c in row]
        if "auto" in row and times:
            ratios.append((row["auto"]["time_max_us"] / min(times), nbytes))
    if not ratios:
        return []
    worst, at = max(ratios)
    return [f"- {_size(low)} - {_size(high)}: auto / fastest of its candidates' columns "
            f"({', '.join(c for c in CANDIDATES)}) = {min(ratios)[0]:.2f} - {worst:.2f}, "
            f"worst at {_size(at)}"]


def baseline_table(default, tuned):
    """Return Markdown: MPI's Allreduce and auto under both malloc settings."""
    a, b = _by_size(default["rows"]), _by_size(tuned["rows"])
    lines = [f"*{default['meta']['ranks']} ranks; time per call in us (max over ranks)*", "",
             "| size | mpi default | mpi tuned | auto default | auto tuned "
             "| auto / mpi default | auto / mpi tuned |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for nbytes in sorted(set(a) & set(b)):
        if not {"mpi", "auto"} <= set(a[nbytes]) & set(b[nbytes]):
            continue
        md, mt = a[nbytes]["mpi"]["time_max_us"], b[nbytes]["mpi"]["time_max_us"]
        ad, at = a[nbytes]["auto"]["time_max_us"], b[nbytes]["auto"]["time_max_us"]
        lines.append(f"| {_size(nbytes)} | {_time(md)} | {_time(mt)} | {_time(ad)} | "
                     f"{_time(at)} | {ad / md:.2f} | {at / mt:.2f} |")
    return "\n".join(lines) + "\n"


def traffic(name, p):
    """Bytes of memory traffic per buffer byte, all ranks together, or None.

    STREAM counting (read + write, no write-allocate), on one node.  A large
    message is one copy from the sender's buffer to the receiver's (2 bytes
    per byte: MPICH's single-copy path, see the ping-pong in BENCHMARKS.md);
    a reduction ``dst op= src`` moves 3.  Ring, and MPI's large-message
    all-reduce (reduce-scatter + all-gather): per rank ``p-1`` chunk sends
    and reductions, then ``p-1`` chunk sends, chunks of ``n/p``:
    ``7 (p-1)``.  Binomial tree reduce + bcast: ``p-1`` whole-buffer sends
    and reductions, ``p-1`` sends: also ``7 (p-1)``, but ``log2 p`` of them
    in series.  Shared-memory window (copy in the slices that others
    reduce, reduce own slice reading all ``p`` into the window and the
    buffer, copy out the others' slices): per rank ``(5p - 2) n / p``,
    ``5p - 2`` in all.  On a shared array ("auto-shared", no copy in; each
    rank folds its chunk of every array and writes it into every array):
    ``2p``.  "cma" (each rank reads its
    chunk of every peer's buffer into cache, folds it into its own and
    writes the result into every peer's buffer from cache): per rank
    ``(p-1) + 2 + (p-1)`` chunks, ``2p`` in all.  Recursive doubling: ``log2 p``
    whole-buffer exchanges and reductions per rank: ``5 p log2 p``.
    "ideal": every rank reads its input and writes its result once, the
    rest stays in cache: ``2p``.
    """
    import math

    rules = (("ideal", 2 * p), ("auto-shared", 2 * p), ("cma", 2 * p),
             ("shm", 5 * p - 2),
             ("doubling", 5 * p * math.ceil(math.log2(max(p, 2)))),
             ("ring", 7 * (p - 1)), ("tree", 7 * (p - 1)), ("mpi", 7 * (p - 1)))
    for key, factor in rules:
        if key in name:
            return factor
    return None


def cost_table(result, bandwidth, sizes=(16 << 20, 64 << 20)):
    """Return Markdown: each algorithm's time against its memory-traffic bound."""
    p = result["meta"]["ranks"]
    lines = [f"*{p} ranks; bound = traffic x bytes / {bandwidth:.1f} GB/s*", "",
             "| size | algorithm | traffic (B per B) | bound ms | measured ms | bound / measured |",
             "|---:|---|---:|---:|---:|---:|"]
    table = _by_size(result["rows"])
    for nbytes in sizes:
        ideal = 2 * p * nbytes / bandwidth / 1e6
        lines.append(f"| {_size(nbytes)} | ideal | {2 * p} | {ideal:.2f} | - | - |")
        for name, row in table.get(nbytes, {}).items():
            factor = traffic(row.get("chose") or name, p)
            if factor is None:
                continue
            bound = factor * nbytes / bandwidth / 1e6
            measured = row["time_max_us"] / 1e3
            lines.append(f"| {_size(nbytes)} | {name} | {factor} | {bound:.2f} | "
                         f"{measured:.2f} | {bound / measured:.2f} |")
    return "\n".join(lines) + "\n"


def update_includes(path):
    """Refill every ``<!-- include: FILE -->`` ... ``<!-- end include -->`` block.

    FILE is relative to ``path``'s folder; the block's old text is replaced
    by FILE's current contents (a ``.txt`` file inside a code fence), so
    BENCHMARKS.md follows the results.
    """
    path = Path(path)

    def refill(match):
        text = (path.parent / match.group(2)).read_text().rstrip("\n")
        if match.group(2).endswith(".txt"):  # plain text: keep its lines
            text = f"```text\n{text}\n```"
        return match.group(1) + text + "\n" + match.group(4)

    path.write_text(_INCLUDE.sub(refill, path.read_text()))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.summary",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("table", help="algorithms x sizes, and the targets").add_argument(
        "result", help="JSON file from benchmarks.collectives --json")
    base = sub.add_parser("baseline", help="MPI's own under default and tuned malloc")
    base.add_argument("default")
    base.add_argument("tuned")
    cost = sub.add_parser("cost", help="times against the memory-traffic bound")
    cost.add_argument("membw", help="JSON file from benchmarks.collectives membw --json")
    cost.add_argument("result")
    sub.add_parser("update", help="refill the include blocks of a Markdown file").add_argument(
        "markdown")
    args = parser.parse_args(argv)
    if args.command == "table":
        result = _load(args.result)
        print(algorithm_table(result) + "\n" + target_lines(result), end="")
    elif args.command == "baseline":
        default, tuned = _load(args.default), _load(args.tuned)
        print(baseline_table(default, tuned) + "\nauto (default malloc) against MPI's own "
              "with the tuned malloc:\n\n" + target_lines(default, baseline=tuned), end="")
    elif args.command == "cost":
        bandwidth = max(r["total_GBps"] for r in _load(args.membw)["rows"])
        print(cost_table(_load(args.result), bandwidth), end="")
    else:
        update_includes(args.markdown)


if __name__ == "__main__":
    main()
