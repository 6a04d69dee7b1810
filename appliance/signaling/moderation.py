"""Roles, moderation, and what everyone seated says of themselves: microphone and camera state,
hands, reactions. Every rule is enforced here, on the server: a participant or guest sending a
moderator's message gets ``forbidden`` and nothing changes; each moderation is audited.
docs/protocol.md, "Meeting controls".
"""

from __future__ import annotations

import time
from typing import Any

from ..meetings import Meetings
from ..roles import GUEST, HOST, MODERATOR, PARTICIPANT
from ..stores.relational import Meeting, MeetingRole, Relational
from ..throttle import Throttle
from .lobby import Lobby
from .protocol import Close, Seat, SignalingError, flag
from .room import Feature, RoomView, moderator

REACTIONS = ("👍", "👏", "😂", "❤️", "🎉", "😮")  # appliance/web/meeting.js REACTIONS


class Moderation(Feature):
    def __init__(self, room: RoomView, meetings: Meetings, db: Relational, throttle: Throttle,
                 lobby: Lobby) -> None:
        self.room = room
        self.meetings = meetings
        self.db = db
        self.throttle = throttle
        self.lobby = lobby
        self.handlers = {
            "set_role": self.set_role, "lock": self.lock, "mute": self.mute, "ask_unmute": self.ask_unmute,
            "stop_camera": self.stop_camera, "remove": self.remove, "update_state": self.update_state,
            "raise_hand": self.raise_hand, "lower_hand": self.lower_hand, "reaction": self.reaction,
        }

    async def _hold(self, target: Seat, source: str, held: bool) -> None:
        """Stop (or resume) forwarding one source of someone's media in the SFU."""
        await self.room.sfu.request(target.media_room, {"type": "hold", "participant": target.id,
                                                        "source": source, "held": held})

    # ------------------------------------------------------------------ roles and the meeting
    async def set_role(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "change roles", (HOST,))
        target = self.room.target(seat, message.get("participant_id"))
        role = message.get("role")
        if role not in (MODERATOR, PARTICIPANT) or target.role in (HOST, GUEST):
            raise SignalingError("bad_message", "a host can make participants moderators and back")
        target.role = role
        if target.account is not None:
            def persist() -> None:
                MeetingRole.insert(meeting=target.meeting_id, user=target.user_id, role=role).on_conflict(
                    conflict_target=[MeetingRole.meeting, MeetingRole.user],
                    update={MeetingRole.role: role}).execute()
            await self.db.run(persist)
        self.room.updated(target)
        if role == MODERATOR:
            target.send({"type": "lobby", "waiting": self.lobby.view(seat.meeting_id)})
        await self.room.audit(seat, "moderation.set_role", participant=target.id, name=target.name, role=role)
        return {"type": "ok"}

    async def lock(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "lock the meeting")
        locked = flag(message, "locked")
        await self.db.run(lambda: Meeting.update(locked=locked).where(Meeting.id == seat.meeting_id).execute())
        self.room.broadcast(seat.meeting_id, {"type": "meeting_updated", "locked": locked})
        await self.room.audit(seat, "moderation.lock" if locked else "moderation.unlock")
        return {"type": "ok"}

    # ------------------------------------------------------------------ moderation
    async def mute(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "mute people")
        everyone = message.get("all") is True
        if everyone:
            targets = [s for s in self.room.in_meeting(seat.meeting_id) if s is not seat]
        else:
            targets = [self.room.target(seat, message.get("participant_id"))]
        for target in targets:
            target.muted = True
            await self._hold(target, "microphone", True)
            target.send({"type": "muted", "by": seat.name})
            self.room.updated(target)
        await self.room.audit(seat, "moderation.mute", participants=[t.id for t in targets], all=everyone)
        return {"type": "ok"}

    async def ask_unmute(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "ask people to unmute")
        target = self.room.target(seat, message.get("participant_id"))
        target.send({"type": "unmute_request", "by": seat.name})
        await self.room.audit(seat, "moderation.ask_unmute", participant=target.id, name=target.name)
        return {"type": "ok"}

    async def stop_camera(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "stop cameras")
        target = self.room.target(seat, message.get("participant_id"))
        target.camera_off = True
        await self._hold(target, "camera", True)
        target.send({"type": "camera_stopped", "by": seat.name})
        self.room.updated(target)
        await self.room.audit(seat, "moderation.stop_camera", participant=target.id, name=target.name)
        return {"type": "ok"}

    async def remove(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "remove people")
        target = self.room.target(seat, message.get("participant_id"))
        if target.role == HOST:
            raise SignalingError("forbidden", "the host cannot be removed")
        await self.meetings.remove(seat.meeting_id, target.user_id)
        # every seat the same person holds in the meeting (another tab, another device) goes too
        for gone in [s for s in self.room.in_meeting(seat.meeting_id) if s.user_id == target.user_id]:
            gone.send({"type": "removed", "by": seat.name})
            await self.room.release(gone, "removed", Close.REMOVED)
        await self.room.audit(seat, "moderation.remove", participant=target.id, name=target.name)
        return {"type": "ok"}

    # ------------------------------------------------------------------ everyone
    async def update_state(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """A participant reports its own microphone/camera state (unmuting lifts a moderator's mute)."""
        changes = {k: message[k] for k in ("muted", "camera_off") if k in message}
        if not changes or not all(isinstance(v, bool) for v in changes.values()):
            raise SignalingError("bad_message", "send 'muted' and/or 'camera_off' as true or false")
        if changes.get("muted") is False and seat.muted:
            await self._hold(seat, "microphone", False)
        if changes.get("camera_off") is False and seat.camera_off:
            await self._hold(seat, "camera", False)
        seat.muted = changes.get("muted", seat.muted)
        seat.camera_off = changes.get("camera_off", seat.camera_off)
        self.room.updated(seat)
        return {"type": "ok"}

    async def raise_hand(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        if seat.hand_at is None:
            seat.hand_at = time.time()
            self.room.updated(seat)
        return {"type": "ok"}

    async def lower_hand(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        target = seat
        if message.get("participant_id") not in (None, seat.id):
            moderator(seat, "lower other people's hands")
            target = self.room.target(seat, message.get("participant_id"))
        if target.hand_at is not None:
            target.hand_at = None
            self.room.updated(target)
        return {"type": "ok"}

    async def reaction(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        emoji = message.get("emoji")
        if emoji not in REACTIONS:
            raise SignalingError("bad_message", f"'emoji' must be one of {' '.join(REACTIONS)}")
        limit = (self.throttle.limits.reaction, seat.id)
        self.throttle.check(limit)
        await self.throttle.record(limit)
        self.room.broadcast(seat.meeting_id, {"type": "reaction", "participant_id": seat.id, "emoji": emoji})
        return {"type": "ok"}
