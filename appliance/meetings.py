"""Meetings: creation with a human-friendly join code, the host's controls, per-meeting roles."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from typing import Any

import peewee as pw

from . import audit
from .accounts import Principal
from .errors import Conflict, Forbidden, NotFound
from .roles import GUEST, HOST, MODERATORS, PARTICIPANT
from .security import hash_password, verify_password
from .stores.bus import EventBus
from .stores.documents import DocumentExists, DocumentStore
from .stores.relational import Meeting, MeetingRole, Participant, Prepared, Relational, model_from_row, utcnow
from .throttle import Throttle

CODE_ALPHABET = "abcdefghijkmnpqrstuvwxyz"  # no l/o: they read as 1/0
EDITABLE = ("title", "starts_at", "lobby", "allow_guests", "locked", "e2ee")
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
        """Forbidden for someone removed from the meeting (a moderator too), administrators excepted."""
        if not principal.is_admin and await self.is_removed(meeting_id, principal.id):
            raise Forbidden("you were removed from this meeting; a host or moderator can let you back in")

    def view(self, meeting: Meeting, my_role: str | None) -> dict[str, Any]:
        return {
            "id": meeting.id, "code": meeting.code, "title": meeting.title,
            "owner_id": meeting.owner_id, "starts_at": meeting.starts_at,
            "has_password": meeting.password_hash is not None, "lobby": meeting.lobby,
            "allow_guests": meeting.allow_guests, "locked": meeting.locked, "e2ee": meeting.e2ee,
            "status": meeting.status,
            "created_at": meeting.created_at, "ended_at": meeting.ended_at,
            "join_url": f"{self.base_url}/m/{meeting.code}", "my_role": my_role,
        }

    @staticmethod
    def _lookup(principal: Principal, meeting_id: str | None, code: str | None) -> tuple[Prepared, dict[str, Any]]:
        """The prepared look-up (by id, else by code) and its values for this caller."""
        return (MEETING_BY_ID if meeting_id else MEETING_BY_CODE,
                {"key": meeting_id or code, "user": principal.id if principal.kind == "user" else ""})

    @staticmethod
    def _load(principal: Principal, meeting_id: str | None = None,
              code: str | None = None) -> tuple[Meeting, str | None]:
        """The meeting and the caller's role, read on the database pool (inside its transactions)."""
        query, values = Meetings._lookup(principal, meeting_id, code)
        return Meetings._resolve(principal, query.rows(**values))

    @staticmethod
    def _resolve(principal: Principal, rows: list[tuple]) -> tuple[Meeting, str | None]:
        """The meeting and the caller's role from MEETING_BY_ID/CODE's rows, or NotFound."""
        meeting = model_from_row(Meeting, rows[0]) if rows else None
        role = rows[0][-1] if rows else None
        if principal.kind == "guest":
            role = GUEST if meeting and principal.meeting_id == meeting.id else None
        # Any signed-in member may look a meeting up (that is how they join it); a guest only theirs.
        if meeting is None or (principal.kind == "guest" and role is None):
            raise NotFound("meeting")
        return meeting, role

    async def find_for_join(self, principal: Principal, ref: str) -> tuple[Meeting, str | None]:
        """The meeting someone asks to join and their role in it.

        ``ref`` is the meeting's join code (``kfd-qwrt-mza``, any case: a ref with a ``-`` is a
        code) or its id. Returns the Meeting row and the caller's role in it: ``host``,
        ``moderator`` or ``participant`` from the meeting's roles, ``guest`` for a guest, None for
        a signed-in user without a role there yet. Raises NotFound("meeting") (code
        ``not_found``) when there is no such meeting, and for a guest whose pass is for another
        meeting or whose meeting does not let guests in (so guests cannot probe codes). It checks
        nothing else: check_entry says whether they may enter now."""
        code, meeting_id = (ref.lower(), None) if "-" in ref else (None, ref)
        query, values = self._lookup(principal, meeting_id, code)
        meeting, role = self._resolve(principal, await self.db.fetch(query, **values))
        if role == GUEST and not meeting.allow_guests:
            raise NotFound("meeting")
        return meeting, role

    async def check_entry(self, meeting: Meeting, principal: Principal, role: str | None, password: str | None,
                          throttle: Throttle, address: str) -> str:
        """Whether someone may enter ``meeting`` now (the row and ``role`` from find_for_join),
        with the meeting ``password`` they typed (None: none), from ``address``; returns the role
        they enter with: their own, or ``participant`` when they have none. The checks, in order:

        - the meeting has ended: Conflict, code ``meeting_ended``, "this meeting has ended";
        - it has a password and they are not its host: first Throttled (a TooMany with
          ``retry_after``; code ``too_many_requests``) while their address or the meeting is
          locked out after too many wrong passwords; then a wrong password counts against both
          and raises NotFound("meeting") (code ``not_found``) for a guest, so that guests cannot
          tell a wrong password from a wrong code, and Forbidden, code ``wrong_password``, "this
          meeting needs its password", for anyone else;
        - it is locked and they are neither host nor moderator: Forbidden, code ``locked``, "the
          meeting is locked; ask the host to unlock it".

        The lobby and removals are not checked here."""
        if meeting.status == "ended":
            raise Conflict("this meeting has ended", code="meeting_ended")
        if meeting.password_hash and role != HOST:
            attempt = throttle.limits.meeting_password(address, meeting.code)
            throttle.check(*attempt)
            if not await self._password_ok(meeting, password):
                await throttle.record(*attempt)
                if principal.kind == "guest":
                    raise NotFound("meeting")
                raise Forbidden("this meeting needs its password", code="wrong_password")
        role = role or PARTICIPANT
        if meeting.locked and role not in MODERATORS:
            raise Forbidden("the meeting is locked; ask the host to unlock it", code="locked")
        return role

    @staticmethod
    async def _password_ok(meeting: Meeting, password: str | None) -> bool:
        """Whether ``password`` opens the meeting (any does when it has none)."""
        if not meeting.password_hash:
            return True
        return await asyncio.to_thread(verify_password, meeting.password_hash, password or "")

    async def create(self, principal: Principal, title: str, starts_at: dt.datetime | None,
                     password: str | None, lobby: bool, allow_guests: bool, e2ee: bool = False) -> dict[str, Any]:
        if principal.kind != "user":
            raise Forbidden("guests cannot create meetings")
        password_hash = await asyncio.to_thread(hash_password, password) if password else None

        def create() -> dict[str, Any]:
            for _ in range(5):
                try:
                    with self.db.atomic():
                        meeting = Meeting.create(
                            code=new_code(), title=title, owner=principal.id,
                            starts_at=starts_at, password_hash=password_hash,
                            lobby=lobby, allow_guests=allow_guests, e2ee=e2ee)
                        MeetingRole.create(meeting=meeting, user=principal.id, role=HOST)
                        audit.record("meeting.created", principal.id, meeting.id, title=title,
                                     **({"e2ee": True} if e2ee else {}))
                        return self.view(meeting, HOST)
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
                      allowed: tuple[str, ...] = (HOST,)) -> tuple[Meeting, str | None]:
        meeting, role = self._load(principal, meeting_id)
        if role not in allowed and not principal.is_admin:
            raise Forbidden(f"only the meeting's {' or '.join(allowed)} (or an administrator) can do this")
        return meeting, role

    async def is_member(self, principal: Principal, meeting_id: str) -> bool:
        """Someone who belongs to the meeting: a role in it, ever joined it, its guest, or an admin;
        and not removed from it. Raises NotFound when there is no such meeting (for a guest: when it
        is not theirs)."""
        if principal.kind == "guest":
            if principal.meeting_id != meeting_id:
                raise NotFound("meeting")
            return not await self.is_removed(meeting_id, principal.id)

        def member() -> bool:
            if not Meeting.select().where(Meeting.id == meeting_id).exists():
                raise NotFound("meeting")
            return (principal.is_admin
                    or MeetingRole.select().where(MeetingRole.meeting == meeting_id, MeetingRole.user == principal.id).exists()
                    or Participant.select().where(Participant.meeting == meeting_id,
                                                  Participant.user == principal.id).exists())

        return await self.db.run(member) and (principal.is_admin or not await self.is_removed(meeting_id, principal.id))

    async def admit_guest(self, code: str, password: str | None) -> dict[str, str]:
        """The meeting a guest may enter with this code and password, or one uniform NotFound
        (no such code, no guests, ended, or a wrong password)."""
        rows = await self.db.run(MEETING_BY_CODE.rows, key=code, user="")
        meeting = model_from_row(Meeting, rows[0]) if rows else None
        ok = meeting is not None and meeting.allow_guests and meeting.status != "ended"
        if not ok or not await self._password_ok(meeting, password):
            raise NotFound("meeting (or the password is wrong)")
        return {"id": meeting.id, "code": meeting.code, "title": meeting.title}

    async def require_role(self, principal: Principal, meeting_id: str, roles: tuple[str, ...]) -> str | None:
        """Raise Forbidden/NotFound unless the principal has one of ``roles`` in the meeting (or is an admin)
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
                audit.record("meeting.updated", principal.id, meeting.id,
                             fields=sorted(k for k, v in changes.items() if v is not None)
                             + (["password"] if password_hash or clear_password else []))
                return self.view(meeting, role)

        result = await self.db.run(update)
        await self.bus.publish(channel(meeting_id), {"type": "meeting_updated", "meeting": meeting_id})
        return result

    async def end(self, principal: Principal, meeting_id: str) -> dict[str, Any]:
        await self._refuse_removed(principal, meeting_id)

        def end() -> dict[str, Any]:
            with self.db.atomic():
                meeting, role = self._require_host(principal, meeting_id, MODERATORS)
                if meeting.status != "ended":
                    meeting.status = "ended"
                    meeting.ended_at = utcnow()
                    meeting.save()
                    audit.record("meeting.ended", principal.id, meeting.id)
                return self.view(meeting, role)

        result = await self.db.run(end)
        await self.bus.publish(channel(meeting_id), {"type": "meeting_ended", "meeting": meeting_id})
        return result

    async def delete(self, principal: Principal, meeting_id: str) -> None:
        def delete() -> None:
            with self.db.atomic():
                meeting, _ = self._require_host(principal, meeting_id)
                audit.record("meeting.deleted", principal.id, meeting_id=meeting.id, title=meeting.title)
                meeting.delete_instance(recursive=True)

        await self.db.run(delete)
        await self.bus.publish(channel(meeting_id), {"type": "meeting_ended", "meeting": meeting_id})
