"""The meeting's shared whiteboard: one Yjs document per meeting that the clients edit
(appliance/web/whiteboard.js) and the server checks, relays, merges and keeps.
docs/protocol.md, "Whiteboard".

A client sends its changes as Yjs updates. The server applies each to its own copy of the board
(pycrdt, the Rust Yjs port), which proves that it parses and that nothing in it waits for changes
the board lacks, stores it, then relays it to the others and acknowledges it: an acknowledged
change survives a restart. The stored board is one merged state plus the updates since; every
``COMPACT_EVERY`` updates they are merged into the state again, so it stays one compact update.
A late joiner gets the whole board in ``joined``. Hosts and moderators may lock the board so that
only they can draw.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, get_update

from ..stores.documents import DocumentStore
from ..throttle import Rule, Throttle
from .protocol import Seat, SignalingError, flag
from .room import Feature, RoomView, moderator

BOARDS = "whiteboards"  # one document per meeting: {_id: meeting id, state, upto, locked}
UPDATES = "whiteboard_updates"  # the updates since the state: {_id, meeting_id, seq, update}
MAX_UPDATE = 128 * 1024  # bytes of one update: in base64 it fits one signaling message (256 KiB)
# Bytes a board may hold: a joiner gets all of it in one message, 2.7 MB in base64 (the project's
# own client, cli/client/signaling.py, takes messages of up to 4 MiB).
MAX_BOARD = 2 * 1024 * 1024
COMPACT_EVERY = 64  # updates stored one by one before they are merged into the state
# Clients send their changes at most about ten times a second (whiteboard.js FLUSH_MS).
CHANGES = Rule("whiteboard", 60, 5.0, message="too many whiteboard changes", code="too_fast")
EMPTY = Doc().get_update()


def decoded(message: dict[str, Any], name: str, limit: int) -> bytes:
    """A required base64 field of at most ``limit`` bytes."""
    value = message.get(name)
    too_big = SignalingError("bad_message", f"'{name}' must be base64 of 1 byte to {limit // 1024} KiB")
    if not isinstance(value, str) or not value or len(value) > 4 * -(-limit // 3):
        raise too_big
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignalingError("bad_update", f"'{name}' is not valid base64") from None
    if len(data) > limit:
        raise too_big
    return data


def refused(exc: BaseException, what: str = "'update' is not a Yjs update this whiteboard can take") -> SignalingError:
    """The error for what pycrdt could not read or apply. Malformed input makes it raise ValueError
    or RuntimeError, and some makes the Rust code panic: pyo3's PanicException, a BaseException.
    Anything else (a KeyboardInterrupt) goes on."""
    if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
        raise exc
    return SignalingError("bad_update", what)


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(eq=False)
class Board:
    """A meeting's board as the server holds it while someone is in the meeting."""

    meeting_id: str
    doc: Doc
    locked: bool = False
    stored: bool = False  # whether its document exists in BOARDS
    seq: int = 0  # the last update stored
    upto: int = 0  # the last update merged into the stored state
    size: int = 0  # bytes stored: the state and the updates since (at least the board's own size)
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)

    def state(self) -> bytes:
        return self.doc.get_update()


