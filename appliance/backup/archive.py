"""What a confmeet backup archive holds, and the small pieces every step shares.

An archive is one tar stream (PAX format), written front to back without seeking, in this order:

``objects/<key>``
    every object of the object store, byte for byte.
``database/<table>/<NNNNNN>.jsonl.gz``
    the rows of each table (foreign-key order, parents first) as gzip'd JSON lines, cut into
    parts of about 4 MiB of JSON (see rows.py for the encoding).
``documents/<collection>/<NNNNNN>.jsonl.gz``
    every document of each collection, likewise.
``config/confmeet.toml``, ``config/secrets.toml``, ``config/tls/<file>``
    the settings file, the secrets in effect, the TLS certificate and key; each with ``.enc``
    appended when encrypted with the passphrase (see cipher.py).
``config/monitoring/<component>/<file>``
    the observability layer's configuration and alert rules (``<config dir>/monitoring/``), and
    ``config/monitoring/grafana/state/grafana.db``, Grafana's database, when installed (likewise).
``index.jsonl``
    one line per member above, in archive order: name, size, sha256, the number of rows or
    documents in a JSON-lines part, an object's content type, and ``"discard": true`` for a copy
    of an object that changed while it was read (a whole copy follows it).
``manifest.json``
    format and versions, what each component holds (counts and bytes), and the index's size and
    sha256.
``manifest.json.sha256``
    last: the manifest's own sha256, in ``sha256sum`` format.

The whole stream may itself be encrypted with the passphrase (``.tar.enc``). The manifest comes
last because it is computed while streaming: nothing is spooled, and ``verify`` reads everything.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

from .tarstream import Written

FORMAT = "confmeet-backup"
FORMAT_VERSION = 1
INDEX = "index.jsonl"
MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.json.sha256"
SECTIONS = ("objects", "database", "documents", "config", "index", "manifest", "checksum")
PART_BYTES = 4 * 1024 * 1024
MAX_PART_BYTES = 64 * 1024 * 1024  # one JSON-lines part, uncompressed, as verify accepts it
MAX_MANIFEST_BYTES = 1024 * 1024
NAME = re.compile(r"^confmeet-(\d{8}T\d{6}Z)(?:-(\d+))?\.tar(\.enc)?$")


class BackupError(Exception):
    """A backup, verify or restore cannot go on; the message names the part and what to do."""


def archive_name(when: datetime, encrypted: bool, sequence: int = 0) -> str:
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"confmeet-{stamp}{f'-{sequence}' if sequence else ''}.tar{'.enc' if encrypted else ''}"


def name_order(name: str) -> tuple[str, int]:
    """Sort key for archive names: time, then the sequence number a same-second archive gets."""
    match = NAME.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a confmeet archive name")
    return match.group(1), int(match.group(2) or 0)


def section(member: str) -> str:
    """The section a member name belongs to; BackupError for a name no archive holds."""
    if member == INDEX:
        return "index"
    if member == MANIFEST:
        return "manifest"
    if member == MANIFEST_SUM:
        return "checksum"
    head, _, rest = member.partition("/")
    if head in ("objects", "database", "documents", "config") and rest:
        return head
    raise BackupError(f"the archive holds {member!r}, which no confmeet backup contains")


def jsonl_part(member: str) -> tuple[str, str]:
    """('database'|'documents', table or collection) of a JSON-lines part name."""
    parts = member.split("/")
    if len(parts) != 3 or not re.fullmatch(r"\d{6}\.jsonl\.gz", parts[2]):
        raise BackupError(f"{member}: not a part name a confmeet backup writes")
    return parts[0], parts[1]


def index_entry(written: Written, items: int | None = None, content_type: str | None = None,
                discard: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": written.name, "size": written.size, "sha256": written.sha256}
    if items is not None:
        entry["items"] = items
    if content_type:
        entry["content_type"] = content_type
    if discard:
        entry["discard"] = True
    return entry


class Spool:
    """JSON lines kept in memory up to a few MiB, then on disk: the index of an archive with
    millions of members never has to fit in memory."""

    def __init__(self) -> None:
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
        self.lines = 0
        self._digest = hashlib.sha256()
        self.size = 0

    def add(self, entry: dict[str, Any]) -> None:
        self.add_raw(json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")

    def add_raw(self, line: bytes) -> None:
        self._file.write(line)
        self._digest.update(line)
        self.size += len(line)
        self.lines += 1

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def chunks(self, size: int = 1024 * 1024) -> Iterator[bytes]:
        self._file.seek(0)
        while chunk := self._file.read(size):
            yield chunk
        self._file.seek(0, 2)

    def entries(self) -> Iterator[dict[str, Any]]:
        self._file.seek(0)
        for line in self._file:
            yield json.loads(line)
        self._file.seek(0, 2)

    def close(self) -> None:
        self._file.close()
