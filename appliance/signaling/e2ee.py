"""End-to-end encryption of a meeting's media: the signaling side. docs/protocol.md, "End-to-end
encryption".

Browsers encrypt every frame before it leaves them (appliance/web/e2ee.js); the server only relays
what they need to agree on keys, and never sees a key it could use: each participant announces the
public half of an ECDH P-256 key pair, and sends each other participant its own frame key wrapped
(AES-GCM) under a key derived from their two key pairs. This feature keeps the public keys of the
seats (for late joiners), relays both kinds of ``e2ee_key`` message within a meeting, and answers
whether a meeting is encrypted, for the features an encrypted meeting rules out (recording and
live captions: the server cannot hear or see its media).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ..stores.relational import Meeting, Relational
from ..throttle import Rule, Throttle
from .protocol import Seat, SignalingError
from .room import Feature, RoomView

PUBLIC_KEY_BYTES = 65  # an uncompressed P-256 point: 0x04, x, y
MAX_WRAPPED_BYTES = 128  # a wrapped frame key: IV (12) + key (32) + tag (16), with room to spare
MAX_KEY_ID = 2**32 - 1
# Each change of who is in the meeting costs every sender one wrapped key per other participant.
KEY_MESSAGES = Rule("e2ee_key", 300, 10.0, message="too many e2ee_key messages", code="too_fast")


def _bytes(message: dict[str, Any], name: str, most: int) -> bytes:
    """A base64 field of at most ``most`` bytes, decoded."""
    value = message.get(name)
    if not isinstance(value, str) or not value or len(value) > 4 * ((most + 2) // 3):
        raise SignalingError("bad_message", f"'{name}' must be base64 of at most {most} bytes")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded or len(decoded) > most:
        raise SignalingError("bad_message", f"'{name}' must be base64 of at most {most} bytes")
    return decoded


class E2ee(Feature):
    def __init__(self, room: RoomView, db: Relational, throttle: Throttle) -> None:
        self.room = room
        self.db = db
        self.throttle = throttle
        self.encrypted_meetings: dict[str, bool] = {}  # meeting → end-to-end encrypted (read as people join)
        self.public_keys: dict[str, str] = {}  # seat → its announced public key (base64)
        self.handlers = {"e2ee_key": self.key}

    async def encrypted(self, meeting_id: str, fresh: bool = False) -> bool:
        """Whether the meeting's media is end-to-end encrypted: read from the database once while
        anyone is in it (it changes only while nobody is, api/meetings.py), or ``fresh``."""
        known = None if fresh else self.encrypted_meetings.get(meeting_id)
        if known is None:
            known = bool(await self.db.run(
                lambda: Meeting.select(Meeting.e2ee).where(Meeting.id == meeting_id).scalar()))
            if self.room.in_meeting(meeting_id):  # forgotten when it empties
                self.encrypted_meetings[meeting_id] = known
            else:
                self.encrypted_meetings.pop(meeting_id, None)
        return known

    async def meeting_emptied(self, meeting_id: str) -> None:
        self.encrypted_meetings.pop(meeting_id, None)

    async def refuse(self, meeting_id: str, what: str) -> None:
        """Refuse ``what`` (something the server would have to see or hear the media for) in an
        encrypted meeting."""
        if await self.encrypted(meeting_id):
            raise SignalingError("e2ee", f"this meeting is end-to-end encrypted: the server cannot {what}")

    async def joined(self, seat: Seat) -> dict[str, Any]:
        """Whether the meeting is encrypted, and the public keys of those in it."""
        others = [s for s in self.room.in_meeting(seat.meeting_id) if s is not seat]
        for gone in [p for p in self.public_keys if self.room.seat(p) is None]:
            del self.public_keys[gone]  # seats released since (a release tells no feature)
        # The first one in reads it afresh: the host may have changed it while the meeting was empty.
        if not await self.encrypted(seat.meeting_id, fresh=not others):
            return {"e2ee": {"enabled": False}}
        return {"e2ee": {"enabled": True,
                         "public_keys": {s.id: self.public_keys[s.id] for s in others if s.id in self.public_keys}}}

    async def key(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """A public key announced to the meeting, or a frame key wrapped for one participant."""
        if not await self.encrypted(seat.meeting_id):
            raise SignalingError("e2ee_off", "this meeting is not end-to-end encrypted")
        limit = (KEY_MESSAGES, seat.id)
        self.throttle.check(limit)
        await self.throttle.record(limit)
        if "public_key" in message:
            public = _bytes(message, "public_key", PUBLIC_KEY_BYTES)
            if len(public) != PUBLIC_KEY_BYTES or public[0] != 4:
                raise SignalingError("bad_message", "'public_key' must be a raw uncompressed P-256 public key")
            self.public_keys[seat.id] = message["public_key"]
            for other in self.room.in_meeting(seat.meeting_id):
                if other is not seat:
                    other.send({"type": "e2ee_key", "from": seat.id, "public_key": message["public_key"]})
            return {"type": "ok"}
        target = self.room.target(seat, message.get("to"))
        if target is seat:
            raise SignalingError("bad_message", "'to' must be someone else in the meeting")
        key_id = message.get("key_id")
        if not isinstance(key_id, int) or isinstance(key_id, bool) or not 0 <= key_id <= MAX_KEY_ID:
            raise SignalingError("bad_message", f"'key_id' must be a whole number from 0 to {MAX_KEY_ID}")
        _bytes(message, "wrapped", MAX_WRAPPED_BYTES)
        target.send({"type": "e2ee_key", "from": seat.id, "key_id": key_id, "wrapped": message["wrapped"]})
        return {"type": "ok"}
