"""Recording for the whole appliance: starting and stopping a meeting's recording over signaling,
the SFU sink that writes it, the Recording rows, uploads, exports, deletion and retention.

Flow: a host or moderator sends ``recording_start``; a Recording row is made and the SFU gets
``sink_start`` for the ``recording`` sink (sink.py), which writes every track of the room into the
spool directory ``<data_dir>/recordings/<id>/``. Everyone in the meeting gets ``recording``
events, and ``joined.recording`` tells late joiners. ``recording_stop`` (or the room emptying, or
a full disk) stops the sink; its ``sink_stopped`` event carries the tracks, which are written to
the row, and the files are uploaded (upload.py). Messages are in docs/protocol.md ("Recording").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..controls import MODERATORS
from ..settings import Settings
from ..stores.objects import ObjectStore
from ..stores.relational import AuditEvent, Participant, Recording, RecordingExport, Relational, new_id, utcnow
from .export import Exports
from .sink import MB, STOPPED, read_manifest, recording_sink_factory, recover
from .upload import Uploader

if TYPE_CHECKING:
    from ..signaling import Seat, Signaling

log = logging.getLogger("confmeet.recording")

SINK = "recording"
RETENTION_SWEEP_S = 3600.0
INTERRUPTED = "the appliance stopped during the recording"  # how every interrupted one's stop_reason begins
NOTHING_KEPT = f"{INTERRUPTED}; nothing of it had reached the disk"
FILES_GONE = f"{INTERRUPTED}; its files are gone"


def was_interrupted(stop_reason: str) -> bool:
    """Whether a recording ended because the appliance stopped (a crash, a restart)."""
    return stop_reason.startswith(INTERRUPTED)


def _error(code: str, message: str) -> Exception:
    from ..signaling import SignalingError

    return SignalingError(code, message)


@dataclass
class LiveRecording:
    id: str
    meeting_id: str
    started_at: dt.datetime
    started_by: str  # the name of who started it
    stop_reason: str = ""

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
                "started_by": self.started_by}


class Recordings:
    def __init__(self, settings: Settings, db: Relational, objects: ObjectStore) -> None:
        self.db = db
        self.objects = objects
        self.spool = settings.data_dir / "recordings"
        self.min_free_bytes = settings.recording_min_free_mb * MB
        self.sink = recording_sink_factory(settings)  # the SFU's, wherever it runs
        self.retention_days = settings.recording_retention_days
        self.uploader = Uploader(db, objects, self.spool)
        self.exports = Exports(db, objects, self.spool)
        self.live: dict[str, LiveRecording] = {}
        self.s: Signaling | None = None
        self.stopping = False  # the appliance is stopping: recordings that end now end because of it
        self._retention: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ wiring
    def attach(self, signaling: Signaling) -> None:
        self.s = signaling
        signaling.features["recording"] = self
        signaling.controls.handlers.update({"recording_start": self.start_recording,
                                            "recording_stop": self.stop_recording})

    async def recover(self) -> dict[str, int]:
        """At start-up (reconcile.py), what a previous run left: recordings it stopped under are
        finished and stored as interrupted, pending uploads and exports start again. Counts."""
        self.spool.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.rmtree, self.spool / ".exports", True)  # scratch of exports cut off
        rows = await self.db.run(lambda: list(Recording.select().where(
            Recording.status.in_(("recording", "uploading")))))
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
            self.live.pop(live.meeting_id, None)
            result = await asyncio.to_thread(read_manifest, self.spool / live.id)
            if result is not None and result.get("state") == STOPPED:
                await self._store(live.id, result, INTERRUPTED)
        if self._retention is not None:
            self._retention.cancel()
        await self.uploader.close()
        await self.exports.close()

    # ------------------------------------------------------------------ signaling
    def view(self, meeting_id: str) -> dict[str, Any] | None:
        """``joined.recording``: the meeting's recording under way, or None."""
        live = self.live.get(meeting_id)
        return live.view() if live is not None else None

    @staticmethod
    def handles(event: dict[str, Any]) -> bool:
        return event["type"] in ("sink_failed", "sink_stopped") and event.get("sink") == SINK

    async def sfu_event(self, event: dict[str, Any]) -> None:
        meeting_id = event["room"]
        if event["type"] == "sink_failed":
            live = self.live.get(meeting_id)
            if live is not None and live.id == event.get("recording_id"):
                live.stop_reason = event.get("reason", "the recording failed")
                seats = self._seats(meeting_id)
                await self.s.host.request(meeting_id, {"type": "sink_stop", "sink": SINK,  # type: ignore[union-attr]
                                                       "participant": seats[0].id if seats else SINK})
            return
        await self._finish(meeting_id, event.get("result") or {})

    def _seats(self, meeting_id: str) -> list[Seat]:
        return self.s.in_meeting(meeting_id) if self.s is not None else []

    def _broadcast(self, meeting_id: str, message: dict[str, Any]) -> None:
        for seat in self._seats(meeting_id):
            seat.send(message)

    async def start_recording(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        if seat.role not in MODERATORS:
            raise _error("forbidden", "only the meeting's host or moderator can start a recording")
        meeting_id = seat.meeting_id
        if meeting_id in self.live:
            raise _error("already_recording", "this meeting is already being recorded")
        free = await asyncio.to_thread(self._free_bytes)
        if free < self.min_free_bytes:
            raise _error("disk_full", f"only {free // MB} MB are free on the appliance's disk; recordings "
                                      f"need {self.min_free_bytes // MB} MB (recording_min_free_mb)")
        live = LiveRecording(new_id(), meeting_id, dt.datetime.now(dt.UTC), seat.name)
        self.live[meeting_id] = live
        user = seat.user_id if seat.principal_kind == "user" else None
        try:
            await self.db.run(lambda: Recording.create(
                id=live.id, meeting=meeting_id, started_by=user, started_at=live.started_at.replace(tzinfo=None),
                object_prefix=f"recordings/{live.id}/"))
            reply = await self.s.host.request(meeting_id, {  # type: ignore[union-attr]
                "type": "sink_start", "participant": seat.id, "sink": SINK, "options": {"recording_id": live.id}})
            if reply.get("type") == "error":
                raise _error(reply.get("code", "internal"), reply.get("message", "the recording did not start"))
        except BaseException:
            self.live.pop(meeting_id, None)
            await self.db.run(lambda: Recording.delete().where(Recording.id == live.id).execute())
            raise
        self._broadcast(meeting_id, {"type": "recording", "active": True, "recording": live.view()})
        await self._audit(seat, "recording.started", recording=live.id)
        return {"type": "ok", "recording": live.view()}

    async def stop_recording(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        if seat.role not in MODERATORS:
            raise _error("forbidden", "only the meeting's host or moderator can stop the recording")
        live = self.live.get(seat.meeting_id)
        if live is None:
            raise _error("not_recording", "this meeting is not being recorded")
        live.stop_reason = live.stop_reason or f"stopped by {seat.name}"
        reply = await self.s.host.request(seat.meeting_id, {  # type: ignore[union-attr]
            "type": "sink_stop", "participant": seat.id, "sink": SINK})
        if reply.get("type") == "error" and reply.get("code") != "not_running":
            raise _error(reply.get("code", "internal"), reply.get("message", "the recording did not stop"))
        await self._audit(seat, "recording.stopped", recording=live.id)
        return {"type": "ok", "recording": {"id": live.id}}

    async def _audit(self, seat: Seat, action: str, **detail: Any) -> None:
        actor = seat.user_id if seat.principal_kind == "user" else None
        await self.db.run(lambda: AuditEvent.create(actor=actor, meeting=seat.meeting_id, action=action,
                                                    detail={"by": seat.name, **detail}))

    # ------------------------------------------------------------------ finishing
    async def _finish(self, meeting_id: str, result: dict[str, Any]) -> None:
        """The sink stopped (asked to, the room emptied, or it failed): store what it wrote."""
        live = self.live.get(meeting_id)
        recording_id = result.get("recording_id") or (live.id if live is not None else None)
        if recording_id is None:
            return
        if live is not None and live.id == recording_id:
            del self.live[meeting_id]
        if self.stopping:
            reason = INTERRUPTED
        else:
            reason = (result.get("error") or (live.stop_reason if live is not None else "")
                      or "everyone left the meeting")
        if "tracks" not in result:  # the sink failed to stop; what it wrote is on disk
            result = await asyncio.to_thread(recover, self.spool / recording_id) or {**result, "tracks": []}
        stored = await self._store(recording_id, result, reason)
        if live is not None:
            self._broadcast(meeting_id, {"type": "recording", "active": False, "recording": {
                "id": recording_id, "duration_s": stored.get("duration_s", 0.0), "reason": reason}})

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
        keys = [info.key async for info in self.objects.list(recording.object_prefix)]
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
            await self.db.run(lambda r=recording: AuditEvent.create(
                meeting=r.meeting_id, action="recording.expired",
                detail={"recording": r.id, "retention_days": self.retention_days}))
        return len(old)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                if removed := await self.sweep():
                    log.info("retention: %d recordings older than %d days deleted", removed, self.retention_days)
            except Exception:
                log.exception("the recording retention sweep failed")
            await asyncio.sleep(RETENTION_SWEEP_S)
