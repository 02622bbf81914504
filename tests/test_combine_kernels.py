"""The fast all-reduces' kernels against NumPy, one process."""

import numpy as np
import pytest

from collectives import _combine_kernels as K

NUMPY = {K.SUM: np.add, K.PROD: np.multiply, K.MIN: np.minimum, K.MAX: np.maximum}


def _data(dtype, n=257, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 8).astype(dtype)
    if np.dtype(dtype).kind == "f":
        x[::17] = np.nan
        x[5], x[6] = 0.0, -0.0
    return x


def _bits(x):
    return x.view(np.uint16) if x.dtype == np.float16 else x


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32", "int64"])
@pytest.mark.parametrize("code", [K.SUM, K.PROD, K.MIN, K.MAX])
def test_combine_matches_numpy(dtype, code):
    lo, hi = _data(dtype, seed=1), _data(dtype, seed=2)
    out = np.empty_like(lo)
    K.combine(_bits(out), _bits(lo), _bits(hi), code, 1.0)
    want = NUMPY[code](lo, hi)
    np.testing.assert_array_equal(out, want)
    if code in (K.MIN, K.MAX):  # NaN and signed zeros exactly as NumPy
        assert out.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_sum_div(dtype):
    lo, hi = _data(dtype, seed=3), _data(dtype, seed=4)
    out = np.empty_like(lo)
    K.combine(_bits(out), _bits(lo), _bits(hi), K.SUM_DIV, 3.0)
    want = ((lo.astype(np.float64) + hi) / 3.0).astype(dtype)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("mine_row", [-1, 0, 1, 3])
def test_fold_rows_in_row_order(mine_row):
    rows, n, stride = 4, 50, 64
    win = np.random.default_rng(5).standard_normal(rows * stride).astype(np.float32)
    mine = np.random.default_rng(6).standard_normal(n).astype(np.float32)
    table = np.stack([win[q * stride:q * stride + n] for q in range(rows)])
    if mine_row >= 0:
        table[mine_row] = mine
    out = np.empty(n, np.float32)
    K.fold_rows(out, win, 0, stride, rows, mine_row, mine, K.SUM, K.SUM_DIV, 4.0)
    want = ((table[0] + table[1]) + table[2] + table[3]) / np.float32(4)
    np.testing.assert_array_equal(out, want)


def test_headers_merge_and_compare():
    mine = np.array([3, 10, -3, -10], dtype=np.int64)
    assert K.merge_header(mine, mine.copy())
    assert not K.merge_header(mine, np.array([3, 11, -3, -11], dtype=np.int64))
    assert mine.tolist() == [3, 11, -3, -10]  # max 11, min 10: they differ
    words = np.zeros(3 * 8, dtype=np.int64)
    words[[0, 8, 16]] = 7
    assert K.rows_equal(words, 0, 8, 3, 4) and K.all_at_least(words, 0, 8, 3, 7)
    words[9] = 1
    assert not K.rows_equal(words, 0, 8, 3, 4)
    assert not K.all_at_least(words, 0, 8, 3, 8)
