"""``confmeet backup verify``: read a whole archive back and check every part of it.

Every member's sha256 and size against the index, the index against the manifest, the
manifest's counts against the index; and each part read back the way a restore reads it: rows
decoded into this version's tables, documents parsed, object keys checked, settings parsed
(and decrypted, given the passphrase). Any failure names the part. A restore runs this first, so
a damaged archive never touches the target.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tarfile
import tomllib
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..stores.documents import check_collection
from ..stores.objects import check_key
from .archive import (FORMAT, FORMAT_VERSION, INDEX, MANIFEST, MANIFEST_SUM, MAX_MANIFEST_BYTES, MAX_PART_BYTES,
                      SECTIONS, BackupError, Spool, jsonl_part, section)
from .cipher import MAGIC, DecryptingReader, DecryptionFailed, decrypt_bytes, is_encrypted, read_exact
from .location import Location
from .progress import Progress, Silent
from .rows import BY_NAME, decode_row, table_rank

READ = 1024 * 1024
READ_AHEAD = 64 * 1024
CONFIG_FILES = {"config/confmeet.toml", "config/secrets.toml", "config/tls/cert.pem", "config/tls/key.pem"}


@dataclass
class Verified:
    name: str
    size: int
    manifest: dict[str, Any]
    manifest_sha256: str
    index: Spool  # the archive's index, every line checked against the archive
    encrypted_config: list[str] = field(default_factory=list)  # .enc parts not opened (no passphrase)

    def close(self) -> None:
        self.index.close()


class _Prefixed:
    """A reader that yields ``head`` and then the rest of ``source``."""

    def __init__(self, head: bytes, source: Any, progress: Progress) -> None:
        self._head = head
        self._source = source
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        if self._head:
            cut = len(self._head) if size < 0 else min(size, len(self._head))
            out, self._head = self._head[:cut], self._head[cut:]
            self._progress.advance(len(out))
            return out
        data = self._source.read(size)
        self._progress.advance(len(data))
        return data


@dataclass
class Position:
    """Where in the archive reading is, for messages that name the part."""

    inside: str | None = None
    last: str | None = None

    def enter(self, name: str) -> None:
        self.inside = name

    def leave(self) -> None:
        self.last, self.inside = self.inside, None

    def describe(self) -> str:
        if self.inside:
            return f"in part {self.inside}"
        if self.last:
            return f"after part {self.last}"
        return "at its start"


def open_stream(location: Location, name: str, passphrase: bytes | None, progress: Progress,
                label: str) -> tuple[Any, Any, int]:
    """(plaintext reader, the raw reader to close, size) of an archive, decrypting when needed;
    the bytes read count towards a progress step called ``label``."""
    raw, size = location.open(name)
    progress.phase(label, size, in_bytes=True)
    try:
        head = read_exact(raw, len(MAGIC))
        stream: Any = _Prefixed(head, raw, progress)
        if is_encrypted(head):
            if not passphrase:
                raise BackupError(f"{name} is encrypted: pass --passphrase-file with the backup's passphrase")
            try:
                stream = DecryptingReader(stream, passphrase)
            except DecryptionFailed as exc:
                raise BackupError(f"{name}: {exc}") from None
    except BaseException:
        raw.close()
        raise
    return stream, raw, size


def tar_members(stream: Any) -> tarfile.TarFile:
    # Encrypted: a small read-ahead, so that a chunk that does not open is blamed on the part it holds.
    bufsize = READ_AHEAD if isinstance(stream, DecryptingReader) else READ
    return tarfile.open(fileobj=stream, mode="r|", bufsize=bufsize)


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
    reader = tar.extractfile(member)
    if reader is None:
        raise BackupError(f"{member.name} is not a regular file")
    remaining = member.size
    while remaining:
        chunk = reader.read(min(READ, remaining))
        if not chunk:
            raise tarfile.ReadError("unexpected end of data")
        remaining -= len(chunk)
        yield chunk


def read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if member.size > limit:
        raise BackupError(f"{member.name} is {member.size} bytes, more than a confmeet backup writes")
    return b"".join(read_member(tar, member))


def jsonl_lines(member: str, data: bytes) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of a gzip'd JSON-lines part."""
    inflate = zlib.decompressobj(wbits=31)
    try:
        text = inflate.decompress(data, MAX_PART_BYTES)
    except zlib.error as exc:
        raise BackupError(f"{member} does not unpack: it is damaged ({exc})") from None
    if inflate.unconsumed_tail or not inflate.eof:
        raise BackupError(f"{member} does not unpack (damaged, or larger than a backup writes)")
    for number, line in enumerate(text.splitlines(), 1):
        try:
            yield number, json.loads(line)
        except ValueError as exc:
            raise BackupError(f"{member} line {number} is not JSON ({exc})") from None


