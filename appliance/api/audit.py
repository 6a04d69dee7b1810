"""The audit log: /api/v1/audit (administrators)."""

from __future__ import annotations

from ..stores.relational import AuditEvent as AuditRow
from . import api
from .endpoint import Call
from .models import AuditEvent, AuditList, AuditQuery


@api.route("GET", "/api/v1/audit", summary="Audit events, newest first", tag="audit", auth="admin",
           query=AuditQuery, response=AuditList)
async def list_audit(call: Call) -> AuditList:
    q = call.query

    def page() -> AuditList:
        query = AuditRow.select()
        if q.meeting_id:
            query = query.where(AuditRow.meeting == q.meeting_id)
        if q.action:
            query = query.where(AuditRow.action == q.action)
        rows = query.order_by(AuditRow.id.desc()).limit(q.limit).offset(q.offset)
        events = [AuditEvent(id=e.id, at=e.at, actor_id=e.actor_id, meeting_id=e.meeting_id,
                             action=e.action, detail=e.detail) for e in rows]
        return AuditList(events=events, total=query.count())

    return await call.services.db.run(page)
