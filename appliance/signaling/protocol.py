"""The signaling protocol's own vocabulary: the one table of close codes, the typed error a request
can end in (and how the domain's errors become one), a seat in a meeting, a client's connection,
and the parsing of what a client sends. docs/protocol.md documents it message by message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

from ..accounts import Principal
from ..errors import DomainError, TooMany
from ..stores.relational import Meeting
from ..tracing import JoinTrace

MAX_MESSAGE = 256 * 1024


class Close(IntEnum):
    """Every WebSocket close code signaling uses, each with one meaning."""

    LEFT = 1000  # the seat ended: you left, the meeting went on
    GOING_AWAY = 1001  # the server is stopping
    UNAUTHORIZED = 4001  # no valid sign-in, or it ended (sign-out, account disabled)
    IDLE = 4002  # nothing received for IDLE_SECONDS
    ENDED = 4010  # the meeting ended
    REPLACED = 4011  # a newer connection took the seat over
    REMOVED = 4013  # a moderator removed you
    DENIED = 4014  # a moderator did not let you in
    RELAY_DROPPED = 4015  # between nodes: the client's socket to the relaying node dropped (a blip)
    NODE_LOST = 4016  # the node the meeting was on stopped: resume (the meeting is placed anew)


CLIENT_LEFT = (Close.LEFT, Close.GOING_AWAY)  # close codes of a client that went away on purpose
# Error codes that end the connection, with the close code they end it with.
CLOSING_CODES = {"meeting_ended": Close.ENDED, "unauthorized": Close.UNAUTHORIZED}


class SignalingError(Exception):
    """A request that cannot be served: sent to the client as an ``error`` message, and the
    connection closed with ``close`` if given."""

    def __init__(self, code: str, message: str, close: int | None = None, re: Any = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close = close
        self.re = re
        self.retry_after = retry_after

    @classmethod
    def of(cls, exc: DomainError) -> SignalingError:
        """The one translation of a domain error into the protocol."""
        return cls(exc.code, exc.message, close=CLOSING_CODES.get(exc.code),
                   retry_after=exc.retry_after if isinstance(exc, TooMany) else None)

    def message_for(self, reply_to: Any) -> dict[str, Any]:
        error: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.retry_after is not None:
            error["retry_after"] = self.retry_after
        if reply_to is not None or self.re is not None:
            error["re"] = reply_to if reply_to is not None else self.re
        return error


def sfu_refusal(reply: dict[str, Any], doing: str) -> SignalingError:
    """The SFU's ``error`` reply as the client gets it."""
    return SignalingError(reply.get("code", "internal"), reply.get("message", f"{doing} failed"))


