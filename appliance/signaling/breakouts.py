"""Breakout rooms: a host or moderator splits the meeting into smaller rooms for a while.

They create the rooms (named, 1 to ``MAX_ROOMS``), assign people by hand or at random (evenly),
and open them, with a timer if they like; opening moves everyone assigned into their room, and
closing (by hand, or when the timer ends, with a warning ``WARNING_SECONDS`` before) brings
everyone back. A room is an SFU room of its own (protocol.media_room), so its people see and hear
only each other; the roster stays the meeting's, each seat's view saying which room it is in, and
chat to everyone stays in the room it is sent from (chat.py). Moderators visit any room, a
participant may return to the main room, ask for help from their room, and, when the host allows
it, choose a room. The plan (rooms, assignments by account or guest, open or closed, end time) is
kept in the document store, so a restart loses none of it. docs/protocol.md, "Breakout rooms".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from .. import audit
from ..roles import MODERATORS
from ..stores.documents import DocumentExists, DocumentStore
from ..stores.relational import Relational
from ..throttle import Rule, Throttle
from .chat import MAX_CHAT, Chat
from .protocol import Seat, SignalingError, flag, media_room
from .room import Feature, RoomView, moderator

log = logging.getLogger("confmeet.breakouts")

COLLECTION = "breakouts"
MAX_ROOMS = 50  # appliance/web/breakouts.js MAX_ROOMS
MAX_NAME = 60
MAX_MINUTES = 24 * 60
WARNING_SECONDS = 60.0  # the rooms close this long after the warning (at once for a shorter timer)
HELP = Rule("breakout_help", 1, 30.0, message="one call for help per 30 seconds", code="too_fast")


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Plan:
    """One meeting's breakout rooms."""

    meeting_id: str
    rooms: dict[str, str]  # room id → name, in the order they were given
    assigned: dict[str, str] = field(default_factory=dict)  # account or guest id → room id
    open: bool = False
    ends_at: float | None = None  # seconds since the epoch; None: no timer
    allow_choose: bool = False  # participants may pick a room themselves
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one change (and its moves) at a time
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        return {"rooms": [{"id": k, "name": v} for k, v in self.rooms.items()], "assigned": self.assigned,
                "open": self.open, "ends_at": self.ends_at, "allow_choose": self.allow_choose}

    @classmethod
    def from_document(cls, meeting_id: str, doc: dict[str, Any]) -> Plan:
        return cls(meeting_id, {r["id"]: r["name"] for r in doc["rooms"]}, dict(doc["assigned"]), doc["open"],
                   doc["ends_at"], doc["allow_choose"])

    def view(self, seats: list[Seat]) -> dict[str, Any]:
        """The plan as clients see it: assignments by the seats present now."""
        return {"rooms": [{"id": k, "name": v} for k, v in self.rooms.items()],
                "assignments": {s.id: self.assigned[s.user_id] for s in seats if s.user_id in self.assigned},
                "open": self.open, "allow_choose": self.allow_choose,
                "ends_at": _iso(self.ends_at) if self.ends_at is not None else None,
                "seconds_left": max(0, round(self.ends_at - time.time())) if self.ends_at is not None else None}


def _room_names(message: dict[str, Any]) -> list[str]:
    names = message.get("rooms")
    if not isinstance(names, list) or not 1 <= len(names) <= MAX_ROOMS:
        raise SignalingError("bad_message", f"'rooms' must be a list of 1 to {MAX_ROOMS} room names")
    if not all(isinstance(n, str) and 1 <= len(n.strip()) <= MAX_NAME for n in names):
        raise SignalingError("bad_message", f"each room name must be 1 to {MAX_NAME} characters")
    names = [n.strip() for n in names]
    if len({n.casefold() for n in names}) != len(names):
        raise SignalingError("bad_message", "two rooms have the same name")
    return names


