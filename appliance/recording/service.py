"""Recording for the whole appliance: the Recording rows of the meetings being recorded and of
those recorded, what the SFU's recording sink wrote (stored, uploaded, recovered after a crash),
exports, deletion and retention. Starting and stopping over signaling is the recording feature
(appliance/signaling/recording.py); the sink that writes the files is sink.py.

Flow: a host or moderator sends ``recording_start``; :meth:`Recordings.begin` makes the row and
the SFU gets ``sink_start`` for the ``recording`` sink, which writes every track of the room into
the spool directory ``<data_dir>/recordings/<id>/``. ``recording_stop`` (or the room emptying, or
a full disk) stops the sink; its ``sink_stopped`` event carries the tracks, which
:meth:`Recordings.finish` writes to the row before the files are uploaded (upload.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from .. import audit
from ..errors import Conflict, Invalid
from ..settings import Settings
from ..stores.objects import ObjectStore
from ..stores.relational import Participant, Recording, RecordingExport, Relational, new_id, utcnow
from .export import Exports
from .sink import MB, STOPPED, read_manifest, recover
from .upload import Uploader

log = logging.getLogger("confmeet.recording")

RETENTION_SWEEP_S = 3600.0
ACTIVE = Gauge("confmeet_recordings_active", "recordings being written now")
INTERRUPTED = "the appliance stopped during the recording"  # how every interrupted one's stop_reason begins
NOTHING_KEPT = f"{INTERRUPTED}; nothing of it had reached the disk"
FILES_GONE = f"{INTERRUPTED}; its files are gone"


def was_interrupted(stop_reason: str) -> bool:
    """Whether a recording ended because the appliance stopped (a crash, a restart)."""
    return stop_reason.startswith(INTERRUPTED)


@dataclass
class LiveRecording:
    id: str
    meeting_id: str
    started_at: dt.datetime
    started_by: str  # the name of who started it
    stop_reason: str = ""
    room: str | None = None  # the breakout room's name; None: the main room
    sfu_room: str = ""  # where it records (protocol.media_room): the key of Recordings.live

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
                "started_by": self.started_by, **({"room": self.room} if self.room is not None else {})}


class Recordings:
    def __init__(self, settings: Settings, db: Relational, objects: ObjectStore) -> None:
        self.db = db
        self.objects = objects
        self.spool = settings.data_dir / "recordings"
        self.node = settings.node  # several nodes share the database: each repairs its own
        self.min_free_bytes = settings.recording_min_free_mb * MB
        self.retention_days = settings.recording_retention_days
        self.uploader = Uploader(db, objects, self.spool)
        self.exports = Exports(db, objects, self.spool)
        self.live: dict[str, LiveRecording] = {}  # by SFU room: a meeting's id, or a breakout room's key
        ACTIVE.set_function(lambda: len(self.live))
        self.stopping = False  # the appliance is stopping: recordings that end now end because of it
        self._retention: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ wiring
    async def recover(self) -> dict[str, int]:
        """At start-up (reconcile.py), what a previous run left: recordings it stopped under are
        finished and stored as interrupted, pending uploads and exports start again. Counts."""
        self.spool.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.rmtree, self.spool / ".exports", True)  # scratch of exports cut off
        rows = await self.db.run(lambda: list(Recording.select().where(
            Recording.status.in_(("recording", "uploading")),
            (Recording.node == self.node) | Recording.node.is_null())))  # not another node's
        for row in rows:
            if row.status == "uploading":
                self.uploader.submit(row.id)
            else:
                await self._recover(row)
        exports = await self.exports.resume()
        return {"recordings interrupted": sum(r.status == "recording" for r in rows),
                "recording uploads resumed": sum(r.status == "uploading" for r in rows), "exports resumed": exports}

    async def start(self) -> None:
        if self.retention_days > 0:
            self._retention = asyncio.get_running_loop().create_task(self._sweep_forever(), name="recording-retention")

    async def close(self) -> None:
        """After the SFU has stopped: store what the sinks wrote, then stop the background work
        (uploads not finished now are resumed at the next start, as is a recording whose sink
        did not get to stop)."""
        for live in list(self.live.values()):
            self.live.pop(live.sfu_room, None)
            result = await asyncio.to_thread(read_manifest, self.spool / live.id)
            if result is not None and result.get("state") == STOPPED:
                await self._store(live.id, result, INTERRUPTED)
        if self._retention is not None:
            self._retention.cancel()
        await self.uploader.close()
        await self.exports.close()

    # ------------------------------------------------------------------ recordings under way
    def view(self, sfu_room: str) -> dict[str, Any] | None:
        """The recording under way in an SFU room (a meeting's main room: its id), or None."""
        live = self.live.get(sfu_room)
        return live.view() if live is not None else None

    async def begin(self, sfu_room: str, started_by: str, account: str | None,
                    room: str | None = None) -> LiveRecording:
        """The row of a recording about to start in an SFU room (a meeting's id for its main
        room; a breakout room's key, with the room's name): the caller starts the sink next, or
        :meth:`abandon` s it."""
        meeting_id = sfu_room.partition("/")[0]
        if sfu_room in self.live:
            raise Conflict("this meeting is already being recorded", code="already_recording")
        free = await asyncio.to_thread(self._free_bytes)
        if free < self.min_free_bytes:
            raise Invalid(f"only {free // MB} MB are free on the appliance's disk; recordings need "
                          f"{self.min_free_bytes // MB} MB (recording_min_free_mb)", code="disk_full")
        live = LiveRecording(new_id(), meeting_id, dt.datetime.now(dt.UTC), started_by, room=room, sfu_room=sfu_room)
        self.live[sfu_room] = live
        try:
            await self.db.run(lambda: Recording.create(
                id=live.id, meeting=meeting_id, started_by=account, started_at=live.started_at.replace(tzinfo=None),
                object_prefix=f"recordings/{live.id}/", room=room, node=self.node))
        except BaseException:
            self.live.pop(sfu_room, None)
            raise
        return live

    async def abandon(self, live: LiveRecording) -> None:
        """A recording whose sink did not start: no trace of it stays."""
        self.live.pop(live.sfu_room, None)
        await self.db.run(lambda: Recording.delete().where(Recording.id == live.id).execute())

    async def finish(self, sfu_room: str, result: dict[str, Any]) -> dict[str, Any] | None:
        """The sink of an SFU room stopped (asked to, the room emptied, or it failed): store what
        it wrote. What the room is told (``{"id", "duration_s", "reason"}``), or None when
        nothing was under way there."""
        live = self.live.get(sfu_room)
        recording_id = result.get("recording_id") or (live.id if live is not None else None)
        if recording_id is None:
            return None
        if live is not None and live.id == recording_id:
            del self.live[sfu_room]
        if self.stopping:
            reason = INTERRUPTED
        else:
            reason = (result.get("error") or (live.stop_reason if live is not None else "")
                      or "everyone left the meeting")
        if "tracks" not in result:  # the sink failed to stop; what it wrote is on disk
            result = await asyncio.to_thread(recover, self.spool / recording_id) or {**result, "tracks": []}
        stored = await self._store(recording_id, result, reason)
        if live is None:
            return None
        return {"id": recording_id, "duration_s": stored.get("duration_s", 0.0), "reason": reason}

    async def _store(self, recording_id: str, result: dict[str, Any], reason: str) -> dict[str, Any]:
        """Write the tracks to the row and start their upload."""
        tracks = [dict(t) for t in result.get("tracks", [])]
        ids = {t["participant"] for t in tracks}

        def store() -> dict[str, Any]:
            names = {p.id: p.display_name for p in
                     Participant.select(Participant.id, Participant.display_name).where(Participant.id.in_(ids))}
            row = Recording.get_or_none(Recording.id == recording_id)
            if row is None:
                return {}
            for track in tracks:
                track["name"] = names.get(track["participant"], "")
                track["key"] = f"{row.object_prefix}{track['file']}"
            row.tracks = tracks
            row.duration_s = float(result.get("duration_s", 0.0))
            row.ended_at = row.started_at + dt.timedelta(seconds=row.duration_s)
            row.size_bytes = sum(t["size"] for t in tracks)
            if tracks:
                row.status, row.stop_reason = "uploading", reason[:255]
            elif reason == INTERRUPTED:  # media may have been received: never a ready recording of nothing
                row.status, row.stop_reason = "failed", NOTHING_KEPT
            else:
                row.status, row.stop_reason = "ready", reason[:255]
            row.save()
            return {"duration_s": row.duration_s, "status": row.status}

        stored = await self.db.run(store)
        if stored.get("status") == "uploading":
            self.uploader.submit(recording_id)
        elif stored.get("status") != "failed":  # nothing was recorded, or the row was deleted meanwhile
            await asyncio.to_thread(shutil.rmtree, self.spool / recording_id, True)
        return stored

    async def _recover(self, row: Recording) -> None:
        """A recording the appliance stopped under: every track file finished up to its last
        complete frame and uploaded; the recording stored as interrupted."""
        result = await asyncio.to_thread(recover, self.spool / row.id)
        if result is None:
            await self.db.run(lambda: Recording.update(status="failed", stop_reason=FILES_GONE)
                              .where(Recording.id == row.id).execute())
            log.error("recording %s was cut off by a stop of the appliance and its files are gone", row.id)
            return
        log.warning("recording %s was cut off by a stop of the appliance; %d tracks, %.1f s kept",
                    row.id, len(result["tracks"]), result["duration_s"])
        await self._store(row.id, result, INTERRUPTED)

    def _free_bytes(self) -> int:
        self.spool.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.spool).free

    # ------------------------------------------------------------------ stored recordings
    async def delete(self, recording: Recording) -> None:
        """The row first (so a backup never restores a row without its files), then the files."""
        await self.uploader.cancel(recording.id)
        await self.db.run(lambda: recording.delete_instance(recursive=True))
        # An empty prefix (nothing was ever stored) would list every object of the store.
        keys = [info.key async for info in self.objects.list(recording.object_prefix)] if recording.object_prefix else []
        for key in keys:
            await self.objects.delete(key)
        await asyncio.to_thread(shutil.rmtree, self.spool / recording.id, True)

    async def export(self, recording: Recording, format: str, layout: str, width: int, height: int) -> RecordingExport:
        return await self.exports.create(recording, format, layout, width, height)

    async def sweep(self, now: dt.datetime | None = None) -> int:
        """Delete the recordings older than the retention period; how many went."""
        if self.retention_days <= 0:
            return 0
        cutoff = (now or utcnow()) - dt.timedelta(days=self.retention_days)
        old = await self.db.run(lambda: list(Recording.select().where(
            Recording.status.in_(("ready", "failed")), Recording.started_at < cutoff)))
        for recording in old:
            await self.delete(recording)
            await self.db.run(audit.record, "recording.expired", None, recording.meeting_id,
                              recording=recording.id, retention_days=self.retention_days)
        return len(old)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                if removed := await self.sweep():
                    log.info("retention: %d recordings older than %d days deleted", removed, self.retention_days)
            except Exception:
                log.exception("the recording retention sweep failed")
            await asyncio.sleep(RETENTION_SWEEP_S)
