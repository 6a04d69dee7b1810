"""The audit log: /api/v1/audit and its CSV export (administrators)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import peewee as pw
from sanic.response import HTTPResponse

from .. import audit
from ..stores.relational import AuditEvent as AuditRow
from ..stores.relational import Meeting as MeetingRow
from ..stores.relational import User as UserRow
from . import api
from .endpoint import Call
from .models import AuditEvent, AuditExportQuery, AuditFilter, AuditList, AuditQuery, utc_text

CSV_COLUMNS = ("id", "at", "actor_id", "actor_name", "meeting_id", "meeting_title", "action", "detail")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection, OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _filtered(q: AuditFilter) -> pw.ModelSelect:
    actor = UserRow.alias()
    query = (AuditRow.select(AuditRow, actor.name.alias("actor_name"), MeetingRow.title.alias("meeting_title"))
             .join(actor, pw.JOIN.LEFT_OUTER, on=(AuditRow.actor == actor.id))
             .switch(AuditRow).join(MeetingRow, pw.JOIN.LEFT_OUTER, on=(AuditRow.meeting == MeetingRow.id)))
    if q.meeting_id:
        query = query.where(AuditRow.meeting == q.meeting_id)
    if q.actor_id:
        query = query.where(AuditRow.actor == q.actor_id)
    if q.action:
        query = query.where(AuditRow.action == q.action)
    if q.since:
        query = query.where(AuditRow.at >= q.since)
    if q.until:
        query = query.where(AuditRow.at < q.until)
    return query.order_by(AuditRow.id.desc())


def _event(row: AuditRow) -> AuditEvent:
    return AuditEvent(id=row.id, at=row.at, actor_id=row.actor_id, actor_name=getattr(row, "actor_name", None),
                      meeting_id=row.meeting_id, meeting_title=getattr(row, "meeting_title", None),
                      action=row.action, detail=row.detail)


@api.route("GET", "/api/v1/audit", summary="Audit events, newest first", tag="audit", auth="admin",
           query=AuditQuery, response=AuditList)
async def list_audit(call: Call) -> AuditList:
    """Filtered by meeting, actor, action and a time range (`since` inclusive, `until` exclusive);
    each event names its actor and meeting as they are now."""
    q = call.query

    def page() -> AuditList:
        query = _filtered(q)
        rows = query.objects().limit(q.limit).offset(q.offset)
        return AuditList(events=[_event(e) for e in rows], total=query.count(), actions=sorted(audit.ACTIONS))

    return await call.services.db.run(page)


def safe_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: one starting like a formula gets a quote first."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def audit_csv(events: list[AuditEvent]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for e in events:
        writer.writerow([safe_cell(v) for v in (e.id, utc_text(e.at), e.actor_id, e.actor_name, e.meeting_id,
                                                 e.meeting_title, e.action,
                                                 json.dumps(e.detail, ensure_ascii=False, sort_keys=True))])
    return out.getvalue()


@api.route("GET", "/api/v1/audit/export.csv", summary="Audit events as CSV, newest first", tag="audit",
           auth="admin", query=AuditExportQuery, produces=("text/csv",))
async def export_audit(call: Call) -> HTTPResponse:
    """The same filters as `GET /api/v1/audit`, at most `limit` events (10 000). Columns: id, at
    (UTC), actor_id, actor_name, meeting_id, meeting_title, action, detail (JSON). A cell that a
    spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`) starts with `'`. The
    export itself is audited (`audit.exported`, with its filters)."""
    q = call.query
    actor = call.principal.id

    def export() -> str:
        events = [_event(e) for e in _filtered(q).objects().limit(q.limit)]
        filters = {k: (utc_text(v) if isinstance(v, dt.datetime) else v)
                   for k, v in q.model_dump(exclude_none=True).items()}
        audit.record("audit.exported", actor, rows=len(events), filters=filters)
        return audit_csv(events)

    text = await call.services.db.run(export)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return HTTPResponse("\ufeff" + text, content_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="confmeet-audit-{stamp}.csv"'})
