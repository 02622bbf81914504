"""Validate a collective's arguments, then check that all ranks agree."""

from collectives._agree import check_agreement, check_comm
from collectives._ops import DTYPES, OPS, check_buffer, check_root, resolve_op

__all__ = ["prepare"]

_DTYPE_NAMES = tuple(str(d) for d in DTYPES)
_NO_OP = object()  # tree_bcast takes no op; None must still be rejected


def prepare(operation, buf, comm, *, op=_NO_OP, root=None, extra=(), check=True):
    """Check ``buf``, ``comm``, ``op`` and ``root``; return the resolved op.

    Local checks run first and raise ``TypeError``/``ValueError`` before any
    message is sent.  With ``check`` true, ranks then compare count, dtype,
    op, root and any ``extra`` ``(label, code, names)`` fields, and all raise
    ``CollectiveMismatchError`` if they differ.
    """
    check_comm(comm)
    check_buffer(buf)
    resolved = None if op is _NO_OP else resolve_op(op, buf.dtype)
    if root is not None:
        check_root(root, comm)
    if check:
        fields = [("count", buf.size, None),
                  ("dtype", DTYPES.index(buf.dtype), _DTYPE_NAMES)]
        if resolved is not None:
            fields.append(("op", resolved.code, OPS))
        if root is not None:
            fields.append(("root", int(root), None))
        check_agreement(comm, operation, fields + list(extra))
    return resolved
