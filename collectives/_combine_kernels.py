"""Numba kernels for the fast all-reduces: ordered combination, folds, headers.

``combine(out, lo, hi, code, divisor)`` writes ``out = lo op hi`` where
``lo`` is the data of the lower rank, so two ranks that combine the same
pair get the same bits whatever the op (NaN payloads and signed zeros in
min/max included).  ``fold_rows`` reduces rows that lie at a constant
stride in one array (a shared window: one row per rank, in rank order).
``step`` merges an agreement header and combines data in one call: the
header is ``[v, -v]`` of the collective's integer fields, merged by
elementwise maximum, and the ranks agree while ``max(v) == -max(-v)``.

Each kernel takes an op ``code`` (see ``CODES``) and branches outside its
loops.  float16 buffers are ``uint16`` bits, as in ``_kernels``: one
body per kernel serves them too, through ``_pair``, whose overload
compiles the float16 loop (decode, combine exactly, round once) for
``uint16`` and the plain loop for the native dtypes.
"""

import numba as nb
import numpy as np
from numba.extending import overload

from collectives._atomics import fence, load_acquire, store_release, store_streaming
from collectives._compile import kernel
from collectives._kernels import (
    add_f16,
    average_f16,
    avg_f16,
    by_multiplying,
    frozen,
    mul_f16,
    pick_f16,
)

__all__ = [
    "CODES", "SUM", "PROD", "MIN", "MAX", "SUM_DIV",
    "copy", "copy_streaming", "combine", "fold_rows", "fold_ring", "fold_ring_in_place",
    "fold_ring_in_l2", "fold_ring_to_rows", "step",
    "merge_header",
    "rows_equal", "all_at_least",
    "finish", "exchange", "PLAN_FIELDS", "NOT_YET", "DISAGREE", "DONE", "OUT_OF_STEP",
    "one_block", "BLOCK_FIELDS", "BLOCK_DONE",
    "compiled",
]

SUM, PROD, MIN, MAX, SUM_DIV = range(5)
#: op name -> (code of every combination, code of the last one).
CODES = {"sum": (SUM, SUM), "prod": (PROD, PROD), "min": (MIN, MIN),
         "max": (MAX, MAX), "avg": (SUM, SUM_DIV)}

#: sched_yield(2), resolved by name when a kernel that calls it compiles
#: (so that kernel can be cached; POSIX, as are the shared windows).
_sched_yield = nb.types.ExternalFunction("sched_yield", nb.int32())

_TYPES = (nb.float32, nb.float64, nb.int32, nb.int64, nb.uint16)  # uint16: float16 bits
_OPTIONS = dict(nogil=True, boundscheck=False)
_I64 = nb.int64[::1]
_INLINE = dict(nogil=True, inline="always")
_PIECE = 2048  # elements of fold_ring's L1 buffer
_L2_PIECE = 16384  # elements of fold_ring_in_l2's pieces (64-128 KiB a row)


def compiled(kernel, *args):
    """Return ``kernel``'s compiled entry point for the types of ``args``, or ``kernel``.

    The entry point skips Numba's dispatch, which infers the type of every
    argument on every call (0.25 us of the 1.7 us of a small exchange at 2
    ranks): its caller must pass arguments of exactly these types.
    ``kernel`` itself where that signature is not compiled yet.
    """
    overload = kernel.overloads.get(tuple(nb.typeof(a) for a in args))
    return kernel if overload is None else overload.entry_point


def _sigs(ret, make):
    return [ret(*make(t[::1])) for t in _TYPES]


def _combine_args(v):
    return v, v, v, nb.int64, nb.float64


def _fold_args(v):
    return v, v, nb.int64, nb.int64, nb.int64, nb.int64, v, nb.int64, nb.int64, nb.float64


def _ring_args(v):
    return (*_fold_args(v)[:5], nb.int64, *_fold_args(v)[5:], v, nb.boolean)


def _in_l2_args(v):
    return _ring_args(v)[:-1]


def _in_place_args(v):
    return v, v, *(nb.int64,) * 4, nb.int64, nb.int64, nb.float64


