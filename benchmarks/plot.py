"""Plot busbw against message size, one line per algorithm (matplotlib, optional).

``python -m benchmarks.plot A.json [B.json ...] -o FILE.png`` draws one
panel per JSON file written by ``benchmarks.collectives --json``; the
benchmark's own ``--plot FILE.png`` draws its rows directly.  matplotlib
is the ``plot`` extra: ``pip install -e '.[plot]'``.
"""

import argparse
import json

__all__ = ["plot_rows", "plot_files", "main"]


def _matplotlib():
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise SystemExit("plotting needs matplotlib: pip install -e '.[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw(axes, rows, title, y, *, tuned=None):
    names = list(dict.fromkeys(r["algorithm"] for r in rows))
    if tuned:
        mine = [r for r in tuned if r["algorithm"] == "mpi" and r.get(y)]
        axes.plot([r["bytes"] for r in mine], [r[y] for r in mine], "k:", marker="x",
                  label="mpi, tuned malloc", linewidth=1.2)
    for name in names:
        mine = [r for r in rows if r["algorithm"] == name and r.get(y)]
        style = "k--" if name == "mpi" else "-"
        axes.plot([r["bytes"] for r in mine], [r[y] for r in mine], style,
                  marker=".", label=name, linewidth=1.2)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("message size (bytes)")
    axes.set_ylabel(y.replace("_GBps", " (GB/s)"))
    axes.set_title(title, fontsize=9)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=7)


def plot_rows(rows, path, *, title="", y="busbw_GBps"):
    """Write a PNG of ``y`` against bytes, one line per algorithm in ``rows``."""
    plt = _matplotlib()
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=90)
    _draw(axes, rows, title, y)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _panel_title(meta):
    load = meta.get("loadavg", ["?"])[0]
    tuned = "tuned malloc" if meta.get("GLIBC_TUNABLES") else "default malloc"
    return (f"{meta.get('collective', '')} {meta.get('dtype', '')} {meta.get('op', '')}, "
            f"{meta.get('ranks')} ranks, {tuned}, load {load}")


def _rows(path):
    with open(path) as data:
        return json.load(data)


def plot_files(paths, out, *, y="busbw_GBps", tuned=()):
    """Write a PNG with one panel per JSON result file, side by side.

    ``tuned`` holds, per panel, a result file whose "mpi" rows are drawn
    too, as MPI's own under the tuned malloc setting.
    """
    plt = _matplotlib()
    figure, panels = plt.subplots(1, len(paths), figsize=(5.6 * len(paths), 4.4),
                                  dpi=80, squeeze=False)
    tuned = list(tuned) or [None] * len(paths)
    for axes, path, extra in zip(panels[0], paths, tuned):
        result = _rows(path)
        _draw(axes, result["rows"], _panel_title(result["meta"]), y,
              tuned=_rows(extra)["rows"] if extra else None)
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="JSON files from --json")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    parser.add_argument("-y", default="busbw_GBps", help="row key to plot")
    parser.add_argument("--tuned", nargs="*", default=(), metavar="FILE",
                        help="per panel, a run whose 'mpi' rows to add (tuned malloc)")
    args = parser.parse_args(argv)
    if args.tuned and len(args.tuned) != len(args.files):
        parser.error(f"--tuned needs one file per panel: {len(args.files)} panels, "
                     f"{len(args.tuned)} files")
    plot_files(args.files, args.output, y=args.y, tuned=args.tuned)


if __name__ == "__main__":
    main()
