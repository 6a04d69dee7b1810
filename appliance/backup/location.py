"""Where archives live: a local directory or an S3 prefix; listing, writing, reading, retention.

``DIR`` (any path) is a directory; ``s3://KEY:SECRET@HOST:PORT/BUCKET[/PREFIX]?secure=false`` a
bucket and prefix with its own credentials, and the short ``s3://BUCKET[/PREFIX]`` reuses the
endpoint and keys of the ``objects`` setting (which must then be S3). An archive appears under
its final name only once complete: a directory gets a hidden ``.NAME.partial`` renamed at the
end, S3 a multipart upload that is completed at the end or aborted. A backup that dies leaves
that partial archive behind (a hidden file; an incomplete multipart upload): ``partials`` lists
them and ``remove_partials`` removes those no backup is writing any more.
"""

from __future__ import annotations

import fcntl
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..settings import Settings, mask_url_password
from ..stores.errors import StoreUnavailable
from ..stores.objects import FileObjects, ObjectStore, S3Objects, remove_abandoned
from .archive import NAME, BackupError, archive_name, name_order
from .portal import Portal

PIPE_BYTES = 4 * 1024 * 1024
PARTIAL_PREFIX, PARTIAL_SUFFIX = ".", ".partial"  # a directory's archive being written: .NAME.partial


@dataclass(frozen=True)
class ArchiveInfo:
    name: str
    size: int
    modified: datetime

    @property
    def encrypted(self) -> bool:
        return self.name.endswith(".enc")


@dataclass(frozen=True)
class PartialArchive:
    """An archive not complete: being written, or left by a backup that died."""

    name: str  # the archive's name once complete
    size: int | None  # None on S3 (the parts of a multipart upload are not listed)
    begun: datetime
    abandoned: bool | None  # None on S3, where a live upload cannot be told from a dead one


class Sink(ABC):
    """The bytes of one archive on their way to a location."""

    size = 0

    @abstractmethod
    def write(self, data: bytes | memoryview) -> int: ...

    @abstractmethod
    def commit(self) -> None:
        """Make the archive visible under its name."""

    @abstractmethod
    def abort(self) -> None:
        """Leave nothing behind."""


