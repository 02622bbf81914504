"""Micro-benchmark: the Numba reduction kernels against NumPy, and STREAM.

Run as ``python -m benchmarks.kernels`` (one process, no MPI needed).  For
each op and dtype it times the library kernel (``dst op= src``, e.g.
``collectives._kernels.sum_into``) against NumPy's in-place ufunc
(``np.add(dst, src, out=dst)``) on arrays of ``--size`` bytes (default
64 MiB, far beyond the caches), the median of ``--repeats`` runs, each on
a fresh copy of the same random data (the reset is not timed, so the
branchy min/max kernels see unsorted data every time).  Both move 3 bytes
of memory per byte of buffer (read dst, read src, write dst), the traffic
of STREAM's "add"; the STREAM rows (copy and add, NumPy and a Numba loop)
give the machine's memory bandwidth measured the same way, in the same run;
"of best add" compares each kernel with the fastest of the STREAM add rows
(usually the in-place one, which has the same access pattern as the kernels).
"of add here" compares it with a STREAM add-into timed in the same
interleaved repeats on the same two arrays (as 64-bit integers: no
floating-point assists): this machine's memory rate changed by up to 20%
between the rows of one run, for NumPy and the kernels alike, so a
reference taken once is met or missed by the moment as much as by the kernel.

The same STREAM rows run on every rank at once under ``mpiexec`` from
``python -m benchmarks.collectives membw``.
"""

import argparse
import time

import numba as nb
import numpy as np

from benchmarks._harness import machine_info, parse_size
from benchmarks._output import Column, Report, to_json
from collectives import _kernels as K

__all__ = ["kernel_rows", "stream_rows", "STREAM", "main"]

_NUMPY = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}
_KERNELS = {"sum": K.sum_into, "prod": K.prod_into, "min": K.min_into, "max": K.max_into}
#: float16's kernels, on the arrays' uint16 bit patterns (see collectives._kernels).
_F16_KERNELS = {"sum": K.sum_into_f16, "prod": K.prod_into_f16, "min": K.min_into_f16,
                "max": K.max_into_f16}


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _copy_loop(dst, src):
    for i in range(dst.size):
        dst[i] = src[i]


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _add_loop(dst, a, b):
    for i in range(dst.size):
        dst[i] = a[i] + b[i]


#: STREAM-style kernels: name -> (bytes moved per buffer byte, function of
#: three arrays (dst, a, b) of equal size).
STREAM = {
    "copy numpy": (2, lambda d, a, b: np.copyto(d, a)),
    "copy numba": (2, lambda d, a, b: _copy_loop(d, a)),
    "add numpy": (3, lambda d, a, b: np.add(a, b, out=d)),
    "add numba": (3, lambda d, a, b: _add_loop(d, a, b)),
    "add-into numpy": (3, lambda d, a, b: np.add(d, a, out=d)),
    "add-into kernel": (3, lambda d, a, b: K.sum_into(d, a)),
}


def _median_seconds(runs, reset, repeats):
    # Interleaved: each repeat times every run once, so drift in the
    # machine's load hits all of them alike; returns one median per run.
    times = np.empty((repeats, len(runs)))
    for r in range(repeats):
        for j, run in enumerate(runs):
            reset()
            start = time.perf_counter()
            run()
            times[r, j] = time.perf_counter() - start
    return [float(t) for t in np.median(times, axis=0)]


def _data(nbytes, dtype, seed):
    count = nbytes // np.dtype(dtype).itemsize
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return (rng.random(count) + 0.5).astype(dtype)  # in [0.5, 1.5): no overflow
    return rng.integers(1, 100, size=count).astype(dtype)


def stream_rows(nbytes, repeats, *, barrier=None):
    """Return one row per STREAM kernel: median seconds and GB/s on ``nbytes`` arrays.

    ``barrier`` (a callable) runs before each timed kernel, so that ranks
    under mpiexec measure at the same time.
    """
    dst, a, b = (_data(nbytes, np.float64, seed) for seed in (1, 2, 3))
    keep = dst.copy()
    rows = []
    for name, (traffic, kernel) in STREAM.items():
        kernel(dst, a, b)  # compile / fault in pages
        if barrier:
            barrier()
        [seconds] = _median_seconds([lambda: kernel(dst, a, b)],
                                    lambda: np.copyto(dst, keep), repeats)
        rows.append({"kernel": name, "bytes": nbytes, "traffic": traffic,
                     "ms": seconds * 1e3, "GBps": traffic * nbytes / seconds / 1e9})
    return rows


def kernel_rows(nbytes, dtype, repeats, *, stream_add):
    """Return one row per op: the Numba kernel and NumPy's ufunc on ``dtype``."""
    dst0, src = _data(nbytes, dtype, 1), _data(nbytes, dtype, 2)
    dst = dst0.copy()
    reset = lambda: np.copyto(dst, dst0)  # noqa: E731
    rows = []
    for op, ufunc in _NUMPY.items():
        kernel = _kernel_call(op, dst, src)
        kernel()  # warm: loads this dtype's signature (collectives._compile)
        numba_s, numpy_s, add_s = _median_seconds(
            [kernel, lambda: ufunc(dst, src, out=dst), _add_here(dst, src)], reset, repeats)
        rows.append(_kernel_row(op, dtype, nbytes, numba_s, numpy_s, stream_add, add_s))
    if np.dtype(dtype).kind == "f":
        rows.append(_avg_row(dst, dst0, src, dtype, nbytes, repeats, stream_add))
    return rows


