"""The object store: named byte streams (recordings, uploads, backups).

``file:///PATH`` keeps objects as files under a directory; ``s3://KEY:SECRET@HOST:PORT/BUCKET[/PREFIX]``
keeps them in an S3 bucket (MinIO in production) through the minio SDK. Objects are streamed in
both directions, never held in memory whole, and every blocking call runs on a thread.

A key is a relative, slash-separated path such as ``recordings/2024/ab12/audio.ogg``. Empty keys,
a leading, trailing or doubled slash, "." parts, "..", backslashes and NUL are refused with
ValueError, so that no key can leave the file store's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import io
import itertools
import json
import os
import tempfile
import threading
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO, Protocol, TypeVar

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error
from minio.helpers import check_bucket_name

from ..settings import mask_url_password
from .errors import StoreUnavailable
from .urls import local_path, parse_s3, scheme

T = TypeVar("T")

CHUNK = 1024 * 1024
PART_SIZE = 10 * 1024 * 1024
LIST_BATCH = 500

Source = BinaryIO | AsyncIterator[bytes] | bytes


class ObjectNotFound(KeyError):
    """No object has that key."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object."""

    key: str
    size: int
    etag: str  # changes whenever the content does: a sha256 (file store) or the S3 ETag
    modified: datetime  # timezone-aware, UTC
    content_type: str | None = None  # None in list() results, which S3 listings do not carry


def check_key(key: str) -> str:
    if (not isinstance(key, str) or not key or key.startswith("/") or ".." in key
            or "\\" in key or "\0" in key or any(part in ("", ".") for part in key.split("/"))):
        raise ValueError(f"{key!r} is not a valid object key (a relative path like 'recordings/a.ogg')")
    return key


def check_prefix(prefix: str) -> str:
    """A list() prefix: empty, or a key, or a key followed by one slash."""
    if prefix:
        check_key(prefix.removesuffix("/"))
    return prefix


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class AsyncSourceReader:
    """A blocking reader over an async byte iterator, for code running on a thread.

    Each read asks the event loop for the next chunk, so no more than one chunk waits here.
    """

    def __init__(self, source: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._source = source
        self._loop = loop
        self._pending = b""

    async def _next_chunk(self) -> bytes:
        """The next non-empty chunk of the source, or b"" at its end."""
        while True:
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                return b""
            if chunk:
                return bytes(chunk)

    def read(self, size: int, /) -> bytes:
        parts: list[bytes] = []
        while size > 0:
            if not self._pending:
                self._pending = asyncio.run_coroutine_threadsafe(self._next_chunk(), self._loop).result()
                if not self._pending:
                    break
            part, self._pending = self._pending[:size], self._pending[size:]
            parts.append(part)
            size -= len(part)
        return b"".join(parts)


def readable(source: Source) -> Readable:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source)
    if hasattr(source, "read"):
        return source
    return AsyncSourceReader(source, asyncio.get_running_loop())


async def iterate_on_thread(items: Generator[T, None, None], batch: int) -> AsyncIterator[T]:
    """Advance a blocking generator on a thread, ``batch`` items at a time. Closing it (the
    consumer stopped, or was cancelled) waits for a batch still being read on its thread."""
    turn = threading.Lock()

    def advance() -> list[T]:
        with turn:
            return list(itertools.islice(items, batch))

    def close() -> None:
        with turn:
            items.close()

    try:
        while chunk := await asyncio.to_thread(advance):
            for item in chunk:
                yield item
    finally:
        await asyncio.to_thread(close)


