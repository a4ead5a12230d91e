"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The data goes to a temporary file in the same directory, is fsynced, and is renamed over the
target (`os.replace` is atomic on one filesystem). A failure removes the temporary file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically, creating its directory; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name no other writer has (processes, threads, or hosts sharing the directory)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _FILE_MODE)  # mkstemp makes it 0600; a file here is 0644-ish
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike, document: object, indent: int | None = 1,
                      sort_keys: bool = False) -> Path:
    """`document` as strict JSON (NaN and infinity refused) plus a newline, atomically."""
    text = json.dumps(document, indent=indent, sort_keys=sort_keys, allow_nan=False)
    return write_bytes_atomic(path, (text + "\n").encode("utf-8"))
