"""Atomic, checksummed checkpoints that keep the last K and skip broken files.

A checkpoint file is ``MAGIC``, the SHA-256 of the payload (hex), a newline,
then the payload: an uncompressed ``.npz`` holding the named arrays plus a
JSON ``__meta__`` entry (step, epoch position, RNG state, optimizer
scalars, ...).  No pickle: a checkpoint cannot run code when loaded.

Writes are atomic: the file is written under a temporary name in the same
directory, flushed and ``fsync``-ed, renamed over its final name, and the
directory is ``fsync``-ed, so a crash leaves either the old set of files or
the new one, never a half-written checkpoint under a final name.  Loading
takes the newest file whose checksum matches; a truncated or corrupted file
is reported (``logging`` warning) and the previous one is used.
"""

import hashlib
import io
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

__all__ = ["CheckpointManager", "CheckpointError"]

_MAGIC = b"MPICKPT1\n"
_LOG = logging.getLogger("optim.checkpoint")


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupted or not a checkpoint."""


class CheckpointManager:
    """Save checkpoints to ``directory`` and find the newest valid one.

    Parameters
    ----------
    directory : str or Path
        Must exist (a missing directory is an error, not silently created,
        so a typo does not lose checkpoints).
    keep : int, default 3
        How many of the newest checkpoints to keep; older ones are deleted
        after a successful save.
    prefix : str, default "ckpt"
        File names are ``{prefix}-{step:010d}.ckpt``.

    """

    def __init__(self, directory, *, keep=3, prefix="ckpt"):
        self.directory = Path(directory)
        self.skipped = []
        if not self.directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory {str(self.directory)!r} "
                                    "does not exist")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
            raise ValueError(f"prefix {prefix!r} must be letters, digits, '_', '.', '-'")
        self.keep = keep
        self.prefix = prefix
        self._pattern = re.compile(rf"{re.escape(prefix)}-(\d+)\.ckpt")

    def paths(self):
        """Return the checkpoint files, oldest first, by step."""
        found = []
        for path in self.directory.iterdir():
            match = self._pattern.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return [p for _, p in sorted(found)]

    def save(self, step, arrays, meta):
        """Write a checkpoint for ``step`` atomically; return its path."""
        payload = _encode(arrays, dict(meta, step=int(step)))
        final = self.directory / f"{self.prefix}-{int(step):010d}.ckpt"
        temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as f:
            f.write(_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, final)
        _fsync_directory(self.directory)
        for old in self.paths()[:-self.keep]:
            old.unlink()
        return final

    def load_latest(self, *, warn=True):
        """Return ``(arrays, meta)`` of the newest valid checkpoint, or None.

        A file that is damaged or cannot be read is skipped, with a warning
        unless ``warn`` is false; ``self.skipped`` lists ``(name, reason)``
        of the files skipped by the last call.
        """
        self.skipped = []
        for path in reversed(self.paths()):
            try:
                return load(path)
            except (CheckpointError, OSError) as error:
                self.skipped.append((path.name, str(error)))
                if warn:
                    _LOG.warning("skipping checkpoint %s: %s", path.name, error)
        return None


def load(path):
    """Read and verify one checkpoint file; return ``(arrays, meta)``."""
    data = Path(path).read_bytes()
    header_end = len(_MAGIC) + 64
    if not data.startswith(_MAGIC) or data[header_end:header_end + 1] != b"\n":
        raise CheckpointError(f"{path} is not a checkpoint (bad header, "
                              f"{len(data)} bytes)")
    payload = data[header_end + 1:]
    expected = data[len(_MAGIC):header_end].decode("ascii", "replace")
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise CheckpointError(f"{path} fails its checksum ({len(payload)} payload bytes; "
                              "truncated or corrupted)")
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "__meta__"}
        meta = json.loads(archive["__meta__"].tobytes().decode())
    return arrays, meta


def _encode(arrays, meta):
    if "__meta__" in arrays:
        raise ValueError("'__meta__' is reserved; rename that array")
    buffer = io.BytesIO()
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buffer, __meta__=blob, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
