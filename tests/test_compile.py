"""Kernels compiled per listed signature at first use (collectives._compile)."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import numba as nb
import numpy as np
import pytest

from collectives import _kernels as K
from collectives._compile import kernel, precompile, sources_stamp


def _scale(dst, factor):
    for i in range(dst.size):
        dst[i] = dst[i] * factor


def _fresh():
    # Not cached: each test sees a dispatcher with nothing compiled yet.
    return kernel([nb.void(t[::1], t) for t in (nb.float32, nb.float64)])(_scale)


def test_only_the_signature_called_is_compiled():
    scale = _fresh()
    assert not scale.overloads
    scale(np.ones(4, np.float32), np.float32(2))
    assert [s[0].dtype for s in scale.overloads] == [nb.float32]


def test_scalars_convert_to_the_listed_type_as_an_eager_kernel_does():
    a, b = np.full(5, 0.1, np.float32), np.full(5, 0.1, np.float32)
    K.sum_div_into(a, np.ones(5, np.float32), 3)  # an int: divided as float32(3)
    K.sum_div_into(b, np.ones(5, np.float32), np.float32(3))
    assert a.tobytes() == b.tobytes()
    assert all(s[2] == nb.float32 for s in K.sum_div_into.overloads if s[0].dtype == nb.float32)


@pytest.mark.parametrize("array", [np.ones(4, np.int8), np.ones(8, np.float32)[::2],
                                   np.ones((2, 2), np.float32)])
def test_an_unlisted_array_type_is_a_type_error_not_a_compile(array):
    scale = _fresh()
    with pytest.raises(TypeError, match="_scale: no signature for arguments"):
        scale(array, 2.0)
    assert not scale.overloads


def test_precompile_compiles_every_listed_signature():
    assert precompile(["optim"]) == sum(len(k.listed) for k in _optim_kernels())
    assert all(len(k.overloads) == len(k.listed) for k in _optim_kernels())


def test_precompile_in_workers_fills_the_cache(tmp_path):
    # The workers compile; a later process loads every signature, compiling none.
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    fill = "from collectives._compile import precompile; print(precompile(['optim'], processes=2))"
    load = ("from collectives._compile import precompile; from optim import _kernels as O; "
            "precompile(['optim']); ks = [O.add_scaled, O.sgd_step, O.sgd_momentum_step]; "
            "print(sum(sum(k.stats.cache_hits.values()) for k in ks), "
            "sum(sum(k.stats.cache_misses.values()) for k in ks))")
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=300,
                            check=True, env=env)
    listed = sum(len(k.listed) for k in _optim_kernels())
    assert run([sys.executable, "-c", fill]).stdout.split() == [str(listed)]
    assert run([sys.executable, "-c", load]).stdout.split() == [str(listed), "0"]


def test_precompile_needs_a_worker():
    with pytest.raises(ValueError, match="processes must be at least 1, not 0"):
        precompile(["optim"], processes=0)


def _optim_kernels():
    from optim import _kernels as O
    return [O.add_scaled, O.sgd_step, O.sgd_momentum_step]


def test_import_loads_no_kernel():
    # Loading a cached signature costs 20-25 ms; the import loaded 86 of them.
    code = ("import gc, collectives, optim; from collectives._compile import _Kernel; "
            "print(sum(len(k.overloads) for k in gc.get_objects() if isinstance(k, _Kernel)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "0"


def test_a_cached_kernel_is_keyed_on_every_module_of_the_package(tmp_path):
    # An edit to any module that a kernel may inline from invalidates its
    # cache, not only an edit to the kernel's own file.
    folder = Path(K.__file__).parent
    assert K.sum_into._cache._cache_file._source_stamp == sources_stamp(folder)
    for name in ("a.py", "b.py"):
        (tmp_path / name).write_text("x = 1\n")
    before = sources_stamp.__wrapped__(tmp_path)  # not the memoised value
    (tmp_path / "b.py").write_text("x = 22\n")
    assert sources_stamp.__wrapped__(tmp_path) != before