class ObjectStore(ABC):
    """Objects under keys; see the module docstring for what a key may be."""

    kind: str
    url: str

    def describe(self) -> str:
        """The store's URL with any secret masked."""
        return mask_url_password(self.url)

    @abstractmethod
    async def open(self) -> None:
        """Create the directory or bucket if missing; raise StoreUnavailable with the fix when the
        store cannot be reached or used."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be used."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def put(self, key: str, source: Source, *, length: int | None = None,
                  content_type: str = "application/octet-stream") -> ObjectInfo:
        """Store the bytes of ``source`` under ``key``, replacing any object there. With ``length``
        given, only that many bytes are stored, and a source that ends sooner raises OSError.
        Readers never see a half-written object."""

    @abstractmethod
    def get(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks of about 1 MiB: ``async for chunk in store.get(key)``.
        Iterating raises ObjectNotFound when there is no such object."""

    @abstractmethod
    async def stat(self, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Delete an object; a missing one is fine."""

    @abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, at any depth, sorted by key."""

    @abstractmethod
    async def presigned_get(self, key: str, expires: timedelta) -> str | None:
        """A URL that downloads the object without credentials until ``expires`` has passed, or
        None when the store has no such URLs (the appliance then serves the object itself)."""

    @abstractmethod
    async def remove_partial_writes(self, prefix: str = "", begun_before: datetime | None = None) -> int:
        """Remove what puts of keys under ``prefix`` left when their process died: never visible
        to readers, they only take space. S3 aborts the multipart uploads begun before
        ``begun_before`` (default: this call; nodes sharing the bucket give an earlier time, since
        another node may be writing); the file store removes the temporary files no process is
        writing any more (they carry no key, so whatever the prefix). Returns how many were removed."""


class FileObjects(ObjectStore):
    """Objects as files under a directory: ``data/<key>`` holds the bytes, ``meta/<key>`` their
    content type and sha256, and ``tmp/`` the files being written, which are renamed into place
    when complete. A writer holds a lock on its temporary file until then, so that one a dead
    process left is told apart from one being written. A key cannot be both an object and the
    folder of others ("a" and "a/b")."""

    kind = "file"

    def __init__(self, url: str) -> None:
        self.url = url
        self.root = local_path(url)
        self._data = self.root / "data"
        self._meta = self.root / "meta"
        self._tmp = self.root / "tmp"

    def _open(self) -> None:
        for folder in (self._data, self._meta, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._open)
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot use the object store directory {self.root} ({exc}); make it writable by "
                "the confmeet user or fix the 'objects' URL"
            ) from None

    async def ping(self) -> None:
        if not await asyncio.to_thread(os.access, self._data, os.W_OK | os.X_OK):
            raise StoreUnavailable(f"the object store directory {self._data} is missing or not writable")

    async def close(self) -> None:
        """Nothing to release: files are opened per call."""

    def _info(self, key: str, st: os.stat_result, *, listing: bool) -> ObjectInfo:
        meta = json.loads((self._meta / key).read_text())
        return ObjectInfo(key=key, size=st.st_size, etag=meta["sha256"],
                          modified=datetime.fromtimestamp(st.st_mtime, UTC),
                          content_type=None if listing else meta["content_type"])

    @contextlib.contextmanager
    def _write_temp(self, write: Callable[[BinaryIO], None]) -> Generator[str, None, None]:
        """A new file in tmp/ holding what ``write`` wrote, flushed to disk: its path, locked
        (see remove_partial_writes) and removed when the block ends unless moved into place."""
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when the file is closed, or its writer dies
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
                yield tmp
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _move_into_place(self, tmp: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)

    def _put(self, key: str, source: Readable, length: int | None, content_type: str) -> ObjectInfo:
        digest = hashlib.sha256()

        def copy(out: BinaryIO) -> None:
            copied = 0
            while length is None or copied < length:
                chunk = source.read(CHUNK if length is None else min(CHUNK, length - copied))
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
                copied += len(chunk)
            if length is not None and copied < length:
                raise OSError(f"the source for {key!r} ended after {copied} of length={length} bytes")

        with self._write_temp(copy) as data:
            meta = json.dumps({"content_type": content_type, "sha256": digest.hexdigest()}).encode()
            with self._write_temp(lambda out: out.write(meta)) as meta_file:
                self._move_into_place(meta_file, self._meta / key)
            self._move_into_place(data, self._data / key)
        return self._info(key, (self._data / key).stat(), listing=False)

    async def put(self, key: str, source: Source, *, length: int | None = None,
                  content_type: str = "application/octet-stream") -> ObjectInfo:
        check_key(key)
        return await asyncio.to_thread(self._put, key, readable(source), length, content_type)

    def _open_object(self, key: str) -> BinaryIO:
        try:
            return (self._data / key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    async def get(self, key: str) -> AsyncIterator[bytes]:
        fh = await asyncio.to_thread(self._open_object, check_key(key))
        async for chunk in iterate_on_thread(read_chunks(fh), 1):
            yield chunk

    def _stat(self, key: str) -> ObjectInfo | None:
        try:
            st = (self._data / key).stat()
            return self._info(key, st, listing=False) if S_ISREG(st.st_mode) else None
        except (FileNotFoundError, NotADirectoryError):
            return None

    async def stat(self, key: str) -> ObjectInfo | None:
        return await asyncio.to_thread(self._stat, check_key(key))

    def _delete(self, key: str) -> None:
        for path in (self._data / key, self._meta / key):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
                path.unlink()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, check_key(key))

    def _walk(self, folder: Path, base: str, prefix: str) -> Generator[ObjectInfo, None, None]:
        """Objects under ``folder`` (whose keys start with ``base``) matching ``prefix``, in key
        order: a folder sorts as its name plus "/", as the keys inside it do."""
        try:
            entries = sorted((entry.name + "/" if entry.is_dir() else entry.name, entry)
                             for entry in os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        for name, entry in entries:
            key = base + name
            if name.endswith("/"):
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(Path(entry.path), key, prefix)
            elif key.startswith(prefix):
                yield self._info(key, entry.stat(), listing=True)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        folder = check_prefix(prefix).rpartition("/")[0]
        base = f"{folder}/" if folder else ""
        async for info in iterate_on_thread(self._walk(self._data / folder, base, prefix), LIST_BATCH):
            yield info

    async def presigned_get(self, key: str, expires: timedelta) -> str | None:
        check_key(key)
        return None

    async def remove_partial_writes(self, prefix: str = "", begun_before: datetime | None = None) -> int:
        check_prefix(prefix)  # a writer's lock tells a live write, whenever it began
        return len(await asyncio.to_thread(remove_abandoned, self._tmp.glob("*")))


def remove_abandoned(paths: Iterable[Path]) -> list[Path]:
    """Delete the files among ``paths`` that no process holds a lock on (their writer died); those."""
    removed = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError):
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # being written
        else:
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def read_chunks(fh: BinaryIO) -> Generator[bytes, None, None]:
    with fh:
        while chunk := fh.read(CHUNK):
            yield chunk


