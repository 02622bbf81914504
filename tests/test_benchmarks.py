"""The benchmark CLI: runs under mpiexec, validates, writes parseable files.

Each case launches ``python -m mpi4py -m benchmarks.collectives`` with tiny
sizes and iteration counts (the numbers are not looked at, only the
structure of the output and the ``-c`` verdicts), so the whole module takes
well under a minute.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
from launch import ROOT, run_mpi

from benchmarks import collectives as bench
from benchmarks import malloc_trace
from benchmarks._harness import iterations, parse_size, parse_sizes

TINY = ["-i", "2", "-x", "1"]
HEADER = [c.header for c in bench.COLUMNS]


def _bench(nranks, args, **kw):
    result = run_mpi(nranks, ["-m", "benchmarks.collectives", *args], timeout=120, **kw)
    return result, _log(result)


def _log(result):
    return f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"


def _table(stdout):
    """Rows of the printed table as dicts keyed by column header."""
    lines = [line.split() for line in stdout.splitlines() if line and not line.startswith("#")]
    header = " ".join(HEADER).split()  # "avg us" etc. are two words
    assert lines[0] == header, lines[0]
    rows = []
    for cells in lines[1:]:
        assert len(cells) == len(HEADER), cells
        rows.append(dict(zip([c.key for c in bench.COLUMNS], cells)))
    return rows


@pytest.mark.parametrize("nranks", (1, 2, 3, 5))
def test_allreduce_all_algorithms_pass(nranks, tmp_path):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    result, log = _bench(nranks, ["allreduce", "-m", "4:2K", "-c", *TINY,
                                  "--json", str(out_json), "--csv", str(out_csv)])
    assert result.returncode == 0, log
    rows = _table(result.stdout)
    names = bench.algorithm_names("allreduce")
    sizes = [b for b in parse_sizes("4:2K")]
    assert [(int(r["bytes"]), r["algorithm"]) for r in rows] == [
        (b, n) for b in sizes for n in names], log
    assert all(r["check"] == "pass" for r in rows), log
    assert all(float(r["vs_mpi"]) > 0 for r in rows), log
    data = json.loads(out_json.read_text())
    assert data["meta"]["ranks"] == nranks and len(data["rows"]) == len(rows)
    for row in data["rows"]:
        assert row["count"] == row["bytes"] // 4
        assert row["time_min_us"] <= row["time_avg_us"] <= row["time_max_us"]
        assert row["busbw_GBps"] == pytest.approx(
            row["algbw_GBps"] * 2 * (nranks - 1) / nranks, rel=1e-5)
    with open(out_csv, newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["algorithm"] for r in table] == [r["algorithm"] for r in rows]
    assert {r["check"] for r in table} == {"pass"}


@pytest.mark.parametrize("args", [
    ["reduce", "--root", "2", "-O", "-d", "float64", "-o", "avg"],
    ["reduce", "--root", "1", "-d", "int32", "-o", "min"],
    ["bcast", "--root", "2", "-d", "float16"],
    ["allreduce", "-d", "float16", "-o", "prod", "-O", "-a", "mpi,ring,tree,auto"],
])
def test_other_collectives_and_types_pass(args, tmp_path):
    result, log = _bench(3, [*args, "-m", "8:256", "-c", *TINY])
    assert result.returncode == 0, log
    rows = _table(result.stdout)
    assert rows and all(r["check"] == "pass" for r in rows), log
    if "float16" in args:  # MPI has no float16: "mpi" is skipped, with a note
        assert "mpi" not in {r["algorithm"] for r in rows}
        assert "# mpi skipped" in result.stdout


@pytest.mark.parametrize("inplace", ([], ["-O"]))
def test_auto_on_a_shared_array_passes(inplace):
    # "auto-shared": auto on a collectives.shared_array, the zero-copy path
    # from 512 KiB at 3 ranks, in place and out of place.
    result, log = _bench(3, ["allreduce", "-m", "256:1M", "-d", "float64", "-o", "max", "-c",
                             "-a", "mpi,auto,auto-shared", *inplace, *TINY])
    assert result.returncode == 0, log
    rows = _table(result.stdout)
    assert {r["algorithm"] for r in rows} == {"mpi", "auto", "auto-shared"}, log
    assert all(r["check"] == "pass" for r in rows), log


def test_rewrite_runs_validate_and_say_so(tmp_path):
    # --rewrite: every rank rewrites its buffer before each call (a training
    # step's gradients), auto-shared its shared array; out of place refused.
    out = tmp_path / "r.json"
    result, log = _bench(3, ["allreduce", "-m", "256:1M", "-c", "--rewrite", "--json", str(out),
                             "-a", "mpi,ring,shm,cma,auto,auto-shared", *TINY])
    assert result.returncode == 0, log
    assert all(r["check"] == "pass" for r in _table(result.stdout)), log
    assert json.loads(out.read_text())["meta"]["rewrite"] is True
    assert "buffer rewritten before each call" in result.stdout
    result, log = _bench(1, ["allreduce", "-O", "--rewrite", *TINY])
    assert result.returncode == 2 and "--rewrite is for in-place runs" in result.stderr, log


def test_rewriting_writes_the_buffer_before_every_call():
    import numpy as np
    send, recv, shared = np.zeros(8), np.full(8, 5.0), np.full(8, 7.0)
    seen = []

    def run():
        seen.append(recv.copy())
        recv[:] = 5.0

    def run_shared():
        seen.append(shared.copy())
        shared[:] = 7.0
    run_shared.result = shared
    wrapped, alone = bench._rewriting({"a": run, "b": run_shared}, send, recv)
    for _ in range(2):
        wrapped["a"]()
        wrapped["b"]()
    assert all((s == 0).all() for s in seen) and len(seen) == 4
    assert wrapped["b"].result is shared
    alone["a"]()
    assert (recv == 0).all() and (shared == 7.0).all()


def test_the_tuners_shared_memory_variants_pass():
    # "auto"'s candidates that have no algorithm name of their own, as
    # columns: the whole buffer as one block, 512 KiB blocks (4 and 8 of
    # them here), streaming stores; validated at 3 ranks.
    result, log = _bench(3, ["allreduce", "-m", "2M:4M", "-d", "int32", "-o", "prod", "-c",
                             "-a", "mpi,shm-whole,shm-pipelined,shm-streaming", *TINY])
    assert result.returncode == 0, log
    rows = _table(result.stdout)
    assert len(rows) == 8 and all(r["check"] == "pass" for r in rows), log


def test_broken_algorithm_fails_check():
    env = {"PYTHONPATH": str(ROOT / "tests")}
    algorithms = ("mpi,ring,bench_broken:skew,bench_broken:plus_one,bench_broken:local,"
                  "bench_broken:picky")
    result, log = _bench(3, ["allreduce", "-m", "64:256", "-c", "-a", algorithms, *TINY],
                         env=env)
    assert result.returncode != 0, log
    verdicts = {}
    for row in _table(result.stdout):
        verdicts.setdefault(row["algorithm"], set()).add(row["check"])
    assert verdicts == {"mpi": {"pass"}, "ring": {"pass"}, "bench_broken:skew": {"FAIL"},
                        "bench_broken:plus_one": {"FAIL"},
                        "bench_broken:local": {"FAIL"}}, log
    assert "check FAILS: bench_broken:picky" in result.stdout, log


def test_pingpong_and_membw(tmp_path):
    out = tmp_path / "p.json"
    result, log = _bench(2, ["pingpong", "-m", "1:4K", *TINY, "--json", str(out)])
    assert result.returncode == 0, log
    rows = json.loads(out.read_text())["rows"]
    assert [r["bytes"] for r in rows] == parse_sizes("1:4K")
    assert all(r["pingpong_us"] > 0 and r["exchange_us"] > 0 for r in rows)
    result, log = _bench(2, ["membw", "-m", "1M", "-r", "2", "--json", str(out)])
    assert result.returncode == 0, log
    rows = json.loads(out.read_text())["rows"]
    assert {r["kernel"] for r in rows} >= {"add numpy", "add-into kernel", "copy numpy"}
    assert all(r["total_GBps"] >= r["GBps"] > 0 for r in rows)


def test_bad_arguments_exit_with_usage():
    result, log = _bench(1, ["allreduce", "-a", "nope"])
    assert result.returncode == 2 and "unknown algorithm 'nope'" in result.stderr, log


def test_kernel_micro_benchmark(tmp_path):
    out = tmp_path / "k.json"
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "benchmarks.kernels", "-s", "1M", "-r", "3",
                           "-d", "float32,float16", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    kernels = [r for r in data["rows"] if r["table"] == "kernels"]
    for dtype in ("float32", "float16"):  # float16 on its bit-pattern kernels
        assert {r["op"] for r in kernels if r["dtype"] == dtype} == {
            "sum", "prod", "min", "max", "avg-last"}
    assert all(r["numba_ms"] > 0 and r["numpy_ms"] > 0 and r["of_add_here"] > 0 for r in kernels)
    assert {r["kernel"] for r in data["rows"] if r["table"] == "stream"} >= {"add numpy"}


def test_sizes_and_iterations():
    assert parse_sizes("8:64M")[0] == 8 and parse_sizes("8:64M")[-1] == 64 << 20
    assert len(parse_sizes("8:64M")) == 24
    assert parse_sizes("4K") == [4096] and parse_size("1G") == 1 << 30
    assert iterations(1024, 100) == 100 and iterations(64 << 20, 100) == 3
    for bad in ("0:8", "8:4", "x", "4T"):
        with pytest.raises(ValueError):
            parse_sizes(bad)


def test_partial_goes_to_its_own_module(monkeypatch):
    from types import ModuleType

    from mpi4py import MPI

    seen = {}
    fake = ModuleType("benchmarks.partial")
    fake.main = lambda argv, comm: seen.update(argv=argv, comm=comm) or 7
    monkeypatch.setitem(sys.modules, "benchmarks.partial", fake)
    assert bench.main(["partial", "-m", "8:1K", "--delay", "0.1"], comm=MPI.COMM_SELF) == 7
    assert seen == {"argv": ["-m", "8:1K", "--delay", "0.1"], "comm": MPI.COMM_SELF}


def test_summary_sets_auto_against_mpi_and_its_candidates():
    from benchmarks.summary import target_lines

    def row(name, nbytes, us):
        return {"algorithm": name, "bytes": nbytes, "time_max_us": us}
    mib = 1 << 20
    rows = [row("mpi", 8, 2.0), row("auto", 8, 3.2),
            row("mpi", mib, 100.0), row("auto", mib, 70.0), row("shm", mib, 60.0),
            row("ring", mib, 90.0), row("mpi", 4 * mib, 400.0), row("auto", 4 * mib, 360.0),
            row("cma", 4 * mib, 400.0), row("shm-streaming", 4 * mib, 300.0)]
    lines = target_lines({"rows": rows}).splitlines()
    assert lines[0] == ("- 8 B - 1 KiB: worst auto/mpi = 1.60 at 8 B (target <= 1.5): "
                        "MISSES")
    assert lines[1] == ("- 1 MiB - 64 MiB: worst auto/mpi = 0.90 at 4 MiB (target <= 0.8): "
                        "MISSES")
    assert lines[2].endswith("= 1.17 - 1.20, worst at 4 MiB"), lines[2]


def test_tuner_benchmark_sets_auto_against_each_candidate(tmp_path):
    out = tmp_path / "tuner.md"
    result = run_mpi(2, ["-m", "benchmarks.tuner", "-m", "1M", "-c", "4", "-b", "2",
                         "--markdown", str(out)], timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [line.split() for line in result.stdout.splitlines()
            if line and not line.startswith("#")]
    assert rows[0][-3:] == ["best", "auto/best", "auto/mpi"] and len(rows) == 2, rows
    assert rows[1][0] == "1048576" and rows[1][1] == "4" and float(rows[1][-2]) > 0
    assert out.read_text().count("\n") == 3


def test_malloc_trace_counts_large_maps_after_the_mark():
    lines = ["mmap(NULL, 33558528, PROT_READ|PROT_WRITE, MAP_PRIVATE, -1, 0) = 0x7f0",
             f'write(1, "{malloc_trace.MARK}\\n", 20) = 20',
             "mmap(NULL, 33558528, PROT_READ|PROT_WRITE, MAP_PRIVATE, -1, 0) = 0x7f0",
             "munmap(0x7f6705fff000, 33558528)        = 0",
             "munmap(0x7f48d81be000, 16384)           = 0",
             "mmap(0x7f00, 33558528, PROT_READ, MAP_FIXED, 3, 0) = 0x7f00",
             f'write(1, "{malloc_trace.MARK}\\n", 20) = 20',
             "munmap(0x7f6705fff000, 33558528)        = 0"]
    # Outside the marks, smaller than the message and fixed-address maps do not count.
    assert malloc_trace.count_maps(lines, 32 << 20) == 2
    assert malloc_trace.count_maps(lines, 64 << 20) == 0


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_malloc_trace_runs_both_settings(tmp_path):
    out = tmp_path / "maps.md"
    result = subprocess.run([sys.executable, "-m", "benchmarks.malloc_trace", "-m", "1M",
                             "-c", "3", "--markdown", str(out)], cwd=ROOT, timeout=120,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    row = out.read_text().splitlines()[-1].split("|")
    assert row[1].strip() == "1M" and all(float(cell) >= 0 for cell in row[2:4]), row


def test_run_wide_writes_validated_tables(tmp_path):
    # benchmarks/run_wide.sh (the 8/16-rank tables, for a machine with the
    # cores) at 2 ranks and tiny sizes: every table written and validated.
    env = dict(os.environ, VENV=sys.prefix, OUT=str(tmp_path), RANKS="2", SIZES="8:64",
               REPEATS="1", LIMIT="120")
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "run_wide.sh")], env=env,
                            capture_output=True, text=True, timeout=600)
    log = _log(result)
    assert result.returncode == 0, log
    for malloc in ("default", "tuned"):
        data = json.loads((tmp_path / f"allreduce-2-{malloc}.json").read_text())
        names = {row["algorithm"] for row in data["rows"]}
        assert {"mpi", "ring", "shm", "auto"} <= names, (malloc, names)
        assert data["rows"] and all(row["check"] == "pass" for row in data["rows"]), log
        assert (tmp_path / f"allreduce-2-{malloc}.table.md").read_text().count("| pass |") == 4
    assert (tmp_path / "machine.txt").exists() and (tmp_path / "membw-2.json").exists()
