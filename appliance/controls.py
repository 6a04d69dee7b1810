"""Meeting controls over signaling: the lobby, roles, moderation, chat, hands and reactions.

Every rule is enforced here, on the server: a participant or guest sending a host-only message
gets ``forbidden`` and nothing changes. Each moderation action is written to the audit log.
Messages and events are documented in docs/protocol.md ("Meeting controls").
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .stores.relational import AuditEvent, Meeting, MeetingRole

if TYPE_CHECKING:
    from .accounts import Principal
    from .signaling import Connection, Seat, Signaling

MODERATORS = ("host", "moderator")
REACTIONS = ("👍", "👏", "😂", "❤️", "🎉", "😮")
MAX_CHAT = 4000
CHAT_HISTORY = 200
CLOSE_REMOVED, CLOSE_DENIED = 4013, 4014

Handler = Callable[["Seat", dict[str, Any]], Awaitable[dict[str, Any] | None]]


@dataclass(eq=False)
class Knock:
    """Someone waiting in a meeting's lobby for a host or moderator to let them in."""

    id: str
    conn: Connection
    meeting: Any  # the Meeting row
    role: str
    name: str
    removed: bool

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "removed": self.removed}


def _target(signaling: Signaling, seat: Seat, message: dict[str, Any]) -> Seat:
    from .signaling import SignalingError

    target_id = message.get("participant_id")
    target = signaling.seats.get(target_id) if isinstance(target_id, str) else None
    if target is None or target.meeting_id != seat.meeting_id:
        raise SignalingError("not_found", "no such participant in this meeting")
    return target


def _moderator(seat: Seat, action: str, roles: tuple[str, ...] = MODERATORS) -> None:
    from .signaling import SignalingError

    if seat.role not in roles:
        raise SignalingError("forbidden", f"only the meeting's {' or '.join(roles)} can {action}")


