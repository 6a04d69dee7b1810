"""Uploading finished recordings from the local spool to the object store, until it works.

A recording's files stay in ``<data_dir>/recordings/<id>/`` until every one of them is in the
object store with its full size; only then is the row marked ``ready`` and the local copy
removed. A failed upload (the object store is down, a network error) is retried with a growing
delay, and again after a restart of the appliance, so nothing is lost while the store is away.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from prometheus_client import Counter

from .. import tracing
from ..stores.objects import ObjectStore
from ..stores.relational import Recording, Relational

log = logging.getLogger("confmeet.recording")

UPLOAD_FAILURES = Counter("confmeet_recording_upload_failures",
                          "failed upload attempts of recordings (retried: the object store was away; "
                          "lost: a file is gone, the recording failed)", ["outcome"])
for _outcome in ("retried", "lost"):
    UPLOAD_FAILURES.labels(_outcome)  # the series exist from the start, at 0
CONTENT_TYPES = {".webm": "video/webm", ".mkv": "video/x-matroska", ".mp4": "video/mp4"}


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")


class MissingFile(Exception):
    """A track is neither in the spool nor in the object store: it cannot be uploaded."""


class Uploader:
    def __init__(self, db: Relational, objects: ObjectStore, spool: Path,
                 first_retry: float = 1.0, max_retry: float = 60.0) -> None:
        self.db = db
        self.objects = objects
        self.spool = spool
        self.first_retry = first_retry
        self.max_retry = max_retry
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def submit(self, recording_id: str) -> None:
        """Upload the recording's files in the background, retrying until they are all stored."""
        if recording_id not in self._tasks:
            task = asyncio.get_running_loop().create_task(self._until_uploaded(recording_id),
                                                          name=f"upload-{recording_id}")
            self._tasks[recording_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(recording_id, None))

    async def wait(self, recording_id: str) -> None:
        task = self._tasks.get(recording_id)
        if task is not None:
            await asyncio.shield(task)

    async def cancel(self, recording_id: str) -> None:
        task = self._tasks.pop(recording_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        for recording_id in list(self._tasks):
            await self.cancel(recording_id)

    async def _until_uploaded(self, recording_id: str) -> None:
        delay = self.first_retry
        while True:
            try:
                await self.upload(recording_id)
                return
            except MissingFile as exc:
                UPLOAD_FAILURES.labels("lost").inc()
                await self._set(recording_id, status="failed", upload_error=str(exc))
                log.error("recording %s cannot be uploaded: %s", recording_id, exc)
                return
            except Exception as exc:
                message = f"upload failed ({str(exc) or type(exc).__name__}); retrying in {delay:.0f} s"
                UPLOAD_FAILURES.labels("retried").inc()
                log.warning("recording %s: %s", recording_id, message)
                await self._set(recording_id, upload_error=message)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_retry)

    async def _set(self, recording_id: str, **fields: object) -> None:
        await self.db.run(lambda: Recording.update(**fields).where(Recording.id == recording_id).execute())

    async def upload(self, recording_id: str) -> None:
        """One attempt: put every file not yet stored, then mark the recording ready."""
        with tracing.span("recording.upload", new_trace=True, recording_id=recording_id):
            await self._upload(recording_id)

    async def _upload(self, recording_id: str) -> None:
        row = await self.db.run(Recording.get_or_none, Recording.id == recording_id)
        directory = self.spool / recording_id
        if row is None:  # deleted meanwhile
            await asyncio.to_thread(shutil.rmtree, directory, True)
            return
        if row.status != "uploading":
            return
        for track in row.tracks:
            await self._put(directory / track["file"], track["key"], track["size"])
        await self._set(recording_id, status="ready", upload_error="")
        await asyncio.to_thread(shutil.rmtree, directory, True)
        log.info("recording %s is in the object store (%d files)", recording_id, len(row.tracks))

    async def _put(self, path: Path, key: str, size: int) -> None:
        with tracing.span("recording.upload.object", key=key, bytes=size):
            await self._put_object(path, key, size)

    async def _put_object(self, path: Path, key: str, size: int) -> None:
        if not path.exists():
            stored = await self.objects.stat(key)
            if stored is not None and stored.size == size:
                return  # uploaded by an attempt that did not get to mark the recording ready
            raise MissingFile(f"{path.name} is neither in {path.parent} nor in the object store")
        with path.open("rb") as source:
            info = await self.objects.put(key, source, length=size, content_type=content_type(path.name))
        if info.size != size:
            raise OSError(f"the object store kept {info.size} of the {size} bytes of {path.name}")