def _to_rows_args(v):
    return (v, *(nb.int64,) * 7, nb.float64, nb.boolean)


def _step_args(v):
    return _I64, _I64, v, v, v, nb.int64, nb.float64


def _finish_args(v):
    return (*_fold_args(v)[:5], *_fold_args(v)[7:], _I64, nb.int64, nb.int64, nb.int64)


def _exchange_args(v):
    return v, v, _I64, _I64, nb.int64


#: Fields of :func:`exchange`'s plan, then the header: data_at, header_at,
#: choice_at (each for slots 0 and 1), stride, nrows, row, code, last,
#: word_stride, polls, yield_from, header_words.
PLAN_FIELDS = 15
#: Results of :func:`exchange`.
NOT_YET, DISAGREE, DONE, OUT_OF_STEP = -1, 0, 1, 2


def _pair(out, lo, hi, code, divisor):
    """Out = lo op hi; compiled per dtype by the overload below."""


def _pair_native(out, lo, hi, code, divisor):
    if code == SUM:
        _loop(out, lo, hi, _sum, 0)
    elif code == PROD:
        _loop(out, lo, hi, _prod, 0)
    elif code == MIN:
        _loop(out, lo, hi, _min, 0)
    elif code == MAX:
        _loop(out, lo, hi, _max, 0)
    else:
        _loop(out, lo, hi, _sum_div, _as_item(divisor, out))


@nb.njit(**_INLINE)
def _loop(out, lo, hi, f, d):
    # out[i] = f(lo[i], hi[i], d).  When out is lo or hi (the folds'
    # running result), a loop over two arrays: LLVM's overlap check fails
    # for arrays that coincide and falls back to a scalar loop, 3x slower
    # here (1 MiB float32 in place: 79 against 25 us, numpy's add 25 us).
    if out.ctypes.data == lo.ctypes.data:
        for i in range(out.size):
            out[i] = f(out[i], hi[i], d)
    elif out.ctypes.data == hi.ctypes.data:
        for i in range(out.size):
            out[i] = f(lo[i], out[i], d)
    else:
        for i in range(out.size):
            out[i] = f(lo[i], hi[i], d)


@nb.njit(**_INLINE)
def _sum(a, b, d):
    return a + b


@nb.njit(**_INLINE)
def _prod(a, b, d):
    return a * b


@nb.njit(**_INLINE)
def _min(a, b, d):  # as numpy.minimum: NaN wins, lo first; why so: _kernels.min_into
    a, b = frozen(a), frozen(b)  # either may be the loaded value of out
    m = a if a < b else b
    return m if a == a else a + b


@nb.njit(**_INLINE)
def _max(a, b, d):
    a, b = frozen(a), frozen(b)
    m = a if a > b else b
    return m if a == a else a + b


@nb.njit(**_INLINE)
def _sum_div(a, b, d):
    return (a + b) / d


def _as_item(value, array):
    """Value as ``array``'s dtype (float32 avg divides in float32, as the ring does)."""


@overload(_as_item, jit_options=dict(nogil=True))
def _as_item_overload(value, array):
    kind = array.dtype
    return lambda value, array: kind(value)


def _pair_f16(out, lo, hi, code, divisor):
    if code == SUM:
        _loop(out, lo, hi, _add16, 0)
    elif code == PROD:
        _loop(out, lo, hi, _mul16, 0)
    elif code == MIN:
        _loop(out, lo, hi, _pick16, True)
    elif code == MAX:
        _loop(out, lo, hi, _pick16, False)
    elif by_multiplying(divisor):
        average_f16(out, lo, hi, np.float32(divisor))
    else:
        _loop(out, lo, hi, _avg16, divisor)


@nb.njit(**_INLINE)
def _add16(a, b, d):
    return add_f16(a, b)


@nb.njit(**_INLINE)
def _mul16(a, b, d):
    return mul_f16(a, b)


@nb.njit(**_INLINE)
def _pick16(a, b, smaller):
    return pick_f16(a, b, smaller)


@nb.njit(**_INLINE)
def _avg16(a, b, d):
    return avg_f16(a, b, d)