class ChunkReader:
    """A file-like reader over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size if size >= 0 else float("inf")
        while wanted > 0:
            if self._offset >= len(self._pending):
                self._pending = next(self._chunks, b"")
                self._offset = 0
                if not self._pending:
                    break
            take = int(min(wanted, len(self._pending) - self._offset))
            parts.append(self._pending[self._offset:self._offset + take])
            self._offset += take
            wanted -= take
        return b"".join(parts)

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class Location(ABC):
    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def archives(self) -> list[ArchiveInfo]:
        """The complete archives here, oldest first."""

    @abstractmethod
    def create(self, name: str) -> Sink: ...

    @abstractmethod
    def open(self, name: str) -> tuple[Any, int]:
        """A reader of the archive (``read``, ``close``) and its size; BackupError when missing."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def partials(self) -> list[PartialArchive]:
        """The archives being written or left half-written here, oldest first."""

    @abstractmethod
    def remove_partials(self) -> list[str]:
        """Remove the archives that backups which died left half-written, never one a running
        backup writes (on S3: every upload begun before this call); their names."""

    def archive_keys_in(self, objects: ObjectStore) -> Callable[[str], bool]:
        """Which keys of the object store are this location's archives (a backup must neither copy
        nor wipe its own archives when they live in the store it backs up)."""
        return lambda key: False

    def new_name(self, when: datetime, encrypted: bool) -> str:
        taken = {info.name for info in self.archives()}
        sequence = 0
        while (name := archive_name(when, encrypted, sequence)) in taken:
            sequence += 1
        return name

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` archives; return the names deleted."""
        if keep < 1:
            raise BackupError("--keep must be at least 1 (prune never deletes the newest archive)")
        doomed = [info.name for info in self.archives()][:-keep]
        for name in doomed:
            self.delete(name)
        return doomed


def _sorted(infos: list[ArchiveInfo]) -> list[ArchiveInfo]:
    return sorted(infos, key=lambda info: name_order(info.name))


class FileSink(Sink):
    def __init__(self, folder: Path, name: str) -> None:
        self._final = folder / name
        self._partial = folder / f"{PARTIAL_PREFIX}{name}{PARTIAL_SUFFIX}"
        fd = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until closed or the process dies: see remove_partials
        self._file = os.fdopen(fd, "wb", buffering=1024 * 1024)

    def write(self, data: bytes | memoryview) -> int:
        self._file.write(data)
        self.size += len(data)
        return len(data)

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._partial, self._final)
        dir_fd = os.open(self._final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


class DirectoryLocation(Location):
    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    def archives(self) -> list[ArchiveInfo]:
        if not self.path.is_dir():
            return []
        found = []
        for entry in os.scandir(self.path):
            if NAME.match(entry.name) and entry.is_file():
                st = entry.stat()
                found.append(ArchiveInfo(entry.name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        return _sorted(found)

    def create(self, name: str) -> Sink:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            return FileSink(self.path, name)
        except OSError as exc:
            raise BackupError(f"cannot write archives into {self.path} ({exc.strerror or exc}); "
                              "choose another --to or make it writable by this user") from None

    def open(self, name: str) -> tuple[Any, int]:
        path = self.path / name
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            raise BackupError(f"there is no archive {path}; see 'confmeet backup list'") from None
        except OSError as exc:
            raise BackupError(f"cannot read {path} ({exc.strerror or exc})") from None
        return fh, os.fstat(fh.fileno()).st_size

    def delete(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def _partial_paths(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return [self.path / entry.name for entry in os.scandir(self.path)
                if entry.name.startswith(PARTIAL_PREFIX) and entry.name.endswith(PARTIAL_SUFFIX)
                and NAME.match(entry.name[len(PARTIAL_PREFIX):-len(PARTIAL_SUFFIX)]) and entry.is_file()]

    def partials(self) -> list[PartialArchive]:
        found = []
        for path in self._partial_paths():
            try:
                st = path.stat()
                with path.open("rb") as fh:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                        abandoned = True
                    except BlockingIOError:
                        abandoned = False
            except FileNotFoundError:  # completed or removed meanwhile
                continue
            name = path.name[len(PARTIAL_PREFIX):-len(PARTIAL_SUFFIX)]
            found.append(PartialArchive(name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC), abandoned))
        return sorted(found, key=lambda partial: name_order(partial.name))

    def remove_partials(self) -> list[str]:
        removed = remove_abandoned(self._partial_paths())
        return sorted((path.name[len(PARTIAL_PREFIX):-len(PARTIAL_SUFFIX)] for path in removed), key=name_order)

    def archive_keys_in(self, objects: ObjectStore) -> Callable[[str], bool]:
        if not isinstance(objects, FileObjects):
            return super().archive_keys_in(objects)
        try:
            inside = self.path.resolve().relative_to((objects.root / "data").resolve())
        except ValueError:
            return super().archive_keys_in(objects)
        return _archive_keys(f"{inside.as_posix()}/" if inside.parts else "")


def _archive_keys(prefix: str) -> Callable[[str], bool]:
    return lambda key: key.startswith(prefix) and NAME.match(key[len(prefix):]) is not None


class Pipe:
    """Bytes written on one thread and read on another, at most ``limit`` of them in between."""

    def __init__(self, limit: int = PIPE_BYTES) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._closed = False
        self._failed: BaseException | None = None
        self._cond = threading.Condition()

    def write(self, data: bytes | memoryview) -> int:
        with self._cond:
            while self._buffered >= self._limit and self._failed is None:
                self._cond.wait()
            if self._failed is not None:
                raise BackupError(f"the upload stopped: {self._failed}")
            self._chunks.append(bytes(data))
            self._buffered += len(data)
            self._cond.notify_all()
        return len(data)

    def read(self, size: int = -1) -> bytes:
        with self._cond:
            while not self._chunks and not self._closed and self._failed is None:
                self._cond.wait()
            if self._failed is not None:
                raise OSError(f"archive stream aborted: {self._failed}")
            out = bytearray()
            while self._chunks and (size < 0 or len(out) < size):
                chunk = self._chunks[0]
                take = len(chunk) if size < 0 else min(len(chunk), size - len(out))
                out += chunk[:take]
                if take == len(chunk):
                    self._chunks.pop(0)
                else:
                    self._chunks[0] = chunk[take:]
            self._buffered -= len(out)
            self._cond.notify_all()
            return bytes(out)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def fail(self, reason: BaseException) -> None:
        with self._cond:
            if self._failed is None:
                self._failed = reason
            self._cond.notify_all()


class S3Sink(Sink):
    def __init__(self, location: S3Location, name: str) -> None:
        self._location = location
        self._pipe = Pipe()
        self._future = location.portal.submit(
            location.store.put(name, self._pipe, content_type="application/x-tar"))
        self._future.add_done_callback(self._upload_ended)

    def _upload_ended(self, future: Any) -> None:
        if future.cancelled():
            self._pipe.fail(BackupError("cancelled"))
        elif future.exception() is not None:
            self._pipe.fail(future.exception())

    def write(self, data: bytes | memoryview) -> int:
        self._pipe.write(data)
        self.size += len(data)
        return len(data)

    def commit(self) -> None:
        self._pipe.close()
        try:
            self._future.result()
        except Exception as exc:
            raise BackupError(f"uploading the archive to {self._location.describe()} failed: {exc}") from None

    def abort(self) -> None:
        self._pipe.fail(BackupError("the backup was aborted"))
        try:
            self._future.result()
        except Exception:
            pass  # the multipart upload is aborted with it: nothing is left in the bucket


class S3Location(Location):
    def __init__(self, url: str, portal: Portal) -> None:
        self.url = url
        self.portal = portal
        try:
            self.store = S3Objects(url)
            portal.call(self.store.open())
        except StoreUnavailable as exc:
            raise BackupError(str(exc).replace("'objects' URL", "backup location")) from None

    def describe(self) -> str:
        return mask_url_password(self.url)

    def archives(self) -> list[ArchiveInfo]:
        return _sorted([ArchiveInfo(info.key, info.size, info.modified)
                        for info in self.portal.iterate(self.store.list(""), 500)
                        if NAME.match(info.key)])

    def create(self, name: str) -> Sink:
        return S3Sink(self, name)

    def open(self, name: str) -> tuple[Any, int]:
        info = self.portal.call(self.store.stat(name))
        if info is None:
            raise BackupError(f"there is no archive {name} in {self.describe()}; see 'confmeet backup list'")
        return ChunkReader(self.portal.iterate(self.store.get(name))), info.size

    def delete(self, name: str) -> None:
        self.portal.call(self.store.delete(name))

    def partials(self) -> list[PartialArchive]:
        uploads = self.portal.call(self.store.partial_writes(""))
        return sorted((PartialArchive(key, None, begun, None) for key, begun in uploads if NAME.match(key)),
                      key=lambda partial: name_order(partial.name))

    def remove_partials(self) -> list[str]:
        names = [partial.name for partial in self.partials()]
        for name in names:
            self.portal.call(self.store.remove_partial_writes(name))
        return names

    def archive_keys_in(self, objects: ObjectStore) -> Callable[[str], bool]:
        if (isinstance(objects, S3Objects) and objects.endpoint == self.store.endpoint
                and objects.bucket == self.store.bucket and self.store.prefix.startswith(objects.prefix)):
            return _archive_keys(self.store.prefix[len(objects.prefix):])
        return super().archive_keys_in(objects)


def default_location(settings: Settings) -> str:
    return str(settings.data_dir / "backups")


def location_url(spec: str, settings: Settings) -> str:
    """The full S3 URL for ``s3://BUCKET/PREFIX`` (endpoint and keys from the objects setting)."""
    parts = urlsplit(spec)
    if "@" in parts.netloc:
        return spec
    objects = urlsplit(settings.objects_url)
    if objects.scheme != "s3":
        raise BackupError(
            f"{spec} names no S3 server, and the 'objects' setting is not S3 to borrow one from; "
            "give s3://KEY:SECRET@HOST:PORT/BUCKET/PREFIX")
    return urlunsplit(("s3", objects.netloc, f"/{parts.netloc}{parts.path}", objects.query, ""))


def open_location(spec: str, settings: Settings, portal: Portal) -> Location:
    if spec.startswith("s3://"):
        return S3Location(location_url(spec, settings), portal)
    if "://" in spec:
        raise BackupError(f"{mask_url_password(spec)}: give a directory or s3://BUCKET/PREFIX")
    return DirectoryLocation(Path(spec).expanduser())


def split_archive(spec: str) -> tuple[str, str]:
    """(location, archive name) of an archive path or S3 URL."""
    if spec.startswith("s3://"):
        parts = urlsplit(spec)
        folder, _, name = parts.path.rpartition("/")
        return urlunsplit(parts._replace(path=folder)), name
    path = Path(spec).expanduser()
    return str(path.parent), path.name
