"""Validate a collective's arguments, then check that all ranks agree."""

import zlib

from collectives._agree import check_agreement, check_comm
from collectives._ops import DTYPES, check_buffer, check_root, resolve_op
from collectives._wait import resolve_timeout
from collectives.timeline import phase

__all__ = ["prepare"]

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
        fields = [("operation", zlib.crc32(operation.encode()), operation),
                  ("count", buf.size, buf.size),
                  ("dtype", DTYPES.index(buf.dtype), str(buf.dtype))]
        if resolved is not None:
            fields.append(("op", resolved.code, resolved.name))
        if root is not None:
            fields.append(("root", int(root), int(root)))
        with phase(comm, "agreement check"):
            check_agreement(comm, operation, fields + list(extra), timeout=timeout)
    return resolved
