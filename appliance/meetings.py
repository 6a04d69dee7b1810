"""Meetings: creation with a human-friendly join code, the host's controls, per-meeting roles."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from typing import Any

import peewee as pw

from .accounts import Principal
from .api.errors import ApiError, forbidden, not_found
from .errors import NotFound
from .security import hash_password, verify_password
from .stores.bus import EventBus
from .stores.documents import DocumentExists, DocumentStore
from .stores.relational import (AuditEvent, Meeting, MeetingRole, Participant, Prepared, Relational, model_from_row,
                                utcnow)

CODE_ALPHABET = "abcdefghijkmnpqrstuvwxyz"  # no l/o: they read as 1/0
EDITABLE = ("title", "starts_at", "lobby", "allow_guests", "locked")
REMOVALS = "meeting_removals"  # documents: who was removed from which meeting, until let back in


def _meeting_and_role(column: pw.Field) -> Prepared:
    """The look-up every join and page load makes: a meeting and the caller's role in it, in one
    statement, compiled once (see Prepared)."""
    return Prepared(
        lambda key, user: Meeting.select(Meeting, MeetingRole.role)
        .join(MeetingRole, pw.JOIN.LEFT_OUTER,
              on=(MeetingRole.meeting == Meeting.id) & (MeetingRole.user == user))
        .where(column == key).limit(1),
        "key", "user")


MEETING_BY_ID = _meeting_and_role(Meeting.id)
MEETING_BY_CODE = _meeting_and_role(Meeting.code)


def new_code() -> str:
    """A code like ``kfd-qwrt-mza``: easy to read aloud, 24^10 possibilities."""
    letters = "".join(secrets.choice(CODE_ALPHABET) for _ in range(10))
    return f"{letters[:3]}-{letters[3:7]}-{letters[7:]}"


def channel(meeting_id: str) -> str:
    return f"meeting.{meeting_id}"


class Meetings:
    def __init__(self, db: Relational, bus: EventBus, documents: DocumentStore, base_url: str) -> None:
        self.db = db
        self.bus = bus
        self.documents = documents
        self.base_url = base_url

    # ------------------------------------------------------------------ removal
    # The one place that says whether someone is out of a meeting: signaling asks it before seating
    # anyone, and every REST path of the meeting (files, download links, recordings, transcript)
    # through is_member. A removal holds (in the document store, for every process) until a host
    # or moderator lets the person back in from the lobby.
    async def is_removed(self, meeting_id: str, principal_id: str) -> bool:
        return await self.documents.get(REMOVALS, f"{meeting_id}/{principal_id}") is not None

    async def anyone_removed(self, meeting_id: str) -> bool:
        return await self.documents.count(REMOVALS, {"meeting_id": meeting_id}) > 0

    async def remove(self, meeting_id: str, principal_id: str) -> None:
        try:
            await self.documents.insert(REMOVALS, {"_id": f"{meeting_id}/{principal_id}", "meeting_id": meeting_id,
                                                   "principal_id": principal_id, "at": utcnow().isoformat()})
        except DocumentExists:
            pass

    async def let_back(self, meeting_id: str, principal_id: str) -> None:
        await self.documents.delete(REMOVALS, f"{meeting_id}/{principal_id}")

    async def _refuse_removed(self, principal: Principal, meeting_id: str) -> None:
        """403 for someone removed from the meeting (a moderator too), administrators excepted."""
        if not principal.is_admin and await self.is_removed(meeting_id, principal.id):
            raise forbidden("you were removed from this meeting; a host or moderator can let you back in")

    def view(self, meeting: Meeting, my_role: str | None) -> dict[str, Any]:
        return {
            "id": meeting.id, "code": meeting.code, "title": meeting.title,
            "owner_id": meeting.owner_id, "starts_at": meeting.starts_at,
            "has_password": meeting.password_hash is not None, "lobby": meeting.lobby,
            "allow_guests": meeting.allow_guests, "locked": meeting.locked, "status": meeting.status,
            "created_at": meeting.created_at, "ended_at": meeting.ended_at,
            "join_url": f"{self.base_url}/m/{meeting.code}", "my_role": my_role,
        }

    async def find_for_join(self, principal: Principal, ref: str) -> tuple[Meeting, str | None]:
        """The meeting a join code or id names, and the caller's role in it. NotFound for none, for
        a guest whose pass is for another meeting, and for a meeting without guests."""
        try:
            meeting, role = await self.db.run(
                lambda: self._load(principal, code=ref.lower()) if "-" in ref else self._load(principal, ref))
        except ApiError:
            raise NotFound("meeting") from None
        if principal.kind == "guest" and not meeting.allow_guests:
            raise NotFound("meeting")
        return meeting, role

    @staticmethod
    def _lookup(principal: Principal, meeting_id: str | None, code: str | None) -> tuple[Prepared, dict[str, Any]]:
        """The prepared look-up (by id, else by code) and its values for this caller."""
        return (MEETING_BY_ID if meeting_id else MEETING_BY_CODE,
                {"key": meeting_id or code, "user": principal.id if principal.kind == "user" else ""})

    @staticmethod
    def _load(principal: Principal, meeting_id: str | None = None,
              code: str | None = None) -> tuple[Meeting, str | None]:
        query, values = Meetings._lookup(principal, meeting_id, code)
        return Meetings._resolve(principal, query.rows(**values))

    @staticmethod
    def _resolve(principal: Principal, rows: list[tuple]) -> tuple[Meeting, str | None]:
        """The meeting and the caller's role from MEETING_BY_ID/CODE's rows, or 404."""
        meeting = model_from_row(Meeting, rows[0]) if rows else None
        role = rows[0][-1] if rows else None
        if principal.kind == "guest":
            role = "guest" if meeting and principal.meeting_id == meeting.id else None
        # Any signed-in member may look a meeting up (that is how they join it); a guest only theirs.
        if meeting is None or (principal.kind == "guest" and role is None):
            raise not_found("meeting")
        return meeting, role

    async def create(self, principal: Principal, title: str, starts_at: dt.datetime | None,
                     password: str | None, lobby: bool, allow_guests: bool) -> dict[str, Any]:
        if principal.kind != "user":
            raise forbidden("guests cannot create meetings")
        password_hash = await asyncio.to_thread(hash_password, password) if password else None

        def create() -> dict[str, Any]:
            for _ in range(5):
                try:
                    with self.db.atomic():
                        meeting = Meeting.create(
                            code=new_code(), title=title, owner=principal.id,
                            starts_at=starts_at, password_hash=password_hash,
                            lobby=lobby, allow_guests=allow_guests)
                        MeetingRole.create(meeting=meeting, user=principal.id, role="host")
                        AuditEvent.create(actor=principal.id, meeting=meeting, action="meeting.created",
                                          detail={"title": title})
                        return self.view(meeting, "host")
                except pw.IntegrityError:
                    continue  # a code collision: draw another
            raise RuntimeError("could not draw a free meeting code")

        return await self.db.run(create)

    async def get(self, principal: Principal, meeting_id: str | None = None,
                  code: str | None = None) -> dict[str, Any]:
        query, values = self._lookup(principal, meeting_id, code)
        return self.view(*self._resolve(principal, await self.db.fetch(query, **values)))

    async def mine(self, principal: Principal, limit: int, offset: int) -> dict[str, Any]:
        def mine() -> dict[str, Any]:
            query = (Meeting.select(Meeting, MeetingRole)
                     .join(MeetingRole)
                     .where(MeetingRole.user == principal.id))
            total = query.count()
            rows = query.order_by(Meeting.created_at.desc()).limit(limit).offset(offset)
            return {"meetings": [self.view(m, m.meetingrole.role) for m in rows], "total": total}

        return await self.db.run(mine)

    def _require_host(self, principal: Principal, meeting_id: str,
                      allowed: tuple[str, ...] = ("host",)) -> tuple[Meeting, str | None]:
        meeting, role = self._load(principal, meeting_id)
        if role not in allowed and not principal.is_admin:
            raise forbidden(f"only the meeting's {' or '.join(allowed)} (or an administrator) can do this")
        return meeting, role

    async def is_member(self, principal: Principal, meeting_id: str) -> bool:
        """Someone who belongs to the meeting: a role in it, ever joined it, its guest, or an admin;
        and not removed from it. Raises 404 when there is no such meeting (for a guest: when it is
        not theirs)."""
        if principal.kind == "guest":
            if principal.meeting_id != meeting_id:
                raise not_found("meeting")
            return not await self.is_removed(meeting_id, principal.id)

        def member() -> bool:
            if not Meeting.select().where(Meeting.id == meeting_id).exists():
                raise not_found("meeting")
            return (principal.is_admin
                    or MeetingRole.select().where(MeetingRole.meeting == meeting_id, MeetingRole.user == principal.id).exists()
                    or Participant.select().where(Participant.meeting == meeting_id,
                                                  Participant.user == principal.id).exists())

        return await self.db.run(member) and (principal.is_admin or not await self.is_removed(meeting_id, principal.id))

    async def admit_guest(self, code: str, password: str | None) -> dict[str, str]:
        """The meeting a guest may enter with this code and password, or one uniform 404."""
        rows = await self.db.run(MEETING_BY_CODE.rows, key=code, user="")
        meeting = model_from_row(Meeting, rows[0]) if rows else None
        ok = meeting is not None and meeting.allow_guests and meeting.status != "ended"
        if ok and meeting.password_hash:
            ok = await asyncio.to_thread(verify_password, meeting.password_hash, password or "")
        if not ok:
            raise not_found("meeting (or the password is wrong)")
        return {"id": meeting.id, "code": meeting.code, "title": meeting.title}

    async def require_role(self, principal: Principal, meeting_id: str, roles: tuple[str, ...]) -> str | None:
        """Raise 403/404 unless the principal has one of ``roles`` in the meeting (or is an admin)
        and was not removed from it."""
        _, role = await self.db.run(self._require_host, principal, meeting_id, roles)
        await self._refuse_removed(principal, meeting_id)
        return role

    async def update(self, principal: Principal, meeting_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        password = changes.pop("password", None)
        clear_password = changes.pop("clear_password", False)
        password_hash = await asyncio.to_thread(hash_password, password) if password else None

        def update() -> dict[str, Any]:
            with self.db.atomic():
                meeting, role = self._require_host(principal, meeting_id)
                for key in EDITABLE:
                    if changes.get(key) is not None:
                        setattr(meeting, key, changes[key])
                if clear_password:
                    meeting.password_hash = None
                elif password_hash:
                    meeting.password_hash = password_hash
                meeting.save()
                AuditEvent.create(actor=principal.id, meeting=meeting, action="meeting.updated",
                                  detail={"fields": sorted(k for k, v in changes.items() if v is not None)
                                          + (["password"] if password_hash or clear_password else [])})
                return self.view(meeting, role)

        result = await self.db.run(update)
        await self.bus.publish(channel(meeting_id), {"type": "meeting_updated", "meeting": meeting_id})
        return result

    async def end(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        await self._refuse_removed(principal, meeting_id)

        def end() -> dict[str, Any]:
            with self.db.atomic():
                meeting, role = self._require_host(principal, meeting_id, ("host", "moderator"))
                if meeting.status != "ended":
                    meeting.status = "ended"
                    meeting.ended_at = utcnow()
                    meeting.save()
                    AuditEvent.create(actor=principal.id, meeting=meeting, action="meeting.ended", detail={})
                return self.view(meeting, role)

        result = await self.db.run(end)
        await self.bus.publish(channel(meeting_id), {"type": "meeting_ended", "meeting": meeting_id})
        return result

    async def delete(self, principal: Principal, meeting_id: str) -> None:
        def delete() -> None:
            with self.db.atomic():
                meeting, _ = self._require_host(principal, meeting_id)
                AuditEvent.create(actor=principal.id, meeting=None, action="meeting.deleted",
                                  detail={"meeting_id": meeting.id, "title": meeting.title})
                meeting.delete_instance(recursive=True)

        await self.db.run(delete)
        await self.bus.publish(channel(meeting_id), {"type": "meeting_ended", "meeting": meeting_id})