@overload(_pair, jit_options=dict(nogil=True))
def _pair_overload(out, lo, hi, code, divisor):
    return _pair_f16 if out.dtype == nb.uint16 else _pair_native


@nb.njit(**_INLINE)
def _copy(out, source):
    for i in range(out.size):
        out[i] = source[i]


@nb.njit(**_INLINE)
def _stream(out, source):
    for i in range(out.size):
        store_streaming(out, i, source[i])


@kernel([nb.void(t[::1], t[::1]) for t in _TYPES], **_OPTIONS)
def copy(out, source):
    """Out = source (numpy's slice assignment, without its per-call cost)."""
    _copy(out, source)


@kernel([nb.void(t[::1], t[::1]) for t in _TYPES], **_OPTIONS)
def copy_streaming(out, source):
    """Out = source with streaming stores, then a fence.

    For shared memory that a peer core reads next (see
    ``_atomics.store_streaming``).
    """
    _stream(out, source)
    fence()


@kernel(_sigs(nb.void, _combine_args), **_OPTIONS)
def combine(out, lo, hi, code, divisor):
    """Out = lo op hi (may alias either input); SUM_DIV divides the sum.

    On float16 bits each result is rounded once to float16.
    """
    _pair(out, lo, hi, code, divisor)


@kernel(_sigs(nb.void, _fold_args), **_OPTIONS)
def fold_rows(out, win, start, stride, nrows, mine_row, mine, code, last, divisor):
    """Out = row 0 op row 1 op ... (row q: ``win[start + q * stride:][:out.size]``).

    Row ``mine_row`` (if >= 0) is read from ``mine`` instead.  Rows combine
    in row order; the last combination uses code ``last``.  ``out`` must
    not alias a row other than row 0 or 1.
    """
    n = out.size
    lo = mine if mine_row == 0 else win[start:start + n]
    if nrows == 1:
        out[:] = lo
        return
    for q in range(1, nrows):
        hi = mine if q == mine_row else win[start + q * stride:start + q * stride + n]
        _pair(out, lo, hi, last if q == nrows - 1 else code, divisor)
        lo = out


@nb.njit(**_INLINE)
def _row(win, start, stride, q, mine_row, mine, at, m):
    # Elements at .. at + m of row q.
    if q == mine_row:
        return mine[at:at + m]
    return win[start + q * stride + at:start + q * stride + at + m]


@nb.njit(**_INLINE)
def _fold_piece(acc, win, start, stride, nrows, first, mine_row, mine, at, code, last,
                divisor):
    # acc = elements at .. at + acc.size of the rows, folded in the ring's
    # order from row `first` (row `mine_row` read from `mine`).
    m = acc.size
    _copy(acc, _row(win, start, stride, first, mine_row, mine, at, m))
    for k in range(1, nrows):
        q = (first + k) % nrows
        _pair(acc, _row(win, start, stride, q, mine_row, mine, at, m), acc,
              last if k == nrows - 1 else code, divisor)


@kernel(_sigs(nb.void, _ring_args), **_OPTIONS)
def fold_ring(out, win, start, stride, nrows, first, mine_row, mine, code, last, divisor,
              also, streaming):
    """Fold the rows in the ring all-reduce's order for a chunk that starts at row ``first``.

    ``acc = row first``, then ``acc = row q op acc`` for q = first + 1,
    first + 2, ... (cyclic): exactly the operands, in the order, of
    :func:`collectives.ring_allreduce`, so the two give the same bits.
    Row ``mine_row`` comes from ``mine``.  The result goes to ``out`` (with
    streaming stores if ``streaming``: shared memory that peers read next,
    see ``_atomics.store_streaming``) and to ``also`` (the caller's buffer;
    may be empty), in one pass: each piece is folded in a buffer that stays
    in L1, so ``out`` and ``also`` may alias ``mine``.
    """
    _fold_in_l1(out, win, start, stride, nrows, first, mine_row, mine, code, last, divisor,
                also, streaming)


