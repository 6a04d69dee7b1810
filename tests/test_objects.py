"""The object store, each test run against a directory and a real S3 server (rclone serve s3)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from appliance.stores.errors import StoreUnavailable
from appliance.stores.objects import CHUNK, FileObjects, ObjectNotFound, ObjectStore, iterate_on_thread, open_objects

MiB = 1024 * 1024


@pytest.fixture(params=["file", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    url = f"file://{tmp_path / 'objects'}" if request.param == "file" else request.getfixturevalue("s3_url")
    objects = open_objects(url)
    assert objects.kind == request.param
    await objects.open()
    yield objects
    await objects.close()


async def read_all(store: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.get(key)])


async def keys(store: ObjectStore, prefix: str = "") -> list[str]:
    return [info.key async for info in store.list(prefix)]


async def test_put_bytes_then_stat_and_get(store: ObjectStore) -> None:
    before = datetime.now(UTC) - timedelta(seconds=2)
    info = await store.put("uploads/slides.pdf", b"%PDF-1.7 slides", content_type="application/pdf")
    assert (info.key, info.size, info.content_type) == ("uploads/slides.pdf", 15, "application/pdf")
    assert info.etag and before <= info.modified <= datetime.now(UTC) + timedelta(seconds=2)
    assert await store.stat("uploads/slides.pdf") == info
    assert await read_all(store, "uploads/slides.pdf") == b"%PDF-1.7 slides"

    empty = await store.put("empty", b"")
    assert (empty.size, empty.content_type) == (0, "application/octet-stream")
    assert await read_all(store, "empty") == b""


async def test_put_from_file_objects(store: ObjectStore, tmp_path: Path) -> None:
    payload = random.Random(7).randbytes(3 * MiB + 123)
    source = tmp_path / "upload.bin"
    source.write_bytes(payload)
    with source.open("rb") as fh:
        info = await store.put("a/known-length", fh, length=len(payload))
    assert info.size == len(payload)
    with source.open("rb") as fh:
        info = await store.put("a/unknown-length", fh)
    assert info.size == len(payload)
    assert await read_all(store, "a/unknown-length") == payload

    chunks = [chunk async for chunk in store.get("a/known-length")]
    assert b"".join(chunks) == payload
    assert len(chunks) >= 4 and max(map(len, chunks)) <= CHUNK, "get streams chunks of at most 1 MiB"

    assert (await store.put("a/first-ten", io.BytesIO(payload), length=10)).size == 10
    assert await read_all(store, "a/first-ten") == payload[:10]
    with pytest.raises(OSError):
        await store.put("a/short", io.BytesIO(b"12345"), length=10)
    assert await store.stat("a/short") is None


async def test_put_streams_an_async_iterator_of_unknown_length(store: ObjectStore) -> None:
    total, block = 25 * MiB, 64 * 1024
    rng = random.Random(25)
    sent = hashlib.sha256()
    produced = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(total // block):
            chunk = rng.randbytes(block)
            sent.update(chunk)
            produced += len(chunk)
            yield chunk
            yield b""  # empty chunks are not the end

    info = await store.put("recordings/r1/video.webm", source(), content_type="video/webm")
    assert produced == total
    assert (info.size, info.content_type) == (total, "video/webm")
    received = hashlib.sha256()
    async for chunk in store.get("recordings/r1/video.webm"):
        assert len(chunk) <= CHUNK
        received.update(chunk)
    assert received.hexdigest() == sent.hexdigest()


async def test_a_put_in_progress_is_invisible(store: ObjectStore) -> None:
    await store.put("doc", b"old version")
    halfway, finish = asyncio.Event(), asyncio.Event()

    async def source() -> AsyncIterator[bytes]:
        yield b"new "
        halfway.set()
        await finish.wait()
        yield b"version"

    upload = asyncio.create_task(store.put("doc", source()))
    await halfway.wait()
    await asyncio.sleep(0.2)
    assert await read_all(store, "doc") == b"old version"
    assert await store.put("other", b"the loop is not blocked") is not None
    finish.set()
    info = await upload
    assert info.size == 11
    assert await read_all(store, "doc") == b"new version"
    assert await keys(store) == ["doc", "other"]


async def test_overwrite_changes_the_etag(store: ObjectStore) -> None:
    first = await store.put("k", b"one")
    second = await store.put("k", b"two!", content_type="text/plain")
    assert first.etag != second.etag
    assert (second.size, second.content_type) == (4, "text/plain")
    assert await store.stat("k") == second


async def test_list_is_recursive_sorted_and_filtered_by_prefix(store: ObjectStore) -> None:
    sizes = {"b/x": 5, "a/d": 4, "a.txt": 1, "a/b/c.bin": 3, "ab": 6, "a/b.txt": 2, "c/d/e/f/g": 7}
    for key, size in sizes.items():
        await store.put(key, b"x" * size)

    listed = [info async for info in store.list()]
    assert [info.key for info in listed] == sorted(sizes)
    assert all(info.size == sizes[info.key] and info.etag and info.content_type is None for info in listed)
    assert await keys(store, "a/") == ["a/b.txt", "a/b/c.bin", "a/d"]
    assert await keys(store, "a/b") == ["a/b.txt", "a/b/c.bin"]
    assert await keys(store, "a") == ["a.txt", "a/b.txt", "a/b/c.bin", "a/d", "ab"]
    assert await keys(store, "c/d/") == ["c/d/e/f/g"]
    assert await keys(store, "zzz/") == []
    assert await keys(store, "a/b/c.bin") == ["a/b/c.bin"]


async def test_delete_and_missing_keys(store: ObjectStore) -> None:
    await store.put("rec/1", b"one")
    await store.put("rec/2", b"two")
    await store.delete("rec/1")
    await store.delete("rec/1")
    await store.delete("never/was")
    if store.kind == "file":  # rclone serve s3 answers 500 to deleting a key that is one of its folders
        await store.delete("rec")
    assert await store.stat("rec/1") is None
    assert await store.stat("rec") is None, "a folder is not an object"
    assert await keys(store) == ["rec/2"]
    with pytest.raises(ObjectNotFound):
        await read_all(store, "rec/1")
    with pytest.raises(KeyError):
        await read_all(store, "rec")


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../escape", "a/../../b", "a/..", "a\\b", "a\0b",
                                 "a//b", "a/", "./a", "a/./b"])
async def test_bad_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        await store.put(key, b"x")
    with pytest.raises(ValueError):
        await store.stat(key)
    with pytest.raises(ValueError):
        await read_all(store, key)
    with pytest.raises(ValueError):
        await store.delete(key)
    with pytest.raises(ValueError):
        await store.presigned_get(key, timedelta(minutes=1))


@pytest.mark.parametrize("prefix", ["/", "../", "a//", "a/../"])
async def test_bad_list_prefixes_are_refused(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ValueError):
        await keys(store, prefix)


async def test_presigned_get(store: ObjectStore) -> None:
    payload = random.Random(3).randbytes(2 * MiB)
    await store.put("exports/meeting.mp4", payload, content_type="video/mp4")
    url = await store.presigned_get("exports/meeting.mp4", timedelta(minutes=5))
    if store.kind == "file":
        assert url is None, "the appliance serves file-store objects itself"
        return
    assert url is not None and "X-Amz-Signature=" in url
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
        assert response.status_code == 200
        assert response.content == payload
        assert response.headers["content-type"] == "video/mp4"
        tampered = await client.get(url.replace("exports/meeting.mp4", "exports/other.mp4"))
        assert tampered.status_code == 403


async def test_ping_and_describe(store: ObjectStore) -> None:
    await store.ping()
    assert store.describe().startswith(f"{store.kind}://")
    assert "confmeet-test-secret" not in store.describe()


async def test_file_store_keeps_everything_under_its_root(tmp_path: Path) -> None:
    objects = FileObjects(f"file://{tmp_path / 'root'}")
    await objects.open()
    await objects.put("x/y.ogg", b"audio", content_type="audio/ogg")
    inside = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert inside == ["root/data/x/y.ogg", "root/meta/x/y.ogg"]
    reopened = open_objects(f"file://{tmp_path / 'root'}")
    await reopened.open()
    assert (await reopened.stat("x/y.ogg")).content_type == "audio/ogg"


async def test_file_store_on_an_unusable_path_raises_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="writable by the confmeet user"):
        await open_objects(f"file://{tmp_path / 'a-file' / 'objects'}").open()


async def test_s3_prefix_keeps_keys_under_it(s3_url: str) -> None:
    scoped = open_objects(f"{s3_url}/site-a/objects/")
    await scoped.open()
    whole = open_objects(s3_url)
    await whole.open()
    await scoped.put("rec/1.webm", b"one")
    await whole.put("rec/2.webm", b"two")
    assert await keys(scoped) == ["rec/1.webm"]
    assert await keys(whole) == ["rec/2.webm", "site-a/objects/rec/1.webm"]
    assert await read_all(whole, "site-a/objects/rec/1.webm") == b"one"
    assert (await scoped.stat("rec/1.webm")).key == "rec/1.webm"
    await scoped.close()
    await whole.close()


async def test_s3_wrong_credentials_raise_store_unavailable(s3_server: dict) -> None:
    url = f"s3://{s3_server['key']}:bad%2Fsecret@127.0.0.1:{s3_server['port']}/b-wrong-credentials"
    objects = open_objects(url)
    with pytest.raises(StoreUnavailable) as caught:
        await objects.open()
    message = str(caught.value)
    assert f"http://127.0.0.1:{s3_server['port']}" in message and "AccessDenied" in message
    assert "check the access key and secret" in message and "secret@" not in message


async def test_s3_unreachable_raises_store_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    objects = open_objects(f"s3://key:very-secret@127.0.0.1:{port}/bucket")
    with pytest.raises(StoreUnavailable) as caught:
        await objects.open()
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "start MinIO" in message
    assert "very-secret" not in message


@pytest.mark.parametrize(("option", "https"), [("secure=1", True), ("secure=TRUE", True), ("secure=on", True),
                                               ("secure=yes", True), ("secure=false", False), ("", False)])
def test_the_store_and_confmeet_status_read_secure_alike(option: str, https: bool) -> None:
    """One URL, one meaning: the store and the status probe both speak HTTPS for secure=1, true,
    yes or on (the probe once took only "secure=true")."""
    from appliance.machine.probes import probe_objects, timed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"s3://key:secret@127.0.0.1:{port}/bucket?{option}"
    assert open_objects(url).endpoint == f"{'https' if https else 'http'}://127.0.0.1:{port}"  # type: ignore[attr-defined]
    probe = timed(lambda: probe_objects(url))
    assert probe.state == "down" and probe.detail.startswith("HTTPSConnectionPool" if https else "HTTPConnectionPool")


@pytest.mark.parametrize("url", ["ftp://host/x", "s3://k:s@127.0.0.1:9000/", "s3://k:s@127.0.0.1:9000/Bad_Bucket"])
def test_bad_urls_raise_store_unavailable(url: str) -> None:
    with pytest.raises(StoreUnavailable, match="file:///PATH|s3://ACCESS:SECRET@HOST:PORT/BUCKET"):
        open_objects(url)


async def test_a_read_cancelled_mid_chunk_closes_its_source_once_the_chunk_is_read() -> None:
    """A download whose client goes away while a chunk is read on the thread (the response task is
    cancelled): the source is closed after that read, never during it."""
    closed = []

    def slow_source() -> Iterator[bytes]:
        try:
            while True:
                time.sleep(0.3)
                yield b"chunk"
        finally:
            closed.append(True)

    async def consume() -> None:
        async for _ in iterate_on_thread(slow_source(), 1):
            pass

    task = asyncio.get_running_loop().create_task(consume())
    await asyncio.sleep(0.45)  # the second chunk is being read
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [True]