def _minutes(message: dict[str, Any]) -> float | None:
    minutes = message.get("minutes")
    if minutes is None:
        return None
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 < minutes <= MAX_MINUTES:
        raise SignalingError("bad_message", f"'minutes' must be null (no timer) or a number above 0, "
                                            f"at most {MAX_MINUTES}")
    return float(minutes)


class Breakouts(Feature):
    def __init__(self, room: RoomView, documents: DocumentStore, db: Relational, chat: Chat,
                 throttle: Throttle) -> None:
        self.room = room
        self.documents = documents
        self.db = db
        self.chat = chat
        self.throttle = throttle
        self.plans: dict[str, Plan] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.handlers = {
            "breakout_create": self.create, "breakout_assign": self.assign, "breakout_shuffle": self.shuffle,
            "breakout_open": self.open, "breakout_close": self.close, "breakout_broadcast": self.broadcast,
            "breakout_join": self.join, "breakout_help": self.help,
        }

    # ------------------------------------------------------------------ the plan
    async def _plan(self, meeting_id: str) -> Plan | None:
        """The meeting's plan, from the document store the first time (after a restart: an open
        plan's timer starts again, or the rooms close if it ran out meanwhile)."""
        plan = self.plans.get(meeting_id)
        if plan is None:
            doc = await self.documents.get(COLLECTION, meeting_id)
            if doc is None or meeting_id in self.plans:
                return self.plans.get(meeting_id)
            plan = self.plans[meeting_id] = Plan.from_document(meeting_id, doc)
            if plan.open and plan.ends_at is not None:
                self._schedule(plan)
            if plan.open:  # what runs per room (captions) follows them again
                await self._rooms_changed(plan)
        return plan

    async def _existing(self, seat: Seat) -> Plan:
        plan = await self._plan(seat.meeting_id)
        if plan is None:
            raise SignalingError("no_breakouts", "this meeting has no breakout rooms; create them first")
        return plan

    async def _save(self, plan: Plan) -> None:
        doc = plan.document()
        if not await self.documents.update(COLLECTION, plan.meeting_id, doc):
            with contextlib.suppress(DocumentExists):  # saved by a racing first save: update it
                await self.documents.insert(COLLECTION, {"_id": plan.meeting_id, **doc})
                return
            await self.documents.update(COLLECTION, plan.meeting_id, doc)

    async def _rooms_changed(self, plan: Plan) -> None:
        """Every feature learns which rooms are open now (their SFU rooms and names)."""
        rooms = {media_room(plan.meeting_id, r): name for r, name in plan.rooms.items()} if plan.open else {}
        await self.room.breakout_rooms(plan.meeting_id, rooms)

    def _announce(self, plan: Plan) -> None:
        seats = self.room.in_meeting(plan.meeting_id)
        message = {"type": "breakouts", **plan.view(seats)}
        for seat in seats:
            seat.send(message)

    async def _move(self, seat: Seat, plan: Plan, room: str | None) -> None:
        """Move one seat (its media, then its chat) and tell it where it is now."""
        if seat.breakout == room:
            return
        await self.room.move(seat, room)
        if self.room.seat(seat.id) is seat:
            seat.send({"type": "breakout", "room": room, "name": plan.rooms.get(room) if room else None,
                       "chat": await self.chat.history(seat)})

    async def joined(self, seat: Seat) -> dict[str, Any]:
        plan = await self._plan(seat.meeting_id)
        return {"breakouts": plan.view(self.room.in_meeting(seat.meeting_id)) if plan is not None else None}

    # ------------------------------------------------------------------ hosts and moderators
    async def create(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """New rooms, replacing the meeting's closed ones (and their assignments)."""
        moderator(seat, "create breakout rooms")
        names = _room_names(message)
        plan = await self._plan(seat.meeting_id)
        if plan is not None and plan.open:
            raise SignalingError("breakouts_open", "close the breakout rooms before making new ones")
        plan = Plan(seat.meeting_id, {f"r{i}": name for i, name in enumerate(names, 1)})
        self.plans[seat.meeting_id] = plan
        await self._save(plan)
        self._announce(plan)
        await self.room.audit(seat, "breakout.created", rooms=len(names))
        return {"type": "ok", "breakouts": plan.view(self.room.in_meeting(seat.meeting_id))}

    async def assign(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """Put people in rooms (null: in none); while the rooms are open they move at once."""
        moderator(seat, "assign people to breakout rooms")
        plan = await self._existing(seat)
        assignments = message.get("assignments")
        present = self.room.in_meeting(seat.meeting_id)
        if not isinstance(assignments, dict) or not 1 <= len(assignments) <= len(present):
            raise SignalingError("bad_message", "'assignments' must map participants in the meeting to a room "
                                                "id or null")
        targets = [(self.room.target(seat, pid), room) for pid, room in assignments.items()]
        if any(room is not None and room not in plan.rooms for _, room in targets):
            raise SignalingError("not_found", "no such breakout room")
        async with plan.lock:
            for target, room in targets:
                if room is None:
                    plan.assigned.pop(target.user_id, None)
                else:
                    plan.assigned[target.user_id] = room
            await self._save(plan)
            if plan.open:
                for target, room in targets:
                    await self._move(target, plan, room)
        self._announce(plan)
        return {"type": "ok"}

    async def shuffle(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """Everyone but hosts and moderators in a room at random, the rooms as even as can be."""
        moderator(seat, "assign people to breakout rooms")
        plan = await self._existing(seat)
        people = list({s.user_id: s for s in self.room.in_meeting(seat.meeting_id)
                       if s.role not in MODERATORS}.values())  # one place per person, whatever their tabs
        random.shuffle(people)
        rooms = list(plan.rooms)
        random.shuffle(rooms)  # which rooms get one more, when it does not come out even
        async with plan.lock:
            plan.assigned = {person.user_id: rooms[i % len(rooms)] for i, person in enumerate(people)}
            await self._save(plan)
            if plan.open:
                for target in self.room.in_meeting(seat.meeting_id):
                    await self._move(target, plan, plan.assigned.get(target.user_id, target.breakout))
        self._announce(plan)
        return {"type": "ok"}

    async def open(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """Open the rooms: everyone assigned moves to their room; the timer (minutes) starts."""
        moderator(seat, "open breakout rooms")
        plan = await self._existing(seat)
        minutes = _minutes(message)
        allow_choose = flag(message, "allow_choose") if "allow_choose" in message else False
        async with plan.lock:
            if plan.open:
                raise SignalingError("breakouts_open", "the breakout rooms are already open")
            plan.open, plan.allow_choose = True, allow_choose
            plan.ends_at = time.time() + minutes * 60 if minutes is not None else None
            await self._save(plan)
            self._schedule(plan)
            for target in self.room.in_meeting(seat.meeting_id):
                if target.user_id in plan.assigned:
                    await self._move(target, plan, plan.assigned[target.user_id])
            await self._rooms_changed(plan)
        self._announce(plan)
        await self.room.audit(seat, "breakout.opened", rooms=len(plan.rooms), minutes=minutes,
                              allow_choose=allow_choose)
        return {"type": "ok"}

    async def close(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "close breakout rooms")
        plan = await self._existing(seat)
        if not await self._close(plan):
            raise SignalingError("breakouts_closed", "the breakout rooms are not open")
        await self.room.audit(seat, "breakout.closed", reason="closed")
        return {"type": "ok"}

    async def broadcast(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """A message to every room (and the main room), in the chat of each."""
        moderator(seat, "send a message to every breakout room")
        text = message.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_CHAT:
            raise SignalingError("bad_message", f"'text' must be 1 to {MAX_CHAT} characters")
        plan = await self._existing(seat)
        if not plan.open:
            raise SignalingError("breakouts_closed", "the breakout rooms are not open")
        limit = (self.throttle.limits.chat, seat.id)
        self.throttle.check(limit)
        await self.throttle.record(limit)
        return {"type": "ok", "message": await self.chat.post(seat, text, everywhere=True)}

    # ------------------------------------------------------------------ everyone
    async def join(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """Go to a room (``room``: its id; null: back to the main room). A moderator may visit any;
        a participant their own, or any when the host lets them choose."""
        room = message.get("room")
        if room is not None and not isinstance(room, str):
            raise SignalingError("bad_message", "'room' must be a breakout room's id or null")
        plan = await self._plan(seat.meeting_id)
        if room is not None:
            if plan is None or not plan.open:
                raise SignalingError("breakouts_closed", "the breakout rooms are not open")
            if room not in plan.rooms:
                raise SignalingError("not_found", "no such breakout room")
            if seat.role not in MODERATORS and not plan.allow_choose and plan.assigned.get(seat.user_id) != room:
                raise SignalingError("forbidden", "you may only join the breakout room you were assigned")
        if plan is not None:
            async with plan.lock:
                await self._move(seat, plan, room)
        return {"type": "ok", "room": seat.breakout}

    async def help(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """Someone in a breakout room asks for a host or moderator: each of them is told which room."""
        plan = await self._plan(seat.meeting_id)
        if seat.breakout is None or plan is None:
            raise SignalingError("not_in_breakout", "you are not in a breakout room")
        limit = (HELP, seat.id)
        self.throttle.check(limit)
        await self.throttle.record(limit)
        moderators = [s for s in self.room.in_meeting(seat.meeting_id) if s.role in MODERATORS and s is not seat]
        notice = {"type": "breakout_help", "participant_id": seat.id, "name": seat.name, "room": seat.breakout,
                  "room_name": plan.rooms.get(seat.breakout, "")}
        for other in moderators:
            other.send(notice)
        return {"type": "ok", "told": len(moderators)}

    # ------------------------------------------------------------------ closing, by hand or by timer
    async def _close(self, plan: Plan) -> bool:
        """Close the rooms, everyone back in the main room; False if they were not open."""
        async with plan.lock:
            if not plan.open:
                return False
            for timer in plan.timers:
                timer.cancel()
            plan.timers.clear()
            plan.open, plan.ends_at = False, None
            await self._save(plan)
            await self._rooms_changed(plan)  # what runs per room stops while its people are still there
            for seat in self.room.in_meeting(plan.meeting_id):
                await self._move(seat, plan, None)
        self._announce(plan)
        return True

    def _schedule(self, plan: Plan) -> None:
        """The timer of open rooms: the warning, then the closing."""
        for timer in plan.timers:
            timer.cancel()
        plan.timers.clear()
        if plan.ends_at is None:
            return
        loop = asyncio.get_running_loop()
        left = plan.ends_at - time.time()
        plan.timers = [loop.call_later(max(0.0, left - WARNING_SECONDS), self._warn, plan),
                       loop.call_later(max(0.0, left), self._timer_ended, plan)]

    def _warn(self, plan: Plan) -> None:
        if plan.open and plan.ends_at is not None and self.plans.get(plan.meeting_id) is plan:
            left = max(0, round(plan.ends_at - time.time()))
            for seat in self.room.in_meeting(plan.meeting_id):
                seat.send({"type": "breakouts_closing", "seconds_left": left})

    def _timer_ended(self, plan: Plan) -> None:
        task = asyncio.get_running_loop().create_task(self._close_on_time(plan), name="breakouts-timer")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def _close_on_time(self, plan: Plan) -> None:
        if self.plans.get(plan.meeting_id) is plan and await self._close(plan):
            await self.db.run(audit.record, "breakout.closed", None, plan.meeting_id, reason="timer")

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("closing breakout rooms on their timer failed", exc_info=task.exception())