def _kernel_call(op, dst, src):
    # The library's `dst op= src` for these arrays, as a call of no arguments.
    if dst.dtype == np.float16:
        kernel, d, s = _F16_KERNELS[op], dst.view(np.uint16), src.view(np.uint16)
        return lambda: kernel(d, s)
    kernel = _KERNELS[op]
    return lambda: kernel(dst, src)


def _add_here(dst, src):
    # STREAM's add-into on the kernel's own arrays, as 64-bit integers.
    d, s = dst.view(np.int64), src.view(np.int64)
    return lambda: np.add(d, s, out=d)


def _avg_row(dst, dst0, src, dtype, nbytes, repeats, stream_add):
    # The last step of an "avg": fused (dst + src) / n against NumPy's two passes.
    def numpy_avg():
        np.add(dst, src, out=dst)
        np.divide(dst, 3, out=dst)

    reset = lambda: np.copyto(dst, dst0)  # noqa: E731
    if dst.dtype == np.float16:  # bit patterns, a float64 divisor
        d, s = dst.view(np.uint16), src.view(np.uint16)
        fused = lambda: K.sum_div_into_f16(d, s, 3.0)  # noqa: E731
    else:
        three = dst.dtype.type(3)  # the kernel's scalar type: no conversion on its slow path
        fused = lambda: K.sum_div_into(dst, src, three)  # noqa: E731
    numba_s, numpy_s, add_s = _median_seconds(
        [fused, numpy_avg, _add_here(dst, src)], reset, repeats)
    return _kernel_row("avg-last", dtype, nbytes, numba_s, numpy_s, stream_add, add_s)


def _kernel_row(op, dtype, nbytes, numba_s, numpy_s, stream_add, add_s):
    numba_bw = 3 * nbytes / numba_s / 1e9
    return {"op": op, "dtype": str(np.dtype(dtype)), "bytes": nbytes,
            "numba_ms": numba_s * 1e3, "numpy_ms": numpy_s * 1e3,
            "numba_vs_numpy": numba_s / numpy_s, "numba_GBps": numba_bw,
            "numpy_GBps": 3 * nbytes / numpy_s / 1e9,
            "of_stream_add": numba_bw / stream_add, "of_add_here": add_s / numba_s}


STREAM_COLUMNS = [
    Column("kernel", "kernel", 16), Column("bytes", "bytes", 10),
    Column("traffic", "B/B", 4), Column("ms", "ms", 9, ".2f"),
    Column("GBps", "GB/s", 8, ".2f"),
]
KERNEL_COLUMNS = [
    Column("op", "op", 8), Column("dtype", "dtype", 8),
    Column("numba_ms", "numba ms", 9, ".2f"), Column("numpy_ms", "numpy ms", 9, ".2f"),
    Column("numba_vs_numpy", "numba/numpy", 11, ".3f"),
    Column("numba_GBps", "numba GB/s", 10, ".2f"),
    Column("numpy_GBps", "numpy GB/s", 10, ".2f"),
    Column("of_stream_add", "of best add", 11, ".3f"),
    Column("of_add_here", "of add here", 11, ".3f"),
]


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kernels",
        description="Numba reduction kernels vs NumPy in-place ufuncs, and STREAM.")
    parser.add_argument("-s", "--size", default="64M",
                        help="bytes per array (default 64M)")
    parser.add_argument("-d", "--dtypes", default="float32",
                        help="comma-separated dtypes (float16 too), or 'all' (default float32)")
    parser.add_argument("-r", "--repeats", type=int, default=11,
                        help="runs per measurement; the median is shown (default 11)")
    parser.add_argument("--json", metavar="FILE", help="write rows and metadata as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse(argv)
    from mpi4py import MPI

    nbytes = parse_size(args.size)
    dtypes = ("float32", "float64", "int32", "int64", "float16") if args.dtypes == "all" \
        else args.dtypes.split(",")
    meta = dict(machine_info(MPI.COMM_SELF), command="python -m benchmarks.kernels",
                size=nbytes, repeats=args.repeats)
    stream = Report(STREAM_COLUMNS, meta)
    stream.header(f"STREAM-style, float64 arrays, median of {args.repeats}")
    for row in stream_rows(nbytes, args.repeats):
        stream.add(row)
    add = max(r["GBps"] for r in stream.rows if r["kernel"].startswith("add"))
    kernels = Report(KERNEL_COLUMNS, meta)
    kernels.header(f"reduction kernels, dst op= src, median of {args.repeats}; 'of best "
                   f"add' = numba GB/s / the best STREAM add row ({add:.2f} GB/s)")
    for dtype in dtypes:
        for row in kernel_rows(nbytes, dtype, args.repeats, stream_add=add):
            kernels.add(row)
    _write(args, meta, stream, kernels)


def _write(args, meta, stream, kernels):
    if args.json:
        with open(args.json, "w") as out:
            out.write(to_json(meta, [dict(r, table="stream") for r in stream.rows]
                              + [dict(r, table="kernels") for r in kernels.rows]))
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(stream.markdown() + "\n" + kernels.markdown())


if __name__ == "__main__":
    main()