@nb.njit(**_INLINE)
def _fold_in_l1(out, win, start, stride, nrows, first, mine_row, mine, code, last, divisor,
                also, streaming):
    n = out.size
    piece = np.empty(min(n, _PIECE), out.dtype)
    for at in range(0, n, _PIECE):
        m = min(_PIECE, n - at)
        acc = piece[:m]
        _fold_piece(acc, win, start, stride, nrows, first, mine_row, mine, at, code, last,
                    divisor)
        if streaming:
            _stream(out[at:at + m], acc)
        else:
            _copy(out[at:at + m], acc)
        if also.size:
            _copy(also[at:at + m], acc)
    if streaming:
        fence()


@kernel(_sigs(nb.void, _in_place_args), **_OPTIONS)
def fold_ring_in_place(mine, win, start, stride, nrows, first, code, last, divisor):
    """:func:`fold_ring` where ``mine`` is row ``first`` and takes the result.

    ``mine = row q op mine`` for q = first + 1, first + 2, ... (cyclic):
    the ring's operands in its order, so the same bits, in ``nrows - 1``
    passes over ``mine``, which a caller keeps in the L2.  No L1 buffer:
    its copy in and out made :func:`fold_ring` take 2.2x the time of one
    in-place pass (4 MiB in 256 KiB pieces, 2 rows: 196-221 against 85-90 us).
    :func:`fold_ring_in_l2` with ``out`` and ``mine`` the same gives the
    same bits, 6-12% slower here (its smaller pieces); this is the
    single-copy all-reduce's inner loop, so it keeps its own.
    """
    n = mine.size
    for k in range(1, nrows):
        q = (first + k) % nrows
        row = win[start + q * stride:start + q * stride + n]
        _pair(mine, row, mine, last if k == nrows - 1 else code, divisor)


@kernel(_sigs(nb.void, _in_l2_args), **_OPTIONS)
def fold_ring_in_l2(out, win, start, stride, nrows, first, mine_row, mine, code, last, divisor,
                    also):
    """:func:`fold_ring` with plain stores, in passes over ``out`` (which a caller keeps in the L2).

    ``out`` must not alias a row; ``also`` may be ``mine``.  Same bits as
    :func:`fold_ring`.  Piece by piece (``_L2_PIECE`` elements),
    ``nrows - 1`` passes fold the rows into ``out`` and one more copies it
    to ``also``.
    """
    _fold_in_l2(out, win, start, stride, nrows, first, mine_row, mine, code, last, divisor, also)


@nb.njit(**_INLINE)
def _fold_in_l2(out, win, start, stride, nrows, first, mine_row, mine, code, last, divisor,
                also):
    for at in range(0, out.size, _L2_PIECE):
        m = min(_L2_PIECE, out.size - at)
        part = out[at:at + m]
        acc = _row(win, start, stride, first, mine_row, mine, at, m)
        if nrows == 1:
            _copy(part, acc)
        for k in range(1, nrows):
            q = (first + k) % nrows
            _pair(part, _row(win, start, stride, q, mine_row, mine, at, m), acc,
                  last if k == nrows - 1 else code, divisor)
            acc = part
        if also.size:
            _copy(also[at:at + m], part)


@kernel(_sigs(nb.void, _to_rows_args), **_OPTIONS)
def fold_ring_to_rows(win, start, stride, n, nrows, first, code, last, divisor, streaming):
    """:func:`fold_ring` of ``n`` elements at ``start`` of every row, written back to every row.

    Each L1-sized piece is folded in the ring's order (same bits as
    :func:`fold_ring` and the ring), then written, while still in L1, over
    that piece in all ``nrows`` rows (with streaming stores if
    ``streaming``), so no rank has to read the result back from another's.
    """
    piece = np.empty(min(n, _PIECE), win.dtype)
    none = win[:0]
    for at in range(0, n, _PIECE):
        m = min(_PIECE, n - at)
        acc = piece[:m]
        _fold_piece(acc, win, start, stride, nrows, first, -1, none, at, code, last, divisor)
        for q in range(nrows):
            row = _row(win, start, stride, q, -1, none, at, m)
            if streaming:
                _stream(row, acc)
            else:
                _copy(row, acc)
    if streaming:
        fence()


