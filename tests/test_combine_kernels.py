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


@pytest.mark.parametrize("dtype", ["float16", "float32", "int64"])
@pytest.mark.parametrize("code", [K.SUM, K.PROD, K.MIN, K.MAX, K.SUM_DIV])
def test_combine_in_place_equals_out_of_place(dtype, code):
    # out that is lo or hi takes its own loops (vectorised): same bits.
    if code == K.SUM_DIV and dtype == "int64":
        pytest.skip("avg is for floating dtypes")
    lo, hi = _data(dtype, 1000, seed=5), _data(dtype, 1000, seed=6)
    want = np.empty_like(lo)
    K.combine(_bits(want), _bits(lo), _bits(hi), code, 3.0)
    on_lo, on_hi = lo.copy(), hi.copy()
    K.combine(_bits(on_lo), _bits(on_lo), _bits(hi), code, 3.0)
    K.combine(_bits(on_hi), _bits(lo), _bits(on_hi), code, 3.0)
    assert on_lo.tobytes() == want.tobytes() and on_hi.tobytes() == want.tobytes()


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("rows,first,mine_row", [(1, 0, 0), (2, 1, 0), (3, 2, 1), (4, 1, 1)])
def test_fold_ring_in_ring_order_to_both_outputs(rows, first, mine_row, streaming):
    # acc = row first, then acc = row q + acc cyclically; the result lands
    # in out (plain or streaming stores) and in also (here the caller's own
    # row, which it reads too), over more elements than one L1 piece.
    n, stride = 5000, 5008
    win = _data("float32", stride * rows, seed=7)
    mine = _data("float32", n, seed=8)
    row = [mine if q == mine_row else win[q * stride:q * stride + n] for q in range(rows)]
    want = row[first].copy()
    for k in range(1, rows):
        want = row[(first + k) % rows] + want
    out, also = np.empty(n, np.float32), mine
    K.fold_ring(out, win, 0, stride, rows, first, mine_row, mine, K.SUM, K.SUM, 1.0, also,
                streaming)
    assert out.tobytes() == want.tobytes() and also.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", ["float16", "float32", "int64"])
@pytest.mark.parametrize("code,last", [(K.SUM, K.SUM), (K.MIN, K.MIN), (K.SUM, K.SUM_DIV)])
@pytest.mark.parametrize("rows,first", [(1, 0), (2, 0), (2, 1), (3, 2), (5, 1)])
def test_fold_ring_in_place_equals_fold_ring(dtype, code, last, rows, first):
    # mine is row first and takes the result: the bits of fold_ring's
    # (the ring's order, the last combination with code last).
    if last == K.SUM_DIV and dtype == "int64":
        pytest.skip("avg is for floating dtypes")
    n, stride = 3001, 3008
    win, mine = _data(dtype, stride * rows, seed=9), _data(dtype, n, seed=10)
    want = np.empty_like(mine)
    K.fold_ring(_bits(want), _bits(win), 0, stride, rows, first, first, _bits(mine), code,
                last, float(rows), _bits(want[:0]), False)
    K.fold_ring_in_place(_bits(mine), _bits(win), 0, stride, rows, first, code, last,
                         float(rows))
    assert mine.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", ["float16", "float32", "int64"])
@pytest.mark.parametrize("code,last", [(K.SUM, K.SUM), (K.MAX, K.MAX), (K.SUM, K.SUM_DIV)])
@pytest.mark.parametrize("rows,first,mine_row", [(1, 0, 0), (2, 1, 0), (3, 2, 1), (4, 1, 1)])
def test_fold_ring_in_l2_equals_fold_ring(dtype, code, last, rows, first, mine_row):
    # Over more elements than two of its pieces, into out and into also
    # (the caller's own row, which it reads too): fold_ring's bits.
    if last == K.SUM_DIV and dtype == "int64":
        pytest.skip("avg is for floating dtypes")
    n, stride = 40_000, 40_008
    win, mine = _data(dtype, stride * rows, seed=11), _data(dtype, n, seed=12)
    want, out = np.empty_like(mine), np.empty_like(mine)
    K.fold_ring(_bits(want), _bits(win), 0, stride, rows, first, mine_row, _bits(mine), code,
                last, float(rows), _bits(want[:0]), False)
    K.fold_ring_in_l2(_bits(out), _bits(win), 0, stride, rows, first, mine_row, _bits(mine),
                      code, last, float(rows), _bits(mine))
    assert out.tobytes() == want.tobytes() and mine.tobytes() == want.tobytes()


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


def _two_rows(header, peer_header, *, peer_arrived=True, sequence=1, yield_from=5):
    # A window of two 64-word rows as the small path lays it out (counter at
    # word 0, choice words 8-9, headers at 16/24, float64 data at 32/48);
    # row 1 is a peer that staged [10, 20, 30] and (maybe) arrived.
    words = np.zeros(128, dtype=np.int64)
    typed = words.view(np.float64)
    slot = sequence & 1
    typed[64 + 32 + 16 * slot:][:3] = [10.0, 20.0, 30.0]
    words[64 + 16 + 8 * slot:][:peer_header.size] = peer_header
    words[64] = sequence if peer_arrived else sequence - 1
    plan = np.array([32, 48, 16, 24, 8, 9, 64, 2, 0, K.SUM, K.SUM, 64, 5, yield_from,
                     header.size, *header], dtype=np.int64)
    return words, typed, plan


@pytest.mark.parametrize("sequence", [1, 2])
def test_exchange_folds_once_every_row_arrived(sequence):
    header = np.array([3, 7, -3, -7], dtype=np.int64)
    words, typed, plan = _two_rows(header, header, sequence=sequence)
    out = np.array([1.0, 2.0, 3.0])
    assert K.exchange(out, typed, words, plan, sequence) == K.DONE
    assert out.tolist() == [11.0, 22.0, 33.0]
    assert words[0] == sequence and words[8 + (sequence & 1)] == sequence * 16


@pytest.mark.parametrize("yield_from", [0, 2, 5])
def test_exchange_polls_yielding_then_leaves_a_late_peer_to_the_caller(yield_from):
    # Oversubscribed, each poll from yield_from on yields the core; the
    # kernel still returns after its polls, with nothing folded yet.
    header = np.array([3, 7, -3, -7], dtype=np.int64)
    words, typed, plan = _two_rows(header, header, peer_arrived=False, yield_from=yield_from)
    out = np.array([1.0, 2.0, 3.0])
    assert K.exchange(out, typed, words, plan, 1) == K.NOT_YET
    assert out.tolist() == [1.0, 2.0, 3.0] and words[0] == 1


def test_exchange_reports_disagreement_late_peer_and_stale_stamp():
    header = np.array([3, 7, -3, -7], dtype=np.int64)
    other = np.array([3, 8, -3, -8], dtype=np.int64)  # another count
    out = np.array([1.0, 2.0, 3.0])
    words, typed, plan = _two_rows(header, other)
    assert K.exchange(out, typed, words, plan, 1) == K.DISAGREE
    words, typed, plan = _two_rows(header, header, peer_arrived=False)
    assert K.exchange(out, typed, words, plan, 1) == K.NOT_YET
    assert out.tolist() == [1.0, 2.0, 3.0]  # untouched until all arrive
    words, typed, plan = _two_rows(header, header)
    plan[8] = 1  # now I am row 1: row 0 (the peer here) stamped no call yet
    words[0], words[64] = 1, 0
    assert K.exchange(out, typed, words, plan, 1) == K.OUT_OF_STEP
