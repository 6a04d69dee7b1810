"""Writing a tar stream member by member, each member's bytes streamed and hashed on the way.

Python's tarfile needs a file object that yields exactly the announced size; a backup copies
objects that the appliance may replace or delete at the same moment, so this writer takes any
iterator of chunks, stops at the announced size, pads with zeros when the source ends sooner,
and reports whether the member came out whole. Reading uses tarfile's stream mode (``r|``).
"""

from __future__ import annotations

import hashlib
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

BLOCK = 512
RECORD = 20 * BLOCK
ZEROS = bytes(1024 * 1024)


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class Written:
    """One member as it went into the archive."""

    name: str
    size: int
    sha256: str
    whole: bool  # False: the source ended early or ran long; the member holds padding or a cut


class TarWriter:
    def __init__(self, out: Writable) -> None:
        self._out = out
        self._offset = 0
        self._mtime = int(time.time())

    def _write(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self._offset += len(data)

    def _header(self, name: str, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = self._mtime
        info.mode = 0o600
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def _pad(self) -> None:
        if self._offset % BLOCK:
            self._write(bytes(BLOCK - self._offset % BLOCK))

    def add(self, name: str, size: int, chunks: Iterable[bytes]) -> Written:
        """A member of ``size`` bytes taken from ``chunks``; the iterator is not read past ``size``
        plus one chunk (which tells a source that grew)."""
        self._header(name, size)
        digest = hashlib.sha256()
        remaining = size
        whole = True
        for chunk in chunks:
            if not chunk:
                continue
            if remaining == 0:
                whole = False  # more bytes than announced
                break
            if len(chunk) > remaining:
                chunk = chunk[:remaining]
                whole = False
            digest.update(chunk)
            self._write(chunk)
            remaining -= len(chunk)
            if not whole:
                break
        if remaining:
            whole = False
            while remaining:
                zeros = ZEROS[:min(remaining, len(ZEROS))]
                digest.update(zeros)
                self._write(zeros)
                remaining -= len(zeros)
        self._pad()
        return Written(name, size, digest.hexdigest(), whole)

    def add_bytes(self, name: str, data: bytes) -> Written:
        return self.add(name, len(data), [data])

    def close(self) -> None:
        """The end-of-archive marker: two zero blocks, padded to a whole record as tar does."""
        self._write(bytes(2 * BLOCK))
        if self._offset % RECORD:
            self._write(bytes(RECORD - self._offset % RECORD))