@kernel([nb.boolean(_I64, nb.int64, nb.int64, nb.int64, nb.int64)], **_OPTIONS)
def rows_equal(words, start, stride, nrows, nwords):
    """Return whether rows ``words[start + q * stride:][:nwords]`` are all equal."""
    for q in range(1, nrows):
        for i in range(nwords):
            if words[start + q * stride + i] != words[start + i]:
                return False
    return True


@kernel(_sigs(nb.boolean, _finish_args), **_OPTIONS)
def finish(out, win, start, stride, nrows, code, last, divisor, words, header_at,
           header_stride, header_words):
    """If all rows' headers agree, fold the rows into ``out``; return the agreement."""
    if not rows_equal(words, header_at, header_stride, nrows, header_words):
        return False
    if out.size:
        fold_rows(out, win, start, stride, nrows, -1, out, code, last, divisor)
    return True


@kernel([nb.boolean(_I64, _I64)], **_OPTIONS)
def merge_header(mine, theirs):
    """Mine = max(mine, theirs); return whether all merged fields agree."""
    half = mine.size // 2
    agree = True
    for i in range(mine.size):
        if theirs[i] > mine[i]:
            mine[i] = theirs[i]
    for i in range(half):
        if mine[i] != -mine[half + i]:
            agree = False
    return agree


@kernel(_sigs(nb.boolean, _step_args), **_OPTIONS)
def step(mine, theirs, out, lo, hi, code, divisor):
    """Merge the headers; if they agree, out = lo op hi.  Return the agreement."""
    agree = merge_header(mine, theirs)
    if agree:
        _pair(out, lo, hi, code, divisor)
    return agree


@kernel([nb.boolean(_I64, nb.int64, nb.int64, nb.int64, nb.int64)], **_OPTIONS)
def all_at_least(words, index, stride, nrows, value):
    """Return whether ``words[index + q * stride] >= value`` for every row q.

    Acquire loads: each call reads memory afresh (so a compiled loop may
    poll it too), and what a row wrote before its counter is visible after.
    """
    for q in range(nrows):
        if load_acquire(words, index + q * stride) < value:
            return False
    return True


@nb.njit(**_INLINE)
def _poll(words, index, word_stride, nrows, value, polls, yield_from):
    # Whether every row's word reaches value within `polls` rounds, yielding
    # the core after each from round `yield_from` on.
    for i in range(polls):
        if all_at_least(words, index, word_stride, nrows, value):
            return True
        if i >= yield_from:
            _sched_yield()
    return False


@kernel(_sigs(nb.int64, _exchange_args), **_OPTIONS)
def exchange(out, win, words, plan, sequence):
    """A small all-reduce's whole exchange through a shared window, in one call.

    ``plan`` (see ``PLAN_FIELDS``) holds where things lie, so that the
    call passes five arguments (Numba's dispatch costs per argument).
    Stage ``out`` and the header in my row's slot ``sequence & 1``; row 0
    also stamps ``sequence`` in the CHOICE word of that parity; then
    publish ``sequence`` in my ARRIVE word (word 0 of my row) and poll
    every row's for up to ``polls`` rounds, yielding the core after each
    from round ``yield_from`` on (ranks that outnumber the cores: the
    rank awaited may need it).  Returns NOT_YET if some row
    has not arrived (the caller waits and calls :func:`finish`), else
    :func:`finish`'s DONE or DISAGREE, or OUT_OF_STEP if row 0's stamp is
    for another call.
    """
    slot = sequence & 1
    data_at, header_at, choice_at = plan[slot], plan[2 + slot], plan[4 + slot]
    stride, nrows, row, code, last, word_stride, polls, yield_from, header_words = \
        plan[6:PLAN_FIELDS]
    at = row * stride + data_at
    for i in range(out.size):
        win[at + i] = out[i]
    for i in range(header_words):
        words[row * word_stride + header_at + i] = plan[PLAN_FIELDS + i]
    if row == 0:
        words[choice_at] = sequence * 16
    store_release(words, row * word_stride, sequence)  # after the writes above
    if not _poll(words, 0, word_stride, nrows, sequence, polls, yield_from):
        return NOT_YET
    if words[choice_at] // 16 != sequence:
        return OUT_OF_STEP
    if finish(out, win, data_at, stride, nrows, code, last, float(nrows), words,
              header_at, word_stride, header_words):
        return DONE
    return DISAGREE


