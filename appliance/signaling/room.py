"""What a signaling feature sees and may do, and what makes something a feature.

A feature (the lobby, moderation, chat, captions, recording, breakout rooms) is one module written
against :class:`RoomView`: the seats of a meeting, a way to send to them, the SFU gateway, the
audit log, the two acts that change who is seated (release a seat; seat a connection that waited)
and the one that changes where a seat's media is (move it to a breakout room). It
never sees the server itself, and nothing imports it back: app.py hands the features to the
server, which builds its dispatch table from their ``handlers``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .. import audit
from ..roles import MODERATORS
from ..stores.relational import Relational
from .protocol import Connection, Seat, SignalingError

if TYPE_CHECKING:
    from ..stores.relational import Meeting

Handler = Callable[[Seat, dict[str, Any]], Awaitable[dict[str, Any] | None]]


def moderator(seat: Seat, action: str, roles: tuple[str, ...] = MODERATORS) -> None:
    """Refuse ``action`` to a seat whose role is not among ``roles``."""
    if seat.role not in roles:
        raise SignalingError("forbidden", f"only the meeting's {' or '.join(roles)} can {action}")


class SfuGateway(Protocol):
    """The SFU as signaling reaches it: messages in, events out (appliance/sfu/host.py)."""

    async def request(self, room: str, message: dict[str, Any]) -> dict[str, Any]: ...

    def subscribe_events(self) -> AsyncIterator[dict[str, Any]]: ...


class RoomView:
    """A feature's view of signaling (see the module doc)."""

    def __init__(self, seats: Mapping[str, Seat], sfu: SfuGateway, db: Relational,
                 release: Callable[[Seat, str, int | None], Awaitable[None]],
                 seat: Callable[[Connection, Meeting, str, str], Awaitable[dict[str, Any]]],
                 check_name: Callable[[str, Any, str], None],
                 move: Callable[[Seat, str | None], Awaitable[None]],
                 breakout_rooms: Callable[[str, dict[str, str]], Awaitable[None]]) -> None:
        self._seats = seats
        self.sfu = sfu
        self._db = db
        self._release = release
        self._seat = seat
        self._check_name = check_name
        self._move = move
        self._breakout_rooms = breakout_rooms

    # ------------------------------------------------------------------ who is there
    def in_meeting(self, meeting_id: str) -> list[Seat]:
        return [seat for seat in self._seats.values() if seat.meeting_id == meeting_id]

    def in_media_room(self, room: str) -> list[Seat]:
        """The seats whose media is in one SFU room (a meeting's main room or a breakout room)."""
        return [seat for seat in self._seats.values() if seat.media_room == room]

    def seat(self, seat_id: str) -> Seat | None:
        return self._seats.get(seat_id)

    def target(self, seat: Seat, participant_id: Any) -> Seat:
        """The participant a message names, in the sender's meeting."""
        target = self._seats.get(participant_id) if isinstance(participant_id, str) else None
        if target is None or target.meeting_id != seat.meeting_id:
            raise SignalingError("not_found", "no such participant in this meeting")
        return target

    # ------------------------------------------------------------------ telling them
    def broadcast(self, meeting_id: str, message: dict[str, Any]) -> None:
        for seat in self.in_meeting(meeting_id):
            seat.send(message)

    def updated(self, seat: Seat) -> None:
        """Everyone learns of a change to someone's role, microphone, camera or hand."""
        self.broadcast(seat.meeting_id, {"type": "participant_updated", "participant": seat.view()})

    # ------------------------------------------------------------------ acts
    async def audit(self, seat: Seat, action: str, **detail: Any) -> None:
        """Record what someone seated did (appliance/audit.py has the actions)."""
        await self._db.run(audit.record, action, seat.account, seat.meeting_id,
                           by=seat.name, by_participant=seat.id, **detail)

    async def release(self, seat: Seat, reason: str, close: int | None = None) -> None:
        """End a seat: the others are told, the SFU and the record follow."""
        await self._release(seat, reason, close)

    async def move(self, seat: Seat, breakout: str | None) -> None:
        """Move a seat's media to a breakout room of its meeting (None: the main room); its
        client connects its media afresh and everyone sees the seat's new room."""
        await self._move(seat, breakout)

    async def breakout_rooms(self, meeting_id: str, rooms: dict[str, str]) -> None:
        """Tell every feature which breakout rooms of a meeting are open now (``{}`` once they
        close): their SFU rooms and names (see :meth:`Feature.breakout_rooms`)."""
        await self._breakout_rooms(meeting_id, rooms)

    async def seat_connection(self, conn: Connection, meeting: Meeting, role: str, name: str) -> dict[str, Any]:
        """Seat a connection that waited (in the lobby); its ``joined`` reply."""
        return await self._seat(conn, meeting, role, name)

    def check_name(self, meeting_id: str, principal: Any, name: str) -> None:
        """Refuse a display name that poses as a role or as someone else in the meeting."""
        self._check_name(meeting_id, principal, name)


class Feature:
    """A part of the protocol. Subclasses set ``handlers`` (message type → handler of a seated
    connection's message) and override the hooks they need; the defaults do nothing."""

    handlers: Mapping[str, Handler] = {}

    def handles(self, event: dict[str, Any]) -> bool:
        """Whether this SFU event is the feature's (then only it gets it)."""
        return False

    async def sfu_event(self, event: dict[str, Any]) -> None:
        """An SFU event the feature said it handles."""

    async def joined(self, seat: Seat) -> dict[str, Any]:
        """Fields the feature adds to a ``joined`` reply (taken right after the meeting's own)."""
        return {}

    async def gate(self, conn: Connection, meeting: Meeting, role: str, name: str,
                   principal: Any) -> dict[str, Any] | None:
        """Before someone is seated: a reply that keeps them out for now (the lobby's
        ``waiting``), or None to let them in."""
        return None

    def connection_closed(self, conn: Connection) -> None:
        """A WebSocket ended (whether or not it held a seat)."""

    async def media_lost(self, meeting_id: str) -> None:
        """The SFU lost a room's media (its worker process died): whatever ran there is gone; the
        participants are about to join the SFU again. ``meeting_id`` is the SFU room: a meeting's
        id for its main room, protocol.media_room's key for a breakout room."""

    async def breakout_rooms(self, meeting_id: str, rooms: dict[str, str]) -> None:
        """The breakout rooms of a meeting that are open now, by their SFU room
        (protocol.media_room's key) with each room's name; ``{}`` once they close. Told when
        they open or close (by a host or by their timer) and when a restarted server finds them
        open; what runs per room (captions, recording) follows them."""

    async def meeting_emptied(self, meeting_id: str) -> None:
        """The last seat of a meeting was released: what the feature keeps for the meeting while
        people are in it (a recording running, a cache) ends or is dropped."""

    async def moved(self, seat: Seat) -> None:
        """A seat's media moved to another SFU room (``seat.media_room``: a breakout room, or
        back to the main room), already joined there."""
