"""Writing files (keys, certificates, settings with secrets): whole or not at all, with their
mode from the start, never readable by others on the way."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o600, group: str | None = None) -> None:
    """Replace ``path`` atomically with ``data``, created with ``mode`` (0600: owner only) and,
    given ``group``, owned by that group; flushed to disk before it takes the old file's place.
    Raises LookupError (and leaves nothing behind) when the group does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if group is not None:
        try:
            shutil.chown(tmp, group=group)
        except LookupError:
            tmp.unlink()
            raise
    os.replace(tmp, path)
