"""Property-based tests (hypothesis): chunk partitioning, every kernel x dtype x op."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from collectives._chunks import chunk_bounds
from collectives._ops import kernel_view, resolve_op

DTYPES = ("float16", "float32", "float64", "int32", "int64")
UFUNCS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}


@given(count=st.integers(0, 10**7), parts=st.integers(1, 4096))
def test_chunks_partition(count, parts):
    starts, sizes = chunk_bounds(count, parts)
    assert sum(sizes) == count
    assert all(s >= 0 for s in sizes)
    assert max(sizes) - min(sizes) <= 1
    ends = [s + n for s, n in zip(starts, sizes)]
    assert starts[0] == 0 and ends[-1] == count
    assert starts[1:] == ends[:-1]


@st.composite
def operands(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    n = draw(st.integers(0, 300))
    elements = None
    if dtype.kind == "i":
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    a = draw(hnp.arrays(dtype, n, elements=elements))
    b = draw(hnp.arrays(dtype, n, elements=elements))
    return a, b


def _reference(op, a, b):
    """NumPy's answer; float16 is rounded once from the exact float64 result."""
    with np.errstate(all="ignore"):
        if a.dtype == np.float16:
            return UFUNCS[op](a.astype(np.float64), b.astype(np.float64)).astype(np.float16)
        return UFUNCS[op](a, b)


def _same(x, y):
    """Bitwise equal, except that any NaN matches any NaN."""
    if x.dtype.kind != "f":
        return np.array_equal(x, y)
    nan = np.isnan(x)
    return np.array_equal(nan, np.isnan(y)) and x[~nan].tobytes() == y[~nan].tobytes()


@settings(max_examples=300, deadline=None)
@given(pair=operands(), op=st.sampled_from(sorted(UFUNCS)))
def test_kernel_matches_numpy(pair, op):
    a, b = pair
    want = _reference(op, a, b)
    got = a.copy()
    resolve_op(op, a.dtype).reduce(kernel_view(got), kernel_view(b))
    assert _same(got, want)


@settings(max_examples=200, deadline=None)
@given(pair=operands(), divisor=st.integers(1, 64))
def test_fused_avg_step_matches_numpy(pair, divisor):
    a, b = pair
    if a.dtype.kind != "f":
        return
    with np.errstate(all="ignore"):
        if a.dtype == np.float16:
            want = ((a.astype(np.float64) + b.astype(np.float64)) / divisor).astype(np.float16)
        else:
            want = (a + b) / a.dtype.type(divisor)
    got = a.copy()
    resolve_op("avg", a.dtype).sum_div(kernel_view(got), kernel_view(b), divisor)
    assert _same(got, want)
