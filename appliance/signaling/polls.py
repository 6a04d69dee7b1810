"""Polls in a meeting: a host or moderator asks a question with 2 to 10 options (one answer or
several, anonymous or named), everyone seated votes and may change their vote while the poll is
open, the hosts and moderators watch the results live, and publishing shows them to everyone.
docs/protocol.md, "Polls"; docs/meetings.md, "Polls".

Collection ``polls``: one document per poll (``_id`` the poll's id) with its question, options,
state, per-option ``counts``, ``ballot_count`` and ``ballots``. A ballot belongs to the person, not
to the seat (their account, or their guest pass), so that rejoining gives nobody a second one.

Anonymity holds in what is stored. A named poll's ballot is ``{voter, name, choice}``. An
anonymous poll's is ``{token, choice}``: ``token`` is an HMAC of the person's id under a key of
that poll derived from the appliance's secret key, which lives in its settings, never in the
document store. Whoever reads the document store (a dump, a backup) therefore cannot tell whose
ballot is whose; the server can, which is what lets a person change their vote, and see it, after
a restart. When the poll closes, its anonymous ballots are erased and only the counts remain:
from then on nobody, the server included, can tell who chose what. Ballots are kept sorted by
token, so their order says nothing of who voted first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..roles import MODERATORS
from ..stores.documents import DocumentStore
from ..throttle import Rule, Throttle
from .protocol import Seat, SignalingError
from .room import Feature, RoomView, moderator

POLLS = "polls"
MAX_QUESTION = 300  # appliance/web/polls.js MAX_QUESTION
MAX_OPTION = 200  # appliance/web/polls.js MAX_OPTION
MIN_OPTIONS, MAX_OPTIONS = 2, 10
MAX_POLLS = 20  # per meeting
CACHED_MEETINGS = 256  # past this, the polls of meetings nobody is in are dropped from memory
VOTES = Rule("poll_votes", 10, 10.0, message="too many votes", code="too_fast")  # per seat
OPEN, CLOSED, PUBLISHED = "open", "closed", "published"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Poll:
    """A poll as the server holds it; ``ballots`` by token (anonymous) or by person (named)."""

    id: str
    meeting_id: str
    question: str
    options: list[str]
    multiple: bool
    anonymous: bool
    state: str = OPEN
    created_at: str = field(default_factory=_now)
    closed_at: str | None = None
    published_at: str | None = None
    counts: list[int] = field(default_factory=list)
    ballot_count: int = 0
    ballots: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Poll:
        key = "token" if doc["anonymous"] else "voter"
        ballots = {b[key]: {k: v for k, v in b.items() if k != key} for b in doc.get("ballots", [])}
        return cls(id=doc["_id"], meeting_id=doc["meeting_id"], question=doc["question"], options=doc["options"],
                   multiple=doc["multiple"], anonymous=doc["anonymous"], state=doc["state"],
                   created_at=doc["created_at"], closed_at=doc.get("closed_at"),
                   published_at=doc.get("published_at"), counts=doc["counts"],
                   ballot_count=doc.get("ballot_count", len(ballots)), ballots=ballots)

    def stored_ballots(self, ballots: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The ballots (these, or the poll's) as stored: sorted by their key, so that their order
        tells nothing."""
        ballots = self.ballots if ballots is None else ballots
        key = "token" if self.anonymous else "voter"
        return [{key: k, **ballots[k]} for k in sorted(ballots)]

    def doc(self) -> dict[str, Any]:
        return {"_id": self.id, "meeting_id": self.meeting_id, "question": self.question, "options": self.options,
                "multiple": self.multiple, "anonymous": self.anonymous, "state": self.state,
                "created_at": self.created_at, "closed_at": self.closed_at, "published_at": self.published_at,
                "counts": self.counts, "ballot_count": self.ballot_count, "ballots": self.stored_ballots()}

    def results(self, names: bool) -> dict[str, Any]:
        """Counts per option; with ``names`` (for those who run the meeting), a named poll's
        voters by option, by name."""
        voters = None
        if names and not self.anonymous:
            voters = [sorted((b["name"] for b in self.ballots.values() if i in b["choice"]), key=str.casefold)
                      for i in range(len(self.options))]
        return {"ballots": self.ballot_count, "counts": list(self.counts), "voters": voters}


@dataclass
class _MeetingPolls:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    polls: dict[str, Poll] | None = None  # None until read from the store