class MeetingControls:
    def __init__(self, signaling: Signaling) -> None:
        self.s = signaling
        self.lobby: dict[str, dict[str, Knock]] = {}
        self.handlers: dict[str, Handler] = {
            "admit": self.admit, "deny": self.deny, "set_role": self.set_role, "lock": self.lock,
            "mute": self.mute, "ask_unmute": self.ask_unmute, "stop_camera": self.stop_camera,
            "remove": self.remove, "update_state": self.update_state, "raise_hand": self.raise_hand,
            "lower_hand": self.lower_hand, "reaction": self.reaction, "chat": self.chat,
        }

    # ------------------------------------------------------------------ helpers
    async def audit(self, seat: Seat, action: str, **detail: Any) -> None:
        actor = seat.user_id if seat.principal_kind == "user" else None
        await self.s.db.run(lambda: AuditEvent.create(
            actor=actor, meeting=seat.meeting_id, action=f"moderation.{action}",
            detail={"by": seat.name, "by_participant": seat.id, **detail}))

    def broadcast(self, meeting_id: str, message: dict[str, Any]) -> None:
        for seat in self.s.in_meeting(meeting_id):
            seat.send(message)

    def updated(self, seat: Seat) -> None:
        self.broadcast(seat.meeting_id, {"type": "participant_updated", "participant": seat.view()})

    # ------------------------------------------------------------------ lobby
    async def must_knock(self, meeting: Any, principal: Principal, role: str) -> tuple[bool, bool]:
        """(knock?, removed?) for someone about to enter. Someone removed waits in the lobby until
        let back in; once anyone was removed, so does every guest (a removed guest may come back
        as a "new" one from another browser)."""
        removed = await self.s.meetings.is_removed(meeting.id, principal.id)
        if removed or (meeting.lobby and role not in MODERATORS):
            return True, removed
        return principal.kind == "guest" and await self.s.meetings.anyone_removed(meeting.id), False

    def knock(self, conn: Connection, meeting: Any, role: str, name: str, removed: bool) -> dict[str, Any]:
        from .signaling import SignalingError

        most = self.s.settings.max_waiting_per_meeting
        if len(self.lobby.get(meeting.id, {})) >= most:
            raise SignalingError("lobby_full", f"{most} people are waiting to be let in already; try again later")
        knock = Knock(f"k-{uuid.uuid4().hex[:12]}", conn, meeting, role, name, removed)
        conn.knock = knock
        self.lobby.setdefault(meeting.id, {})[knock.id] = knock
        self._lobby_changed(meeting.id, new=knock)
        return {"type": "waiting", "knock": knock.view(),
                "meeting": {"id": meeting.id, "code": meeting.code, "title": meeting.title}}

    def cancel_knock(self, knock: Knock) -> None:
        waiting = self.lobby.get(knock.meeting.id, {})
        if waiting.pop(knock.id, None) is not None:
            self._lobby_changed(knock.meeting.id)
        if not waiting:
            self.lobby.pop(knock.meeting.id, None)

    def waiting_view(self, meeting_id: str) -> list[dict[str, Any]]:
        return [k.view() for k in self.lobby.get(meeting_id, {}).values()]

    def _lobby_changed(self, meeting_id: str, new: Knock | None = None) -> None:
        event: dict[str, Any] = {"type": "lobby", "waiting": self.waiting_view(meeting_id)}
        if new is not None:
            event["knocked"] = new.view()
        for seat in self.s.in_meeting(meeting_id):
            if seat.role in MODERATORS:
                seat.send(event)

    def _knock_of(self, seat: Seat, message: dict[str, Any]) -> Knock:
        from .signaling import SignalingError

        knock = self.lobby.get(seat.meeting_id, {}).get(message.get("knock_id"))  # type: ignore[arg-type]
        if knock is None:
            raise SignalingError("not_found", "nobody with that knock id is waiting")
        return knock

    async def admit(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        _moderator(seat, "let people in")
        knock = self._knock_of(seat, message)
        self.s.check_name(seat.meeting_id, knock.conn.principal, knock.name)
        self.cancel_knock(knock)
        await self.s.meetings.let_back(seat.meeting_id, knock.conn.principal.id)
        knock.conn.knock = None
        knock.conn.hold()
        try:
            joined = await self.s.seat_connection(knock.conn, knock.meeting, knock.role, knock.name)
        except BaseException:
            knock.conn.release()
            raise
        knock.conn.release(joined)
        await self.audit(seat, "admit", name=knock.name, participant=joined["participant"]["id"])
        return {"type": "ok"}

    async def deny(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        _moderator(seat, "turn people away")
        knock = self._knock_of(seat, message)
        self.cancel_knock(knock)
        knock.conn.knock = None
        knock.conn.send({"type": "error", "code": "denied", "message": "the host did not let you in"})
        knock.conn.close(CLOSE_DENIED)
        await self.audit(seat, "deny", name=knock.name)
        return {"type": "ok"}

    # ------------------------------------------------------------------ roles and the meeting
    async def set_role(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        from .signaling import SignalingError

        _moderator(seat, "change roles", ("host",))
        target = _target(self.s, seat, message)
        role = message.get("role")
        if role not in ("moderator", "participant") or target.role in ("host", "guest"):
            raise SignalingError("bad_message", "a host can make participants moderators and back")
        target.role = role
        if target.principal_kind == "user":
            def persist() -> None:
                MeetingRole.insert(meeting=target.meeting_id, user=target.user_id, role=role).on_conflict(
                    conflict_target=[MeetingRole.meeting, MeetingRole.user],
                    update={MeetingRole.role: role}).execute()
            await self.s.db.run(persist)
        self.updated(target)
        if role == "moderator":
            target.send({"type": "lobby", "waiting": self.waiting_view(seat.meeting_id)})
        await self.audit(seat, "set_role", participant=target.id, name=target.name, role=role)
        return {"type": "ok"}

    async def lock(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        from .signaling import SignalingError

        _moderator(seat, "lock the meeting")
        locked = message.get("locked")
        if not isinstance(locked, bool):
            raise SignalingError("bad_message", "'locked' must be true or false")
        await self.s.db.run(lambda: Meeting.update(locked=locked).where(Meeting.id == seat.meeting_id).execute())
        self.broadcast(seat.meeting_id, {"type": "meeting_updated", "locked": locked})
        await self.audit(seat, "lock" if locked else "unlock")
        return {"type": "ok"}

    # ------------------------------------------------------------------ moderation
    async def _hold(self, target: Seat, source: str, held: bool) -> None:
        await self.s.host.request(target.meeting_id, {"type": "hold", "participant": target.id,
                                                      "source": source, "held": held})

    async def mute(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        _moderator(seat, "mute people")
        if message.get("all") is True:
            targets = [s for s in self.s.in_meeting(seat.meeting_id) if s is not seat]
        else:
            targets = [_target(self.s, seat, message)]
        for target in targets:
            target.muted = True
            await self._hold(target, "microphone", True)
            target.send({"type": "muted", "by": seat.name})
            self.updated(target)
        await self.audit(seat, "mute", participants=[t.id for t in targets], all=message.get("all") is True)
        return {"type": "ok"}

    async def ask_unmute(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        _moderator(seat, "ask people to unmute")
        target = _target(self.s, seat, message)
        target.send({"type": "unmute_request", "by": seat.name})
        await self.audit(seat, "ask_unmute", participant=target.id, name=target.name)
        return {"type": "ok"}

    async def stop_camera(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        _moderator(seat, "stop cameras")
        target = _target(self.s, seat, message)
        target.camera_off = True
        await self._hold(target, "camera", True)
        target.send({"type": "camera_stopped", "by": seat.name})
        self.updated(target)
        await self.audit(seat, "stop_camera", participant=target.id, name=target.name)
        return {"type": "ok"}

    async def remove(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        from .signaling import SignalingError

        _moderator(seat, "remove people")
        target = _target(self.s, seat, message)
        if target.role == "host":
            raise SignalingError("forbidden", "the host cannot be removed")
        await self.s.meetings.remove(seat.meeting_id, target.user_id)
        # every seat the same person holds in the meeting (another tab, another device) goes too
        for gone in [s for s in self.s.in_meeting(seat.meeting_id) if s.user_id == target.user_id]:
            gone.send({"type": "removed", "by": seat.name})
            await self.s.release(gone, "removed", close=CLOSE_REMOVED)
        await self.audit(seat, "remove", participant=target.id, name=target.name)
        return {"type": "ok"}

    # ------------------------------------------------------------------ everyone
    async def update_state(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """A participant reports its own microphone/camera state (unmuting lifts a moderator's mute)."""
        from .signaling import SignalingError

        changes = {k: message[k] for k in ("muted", "camera_off") if k in message}
        if not changes or not all(isinstance(v, bool) for v in changes.values()):
            raise SignalingError("bad_message", "send 'muted' and/or 'camera_off' as true or false")
        if changes.get("muted") is False and seat.muted:
            await self._hold(seat, "microphone", False)
        if changes.get("camera_off") is False and seat.camera_off:
            await self._hold(seat, "camera", False)
        seat.muted = changes.get("muted", seat.muted)
        seat.camera_off = changes.get("camera_off", seat.camera_off)
        self.updated(seat)
        return {"type": "ok"}

    async def raise_hand(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        if seat.hand_at is None:
            seat.hand_at = time.time()
            self.updated(seat)
        return {"type": "ok"}

    async def lower_hand(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        target = seat
        if message.get("participant_id") not in (None, seat.id):
            _moderator(seat, "lower other people's hands")
            target = _target(self.s, seat, message)
        if target.hand_at is not None:
            target.hand_at = None
            self.updated(target)
        return {"type": "ok"}

    async def reaction(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        from .signaling import SignalingError

        emoji = message.get("emoji")
        if emoji not in REACTIONS:
            raise SignalingError("bad_message", f"'emoji' must be one of {' '.join(REACTIONS)}")
        limit = (self.s.throttle.limits.reaction, seat.id)
        self.s.throttle.check(limit)
        await self.s.throttle.record(limit)
        self.broadcast(seat.meeting_id, {"type": "reaction", "participant_id": seat.id, "emoji": emoji})
        return {"type": "ok"}

    # ------------------------------------------------------------------ chat
    async def chat(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        from .signaling import SignalingError

        text, to = message.get("text"), message.get("to")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_CHAT:
            raise SignalingError("bad_message", f"'text' must be 1 to {MAX_CHAT} characters")
        recipient = None
        if to is not None:
            recipient = _target(self.s, seat, {"participant_id": to})
        limit = (self.s.throttle.limits.chat, seat.id)
        self.s.throttle.check(limit)
        await self.s.throttle.record(limit)
        entry = await self.post(seat.meeting_id, seat.id, seat.name, text, to=recipient.id if recipient else None)
        return {"type": "ok", "message": entry}

    async def post(self, meeting_id: str, sender: str, sender_name: str, text: str, to: str | None = None,
                   file: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store a chat message and deliver it: to everyone, or privately to sender and recipient."""
        entry = {"_id": uuid.uuid4().hex, "meeting_id": meeting_id, "from": sender, "from_name": sender_name,
                 "to": to, "text": text, "at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")}
        if file is not None:
            entry["file"] = file
        await self.s.documents.insert("chat", entry)
        view = chat_view(entry)
        for seat in self.s.in_meeting(meeting_id):
            if to is None or seat.id in (to, sender):
                seat.send({"type": "chat", "message": view})
        return view

    async def history(self, seat: Seat) -> list[dict[str, Any]]:
        """What a (late) joiner sees: the meeting's public messages and their own private ones."""
        entries = await self.s.documents.find("chat", {"meeting_id": seat.meeting_id}, sort=[("at", 1)])
        mine = {seat.id}
        visible = [chat_view(e) for e in entries if e.get("to") is None or mine & {e.get("to"), e.get("from")}]
        return visible[-CHAT_HISTORY:]


def chat_view(entry: dict[str, Any]) -> dict[str, Any]:
    view = {"id": entry["_id"], "from": entry["from"], "from_name": entry["from_name"], "to": entry.get("to"),
            "private": entry.get("to") is not None, "text": entry["text"], "at": entry["at"]}
    if entry.get("file"):
        view["file"] = entry["file"]
    return view