def check_part(member: str, data: bytes) -> int:
    """Read a JSON-lines part back as a restore would; return how many items it holds."""
    kind, name = jsonl_part(member)
    items = 0
    for number, item in jsonl_lines(member, data):
        if kind == "database":
            try:
                decode_row(BY_NAME[name], item)
            except ValueError as exc:
                raise BackupError(f"{member} line {number}: {exc}") from None
        elif not isinstance(item, dict) or not isinstance(item.get("_id"), str) or not item["_id"]:
            raise BackupError(f"{member} line {number} is not a document with a string _id")
        items += 1
    return items


def check_config(member: str, data: bytes, passphrase: bytes | None) -> bool:
    """Parse a settings part (decrypting it when it is encrypted and the passphrase is given);
    False when it stayed closed for lack of a passphrase."""
    plain_name = member.removesuffix(".enc")
    monitoring = plain_name.startswith("config/monitoring/") and ".." not in plain_name.split("/")
    if plain_name not in CONFIG_FILES and not monitoring:
        raise BackupError(f"the archive holds {member}, which no confmeet backup contains")
    if member.endswith(".enc"):
        if not passphrase:
            return False
        try:
            data = decrypt_bytes(data, passphrase)
        except DecryptionFailed as exc:
            raise BackupError(f"{member}: {exc}") from None
    if plain_name.endswith(".toml"):
        try:
            tomllib.loads(data.decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise BackupError(f"{member} is not valid TOML ({exc})") from None
    return True


class _Verifier:
    def __init__(self, name: str, passphrase: bytes | None) -> None:
        self.name = name
        self.passphrase = passphrase
        self.observed = Spool()
        self.index = Spool()
        self.rank = -1
        self.table_rank = -1
        self.config_names: list[str] = []
        self.encrypted_config: list[str] = []
        self.index_summary: dict[str, Any] | None = None
        self.mismatch: BackupError | None = None  # a part unlike its index line: the part or the line?
        self.manifest_data: bytes | None = None
        self.manifest_sum: bytes | None = None

    def damaged(self, part: str, why: str) -> BackupError:
        return BackupError(f"archive {self.name} is damaged: {part} {why}")

    def order(self, member: str) -> str:
        kind = section(member)
        rank = SECTIONS.index(kind)
        if rank <= self.rank and kind in ("index", "manifest", "checksum") or rank < self.rank:
            raise self.damaged(member, "is out of place (after parts that must follow it)")
        self.rank = rank
        if kind == "database":
            table = jsonl_part(member)[1]
            if table not in BY_NAME:
                raise BackupError(f"{member}: table {table!r} does not exist in this confmeet version; "
                                  "restore with the version that made the backup")
            if table_rank(table) < self.table_rank:
                raise self.damaged(member, "is out of foreign-key order")
            self.table_rank = table_rank(table)
        return kind

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if not member.isfile():
            raise self.damaged(member.name, "is not a regular file")
        kind = self.order(member.name)
        if kind == "index":
            self.read_index(tar, member)
            return
        if kind == "manifest":
            self.manifest_data = read_small(tar, member, MAX_MANIFEST_BYTES)
            return
        if kind == "checksum":
            self.manifest_sum = read_small(tar, member, 1024)
            return
        digest = hashlib.sha256()
        items = None
        if kind == "objects":
            try:
                check_key(member.name.removeprefix("objects/"))
            except ValueError as exc:
                raise self.damaged(member.name, str(exc)) from None
            for chunk in read_member(tar, member):
                digest.update(chunk)
        else:
            data = read_small(tar, member, MAX_PART_BYTES)
            digest.update(data)
            if kind == "config":
                self.config_names.append(member.name)
                if not check_config(member.name, data, self.passphrase):
                    self.encrypted_config.append(member.name)
            else:
                if kind == "documents":
                    check_collection(jsonl_part(member.name)[1])
                items = check_part(member.name, data)
        entry: dict[str, Any] = {"name": member.name, "size": member.size, "sha256": digest.hexdigest()}
        if items is not None:
            entry["items"] = items
        self.observed.add(entry)

    def read_index(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """Compare the index with the parts read; remember the first difference (the manifest, read
        next, tells whether the index or the part changed)."""
        observed = self.observed.entries()
        tables: Counter[str] = Counter()
        collections: Counter[str] = Counter()
        objects = {"count": 0, "bytes": 0}
        pending = b""

        def line(raw: bytes) -> None:
            self.index.add_raw(raw + b"\n")
            try:
                entry = json.loads(raw)
                name, size, sha256 = entry["name"], entry["size"], entry["sha256"]
            except (ValueError, KeyError, TypeError):
                self.mismatch = self.mismatch or self.damaged(INDEX, f"line {self.index.lines} is not readable")
                return
            seen = next(observed, None)
            if seen is None:
                self.mismatch = self.mismatch or self.damaged(INDEX, f"names {name!r}, which the archive lacks")
                return
            if name != seen["name"]:
                self.mismatch = self.mismatch or self.damaged(seen["name"], f"is not where the index expects "
                                                                            f"it ({name!r})")
            for key, value in (("size", size), ("sha256", sha256), ("items", entry.get("items"))):
                if value != seen.get(key):
                    self.mismatch = self.mismatch or self.damaged(
                        seen["name"], f"does not match its {key} in the index (changed or cut short)")
            kind = section(seen["name"])
            if kind == "objects" and not entry.get("discard"):
                objects["count"] += 1
                objects["bytes"] += size
            elif kind in ("database", "documents") and isinstance(entry.get("items"), int):
                (tables if kind == "database" else collections)[jsonl_part(seen["name"])[1]] += entry["items"]

        for chunk in read_member(tar, member):
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                line(raw)
        if pending:
            line(pending)
        left = next(observed, None)
        if left is not None:
            self.mismatch = self.mismatch or self.damaged(left["name"], "is missing from the index")
        self.index_summary = {"tables": dict(tables), "collections": dict(collections), "objects": objects,
                              "size": member.size, "entries": self.index.lines}

    def conclude(self, where: Position) -> dict[str, Any]:
        """Once the whole stream is read: the manifest's checksum, the index against the manifest,
        the parts against the index, the manifest's counts; in that order, so that the message
        names the part that really changed."""
        if self.manifest_data is None or self.manifest_sum is None:
            raise self.mismatch or BackupError(
                f"archive {self.name} is cut short or damaged {where.describe()}: its manifest is missing")
        claimed_sum = self.manifest_sum.split(b" ")[0].decode(errors="replace")
        if claimed_sum != hashlib.sha256(self.manifest_data).hexdigest():
            raise self.damaged(MANIFEST, f"does not match its checksum in {MANIFEST_SUM}")
        try:
            manifest = json.loads(self.manifest_data)
            if manifest.get("format") != FORMAT:
                raise ValueError("not a confmeet backup manifest")
            if manifest.get("format_version", 0) > FORMAT_VERSION:
                raise BackupError(f"{self.name} was written by a newer confmeet (archive format "
                                  f"{manifest['format_version']}); verify and restore it with that version")
            index = manifest["index"]
            claimed = (manifest["database"]["tables"], manifest["documents"]["collections"],
                       manifest["objects"]["count"], manifest["objects"]["bytes"], manifest["config"]["files"])
        except BackupError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise self.damaged(MANIFEST, f"is not readable ({exc})") from None
        summary = self.index_summary
        if summary is None:
            raise self.damaged(INDEX, "is missing")
        if (index.get("size"), index.get("entries"), index.get("sha256")) != (
                summary["size"], summary["entries"], self.index.sha256):
            raise self.damaged(INDEX, "does not match its size and sha256 in the manifest")
        if self.mismatch is not None:
            raise self.mismatch
        nonzero = ({k: v for k, v in claimed[0].items() if v}, {k: v for k, v in claimed[1].items() if v},
                   *claimed[2:])
        found = (summary["tables"], summary["collections"], summary["objects"]["count"], summary["objects"]["bytes"],
                 self.config_names)
        if nonzero != found:
            raise self.damaged(MANIFEST, f"describes other contents than the archive holds: {nonzero} "
                                         f"against {found}")
        return manifest


def verify_archive(location: Location, name: str, passphrase: bytes | None = None,
                   progress: Progress | None = None) -> Verified:
    """Check the whole archive; BackupError names the first broken part."""
    progress = progress or Silent()
    stream, raw, size = open_stream(location, name, passphrase, progress, "verify")
    verifier = _Verifier(name, passphrase)
    where = Position()
    try:
        with translate_errors(name, where):
            tar = tar_members(stream)
            for member in tar:
                where.enter(member.name)
                verifier.member(tar, member)
                where.leave()
            while stream.read(READ):  # the rest: an encrypted stream authenticates its last chunk
                pass
        manifest = verifier.conclude(where)
    except BaseException:
        verifier.index.close()
        raise
    finally:
        verifier.observed.close()
        raw.close()
    return Verified(name, size, manifest, hashlib.sha256(verifier.manifest_data or b"").hexdigest(),
                    verifier.index, verifier.encrypted_config)


@contextlib.contextmanager
def translate_errors(name: str, where: Position) -> Iterator[None]:
    """Reading errors become BackupErrors that name the archive and the part."""
    try:
        yield
    except DecryptionFailed as exc:
        raise BackupError(f"archive {name} is damaged or the passphrase is wrong, {where.describe()}: "
                          f"{exc}") from None
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise BackupError(f"archive {name} is damaged or cut short {where.describe()}: {exc}") from None