class S3Objects(ObjectStore):
    """Objects in an S3 bucket, under an optional key prefix.

    URL: ``s3://ACCESS:SECRET@HOST:PORT/BUCKET[/PREFIX]?secure=false&region=us-east-1``, with the
    access key and secret URL-quoted. The region is always sent (default us-east-1), which spares
    a bucket-location request per bucket.
    """

    kind = "s3"

    def __init__(self, url: str) -> None:
        self.url = url
        where = parse_s3(url)
        self.bucket, self.prefix, self.endpoint = where.bucket, where.prefix, where.endpoint
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        try:
            check_bucket_name(self.bucket, strict=True)
            self._client = Minio(where.host, access_key=where.access_key, secret_key=where.secret_key,
                                 secure=where.secure, region=where.region, http_client=self._http)
        except ValueError as exc:
            raise StoreUnavailable(
                f"objects URL {self.describe()}: {exc}; use s3://ACCESS:SECRET@HOST:PORT/BUCKET"
            ) from None

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _open(self) -> None:
        if not self._client.bucket_exists(self.bucket):
            self._client.make_bucket(self.bucket)

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._open)
        except S3Error as exc:
            raise StoreUnavailable(
                f"S3 at {self.endpoint} refused bucket {self.bucket!r} ({exc.code}: {exc.message}); "
                "check the access key and secret in the 'objects' URL and that they may use the bucket"
            ) from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(
                f"cannot reach S3 at {self.endpoint} for {self.describe()} ({exc}); start MinIO or "
                "fix the 'objects' URL (host, port, secure=true|false)"
            ) from None

    async def ping(self) -> None:
        if not await asyncio.to_thread(self._client.bucket_exists, self.bucket):
            raise StoreUnavailable(f"the bucket {self.bucket!r} at {self.endpoint} is gone")

    async def close(self) -> None:
        self._http.clear()

    def _put(self, key: str, source: Readable, length: int | None, content_type: str) -> ObjectInfo:
        self._client.put_object(self.bucket, self._name(key), source, -1 if length is None else length,
                                content_type=content_type, part_size=PART_SIZE if length is None else 0)
        return self._head(key)

    async def put(self, key: str, source: Source, *, length: int | None = None,
                  content_type: str = "application/octet-stream") -> ObjectInfo:
        check_key(key)
        if isinstance(source, (bytes, bytearray, memoryview)) and length is None:
            length = len(source)
        return await asyncio.to_thread(self._put, key, readable(source), length, content_type)

    def _read(self, key: str) -> Generator[bytes, None, None]:
        response = self._client.get_object(self.bucket, self._name(key))
        try:
            yield from response.stream(CHUNK)
        finally:
            response.close()
            response.release_conn()

    async def get(self, key: str) -> AsyncIterator[bytes]:
        # A HEAD first: the minio SDK cannot parse the error body some S3 servers (rclone) send
        # for a GET of a missing key, while a HEAD's 404 needs no body.
        if await self.stat(key) is None:
            raise ObjectNotFound(key)
        async for chunk in iterate_on_thread(self._read(key), 1):
            yield chunk

    def _head(self, key: str) -> ObjectInfo:
        st = self._client.stat_object(self.bucket, self._name(key))
        return ObjectInfo(key=key, size=st.size or 0, etag=st.etag or "",
                          modified=st.last_modified or datetime.now(UTC), content_type=st.content_type)

    def _stat(self, key: str) -> ObjectInfo | None:
        try:
            return self._head(key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise

    async def stat(self, key: str) -> ObjectInfo | None:
        check_key(key)
        return await asyncio.to_thread(self._stat, key)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._client.remove_object, self.bucket, self._name(key))

    def _list(self, prefix: str) -> Generator[ObjectInfo, None, None]:
        for obj in self._client.list_objects(self.bucket, prefix=self.prefix + prefix, recursive=True):
            yield ObjectInfo(key=(obj.object_name or "").removeprefix(self.prefix), size=obj.size or 0,
                             etag=obj.etag or "", modified=obj.last_modified or datetime.now(UTC))

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        async for info in iterate_on_thread(self._list(check_prefix(prefix)), LIST_BATCH):
            yield info

    async def presigned_get(self, key: str, expires: timedelta) -> str | None:
        return self._client.presigned_get_object(self.bucket, self._name(key), expires=expires)

    def _uploads(self, prefix: str) -> Generator[tuple[str, str, datetime], None, None]:
        """The multipart uploads under the bucket-level ``prefix`` as (name, upload id, begun),
        walked one level at a time (delimiter "/"), which every S3 server answers alike."""
        markers: dict[str, str] = {}
        while True:
            try:
                response = self._client._execute("GET", self.bucket, query_params={
                    "uploads": "", "prefix": prefix, "delimiter": "/", **markers})
            except (S3Error, InvalidResponseError) as exc:
                # rclone answers a bucket without any upload with NoSuchUpload (in a body the
                # SDK cannot parse): no upload, as S3 itself says with an empty list.
                if getattr(exc, "code", None) == "NoSuchUpload" or "<Code>NoSuchUpload</Code>" in str(exc):
                    return
                raise
            root = ET.fromstring(response.data)
            for element in root.iter():
                element.tag = element.tag.rpartition("}")[2]  # AWS and MinIO answer in a namespace
            for upload in root.findall("Upload"):
                begun = datetime.fromisoformat(upload.findtext("Initiated", "").replace("Z", "+00:00"))
                yield upload.findtext("Key", ""), upload.findtext("UploadId", ""), begun
            for common in root.findall("CommonPrefixes"):
                yield from self._uploads(common.findtext("Prefix", ""))
            if root.findtext("IsTruncated") != "true":
                return
            markers = {"key-marker": root.findtext("NextKeyMarker", ""),
                       "upload-id-marker": root.findtext("NextUploadIdMarker", "")}

    async def partial_writes(self, prefix: str = "") -> list[tuple[str, datetime]]:
        """The puts under ``prefix`` under way or left by a process that died (multipart uploads
        neither completed nor aborted): (key, begun)."""
        uploads = await asyncio.to_thread(lambda: list(self._uploads(self.prefix + check_prefix(prefix))))
        return [(name.removeprefix(self.prefix), begun) for name, _, begun in uploads]

    def _remove_partial_writes(self, prefix: str, begun_before: datetime | None) -> int:
        cutoff = begun_before or datetime.now(UTC)
        doomed = [(name, upload) for name, upload, begun in self._uploads(self.prefix + prefix) if begun < cutoff]
        for name, upload in doomed:
            self._client._abort_multipart_upload(self.bucket, name, upload)
        return len(doomed)

    async def remove_partial_writes(self, prefix: str = "", begun_before: datetime | None = None) -> int:
        return await asyncio.to_thread(self._remove_partial_writes, check_prefix(prefix), begun_before)


def open_objects(url: str) -> ObjectStore:
    """The object store a URL names (not yet opened)."""
    kind = scheme(url)
    if kind == "file":
        return FileObjects(url)
    if kind == "s3":
        return S3Objects(url)
    raise StoreUnavailable(
        f"objects URL {mask_url_password(url)!r}: use file:///PATH or "
        "s3://ACCESS:SECRET@HOST:PORT/BUCKET[/PREFIX]?secure=false")