#: Fields of :func:`one_block`'s plan before its pieces: stride, nrows,
#: row, code, last, word_stride, polls, yield_from, the IN, REDUCED and OUT
#: word of row 0, and the numbers of copy-in, fold and copy-out pieces.
BLOCK_FIELDS = 14
#: :func:`one_block`'s result when every stage is done (else the stage whose wait gave up).
BLOCK_DONE = 3


def _one_block_args(v):
    return v, v, _I64, _I64, nb.int64, nb.int64, nb.int64, nb.boolean


@kernel(_sigs(nb.int64, _one_block_args), **_OPTIONS)
def one_block(flat, win, words, plan, block, after, stage, streaming):
    """The shared-memory pipeline for a call of one block, from ``stage`` on, in one call.

    Stage 0 waits until every row's OUT word reaches ``after`` (the slot's
    last block is copied out; 0: no wait), copies every slice but mine
    into my slot and publishes IN; stage 1 waits for every IN, folds my
    slice (as :func:`fold_ring_in_l2`, or :func:`fold_ring` if
    ``streaming``: the same bits as the stages in Python) and publishes
    REDUCED; stage 2 waits for every REDUCED, copies the other slices out
    and publishes OUT.  ``streaming``: the window is written with
    streaming stores (copy-in and fold; a fence before each publication).
    Each wait polls as :func:`exchange` does; if one gives up, returns its
    stage, for the caller to wait in Python (which drives MPI progress and
    the deadline) and call again from there; else ``BLOCK_DONE``.
    ``plan``: see ``BLOCK_FIELDS``, then (window start, buffer start, stop) per copy-in
    piece, (my slot's start, row 0's start, buffer start, stop, first row)
    per fold piece and (buffer start, stop, window start) per copy-out piece.
    """
    stride, nrows, row, code, last, word_stride, polls, yield_from = plan[:8]
    in_at, reduced_at, out_at, n_in, n_fold = plan[8:13]
    at = BLOCK_FIELDS
    folds = at + 3 * n_in
    outs = folds + 5 * n_fold
    mine = row * word_stride
    if stage == 0:
        if after and not _poll(words, out_at, word_stride, nrows, after, polls, yield_from):
            return 0
        for p in range(at, folds, 3):
            start, lo, hi = plan[p], plan[p + 1], plan[p + 2]
            if streaming:
                _stream(win[start:start + hi - lo], flat[lo:hi])
            else:
                _copy(win[start:start + hi - lo], flat[lo:hi])
        if streaming:
            fence()
        store_release(words, mine + in_at, block + 1)  # after the copies
        stage = 1
    if stage == 1:
        if not _poll(words, in_at, word_stride, nrows, block + 1, polls, yield_from):
            return 1
        for p in range(folds, outs, 5):
            start, row0, lo, hi, first = plan[p], plan[p + 1], plan[p + 2], plan[p + 3], plan[p + 4]
            user, out = flat[lo:hi], win[start:start + hi - lo]
            if streaming:
                _fold_in_l1(out, win, row0, stride, nrows, first, row, user, code, last,
                            float(nrows), user, True)
            else:
                _fold_in_l2(out, win, row0, stride, nrows, first, row, user, code, last,
                            float(nrows), user)
        store_release(words, mine + reduced_at, block + 1)
        stage = 2
    if not _poll(words, reduced_at, word_stride, nrows, block + 1, polls, yield_from):
        return 2
    for p in range(outs, plan.size, 3):
        lo, hi, start = plan[p], plan[p + 1], plan[p + 2]
        _copy(flat[lo:hi], win[start:start + hi - lo])
    store_release(words, mine + out_at, block + 1)
    return BLOCK_DONE
