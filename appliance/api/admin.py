"""The administrators' overview: /api/v1/admin/* (meetings in progress, every recording with the
storage it takes, the health of every component). What administrators change goes through the
resources' own endpoints (users, meetings, recordings), each authorised and audited there."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

import peewee as pw

from ..machine.probes import collect, overall
from ..settings import DEFAULT_CONFIG
from ..stores.relational import Meeting as MeetingRow
from ..stores.relational import MeetingFile, Recording, RecordingExport
from ..stores.relational import User as UserRow
from . import api
from .endpoint import Call
from .models import MeetingsInProgress, Page, RecordingsOverview, SystemHealth


@api.route("GET", "/api/v1/admin/meetings", summary="Meetings in progress across the appliance", tag="admin",
           auth="admin", response=MeetingsInProgress)
async def meetings_in_progress(call: Call) -> dict:
    """Every meeting someone is in now, with who (name, meeting role, guest or not). End one with
    `POST /api/v1/meetings/{id}/end`."""
    services = call.services
    seated = services.signaling.meetings_in_progress()

    def rows() -> list[dict]:
        query = (MeetingRow.select(MeetingRow.id, MeetingRow.code, MeetingRow.title, UserRow.name)
                 .join(UserRow, on=(MeetingRow.owner == UserRow.id))
                 .where(MeetingRow.id.in_(list(seated))).order_by(MeetingRow.title).objects())
        return [{"id": m.id, "code": m.code, "title": m.title, "owner_name": m.name,
                 "participants": [{"id": s.id, "name": s.name, "role": s.role, "guest": s.principal_kind == "guest"}
                                  for s in seated[m.id]]} for m in query]

    return {"meetings": await services.db.run(rows) if seated else []}


@api.route("GET", "/api/v1/admin/recordings", summary="Every recording, and the storage used", tag="admin",
           auth="admin", query=Page, response=RecordingsOverview)
async def recordings_overview(call: Call) -> dict:
    """Newest first, each with its meeting; `storage` adds up the bytes of every recording, export
    and shared file. Delete one with `DELETE /api/v1/recordings/{id}`."""
    q = call.query

    def overview() -> dict:
        exports = (RecordingExport.select(RecordingExport.recording, pw.fn.SUM(RecordingExport.size_bytes).alias("bytes"))
                   .group_by(RecordingExport.recording))
        export_bytes = {row.recording_id: row.bytes or 0 for row in exports}
        query = (Recording.select(Recording, MeetingRow.title.alias("meeting_title"))
                 .join(MeetingRow, on=(Recording.meeting == MeetingRow.id)).order_by(Recording.started_at.desc()))
        listed = [{"id": r.id, "meeting_id": r.meeting_id, "meeting_title": r.meeting_title, "status": r.status,
                   "started_at": r.started_at, "duration_s": round(r.duration_s, 3), "size": r.size_bytes,
                   "exports_size": export_bytes.get(r.id, 0), "room": r.room}
                  for r in query.objects().limit(q.limit).offset(q.offset)]
        recordings = Recording.select(pw.fn.COALESCE(pw.fn.SUM(Recording.size_bytes), 0)).scalar()
        files = MeetingFile.select(pw.fn.COALESCE(pw.fn.SUM(MeetingFile.size), 0)).scalar()
        exported = sum(export_bytes.values())
        return {"recordings": listed, "total": query.count(),
                "storage": {"recordings": recordings, "exports": exported, "files": files,
                            "total": recordings + exported + files}}

    return await call.services.db.run(overview)


@api.route("GET", "/api/v1/admin/health", summary="Every component's state (what `confmeet status` shows)",
           tag="admin", auth="admin", response=SystemHealth)
async def system_health(call: Call) -> dict:
    """Each component asked over its own protocol, as `confmeet status` does (a few seconds at
    most): state, version, response time and a detail."""
    settings = call.services.settings
    settings_file = DEFAULT_CONFIG if settings.source == "defaults" else Path(settings.source)
    probes = await asyncio.to_thread(collect, settings, settings_file)
    return {"state": overall(probes), "components": [asdict(p) for p in probes]}