def _text(value: Any, name: str, most: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > most:
        raise SignalingError("bad_message", f"'{name}' must be 1 to {most} characters")
    return value.strip()


def _optional_flag(message: dict[str, Any], name: str) -> bool:
    value = message.get(name, False)
    if not isinstance(value, bool):
        raise SignalingError("bad_message", f"'{name}' must be true or false")
    return value


class Polls(Feature):
    def __init__(self, room: RoomView, documents: DocumentStore, throttle: Throttle, secret_key: str) -> None:
        self.room = room
        self.documents = documents
        self.throttle = throttle
        self._secret = hmac.new(secret_key.encode(), b"confmeet poll ballots", hashlib.sha256).digest()
        self._meetings: dict[str, _MeetingPolls] = {}
        self.handlers = {"poll_create": self.create, "poll_vote": self.vote, "poll_close": self.close,
                         "poll_publish": self.publish, "poll_list": self.list_polls}

    # ------------------------------------------------------------------ state
    @contextlib.asynccontextmanager
    async def _polls(self, meeting_id: str) -> AsyncIterator[dict[str, Poll]]:
        """The meeting's polls, read from the store once, changed by one handler at a time."""
        entry = self._meetings.get(meeting_id)
        if entry is None:
            if len(self._meetings) >= CACHED_MEETINGS:
                for other in [m for m, e in self._meetings.items()
                              if not e.lock.locked() and not self.room.in_meeting(m)]:
                    del self._meetings[other]
            entry = self._meetings[meeting_id] = _MeetingPolls()
        async with entry.lock:
            if entry.polls is None:
                docs = await self.documents.find(POLLS, {"meeting_id": meeting_id}, sort=[("created_at", 1)])
                entry.polls = {d["_id"]: Poll.from_doc(d) for d in docs}
            yield entry.polls

    def _voter(self, poll: Poll, seat: Seat) -> str:
        """Whose ballot a seat casts: the person's id, or for an anonymous poll its token."""
        if not poll.anonymous:
            return seat.user_id
        key = hmac.new(self._secret, poll.id.encode(), hashlib.sha256).digest()
        return hmac.new(key, seat.user_id.encode(), hashlib.sha256).hexdigest()

    def view(self, poll: Poll, seat: Seat) -> dict[str, Any]:
        """The poll as this seat may see it: its own choice; the results if it runs the meeting
        (with who chose what, for a named poll) or once they are published (the counts)."""
        mine = poll.ballots.get(self._voter(poll, seat))
        runs = seat.role in MODERATORS
        return {"id": poll.id, "question": poll.question, "options": poll.options, "multiple": poll.multiple,
                "anonymous": poll.anonymous, "state": poll.state, "created_at": poll.created_at,
                "closed_at": poll.closed_at, "published_at": poll.published_at,
                "my_choice": mine["choice"] if mine else None,
                "results": poll.results(names=runs) if runs or poll.state == PUBLISHED else None}

    def _tell(self, poll: Poll, change: str, only: set[str] | None = None) -> None:
        """Each seat of the meeting (or of ``only``: seat ids) gets the poll as it may see it."""
        for seat in self.room.in_meeting(poll.meeting_id):
            if only is None or seat.id in only:
                seat.send({"type": "poll", "change": change, "poll": self.view(poll, seat)})

    @staticmethod
    def _find(polls: dict[str, Poll], message: dict[str, Any]) -> Poll:
        poll = polls.get(message.get("poll_id")) if isinstance(message.get("poll_id"), str) else None
        if poll is None:
            raise SignalingError("not_found", "no such poll in this meeting")
        return poll

    # ------------------------------------------------------------------ messages
    async def create(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "create polls")
        question = _text(message.get("question"), "question", MAX_QUESTION)
        options = message.get("options")
        if not isinstance(options, list) or not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
            raise SignalingError("bad_message", f"'options' must be a list of {MIN_OPTIONS} to {MAX_OPTIONS} texts")
        options = [_text(option, "options", MAX_OPTION) for option in options]
        if len({option.casefold() for option in options}) < len(options):
            raise SignalingError("bad_message", "the options must differ from each other")
        multiple, anonymous = _optional_flag(message, "multiple"), _optional_flag(message, "anonymous")
        async with self._polls(seat.meeting_id) as polls:
            if len(polls) >= MAX_POLLS:
                raise SignalingError("too_many_polls", f"a meeting can have at most {MAX_POLLS} polls")
            poll = Poll(id=uuid.uuid4().hex, meeting_id=seat.meeting_id, question=question, options=options,
                        multiple=multiple, anonymous=anonymous, counts=[0] * len(options))
            await self.documents.insert(POLLS, poll.doc())
            polls[poll.id] = poll
        self._tell(poll, "opened")
        await self.room.audit(seat, "poll.created", poll=poll.id, question=question, anonymous=anonymous)
        return {"type": "ok", "poll": self.view(poll, seat)}

    async def vote(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        choice = message.get("choice")
        if (not isinstance(choice, list) or not 1 <= len(choice) <= MAX_OPTIONS
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in choice)):
            raise SignalingError("bad_message", "'choice' must be a list of option numbers (from 0)")
        limit = (VOTES, seat.id)
        self.throttle.check(limit)
        await self.throttle.record(limit)
        async with self._polls(seat.meeting_id) as polls:
            poll = self._find(polls, message)
            if poll.state != OPEN:
                raise SignalingError("poll_closed", "the poll is closed")
            if len(set(choice)) != len(choice) or not all(0 <= i < len(poll.options) for i in choice):
                raise SignalingError("bad_message", "'choice' must name different options of the poll")
            if not poll.multiple and len(choice) != 1:
                raise SignalingError("bad_message", "this poll takes one choice")
            voter = self._voter(poll, seat)
            ballots = dict(poll.ballots)
            ballots[voter] = {"choice": sorted(choice)} if poll.anonymous else {"name": seat.name,
                                                                                "choice": sorted(choice)}
            counts = [sum(i in b["choice"] for b in ballots.values()) for i in range(len(poll.options))]
            await self.documents.update(POLLS, poll.id, {"ballots": poll.stored_ballots(ballots), "counts": counts,
                                                         "ballot_count": len(ballots)})
            poll.ballots, poll.counts, poll.ballot_count = ballots, counts, len(ballots)
        # The results go to those who run the meeting; the choice to the voter's other seats.
        self._tell(poll, "voted", {s.id for s in self.room.in_meeting(seat.meeting_id)
                                   if s is not seat and (s.role in MODERATORS or s.user_id == seat.user_id)})
        return {"type": "ok", "poll": self.view(poll, seat)}

    async def _end(self, poll: Poll, publish: bool) -> None:
        """Close the poll (an anonymous one loses its ballots: only the counts stay), and publish it."""
        fields: dict[str, Any] = {}
        if poll.state == OPEN:
            fields = {"state": CLOSED, "closed_at": _now(), **({"ballots": []} if poll.anonymous else {})}
        if publish:
            fields.update(state=PUBLISHED, published_at=_now())
        await self.documents.update(POLLS, poll.id, fields)
        for name, value in fields.items():
            if name != "ballots":
                setattr(poll, name, value)
        if "ballots" in fields:
            poll.ballots = {}

    async def close(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "close polls")
        async with self._polls(seat.meeting_id) as polls:
            poll = self._find(polls, message)
            if poll.state != OPEN:
                raise SignalingError("poll_closed", "the poll is closed already")
            await self._end(poll, publish=False)
        self._tell(poll, "closed")
        await self.room.audit(seat, "poll.closed", poll=poll.id, ballots=poll.ballot_count)
        return {"type": "ok", "poll": self.view(poll, seat)}

    async def publish(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "publish poll results")
        async with self._polls(seat.meeting_id) as polls:
            poll = self._find(polls, message)
            if poll.state == PUBLISHED:
                raise SignalingError("poll_published", "the results are published already")
            await self._end(poll, publish=True)
        self._tell(poll, "published")
        await self.room.audit(seat, "poll.published", poll=poll.id, ballots=poll.ballot_count)
        return {"type": "ok", "poll": self.view(poll, seat)}

    async def list_polls(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """The polls again, as the seat may see them now (after becoming a moderator, say)."""
        return {"type": "ok", "polls": await self._views(seat)}

    async def _views(self, seat: Seat) -> list[dict[str, Any]]:
        async with self._polls(seat.meeting_id) as polls:
            return [self.view(poll, seat) for poll in polls.values()]

    async def joined(self, seat: Seat) -> dict[str, Any]:
        return {"polls": await self._views(seat)}


# ---------------------------------------------------------------------- the transcript's export
async def exported(documents: DocumentStore, meeting_id: str, everything: bool) -> list[dict[str, Any]]:
    """The meeting's polls for its transcript: all of them for those who ran it (``everything``),
    else those whose results were published, as counts; who chose what only for a named poll,
    and only for those who ran the meeting."""
    polls = [Poll.from_doc(d) for d in await documents.find(POLLS, {"meeting_id": meeting_id},
                                                            sort=[("created_at", 1)])]
    out = []
    for poll in polls:
        if not everything and poll.state != PUBLISHED:
            continue
        results = poll.results(names=everything)
        options = [{"text": text, "votes": results["counts"][i],
                    **({"voters": results["voters"][i]} if results["voters"] is not None else {})}
                   for i, text in enumerate(poll.options)]
        out.append({"question": poll.question, "multiple": poll.multiple, "anonymous": poll.anonymous,
                    "state": poll.state, "created_at": poll.created_at, "closed_at": poll.closed_at,
                    "ballots": results["ballots"], "options": options})
    return out


def _line(text: str) -> str:
    """Text on one line, whatever line breaks it held (a blank line would end a WebVTT note)."""
    return " ".join(text.split())


def polls_text(polls: list[dict[str, Any]]) -> list[str]:
    """The exported polls as lines of plain text (the transcript's text and WebVTT exports)."""
    lines: list[str] = []
    for poll in polls:
        kind = ", ".join(["several answers" if poll["multiple"] else "one answer",
                          "anonymous" if poll["anonymous"] else "named", poll["state"],
                          f"{poll['ballots']} voted"])
        lines.append(f"Poll: {_line(poll['question'])} ({kind})")
        for option in poll["options"]:
            names = f": {', '.join(_line(name) for name in option['voters'])}" if option.get("voters") else ""
            lines.append(f"  {_line(option['text'])} — {option['votes']}{names}")
    return lines
