"""Recordings: /api/v1/meetings/{id}/recordings, /api/v1/recordings/{id} with its files, composite
exports and signed download links (a presigned URL on S3; a signed, expiring app URL otherwise).

People who belong to the meeting (a role in it, joined it, administrators) list, download and
export its recordings; its host and moderators (and administrators) delete them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, Field
from sanic import Request
from sanic.response import HTTPResponse, ResponseStream

from .. import audit
from ..errors import Conflict, Forbidden, NotFound
from ..recording.service import was_interrupted
from ..roles import MODERATORS
from ..security import TokenError
from ..stores.objects import ObjectNotFound
from ..stores.relational import Recording, RecordingExport, User
from . import api
from .endpoint import Call
from .models import DownloadLink, Strict, UtcDatetime, utc_text

LINK_TTL = dt.timedelta(minutes=10)


class RecordingTrack(BaseModel):
    file: str = Field(description="the file's name; download it with .../files/{file}")
    participant_id: str
    name: str = Field(description="the participant's display name")
    kind: Literal["audio", "video"]
    source: str = Field(description="microphone, camera or screen")
    codec: str
    start_s: float = Field(description="when the track starts, in seconds from the recording's start")
    end_s: float
    size: int
    width: int | None = None
    height: int | None = None


class RecordingExportView(BaseModel):
    id: str
    status: Literal["queued", "running", "ready", "failed"]
    progress: float = Field(description="0 to 1")
    format: Literal["mp4", "webm"]
    layout: Literal["grid", "speaker"]
    width: int
    height: int
    size: int
    error: str
    created_at: UtcDatetime


class RecordingView(BaseModel):
    id: str
    meeting_id: str
    status: Literal["recording", "uploading", "ready", "failed"] = Field(
        description="uploading: the files wait on the appliance's disk for the object store")
    started_by_id: str | None
    started_by_name: str
    started_at: UtcDatetime
    ended_at: UtcDatetime | None
    duration_s: float = Field(description="its length; of an interrupted recording, the seconds kept")
    size: int
    stop_reason: str
    interrupted: bool = Field(description="the appliance stopped during the recording (a crash, a restart): "
                                          "it holds what reached the disk, up to about half a second before")
    upload_error: str = Field(description="why the last upload failed, while it is retried")
    tracks: list[RecordingTrack]
    exports: list[RecordingExportView]
    room: str | None = Field(None, description="the name of the breakout room recorded; null: the main room")


class RecordingList(BaseModel):
    recordings: list[RecordingView]


class ExportRequest(Strict):
    format: Literal["mp4", "webm"] = Field("mp4", description="mp4: H.264 and AAC; webm: VP8 and Opus")
    layout: Literal["grid", "speaker"] = Field("grid", description="everyone in a grid, or the active speaker large")
    width: Annotated[int, Field(ge=160, le=3840, multiple_of=8)] = 1280
    height: Annotated[int, Field(ge=120, le=2160, multiple_of=8)] = 720


def export_view(row: RecordingExport) -> dict:
    return {"id": row.id, "status": row.status, "progress": round(row.progress, 3), "format": row.format,
            "layout": row.layout, "width": row.width, "height": row.height, "size": row.size_bytes,
            "error": row.error, "created_at": row.created_at}


def recording_view(row: Recording, starter: str, exports: list[RecordingExport]) -> dict:
    tracks = [{"file": t["file"], "participant_id": t["participant"], "name": t.get("name", ""), "kind": t["kind"],
               "source": t["source"], "codec": t["codec"], "start_s": t["start_s"], "end_s": t["end_s"],
               "size": t["size"], "width": t.get("width"), "height": t.get("height")} for t in row.tracks]
    return {"id": row.id, "meeting_id": row.meeting_id, "status": row.status, "started_by_id": row.started_by_id,
            "started_by_name": starter, "started_at": row.started_at, "ended_at": row.ended_at,
            "duration_s": round(row.duration_s, 3), "size": row.size_bytes, "stop_reason": row.stop_reason,
            "interrupted": was_interrupted(row.stop_reason), "upload_error": row.upload_error, "tracks": tracks,
            "exports": [export_view(e) for e in exports], "room": row.room}


def _views(rows: list[Recording]) -> list[dict]:
    ids = [r.id for r in rows]
    exports: dict[str, list[RecordingExport]] = {}
    for export in RecordingExport.select().where(RecordingExport.recording.in_(ids)).order_by(RecordingExport.created_at):
        exports.setdefault(export.recording_id, []).append(export)
    starters = {u.id: u.name for u in User.select(User.id, User.name)
                .where(User.id.in_([r.started_by_id for r in rows if r.started_by_id]))}
    return [recording_view(r, starters.get(r.started_by_id, ""), exports.get(r.id, [])) for r in rows]


async def _recording(call: Call, recording_id: str, roles: tuple[str, ...] = ()) -> Recording:
    """The recording, if the caller may see it (and has one of ``roles`` in its meeting)."""
    services = call.services
    row = await services.db.run(Recording.get_or_none, Recording.id == recording_id)
    if row is None:
        raise NotFound("recording")
    if roles:
        await services.meetings.require_role(call.principal, row.meeting_id, roles)
    elif not await services.meetings.is_member(call.principal, row.meeting_id):
        raise Forbidden("only people in the recording's meeting can see it")
    return row


@api.route("GET", "/api/v1/meetings/{meeting_id}/recordings", summary="The meeting's recordings",
           tag="recordings", response=RecordingList, errors=(403,))
async def list_recordings(call: Call, meeting_id: str) -> dict:
    """Newest first; each with its tracks (one file per participant's microphone, camera or screen,
    as the SFU received it) and its composite exports."""
    services = call.services
    if not await services.meetings.is_member(call.principal, meeting_id):
        raise Forbidden("only people in this meeting can see its recordings")

    def rows() -> list[dict]:
        return _views(list(Recording.select().where(Recording.meeting == meeting_id)
                           .order_by(Recording.started_at.desc())))

    return {"recordings": await services.db.run(rows)}


@api.route("GET", "/api/v1/recordings/{recording_id}", summary="A recording", tag="recordings",
           response=RecordingView, errors=(403,))
async def get_recording(call: Call, recording_id: str) -> dict:
    row = await _recording(call, recording_id)
    return (await call.services.db.run(_views, [row]))[0]


@api.route("DELETE", "/api/v1/recordings/{recording_id}", summary="Delete a recording (host, moderator)",
           tag="recordings", status=204, errors=(403, 409))
async def delete_recording(call: Call, recording_id: str) -> None:
    """Its files and exports go too. A recording under way is stopped first (409 until then)."""
    services = call.services
    row = await _recording(call, recording_id, MODERATORS)
    if row.status == "recording":
        raise Conflict("the recording is under way; stop it first")
    await services.recordings.delete(row)
    await services.db.run(audit.record, "recording.deleted", call.principal.id, row.meeting_id, recording=row.id,
                          started_at=utc_text(row.started_at), size=row.size_bytes)


async def _link(call: Call, row: Recording, key: str, name: str) -> dict:
    services = call.services
    url = await services.stores.objects.presigned_get(key, LINK_TTL)
    if url is None:
        token = services.accounts.issuer.issue("recording", key, LINK_TTL, name=name, mid=row.meeting_id,
                                          by=call.principal.id)
        url = f"{services.settings.base_url}/recordings/{token}"
    return {"url": url, "expires_in": int(LINK_TTL.total_seconds())}


@api.route("GET", "/api/v1/recordings/{recording_id}/files/{file}", summary="A download link for one track",
           tag="recordings", response=DownloadLink, errors=(403, 409))
async def track_link(call: Call, recording_id: str, file: str) -> dict:
    """A signed link valid for 10 minutes (409 while the file still waits to be uploaded)."""
    row = await _recording(call, recording_id)
    track = next((t for t in row.tracks if t["file"] == file), None)
    if track is None:
        raise NotFound("file")
    if row.status != "ready":
        raise Conflict(f"the recording is {row.status}; its files can be downloaded once it is ready")
    return await _link(call, row, track["key"], track["file"])


@api.route("POST", "/api/v1/recordings/{recording_id}/exports", summary="Start a composite export",
           tag="recordings", body=ExportRequest, response=RecordingExportView, status=202, errors=(403, 409))
async def start_export(call: Call, recording_id: str) -> dict:
    """One video of everyone (a grid, or the active speaker large), all audio mixed, made in the
    background: poll the export for its `progress`, then ask for its download link."""
    services = call.services
    row = await _recording(call, recording_id)
    if row.status not in ("uploading", "ready") or not row.tracks:
        raise Conflict("only a finished recording with tracks can be exported")
    b = call.body
    export = await services.recordings.export(row, b.format, b.layout, b.width, b.height)
    return export_view(export)


async def _export(call: Call, recording_id: str, export_id: str) -> tuple[Recording, RecordingExport]:
    row = await _recording(call, recording_id)
    export = await call.services.db.run(
        RecordingExport.get_or_none, RecordingExport.id == export_id, RecordingExport.recording == recording_id)
    if export is None:
        raise NotFound("export")
    return row, export


@api.route("GET", "/api/v1/recordings/{recording_id}/exports/{export_id}", summary="An export and its progress",
           tag="recordings", response=RecordingExportView, errors=(403,))
async def get_export(call: Call, recording_id: str, export_id: str) -> dict:
    return export_view((await _export(call, recording_id, export_id))[1])


@api.route("GET", "/api/v1/recordings/{recording_id}/exports/{export_id}/download",
           summary="A download link for an export", tag="recordings", response=DownloadLink, errors=(403, 409))
async def export_link(call: Call, recording_id: str, export_id: str) -> dict:
    row, export = await _export(call, recording_id, export_id)
    if export.status != "ready":
        raise Conflict(f"the export is {export.status}" + (f": {export.error}" if export.error else ""))
    return await _link(call, row, export.object_key, f"recording-{recording_id[:8]}.{export.format}")


async def download(request: Request, token: str) -> HTTPResponse:
    """GET /recordings/<token>: a recording's file for whoever holds a fresh signed link."""
    services = request.app.ctx.services
    try:
        claims = services.accounts.issuer.verify(token, "recording")
    except TokenError as exc:
        raise Forbidden(f"this download link is not valid ({exc}); ask for a new one") from None
    if await services.meetings.is_removed(claims.get("mid", ""), claims.get("by", "")):
        raise Forbidden("this download link was given to someone who has since been removed from the meeting")
    objects = services.stores.objects
    info = await objects.stat(claims["sub"])
    if info is None:
        raise NotFound("file")
    chunks = objects.get(claims["sub"])

    async def stream(response) -> None:
        try:
            async for chunk in chunks:
                await response.write(chunk)
        except ObjectNotFound:  # deleted since the stat
            return

    name = str(claims.get("name", "recording")).replace('"', "")
    return ResponseStream(stream, content_type=info.content_type or "application/octet-stream",
                          headers={"Content-Disposition": f'attachment; filename="{name}"',
                                   "Content-Length": str(info.size), "X-Content-Type-Options": "nosniff"})
