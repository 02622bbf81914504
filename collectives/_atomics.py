"""Acquire loads and release stores of int64 words, for Numba kernels.

A kernel that polls a shared-window counter in a loop needs each read to
be a real load (a plain one may be hoisted out of the loop) and needs its
earlier data writes to be visible before the counter it publishes: the
C11 acquire/release pair, which LLVM emits as plain moves on x86 and with
the right barriers elsewhere.  Python code gets the same ordering from
``MPI.Win.Sync``; these are for the fused small-message kernel, which
publishes and polls without returning to Python.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["load_acquire", "store_release", "store_streaming", "fence"]


def _word_pointer(context, builder, array_type, array, index):
    array = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, array, [index])


def _int64_array(array):
    return (isinstance(array, types.Array) and array.dtype == types.int64
            and array.ndim == 1)


@intrinsic
def load_acquire(typingctx, array, index):
    """``array[index]`` read with acquire ordering (no bounds check)."""
    if not (_int64_array(array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = _word_pointer(context, builder, signature.args[0], args[0], index)
        return builder.load_atomic(pointer, "acquire", 8)

    return types.int64(array, index), codegen


@intrinsic
def store_release(typingctx, array, index, value):
    """``array[index] = value`` with release ordering (no bounds check)."""
    if not (_int64_array(array) and isinstance(index, types.Integer)
            and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        pointer = _word_pointer(context, builder, signature.args[0], args[0], index)
        builder.store_atomic(value, pointer, "release", 8)
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


@intrinsic
def store_streaming(typingctx, array, index, value):
    """``array[index] = value`` as a non-temporal store (no bounds check).

    The line is written without first being read into this core's cache
    (x86 ``movnt``), so a line that a peer core holds costs one
    invalidation instead of a read-for-ownership from that core: 512 KiB
    into a shared slot that the peer had just read took 219-298 us with
    plain stores in the VM's slow state and 39-62 us in its fast one, and
    37-74 us with these in both (``benchmarks/store_probe.py``).  Weakly
    ordered: end with :func:`fence` before anything publishes the data.
    """
    if not (isinstance(array, types.Array) and array.ndim == 1
            and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        value = context.cast(builder, args[2], signature.args[2], signature.args[0].dtype)
        pointer = _word_pointer(context, builder, signature.args[0], args[0], index)
        store = builder.store(value, pointer)
        one = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        store.set_metadata("nontemporal", one)
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


@intrinsic
def fence(typingctx):
    """A full memory fence (orders :func:`store_streaming` before later stores)."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen
