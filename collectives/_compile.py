"""Numba kernels with listed signatures, each compiled when first called with it.

``numba.njit(signatures)`` compiles, or loads from the on-disk cache,
every signature when the module is imported.  A cached overload costs
20-25 ms to load (Zen 1 VM), and ``import collectives`` loaded 86 of
them: 2.2 s of its 2.6 s, in every rank of every ``mpiexec``, for kernels
and dtypes that most jobs never call.  A :func:`kernel` loads one
signature the first time its arguments call for it, and converts the
scalar arguments as an eagerly compiled kernel does (a Python float passed
for a float32 divisor is a float32 there, not a new specialisation in
float64); but such a call goes through Python each time (Numba's own
dispatch converts only where it may not compile; 0.28 ms a call on the
Zen 1 VM), so callers on a hot path pass the listed type, as
``_ops.resolve_op`` does for the divisor.  Array arguments must match a
listed signature exactly (dtype, one dimension, C order, writeable):
anything else is a ``TypeError``, as before, never a compile.
:func:`precompile` fills the cache with every listed signature once, at
install time (``scripts/_venv.sh``), so that no rank compiles a kernel
while its peers wait.

Numba keys a cached kernel on its own file's time and size only, but the
kernels inline helpers from other modules (``_kernels``' float16
conversions into ``_codec_kernels``, say): after an edit there, a kernel
of an unchanged module would load its old machine code.  Here that hid a
kernel that no longer compiled until a fresh clone's CI failed.  So each
kernel's cache is keyed on every module of this package and of its own
(:func:`sources_stamp`): an edit to any recompiles them all.
"""

import functools
import importlib
import multiprocessing
import sys
from pathlib import Path

import numba as nb
from numba.core.registry import CPUDispatcher

__all__ = ["kernel", "precompile", "sources_stamp"]


class _Kernel(CPUDispatcher):
    """A dispatcher that compiles only its listed signatures, on demand."""

    listed = ()  # the signatures, set by kernel()

    def _compile_for_args(self, *args, **kws):
        # Numba calls this when no compiled overload takes the arguments
        # as they are; it returns the entry point that is then called with
        # them, and that converts scalars as a listed signature says.
        types = [self.typeof_pyval(a) for a in args]
        for signature in self.listed:
            if len(signature.args) == len(types) and all(
                    t == p for t, p in zip(types, signature.args)
                    if isinstance(p, nb.types.Array) or isinstance(t, nb.types.Array)):
                return self.compile(signature)
        raise TypeError(f"{self.py_func.__name__}: no signature for arguments "
                        f"({', '.join(map(str, types))}); it has "
                        + "; ".join(f"({', '.join(map(str, s.args))})" for s in self.listed))


def kernel(signatures, **options):
    """``numba.njit(signatures, cache=True, **options)``, each signature compiled at first use."""
    def wrap(func):
        dispatcher = _Kernel(py_func=func, locals={},
                             targetoptions=dict(options, nopython=True))
        dispatcher.enable_caching()
        index = getattr(dispatcher._cache, "_cache_file", None)  # numba's, private
        if index is not None and hasattr(index, "_source_stamp"):
            folders = dict.fromkeys((Path(__file__).parent, Path(func.__code__.co_filename).parent))
            index._source_stamp = sources_stamp(*folders)
        dispatcher.listed = tuple(signatures)
        return dispatcher
    return wrap


@functools.cache
def sources_stamp(*folders):
    """The newest modification time and the total size of the ``.py`` files in ``folders``."""
    stats = [path.stat() for folder in folders for path in sorted(Path(folder).glob("*.py"))]
    return max((st.st_mtime for st in stats), default=0.0), sum(st.st_size for st in stats)


def precompile(packages, *, processes=1):
    """Compile every listed signature of every kernel in the modules of ``packages``.

    Returns the number of signatures; each is written to Numba's cache.
    With ``processes`` > 1 the kernels are shared out among that many forked
    workers (all of one kernel's signatures in one worker, since a kernel's
    signatures share one cache index file, and two writers would lose each
    other's entries); the parent then holds none of them compiled.
    """
    if processes < 1:
        raise ValueError(f"precompile: processes must be at least 1, not {processes}")
    kernels = _listed_kernels(packages)
    if processes == 1 or len(kernels) < 2:
        _compile_all(kernels)
    else:
        _compile_in_workers(kernels, processes)
    return sum(len(value.listed) for value in kernels)


def _listed_kernels(packages):
    for name in packages:
        importlib.import_module(name)
    found = {id(value): value for name, module in list(sys.modules.items())
             if module is not None and name.split(".")[0] in packages
             for value in list(vars(module).values()) if isinstance(value, _Kernel)}
    return list(found.values())


def _compile_all(kernels):
    for value in kernels:
        for signature in value.listed:
            value.compile(signature)


def _compile_in_workers(kernels, processes):
    # Largest first, dealt round-robin: the workers finish at about the same
    # time.  Forked, so each inherits the imported kernels (nothing pickled).
    order = sorted(kernels, key=lambda value: -len(value.listed))
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_compile_all, args=(order[k::processes],))
               for k in range(min(processes, len(order)))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    failed = [k for k, worker in enumerate(workers) if worker.exitcode != 0]
    if failed:
        raise RuntimeError(f"precompile: {len(failed)} of {len(workers)} workers failed "
                           f"(exit codes {[workers[k].exitcode for k in failed]})")
