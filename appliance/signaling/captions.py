"""Captions over signaling: the host turns them on for the meeting and picks its language; each
participant may say which language they speak (or leave it to detection), and chooses to see
captions; caption events from the SFU go only to the seats that chose to, and final ones into
the meeting's transcript. Captions the host left on come back by themselves when a meeting that
emptied fills again. Messages: docs/meetings.md ("Captions") and docs/protocol.md.
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
    async def _start(self, meeting_id: str, participant: str) -> dict[str, Any]:
        captions = self.meetings[meeting_id]
        captions.run += 1
        reply = await self.room.sfu.request(meeting_id, {
            "type": "sink_start", "participant": participant, "sink": SINK,
            "options": {"language": captions.language, "speakers": captions.speakers, "run": captions.run}})
        captions.running = reply.get("type") == "ok" or reply.get("code") == "already_running"
        return reply

    async def _stop(self, meeting_id: str, participant: str) -> None:
        captions = self.meetings[meeting_id]
        captions.running = False
        await self.room.sfu.request(meeting_id, {"type": "sink_stop", "participant": participant, "sink": SINK})

    # ------------------------------------------------------------------ messages from seats
    async def set_captions(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "turn captions on or off")
        enabled = flag(message, "enabled")
        if seat.breakout is not None:
            raise SignalingError("in_breakout", "captions caption the main room: go back to it to turn them on or off")
        if enabled and self.e2ee is not None:
            await self.e2ee.refuse(seat.meeting_id, "caption it")
        captions = self.meetings.setdefault(seat.meeting_id, MeetingCaptions())
        language = message.get("language", captions.language)
        if not is_tag(language):
            raise SignalingError("bad_message", BAD_LANGUAGE)
        language = canonical(language) if language else ""
        if captions.running and (not enabled or language != captions.language):
            await self._stop(seat.meeting_id, seat.id)
        captions.enabled, captions.language = enabled, language
        if enabled and not captions.running:
            reply = await self._start(seat.meeting_id, seat.id)
            if reply.get("type") == "error" and reply.get("code") != "already_running":
                captions.enabled = False
                raise sfu_refusal(reply, "starting captions")
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
            if captions.running:  # the sink takes its languages when it starts (from someone in the main room)
                starter = next((s.id for s in self.room.in_media_room(seat.meeting_id)), seat.id)
                await self._stop(seat.meeting_id, starter)
                await self._start(seat.meeting_id, starter)
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
        captions = self.meetings.get(meeting_id)
        if captions is not None:
            captions.running = False

    def handles(self, event: dict[str, Any]) -> bool:
        if event["type"] == "participant_joined":  # someone back in a meeting whose captions were left on
            captions = self.meetings.get(event["room"])
            return captions is not None and captions.enabled and not captions.running
        return event["type"] in EVENTS or (event["type"] == "sink_stopped" and event.get("sink") == SINK)

    async def sfu_event(self, event: dict[str, Any]) -> None:
        meeting_id = event["room"]
        captions = self.meetings.setdefault(meeting_id, MeetingCaptions())
        if event["type"] == "participant_joined":
            await self._restart(meeting_id, event["participant_id"])
            return
        if event["type"] == "sink_stopped":  # the host turned them off, a restart, or the room emptied
            if (event.get("result") or {}).get("run", captions.run) != captions.run:
                return  # a run already replaced
            captions.running = False
            if not captions.enabled and not self.room.in_meeting(meeting_id):
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

    async def _restart(self, meeting_id: str, participant: str) -> None:
        if self.e2ee is not None and await self.e2ee.encrypted(meeting_id, fresh=True):  # made encrypted while empty
            self.meetings.pop(meeting_id, None)
            return
        reply = await self._start(meeting_id, participant)
        if reply.get("type") == "error" and reply.get("code") != "already_running":
            log.warning("captions of meeting %s did not restart: %s", meeting_id, reply.get("message"))
            return
        captions = self.meetings[meeting_id]
        captions.state, captions.detail = "available", ""
        log.info("captions of meeting %s restarted: the host had left them on", meeting_id)
        self._announce(meeting_id)

    async def _caption(self, meeting_id: str, captions: MeetingCaptions, event: dict[str, Any]) -> None:
        participant, final = event["participant_id"], event.get("final", True)
        caption = {"participant": participant, "name": await self._name(captions, participant), "text": event["text"],
                   "start": event["start"], "end": event["end"], "language": event.get("language", ""),
                   **({"gap": True} if event.get("gap") else {})}
        sent = time.time()
        message = {"type": "caption", "id": event.get("id", ""), "participant_id": participant,
                   **{k: v for k, v in caption.items() if k != "participant"},
                   "final": final, "merged": event.get("merged", 1),
                   **({"timing": {**event["timing"], "sent": round(sent, 3)}} if "timing" in event else {})}
        for seat in self.room.in_meeting(meeting_id):
            if seat.id in captions.viewers and seat.breakout is None:  # the main room's speech
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
