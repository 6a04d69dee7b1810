"""Captions over signaling: the host turns them on for the meeting and picks its language; each
participant may say which language they speak (or leave it to detection), and chooses to see
captions; caption events from the SFU go only to the seats that chose to, and final ones into
the meeting's transcript. Captions the host left on come back by themselves when a meeting that
emptied fills again. While breakout rooms are open each is captioned too, by a sink of its own
in its SFU room (started with someone in the room, or when the first person arrives): its captions
reach only the viewers in that room, and its transcript lines carry the room's name. Messages:
docs/meetings.md ("Captions") and docs/protocol.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..captions import metrics
from ..captions.transcripts import Transcripts
from ..inference.languages import canonical, is_tag
from ..stores.relational import Participant, Relational
from .e2ee import E2ee
from .protocol import Seat, SignalingError, flag, sfu_refusal
from .room import Feature, RoomView, moderator

log = logging.getLogger("confmeet.captions")
SINK = "captions"
EVENTS = ("caption", "captions_status")
BAD_LANGUAGE = ("'language' must be a caption language: an ISO 639-1 code (\"en\", \"de\", ...), zh-CN or "
                "zh-Hans (Simplified Chinese), zh-TW, zh-HK or zh-Hant (Traditional), or \"\" to detect it")


@dataclass
class RoomSink:
    """The captions sink of one open breakout room."""

    name: str  # the room's name: its transcript lines carry it
    run: int = 0  # as MeetingCaptions.run, per room
    running: bool = False


@dataclass
class MeetingCaptions:
    enabled: bool = False  # the host's choice: it stays while the meeting is empty
    language: str = "en"
    speakers: dict[str, str] = field(default_factory=dict)  # participant → the language they speak
    state: str = "off"  # off | available | degraded | unavailable
    detail: str = ""
    interim: bool = True  # interim captions run (they turn themselves off on a busy CPU)
    interim_detail: str = ""
    status: dict[str, Any] = field(default_factory=dict)  # the sink's latest counters and queues
    viewers: set[str] = field(default_factory=set)  # seats that show captions
    names: dict[str, str] = field(default_factory=dict)  # speakers' names, kept after they leave
    run: int = 0  # the sink started last (its sink_stopped event says which run it ends)
    running: bool = False
    interim_of: dict[str, str] = field(default_factory=dict)  # participant → utterance of their last interim
    breakouts: dict[str, RoomSink] = field(default_factory=dict)  # SFU room → its sink, while the rooms are open

    def view(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "language": self.language, "state": self.state, "detail": self.detail,
                "interim": self.interim, "interim_detail": self.interim_detail, "speakers": dict(self.speakers)}


class Captions(Feature):
    def __init__(self, room: RoomView, transcripts: Transcripts, db: Relational, e2ee: E2ee | None = None) -> None:
        self.room = room
        self.e2ee = e2ee
        self.transcripts = transcripts
        self.db = db
        self.meetings: dict[str, MeetingCaptions] = {}
        self.handlers = {"set_captions": self.set_captions, "show_captions": self.show_captions,
                         "caption_language": self.caption_language}

    def view(self, meeting_id: str) -> dict[str, Any]:
        return self.meetings.get(meeting_id, MeetingCaptions()).view()

    async def joined(self, seat: Seat) -> dict[str, Any]:
        return {"captions": self.view(seat.meeting_id)}

    def status(self, meeting_id: str) -> dict[str, Any]:
        """The captions of a meeting for the API: state, and the sink's counters and queues."""
        captions = self.meetings.get(meeting_id, MeetingCaptions())
        skip = ("type", "state", "detail", "language", "interim", "interim_detail")
        return {**captions.view(), "viewers": len(captions.viewers),
                **{k: v for k, v in captions.status.items() if k not in skip}}

    # ------------------------------------------------------------------ the sink
    def _sink(self, room: str) -> tuple[MeetingCaptions, MeetingCaptions | RoomSink] | None:
        """The captions of the meeting an SFU room belongs to, and the room's sink state (the
        meeting's own for its main room); None for a room nothing captions."""
        captions = self.meetings.get(room.partition("/")[0])
        if captions is None:
            return None
        sink = captions if "/" not in room else captions.breakouts.get(room)
        return (captions, sink) if sink is not None else None

    def _rooms(self, meeting_id: str) -> list[str]:
        """The SFU rooms captions run in: the main room and the open breakout rooms."""
        return [meeting_id, *self.meetings[meeting_id].breakouts]

    def _running(self, room: str) -> bool:
        found = self._sink(room)
        return found is not None and found[1].running

    async def _start(self, room: str, participant: str) -> dict[str, Any]:
        found = self._sink(room)
        assert found is not None
        captions, sink = found
        sink.run += 1
        reply = await self.room.sfu.request(room, {
            "type": "sink_start", "participant": participant, "sink": SINK,
            "options": {"language": captions.language, "speakers": captions.speakers, "run": sink.run}})
        sink.running = reply.get("type") == "ok" or reply.get("code") == "already_running"
        return reply

    async def _start_with_someone(self, room: str) -> dict[str, Any] | None:
        """Start a room's sink with someone in the room; None if it is empty (then it starts when
        someone arrives: the SFU's participant_joined)."""
        starter = next((s.id for s in self.room.in_media_room(room)), None)
        return await self._start(room, starter) if starter is not None else None

    async def _stop(self, room: str, participant: str) -> None:
        found = self._sink(room)
        if found is not None:
            found[1].running = False
        await self.room.sfu.request(room, {"type": "sink_stop", "participant": participant, "sink": SINK})

    # ------------------------------------------------------------------ messages from seats
    async def set_captions(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "turn captions on or off")
        enabled = flag(message, "enabled")
        if enabled and self.e2ee is not None:
            await self.e2ee.refuse(seat.meeting_id, "caption it")
        captions = self.meetings.setdefault(seat.meeting_id, MeetingCaptions())
        language = message.get("language", captions.language)
        if not is_tag(language):
            raise SignalingError("bad_message", BAD_LANGUAGE)
        language = canonical(language) if language else ""
        if not enabled or language != captions.language:
            for room in self._rooms(seat.meeting_id):
                if self._running(room):
                    await self._stop(room, seat.id)
        captions.enabled, captions.language = enabled, language
        if enabled:
            # The main room's (its refusal refuses the request), then each open breakout room's; a
            # room empty now starts when someone arrives.
            for room in self._rooms(seat.meeting_id):
                if self._running(room):
                    continue
                reply = await self._start_with_someone(room)
                if reply is None or reply.get("type") != "error" or reply.get("code") == "already_running":
                    continue
                if room == seat.meeting_id:
                    captions.enabled = False
                    raise sfu_refusal(reply, "starting captions")
                log.warning("captions of breakout room %s did not start: %s", room, reply.get("message"))
            await self.transcripts.started(seat.meeting_id, language)
        captions.state = "available" if enabled else "off"
        captions.detail = ""
        self._announce(seat.meeting_id, by=seat.name)
        await self.room.audit(seat, "moderation.captions_on" if enabled else "moderation.captions_off",
                              language=language)
        return {"type": "ok"}

    async def caption_language(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        """Anyone seated says which language they speak (``null``: the meeting's; ``""``: detect it)."""
        language = message.get("language")
        if language is not None and not is_tag(language):
            raise SignalingError("bad_message", BAD_LANGUAGE)
        captions = self.meetings.setdefault(seat.meeting_id, MeetingCaptions())
        before = captions.speakers.get(seat.id)
        if language is None:
            captions.speakers.pop(seat.id, None)
        else:
            captions.speakers[seat.id] = canonical(language) if language else ""
        if captions.speakers.get(seat.id) != before:
            for room in self._rooms(seat.meeting_id):  # a sink takes its languages when it starts
                if self._running(room):
                    await self._stop(room, seat.id)
                    await self._start_with_someone(room)
            self._announce(seat.meeting_id)
        return {"type": "captions_state", **captions.view(), "showing": seat.id in captions.viewers}

    async def show_captions(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        enabled = flag(message, "enabled")
        captions = self.meetings.setdefault(seat.meeting_id, MeetingCaptions())
        if enabled:
            captions.viewers.add(seat.id)
        else:
            captions.viewers.discard(seat.id)
        return {"type": "captions_state", **captions.view(), "showing": enabled}

    def _announce(self, meeting_id: str, by: str = "") -> None:
        seats = self.room.in_meeting(meeting_id)
        self.meetings[meeting_id].viewers &= {seat.id for seat in seats}
        message = {"type": "captions_state", **self.view(meeting_id), **({"by": by} if by else {})}
        for seat in seats:
            seat.send({**message, "showing": seat.id in self.meetings[meeting_id].viewers})

    # ------------------------------------------------------------------ events from the SFU
    async def media_lost(self, meeting_id: str) -> None:
        """The sink died with the SFU worker; captions left on restart as people join again."""
        found = self._sink(meeting_id)
        if found is not None:
            found[1].running = False

    async def breakout_rooms(self, meeting_id: str, rooms: dict[str, str]) -> None:
        """Captions on: each open breakout room gets a sink (now if someone is there, else when
        someone arrives); closed rooms' sinks stop."""
        captions = self.meetings.get(meeting_id)
        if captions is None:
            if not rooms:
                return
            captions = self.meetings[meeting_id] = MeetingCaptions()
        for room in [r for r in captions.breakouts if r not in rooms]:
            if captions.breakouts[room].running:
                await self._stop(room, SINK)  # no one is there: the SFU needs a name
            del captions.breakouts[room]
        for room, name in rooms.items():
            captions.breakouts.setdefault(room, RoomSink(name)).name = name
            if captions.enabled and not captions.breakouts[room].running:
                reply = await self._start_with_someone(room)
                if reply is not None and reply.get("type") == "error" and reply.get("code") != "already_running":
                    log.warning("captions of breakout room %s did not start: %s", room, reply.get("message"))

    def handles(self, event: dict[str, Any]) -> bool:
        if event["type"] == "participant_joined":  # someone in a room whose captions are on but not running
            found = self._sink(event["room"])
            return found is not None and found[0].enabled and not found[1].running
        return event["type"] in EVENTS or (event["type"] == "sink_stopped" and event.get("sink") == SINK)

    async def sfu_event(self, event: dict[str, Any]) -> None:
        room = event["room"]
        meeting_id = room.partition("/")[0]
        if "/" in room:  # a breakout room's sink
            found = self._sink(room)
            if found is None:
                return  # of rooms closed since
            captions, sink = found
            if event["type"] == "participant_joined":
                await self._restart(room, event["participant_id"])
            elif event["type"] == "sink_stopped":  # the room emptied, or captions went off
                if (event.get("result") or {}).get("run", sink.run) == sink.run:
                    sink.running = False
            elif event["type"] == "caption":
                await self._caption(room, captions, event)
            return  # its captions_status: the meeting's state is its main room's
        captions = self.meetings.setdefault(meeting_id, MeetingCaptions())
        if event["type"] == "participant_joined":
            await self._restart(meeting_id, event["participant_id"])
            return
        if event["type"] == "sink_stopped":  # the host turned them off, a restart, or the room emptied
            if (event.get("result") or {}).get("run", captions.run) != captions.run:
                return  # a run already replaced
            captions.running = False
            if not captions.enabled and not captions.breakouts and not self.room.in_meeting(meeting_id):
                self.meetings.pop(meeting_id, None)
            elif captions.enabled:  # left on: they restart when someone is in the room again
                captions.state, captions.detail = "off", ""
                self._announce(meeting_id)
            return
        if event["type"] == "captions_status":
            captions.status = event
            interim = event.get("interim", True)
            if interim != captions.interim and not interim:
                metrics.interim_turned_off()
            changed = (event["state"], event["detail"], interim, event.get("interim_detail", "")) != (
                captions.state, captions.detail, captions.interim, captions.interim_detail)
            captions.interim, captions.interim_detail = interim, event.get("interim_detail", "")
            if not captions.enabled or not changed:
                return
            captions.state, captions.detail = event["state"], event["detail"]
            self._announce(meeting_id)
            return
        await self._caption(meeting_id, captions, event)

    async def _restart(self, room: str, participant: str) -> None:
        """Someone arrived in a room whose captions are on but not running: they start."""
        meeting_id = room.partition("/")[0]
        if self.e2ee is not None and await self.e2ee.encrypted(meeting_id, fresh=True):  # made encrypted while empty
            self.meetings.pop(meeting_id, None)
            return
        reply = await self._start(room, participant)
        if reply.get("type") == "error" and reply.get("code") != "already_running":
            log.warning("captions of room %s did not restart: %s", room, reply.get("message"))
            return
        if room != meeting_id:
            return
        captions = self.meetings[meeting_id]
        captions.state, captions.detail = "available", ""
        log.info("captions of meeting %s restarted: the host had left them on", meeting_id)
        self._announce(meeting_id)

    async def _caption(self, room: str, captions: MeetingCaptions, event: dict[str, Any]) -> None:
        """A caption goes to the viewers in the room it was spoken in; a final one into the
        meeting's transcript, with the breakout room's name for one spoken there."""
        meeting_id = room.partition("/")[0]
        breakout = captions.breakouts.get(room)
        participant, final = event["participant_id"], event.get("final", True)
        caption = {"participant": participant, "name": await self._name(captions, participant), "text": event["text"],
                   "start": event["start"], "end": event["end"], "language": event.get("language", ""),
                   **({"gap": True} if event.get("gap") else {}),
                   **({"room": breakout.name} if breakout is not None else {})}
        sent = time.time()
        message = {"type": "caption", "id": event.get("id", ""), "participant_id": participant,
                   **{k: v for k, v in caption.items() if k != "participant"},
                   "final": final, "merged": event.get("merged", 1),
                   **({"timing": {**event["timing"], "sent": round(sent, 3)}} if "timing" in event else {})}
        for seat in self.room.in_media_room(room):  # only those who hear the speech
            if seat.id in captions.viewers:
                seat.send(message)
        first_interim = not final and captions.interim_of.get(participant) != event.get("id")
        if not final:
            captions.interim_of[participant] = event.get("id", "")
        metrics.caption_sent(event, sent, first_interim)
        if final and caption["text"]:  # interim text is never stored; an empty final only clears it
            try:
                await self.transcripts.add(meeting_id, caption)
            except Exception:
                log.exception("storing a caption of meeting %s failed", meeting_id)

    async def _name(self, captions: MeetingCaptions, participant: str) -> str:
        seat = self.room.seat(participant)
        if seat is not None:
            captions.names[participant] = seat.name
        if participant not in captions.names:
            row = await self.db.run(lambda: Participant.get_or_none(Participant.id == participant))
            captions.names[participant] = row.display_name if row is not None else ""
        return captions.names[participant]
