"""Validate a collective's arguments, then check that all ranks agree."""

import functools
import zlib

from collectives._agree import check_agreement, check_comm
from collectives._ops import DTYPES, check_buffer, check_root, resolve_op
from collectives._wait import resolve_timeout
from collectives.timeline import phase

__all__ = ["prepare", "prepare_local", "collective_fields"]

_NO_OP = object()  # tree_bcast takes no op; None must still be rejected


def prepare(operation, buf, comm, *, op=_NO_OP, root=None, extra=(), check=True,
            timeout=None):
    """Check ``buf``, ``comm``, ``op``, ``root`` and ``timeout``; return the op.

    Local checks run first and raise ``TypeError``/``ValueError`` before any
    message is sent.  With ``check`` true, ranks then compare the operation,
    count, dtype, op, root and any ``extra`` ``(label, code, shown)``
    fields, and all raise ``CollectiveMismatchError`` if they differ.
    """
    check_comm(comm)
    check_buffer(buf)
    resolved = None if op is _NO_OP else resolve_op(op, buf.dtype)
    if root is not None:
        check_root(root, comm)
    resolve_timeout(timeout)
    if check:
        fields = collective_fields(operation, buf, resolved, root=root)
        with phase(comm, "agreement check"):
            check_agreement(comm, operation, fields + list(extra), timeout=timeout)
    return resolved


def prepare_local(operation, buf, comm, *, op, timeout=None):
    """Run :func:`prepare`'s local checks only (no message); return the op.

    For algorithms that carry the agreement check in their own messages;
    they build its fields with :func:`collective_fields`.
    """
    check_comm(comm)
    check_buffer(buf)
    reduction = _resolve_named(op, buf.dtype) if isinstance(op, str) else resolve_op(
        op, buf.dtype)
    if timeout is not None:
        resolve_timeout(timeout)
    return reduction


def collective_fields(operation, buf, reduction, *, root=None):
    """Return the ``(label, code, shown)`` fields that all ranks must agree on."""
    fields = [("operation", _crc(operation), operation),
              ("count", buf.size, buf.size),
              ("dtype", DTYPES.index(buf.dtype), str(buf.dtype))]
    if reduction is not None:
        fields.append(("op", reduction.code, reduction.name))
    if root is not None:
        fields.append(("root", int(root), int(root)))
    return fields


@functools.lru_cache(maxsize=64)
def _resolve_named(op, dtype):
    return resolve_op(op, dtype)


@functools.lru_cache(maxsize=64)
def _crc(operation):
    return zlib.crc32(operation.encode())
