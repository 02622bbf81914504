"""Time to accuracy: the optim training job under each optimizer, with and without a slow rank.

Runs ``mpiexec -n RANKS python -m mpi4py -m optim.train`` for sync, partial
(group sizes 2 and 3), parameter server and local SGD, first with one rank
slowed ``--slow-factor`` times (it sleeps in proportion to its compute),
then with none; ``--repeats`` runs of each (seeds 0, 1, ..., optimizers
interleaved so background load hits them alike).  Reports the median
wall-clock seconds until rank 0's model first reaches ``--target`` test
accuracy (checked once per epoch) and the final accuracy of the averaged
model, as a Markdown table, and plots test accuracy against wall-clock
time (the median run of each) to a PNG.

The default model (two hidden layers of 512, global batch 1024, so 256
samples per rank and step) makes the forward/backward the larger part of
a step, next to the all-reduce of its 1.2 MB of parameters, so that
slowing one rank's compute really slows synchronous SGD (compare sync's
two rows).  ``--train-options`` takes any other job options, e.g.
``"--hidden 512,512 --batch-size 256 --lr 0.1"`` or the job's defaults
``"--hidden 128 --batch-size 64 --lr 0.05"``, where a step is mostly
communication and a slow rank's compute matters much less.

    python -m benchmarks.time_to_accuracy --repeats 3 \\
        --markdown benchmarks/results/time_to_accuracy.md
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._launch import mpiexec_command

ROOT = Path(__file__).resolve().parent.parent
OPTIMIZERS = (
    ("sync", ["--optimizer", "sync"]),
    ("partial, group 2", ["--optimizer", "partial", "--group-size", "2"]),
    ("partial, group 3", ["--optimizer", "partial", "--group-size", "3"]),
    ("parameter server", ["--optimizer", "ps"]),
    ("local SGD, period 4", ["--optimizer", "local", "--period", "4"]),
)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="benchmarks.time_to_accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--slow-rank", type=int, default=None, help="default: the last rank")
    p.add_argument("--slow-factor", type=float, default=4.0)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--train-options", default="--hidden 512,512 --batch-size 1024 --lr 0.2",
                   help="further options for optim.train")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                   help="folder for the PNG and the raw JSON")
    p.add_argument("--markdown", default=None, help="Markdown table file "
                   "(default: OUT/time_to_accuracy.md)")
    p.add_argument("--timeout", type=int, default=300, help="seconds per run")
    args = p.parse_args(argv)
    if args.slow_rank is None:
        args.slow_rank = args.ranks - 1
    return args


def run_job(args, options, seed):
    """Run the training job once; return its JSON summary."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        cmd = ["timeout", "-k", "5", str(args.timeout), mpiexec_command(), "-n", str(args.ranks),
               sys.executable, "-m", "mpi4py", "-m", "optim.train",
               "--epochs", str(args.epochs), "--target", str(args.target),
               "--seed", str(seed), "--json", str(out), *args.train_options.split(),
               *options]
        env = dict(os.environ, NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   OMP_NUM_THREADS="1")
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"run failed ({done.returncode}): {' '.join(cmd)}\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def measure(args):
    """Return {(scenario, optimizer): [summary per repeat]}."""
    slow = ["--slow-rank", str(args.slow_rank), "--slow-factor", str(args.slow_factor)]
    scenarios = (("slow", slow), ("none", []))
    results = {}
    for seed in range(args.repeats):
        for scenario, extra in scenarios:
            for name, options in OPTIMIZERS:
                summary = run_job(args, options + extra, seed)
                results.setdefault((scenario, name), []).append(summary)
                ttt = summary["time_to_target_s"]
                print(f"seed {seed}  {scenario:4}  {name:20}  to target "
                      f"{'-' if ttt is None else f'{ttt:.2f} s':>8}  final "
                      f"{100 * summary['final_accuracy']:.2f}%  total "
                      f"{summary['seconds']:.2f} s", flush=True)
    return results


def _time(summary):
    t = summary["time_to_target_s"]
    return np.inf if t is None else t


def median_run(runs):
    """The run with the median time to target (the lower median)."""
    return sorted(runs, key=_time)[(len(runs) - 1) // 2]


def _epochs_to_target(summary, target):
    return next((e["epoch"] for e in summary["epochs"] if e["test_accuracy"] >= target),
                None)


def _range(times):
    reached = [t for t in times if np.isfinite(t)]
    missed = len(times) - len(reached)
    text = f"{min(reached):.2f}-{max(reached):.2f}" if reached else ""
    return text + (f" ({missed} not reached)" if missed else "")


def table(args, results, loads):
    """Markdown table: one row per scenario and optimizer, under a header."""
    target = f"{100 * args.target:.0f}%"
    lines = [f"{args.ranks} ranks on {os.cpu_count()} cores; optim.train "
             f"{args.train_options} --epochs {args.epochs}; {args.repeats} runs each "
             f"(seeds 0-{args.repeats - 1}); load average {loads[0]:.1f} before, "
             f"{loads[1]:.1f} after.", "",
             f"| slow rank | optimizer | time to {target} (median s) | range (s) | "
             f"vs sync | epochs to {target} (median) | final accuracy (median) | "
             f"run time (median s) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for scenario in ("slow", "none"):
        base = _time(median_run(results[(scenario, "sync")]))
        label = (f"rank {args.slow_rank} x{args.slow_factor:g}" if scenario == "slow"
                 else "none")
        for name, _ in OPTIMIZERS:
            runs = results[(scenario, name)]
            times = [_time(r) for r in runs]
            med = _time(median_run(runs))
            shown = "not reached" if np.isinf(med) else f"{med:.2f}"
            ratio = "-" if np.isinf(med) else f"{base / med:.2f}x"
            epochs = [_epochs_to_target(r, args.target) or np.inf for r in runs]
            lines.append(
                f"| {label} | {name} | {shown} | {_range(times)} | "
                f"{ratio} | {'-' if np.isinf(np.median(epochs)) else f'{np.median(epochs):g}'} | "
                f"{100 * np.median([r['final_accuracy'] for r in runs]):.1f}% | "
                f"{np.median([r['seconds'] for r in runs]):.2f} |")
    return "\n".join(lines) + "\n"


def plot(args, results, path):
    """Test accuracy against wall-clock seconds, one panel per scenario."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, panels = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axes, scenario in zip(panels, ("slow", "none")):
        for name, _ in OPTIMIZERS:
            run = median_run(results[(scenario, name)])
            axes.plot([e["elapsed_s"] for e in run["epochs"]],
                      [e["test_accuracy"] for e in run["epochs"]], marker=".", label=name)
        axes.axhline(args.target, color="grey", linestyle=":", linewidth=1)
        axes.set_title(f"{args.ranks} ranks, rank {args.slow_rank} slowed "
                       f"{args.slow_factor:g}x" if scenario == "slow"
                       else f"{args.ranks} ranks, no slow rank", fontsize=10)
        axes.set_xlabel("wall-clock seconds")
        axes.set_ylim(0.7, 1.0)
        axes.grid(True, alpha=0.3)
    panels[0].set_ylabel("test accuracy (rank 0's model)")
    panels[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    before = os.getloadavg()[0]
    results = measure(args)
    markdown = Path(args.markdown) if args.markdown else out / "time_to_accuracy.md"
    text = table(args, results, (before, os.getloadavg()[0]))
    markdown.write_text(text)
    print(text)
    plot(args, results, out / "time_to_accuracy.png")
    raw = {f"{s}/{n}": [_rounded(r) for r in runs] for (s, n), runs in results.items()}
    (out / "time_to_accuracy.json").write_text(json.dumps(raw, separators=(",", ":")))


def _rounded(value):
    # Four decimals are plenty for seconds and accuracies; keeps the file small.
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


if __name__ == "__main__":
    main()
