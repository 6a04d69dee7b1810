"""The waiting room: who must knock before being seated, and hosts and moderators letting them in
or turning them away. docs/protocol.md, "Meeting controls".
"""

from __future__ import annotations

import uuid
from typing import Any

from ..accounts import Principal
from ..meetings import Meetings
from ..roles import moderates
from ..stores.relational import Meeting
from .protocol import Close, Connection, Knock, Seat, SignalingError
from .room import Feature, RoomView, moderator


class Lobby(Feature):
    def __init__(self, room: RoomView, meetings: Meetings, max_waiting: int) -> None:
        self.room = room
        self.meetings = meetings
        self.max_waiting = max_waiting
        self.waiting: dict[str, dict[str, Knock]] = {}
        self.handlers = {"admit": self.admit, "deny": self.deny}

    # ------------------------------------------------------------------ entering
    async def gate(self, conn: Connection, meeting: Meeting, role: str, name: str,
                   principal: Principal) -> dict[str, Any] | None:
        """Someone removed waits until let back in; so does everyone but hosts and moderators
        when the meeting has a waiting room, and, once anyone was removed, every guest (a removed
        guest may come back as a "new" one from another browser)."""
        removed = await self.meetings.is_removed(meeting.id, principal.id)
        knock = removed or (meeting.lobby and not moderates(role)) or (
            principal.kind == "guest" and await self.meetings.anyone_removed(meeting.id))
        return self._knock(conn, meeting, role, name, removed) if knock else None

    def _knock(self, conn: Connection, meeting: Meeting, role: str, name: str, removed: bool) -> dict[str, Any]:
        if len(self.waiting.get(meeting.id, {})) >= self.max_waiting:
            raise SignalingError("lobby_full", f"{self.max_waiting} people are waiting to be let in already; "
                                               "try again later")
        knock = Knock(f"k-{uuid.uuid4().hex[:12]}", conn, meeting, role, name, removed)
        conn.knock = knock
        self.waiting.setdefault(meeting.id, {})[knock.id] = knock
        self._changed(meeting.id, new=knock)
        return {"type": "waiting", "knock": knock.view(),
                "meeting": {"id": meeting.id, "code": meeting.code, "title": meeting.title}}

    def connection_closed(self, conn: Connection) -> None:
        if conn.knock is not None:
            self._cancel(conn.knock)

    def _cancel(self, knock: Knock) -> None:
        waiting = self.waiting.get(knock.meeting.id, {})
        if waiting.pop(knock.id, None) is not None:
            self._changed(knock.meeting.id)
        if not waiting:
            self.waiting.pop(knock.meeting.id, None)

    # ------------------------------------------------------------------ what moderators see
    def view(self, meeting_id: str) -> list[dict[str, Any]]:
        return [k.view() for k in self.waiting.get(meeting_id, {}).values()]

    async def joined(self, seat: Seat) -> dict[str, Any]:
        return {"waiting": self.view(seat.meeting_id)} if moderates(seat.role) else {}

    def _changed(self, meeting_id: str, new: Knock | None = None) -> None:
        event: dict[str, Any] = {"type": "lobby", "waiting": self.view(meeting_id)}
        if new is not None:
            event["knocked"] = new.view()
        for seat in self.room.in_meeting(meeting_id):
            if moderates(seat.role):
                seat.send(event)

    # ------------------------------------------------------------------ letting in
    def _knock_of(self, seat: Seat, message: dict[str, Any]) -> Knock:
        knock = self.waiting.get(seat.meeting_id, {}).get(message.get("knock_id"))  # type: ignore[arg-type]
        if knock is None:
            raise SignalingError("not_found", "nobody with that knock id is waiting")
        return knock

    async def admit(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "let people in")
        knock = self._knock_of(seat, message)
        self.room.check_name(seat.meeting_id, knock.conn.principal, knock.name)
        self._cancel(knock)
        await self.meetings.let_back(seat.meeting_id, knock.conn.principal.id)
        knock.conn.knock = None
        knock.conn.hold()
        try:
            joined = await self.room.seat_connection(knock.conn, knock.meeting, knock.role, knock.name)
        except BaseException:
            knock.conn.release()
            raise
        knock.conn.release(joined)
        await self.room.audit(seat, "moderation.admit", name=knock.name, participant=joined["participant"]["id"])
        return {"type": "ok"}

    async def deny(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "turn people away")
        knock = self._knock_of(seat, message)
        self._cancel(knock)
        knock.conn.knock = None
        knock.conn.send({"type": "error", "code": "denied", "message": "the host did not let you in"})
        knock.conn.close(Close.DENIED)
        await self.room.audit(seat, "moderation.deny", name=knock.name)
        return {"type": "ok"}
