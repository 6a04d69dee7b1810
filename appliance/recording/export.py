"""Composite exports as background jobs: one at a time, each in its own process (composite.py),
with its progress kept on its row so that any request can read it.

The job takes the tracks from the local spool when they are still there (an upload pending), else
downloads them from the object store into a scratch directory; the result goes to the object
store next to the tracks, ``recordings/<id>/exports/<export id>.<mp4|webm>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..stores.objects import ObjectStore
from ..stores.relational import Recording, RecordingExport, Relational
from .upload import content_type

log = logging.getLogger("confmeet.recording")

PROGRESS_EVERY_S = 0.5
ACTIVE = ("queued", "running")


class ExportFailed(Exception):
    """The composite could not be made; the message says why."""


class Exports:
    def __init__(self, db: Relational, objects: ObjectStore, spool: Path) -> None:
        self.db = db
        self.objects = objects
        self.spool = spool
        self._slot = asyncio.Semaphore(1)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def create(self, recording: Recording, format: str, layout: str, width: int, height: int) -> RecordingExport:
        row = await self.db.run(lambda: RecordingExport.create(
            recording=recording.id, format=format, layout=layout, width=width, height=height))
        self.submit(row.id)
        return row

    def submit(self, export_id: str) -> None:
        if export_id not in self._tasks:
            task = asyncio.get_running_loop().create_task(self._run(export_id), name=f"export-{export_id}")
            self._tasks[export_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(export_id, None))

    async def resume(self) -> int:
        """Start again the jobs a stopped appliance left queued or running; how many."""
        ids = await self.db.run(lambda: [e.id for e in RecordingExport.select(RecordingExport.id)
                                         .where(RecordingExport.status.in_(ACTIVE))])
        for export_id in ids:
            self.submit(export_id)
        return len(ids)

    async def wait(self, export_id: str) -> None:
        task = self._tasks.get(export_id)
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _set(self, export_id: str, **fields: Any) -> None:
        await self.db.run(lambda: RecordingExport.update(**fields).where(RecordingExport.id == export_id).execute())

    async def _run(self, export_id: str) -> None:
        async with self._slot:
            row = await self.db.run(RecordingExport.get_or_none, RecordingExport.id == export_id)
            if row is None:
                return
            recording = await self.db.run(Recording.get_or_none, Recording.id == row.recording_id)
            if recording is None:
                return
            await self._set(export_id, status="running", progress=0.0, error="")
            try:
                key = await self._make(row, recording)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                message = str(exc) or type(exc).__name__
                log.error("export %s of recording %s failed: %s", export_id, recording.id, message)
                await self._set(export_id, status="failed", error=message)
                return
            info = await self.objects.stat(key)
            await self._set(export_id, status="ready", progress=1.0, object_key=key,
                            size_bytes=info.size if info else 0)

    async def _make(self, row: RecordingExport, recording: Recording) -> str:
        scratch = self.spool / ".exports"
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            tracks = [{**track, "path": str(await self._local(recording, track, Path(tmp)))}
                      for track in recording.tracks]
            output = Path(tmp) / f"{row.id}.{row.format}"
            job = {"tracks": tracks, "duration_s": recording.duration_s, "format": row.format,
                   "layout": row.layout, "width": row.width, "height": row.height, "output": str(output)}
            await self._compose(row.id, job, Path(tmp) / "export.log")
            key = f"{recording.object_prefix}exports/{output.name}"
            with output.open("rb") as source:
                await self.objects.put(key, source, length=output.stat().st_size, content_type=content_type(output.name))
            return key

    async def _local(self, recording: Recording, track: dict[str, Any], tmp: Path) -> Path:
        spooled = self.spool / recording.id / track["file"]
        if spooled.exists():
            return spooled
        path = tmp / track["file"]
        with path.open("wb") as out:
            async for chunk in self.objects.get(track["key"]):
                await asyncio.to_thread(out.write, chunk)
        return path

    async def _compose(self, export_id: str, job: dict[str, Any], log_path: Path) -> None:
        with log_path.open("wb") as errors:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "appliance.recording.composite", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=errors)
            try:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(json.dumps(job).encode())
                await proc.stdin.drain()
                proc.stdin.close()
                saved = time.monotonic()
                async for line in proc.stdout:
                    fields = line.decode(errors="replace").split()
                    if len(fields) == 2 and fields[0] == "progress" and time.monotonic() - saved >= PROGRESS_EVERY_S:
                        saved = time.monotonic()
                        await self._set(export_id, progress=min(0.99, float(fields[1])))
                code = await proc.wait()
            except BaseException:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                raise
        if code != 0:
            lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
            raise ExportFailed(lines[-1] if lines else f"the export process ended with status {code}")