class Whiteboard(Feature):
    def __init__(self, room: RoomView, documents: DocumentStore, throttle: Throttle) -> None:
        self.room = room
        self.documents = documents
        self.throttle = throttle
        self.boards: dict[str, Board] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self.handlers = {"whiteboard_update": self.update, "whiteboard_state": self.state,
                         "whiteboard_lock": self.lock}

    # ------------------------------------------------------------------ messages
    async def update(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """Apply, store and relay one update of the sender's."""
        data = decoded(message, "update", MAX_UPDATE)
        await self._throttle(seat)
        async with self._holding(seat.meeting_id) as board:
            if board.locked:
                moderator(seat, "draw on the whiteboard while it is locked")
            try:
                adds = get_update(data, board.doc.get_state())[:1] != b"\x00"  # anything but erasing
            except BaseException as exc:  # a Rust panic is a BaseException (see refused)
                raise refused(exc) from None
            if adds and board.size + len(data) > MAX_BOARD and board.seq > board.upto:
                await self._compact(board)  # the size counted is a bound: merged, erased strokes take no room
            if adds and board.size + len(data) > MAX_BOARD:
                raise SignalingError("board_full", f"the whiteboard holds at most {MAX_BOARD // 1024 // 1024} MiB; "
                                     "erase something first")
            try:
                board.doc.apply_update(data)
                waiting = get_update(data, board.doc.get_state())[:1] != b"\x00"
            except BaseException as exc:
                failure = refused(exc)
                await self._reload(board)  # it parsed, then failed half-way in: the copy may hold part of it
                raise failure from None
            if waiting:
                # Parts of it build on changes the board has not got: they could be neither shown
                # nor kept apart from them. The board is read again from the store, without it.
                await self._reload(board)
                raise SignalingError("out_of_sync", "the update builds on changes the whiteboard does not have; "
                                     "ask for whiteboard_state and apply your changes to it")
            await self._store(board, data)
            # Relayed while the board is held: everyone gets the updates in the order they were stored.
            for other in self.room.in_meeting(seat.meeting_id):
                if other is not seat:
                    other.send({"type": "whiteboard_update", "update": message["update"], "from": seat.id})
        return {"type": "ok"}

    async def state(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """The board, or what of it a client lacks given its state vector."""
        vector = decoded(message, "state_vector", MAX_UPDATE) if "state_vector" in message else None
        await self._throttle(seat)
        board = await self.board(seat.meeting_id)
        try:
            data = board.doc.get_update(vector) if vector is not None else board.state()
        except BaseException as exc:  # a Rust panic is a BaseException (see refused)
            raise refused(exc, "'state_vector' is not a Yjs state vector") from None
        return {"type": "whiteboard_state", "update": encoded(data), "locked": board.locked}

    async def lock(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """Hosts and moderators: let only them draw (locked) or everyone again."""
        locked = flag(message, "locked")
        moderator(seat, "lock or unlock the whiteboard")
        async with self._holding(seat.meeting_id) as board:
            if board.locked != locked:
                board.locked = locked
                await self._save(board, {"locked": locked})
                await self.room.audit(seat, "whiteboard.locked" if locked else "whiteboard.unlocked")
                self.room.broadcast(seat.meeting_id, {"type": "whiteboard_locked", "locked": locked, "by": seat.name})
        return {"type": "ok", "locked": locked}

    async def joined(self, seat: Seat) -> dict[str, Any]:
        """A (late) joiner gets the whole board, and whether it is locked."""
        self._forget_idle()
        board = await self.board(seat.meeting_id)
        return {"whiteboard": {"update": encoded(board.state()), "locked": board.locked}}

    # ------------------------------------------------------------------ the boards
    async def board(self, meeting_id: str) -> Board:
        """The meeting's board: in memory, else read from the store (once, however many ask)."""
        board = self.boards.get(meeting_id)
        if board is not None:
            return board
        async with self._loading.setdefault(meeting_id, asyncio.Lock()):
            board = self.boards.get(meeting_id)
            if board is None:
                board = Board(meeting_id, Doc())
                await self._read(board)
                self.boards[meeting_id] = board
        self._loading.pop(meeting_id, None)
        return board

    @contextlib.asynccontextmanager
    async def _holding(self, meeting_id: str) -> AsyncIterator[Board]:
        """The meeting's board, for one change at a time (and never one already forgotten)."""
        while True:
            board = await self.board(meeting_id)
            async with board.busy:
                if self.boards.get(meeting_id) is board:
                    yield board
                    return

    async def _read(self, board: Board) -> None:
        """Fill an empty board from the store: its state, then the updates since."""
        stored = await self.documents.get(BOARDS, board.meeting_id)
        if stored is not None:
            state = base64.b64decode(stored["state"])
            board.doc.apply_update(state)
            board.stored, board.locked = True, bool(stored.get("locked"))
            board.seq = board.upto = int(stored["upto"])
            board.size = len(state)
        for entry in await self.documents.find(UPDATES, {"meeting_id": board.meeting_id, "seq": {"$gt": board.upto}},
                                               sort=[("seq", 1)]):
            data = base64.b64decode(entry["update"])
            board.doc.apply_update(data)
            board.seq = int(entry["seq"])
            board.size += len(data)

    async def _reload(self, board: Board) -> None:
        board.doc, board.stored, board.seq, board.upto, board.size = Doc(), False, 0, 0, 0
        await self._read(board)

    async def _store(self, board: Board, data: bytes) -> None:
        """Keep one update (before anyone hears of it); merge the updates now and then."""
        if not board.stored:
            await self._save(board, {"locked": board.locked})
        seq = board.seq + 1
        await self.documents.insert(UPDATES, {"_id": f"{board.meeting_id}/{seq:010d}", "meeting_id": board.meeting_id,
                                              "seq": seq, "update": encoded(data)})
        board.seq = seq
        board.size += len(data)
        if board.seq - board.upto >= COMPACT_EVERY:
            await self._compact(board)

    async def _compact(self, board: Board) -> None:
        """The state and the updates since, merged into one update. The state is written first:
        a restart in between finds updates the state already holds, and skips them by ``seq``."""
        state = board.state()
        await self._save(board, {"state": encoded(state), "upto": board.seq})
        await self.documents.delete_many(UPDATES, {"meeting_id": board.meeting_id, "seq": {"$lte": board.seq}})
        board.upto = board.seq
        board.size = len(state)

    async def _save(self, board: Board, fields: dict[str, Any]) -> None:
        if board.stored:
            await self.documents.update(BOARDS, board.meeting_id, fields)
            return
        await self.documents.insert(BOARDS, {"_id": board.meeting_id, "state": encoded(EMPTY), "upto": 0,
                                             "locked": board.locked, **fields})
        board.stored = True

    def _forget_idle(self) -> None:
        """Boards of meetings nobody is in leave memory (the store has them)."""
        for meeting_id, board in list(self.boards.items()):
            if not board.busy.locked() and not self.room.in_meeting(meeting_id):
                del self.boards[meeting_id]

    async def _throttle(self, seat: Seat) -> None:
        limit = (CHANGES, seat.id)
        self.throttle.check(limit)
        await self.throttle.record(limit)