class Socket(Protocol):
    """The WebSocket a connection sends on (Sanic's)."""

    async def send(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


@dataclass(eq=False)
class Connection:
    """One WebSocket. Everything sent to it goes through its outbox, drained by one task."""

    ws: Socket
    principal: Principal
    address: str = ""  # the client's IP address (for the per-address limits)
    outbox: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    seat: Seat | None = None
    knock: Knock | None = None
    close_code: int | None = None
    held: list[dict[str, Any]] | None = None  # events that wait for the join's reply
    trace: JoinTrace = field(default_factory=JoinTrace)  # its way into a meeting (appliance/tracing.py)
    relay_to: str | None = None  # the node its meeting lives on, when that is another (relay.py)
    relay_first: str = ""  # the message that found it out, passed on first

    def send(self, message: dict[str, Any]) -> None:
        if self.held is not None:
            self.held.append(message)
        else:
            self.outbox.put_nowait(message)

    def hold(self) -> None:
        """Keep what is sent from now on until :meth:`release`: a client must see its own
        ``joined`` before any event about the meeting it joined."""
        if self.held is None:
            self.held = []

    def release(self, *first: dict[str, Any]) -> None:
        """Send ``first``, then what was held (less what ``first`` already carries), in order."""
        held, self.held = self.held or [], None
        for message in first:
            self.outbox.put_nowait(message)
        for message in held:
            if not any(message is m for m in first):
                self.outbox.put_nowait(message)

    def close(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
            self.outbox.put_nowait(None)

    async def drain(self, closed: tuple[type[BaseException], ...]) -> None:
        """Send the outbox until it ends; ``closed`` are the exceptions of a socket gone."""
        try:
            while (message := await self.outbox.get()) is not None:
                await self.ws.send(json.dumps(message, separators=(",", ":")))
        except closed:
            return  # the client is gone; the reader side releases or keeps the seat
        with contextlib.suppress(Exception):
            await self.ws.close(self.close_code or Close.LEFT)


@dataclass(eq=False)
class Knock:
    """Someone waiting in a meeting's lobby for a host or moderator to let them in."""

    id: str
    conn: Connection
    meeting: Meeting
    role: str
    name: str
    removed: bool

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "removed": self.removed}


def media_room(meeting_id: str, breakout: str | None) -> str:
    """The SFU room of a meeting's main room (the meeting's id) or of one of its breakout rooms
    (``<meeting id>/<room id>``: a meeting id never holds a slash)."""
    return meeting_id if breakout is None else f"{meeting_id}/{breakout}"


@dataclass(eq=False)
class Seat:
    """Someone's place in a meeting; it outlives a dropped WebSocket for a while (a resume)."""

    id: str
    meeting_id: str
    meeting: dict[str, str]
    principal: Principal
    name: str
    role: str
    session: str
    connection: Connection | None = None
    expiry: asyncio.TimerHandle | None = None  # releases the seat if nobody resumes it
    muted: bool = False
    camera_off: bool = False
    hand_at: float | None = None  # when the hand went up (the order hands are taken in)
    # What the client must get right after a resume: the SFU's offer it has not answered yet, or a
    # media_reset (its media moved to another room while the socket was down).
    pending_offer: dict[str, Any] | None = None
    breakout: str | None = None  # the breakout room the seat is in (None: the main room)
    offer_left_behind: bool = False  # an offer of the SFU room the seat has left is unanswered

    @property
    def media_room(self) -> str:
        """The SFU room the seat's media lives in (see :func:`media_room`)."""
        return media_room(self.meeting_id, self.breakout)

    @property
    def user_id(self) -> str:
        return self.principal.id

    @property
    def principal_kind(self) -> str:
        return self.principal.kind

    @property
    def account(self) -> str | None:
        """The account behind the seat (None for a guest): who an audit event names."""
        return self.principal.id if self.principal.kind == "user" else None

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "guest": self.principal.kind == "guest",
                "muted": self.muted, "camera_off": self.camera_off, "hand_raised_at": self.hand_at,
                "breakout": self.breakout}

    def send(self, message: dict[str, Any]) -> None:
        if self.connection is not None:
            self.connection.send(message)


def _storable(value: Any) -> bool:
    """No text anywhere in a parsed message holds what JSON may escape but no text column stores:
    a lone UTF-16 surrogate ("\\ud800") or NUL."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return "\x00" not in value
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    return True


def parse(raw: str | bytes) -> dict[str, Any]:
    """A client's message as a dict with a string ``type`` (and, if given, a valid ``id``)."""
    if len(raw) > MAX_MESSAGE:
        raise SignalingError("bad_message", f"messages are limited to {MAX_MESSAGE // 1024} KiB")
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SignalingError("bad_message", "a message must be a JSON object") from None
    if not isinstance(message, dict):
        raise SignalingError("bad_message", "a message must be a JSON object")
    try:
        storable = _storable(message)
    except RecursionError:  # nested deeper than any message of the protocol
        storable = False
    if not storable:
        raise SignalingError("bad_message", "the message is nested too deep, or holds a lone surrogate "
                             "or a NUL character")
    reply_to = message.get("id")
    if reply_to is not None and (not isinstance(reply_to, (str, int)) or isinstance(reply_to, bool)):
        raise SignalingError("bad_message", "'id' must be a string or a number")
    if not isinstance(message.get("type"), str):
        raise SignalingError("bad_message", "a message needs a string 'type'", re=reply_to)
    return message


def flag(message: dict[str, Any], name: str) -> bool:
    """A required true/false field."""
    value = message.get(name)
    if not isinstance(value, bool):
        raise SignalingError("bad_message", f"'{name}' must be true or false")
    return value
