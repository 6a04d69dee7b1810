"""The meeting's chat: messages to everyone or to one person, files shared into it, and the
history a late joiner gets. A message to everyone sent from a breakout room stays in that room; a
moderator's message to every room (breakouts.py) reaches all. docs/protocol.md, "Meeting controls".
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from ..stores.documents import DocumentStore
from ..throttle import Throttle
from .protocol import Seat, SignalingError
from .room import Feature, RoomView

MAX_CHAT = 4000  # appliance/web/chat.js MAX_CHAT
CHAT_HISTORY = 200


def chat_view(entry: dict[str, Any]) -> dict[str, Any]:
    view = {"id": entry["_id"], "from": entry["from"], "from_name": entry["from_name"], "to": entry.get("to"),
            "private": entry.get("to") is not None, "text": entry["text"], "at": entry["at"]}
    if entry.get("file"):
        view["file"] = entry["file"]
    if entry.get("room") is not None:
        view["room"] = entry["room"]
    if entry.get("everywhere"):
        view["broadcast"] = True
    return view


def _reaches(entry: dict[str, Any], seat: Seat) -> bool:
    """Whether a seat sees a message: a private one if it is one of the two, one to everyone if
    it is in the room it was sent in (or it went to every room)."""
    if entry.get("to") is not None:
        return seat.id in (entry["to"], entry["from"])
    return bool(entry.get("everywhere")) or entry.get("room") == seat.breakout


class Chat(Feature):
    def __init__(self, room: RoomView, documents: DocumentStore, throttle: Throttle) -> None:
        self.room = room
        self.documents = documents
        self.throttle = throttle
        self.handlers = {"chat": self.chat}

    async def chat(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        text, to = message.get("text"), message.get("to")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_CHAT:
            raise SignalingError("bad_message", f"'text' must be 1 to {MAX_CHAT} characters")
        recipient = self.room.target(seat, to) if to is not None else None
        limit = (self.throttle.limits.chat, seat.id)
        self.throttle.check(limit)
        await self.throttle.record(limit)
        entry = await self.post(seat, text, to=recipient.id if recipient else None)
        return {"type": "ok", "message": entry}

    async def share_file(self, seat: Seat, file: dict[str, Any]) -> None:
        """A file uploaded to the meeting, posted to its chat from the uploader's seat."""
        await self.post(seat, file["name"], file=file)

    async def post(self, seat: Seat, text: str, to: str | None = None,
                   file: dict[str, Any] | None = None, everywhere: bool = False) -> dict[str, Any]:
        """Store a chat message and deliver it: to everyone in the sender's room (or, ``everywhere``,
        in every room), or privately to sender and recipient."""
        entry = {"_id": uuid.uuid4().hex, "meeting_id": seat.meeting_id, "from": seat.id, "from_name": seat.name,
                 "to": to, "text": text, "at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
                 "room": seat.breakout, "everywhere": everywhere}
        if file is not None:
            entry["file"] = file
        await self.documents.insert("chat", entry)
        view = chat_view(entry)
        for other in self.room.in_meeting(seat.meeting_id):
            if _reaches(entry, other):
                other.send({"type": "chat", "message": view})
        return view

    async def history(self, seat: Seat) -> list[dict[str, Any]]:
        """What a seat sees of the chat: its room's messages to everyone and its own private ones."""
        entries = await self.documents.find("chat", {"meeting_id": seat.meeting_id}, sort=[("at", 1)])
        return [chat_view(e) for e in entries if _reaches(e, seat)][-CHAT_HISTORY:]

    async def joined(self, seat: Seat) -> dict[str, Any]:
        """What a (late) joiner sees (see history)."""
        return {"chat": await self.history(seat)}
