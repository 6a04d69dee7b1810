"""Captions over signaling: the host turns them on for the meeting and picks the language; each
participant chooses to see them; caption events from the SFU go only to the seats that chose to,
and into the meeting's transcript. Messages are documented in docs/protocol.md ("Captions").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..controls import MODERATORS
from ..stores.relational import Participant
from .sink import LANGUAGES
from .transcripts import Transcripts

if TYPE_CHECKING:
    from ..signaling import Seat, Signaling

log = logging.getLogger("confmeet.captions")
SINK = "captions"
EVENTS = ("caption", "captions_status")


@dataclass
class MeetingCaptions:
    enabled: bool = False
    language: str = "en"
    state: str = "off"  # off | available | degraded | unavailable
    detail: str = ""
    status: dict[str, Any] = field(default_factory=dict)  # the sink's latest counters and queues
    viewers: set[str] = field(default_factory=set)  # seats that show captions
    names: dict[str, str] = field(default_factory=dict)  # speakers' names, kept after they leave
    stops_requested: int = 0  # sink_stopped events to come that a host's request caused

    def view(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "language": self.language, "state": self.state, "detail": self.detail}


class CaptionControls:
    def __init__(self, signaling: Signaling) -> None:
        self.s = signaling
        self.transcripts = Transcripts(signaling.documents)
        self.meetings: dict[str, MeetingCaptions] = {}
        signaling.controls.handlers.update({"set_captions": self.set_captions, "show_captions": self.show_captions})

    def view(self, meeting_id: str) -> dict[str, Any]:
        return self.meetings.get(meeting_id, MeetingCaptions()).view()

    def status(self, meeting_id: str) -> dict[str, Any]:
        """The captions of a meeting for the API: state, and the sink's counters and queues."""
        captions = self.meetings.get(meeting_id, MeetingCaptions())
        return {**captions.view(), "viewers": len(captions.viewers),
                **{k: v for k, v in captions.status.items() if k not in ("type", "state", "detail", "language")}}

    # ------------------------------------------------------------------ messages from seats
    async def set_captions(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        from ..signaling import SignalingError

        if seat.role not in MODERATORS:
            raise SignalingError("forbidden", "only the meeting's host or moderator can turn captions on or off")
        enabled = message.get("enabled")
        if not isinstance(enabled, bool):
            raise SignalingError("bad_message", "'enabled' must be true or false")
        captions = self.meetings.setdefault(seat.meeting_id, MeetingCaptions())
        language = message.get("language", captions.language)
        if not isinstance(language, str) or (language and language not in LANGUAGES):
            raise SignalingError("bad_message", "'language' must be an ISO 639-1 code (\"en\", \"de\", ...) "
                                                "or \"\" to detect it")
        if captions.enabled and (not enabled or language != captions.language):
            reply = await self.s.host.request(seat.meeting_id, {"type": "sink_stop", "participant": seat.id,
                                                                "sink": SINK})
            captions.stops_requested += reply.get("type") == "sink_stopped"
            captions.enabled = False
        if enabled and not captions.enabled:
            reply = await self.s.host.request(seat.meeting_id, {"type": "sink_start", "participant": seat.id,
                                                                "sink": SINK, "options": {"language": language}})
            if reply.get("type") == "error" and reply.get("code") != "already_running":
                raise SignalingError(reply.get("code", "internal"), reply.get("message", "captions did not start"))
            await self.transcripts.started(seat.meeting_id, language)
        captions.enabled, captions.language = enabled, language
        captions.state = "available" if enabled else "off"
        captions.detail = ""
        self._announce(seat.meeting_id, by=seat.name)
        await self.s.controls.audit(seat, "captions_on" if enabled else "captions_off", language=language)
        return {"type": "ok"}

    async def show_captions(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        from ..signaling import SignalingError

        enabled = message.get("enabled")
        if not isinstance(enabled, bool):
            raise SignalingError("bad_message", "'enabled' must be true or false")
        captions = self.meetings.setdefault(seat.meeting_id, MeetingCaptions())
        if enabled:
            captions.viewers.add(seat.id)
        else:
            captions.viewers.discard(seat.id)
        return {"type": "captions_state", **captions.view(), "showing": enabled}

    def _announce(self, meeting_id: str, by: str = "") -> None:
        seats = self.s.in_meeting(meeting_id)
        self.meetings[meeting_id].viewers &= {seat.id for seat in seats}
        message = {"type": "captions_state", **self.view(meeting_id), **({"by": by} if by else {})}
        for seat in seats:
            seat.send({**message, "showing": seat.id in self.meetings[meeting_id].viewers})

    # ------------------------------------------------------------------ events from the SFU
    @staticmethod
    def handles(event: dict[str, Any]) -> bool:
        return event["type"] in EVENTS or (event["type"] == "sink_stopped" and event.get("sink") == SINK)

    async def sfu_event(self, event: dict[str, Any]) -> None:
        meeting_id = event["room"]
        captions = self.meetings.setdefault(meeting_id, MeetingCaptions())
        if event["type"] == "sink_stopped":  # the host turned them off, or the room emptied
            if captions.stops_requested:
                captions.stops_requested -= 1
            elif not self.s.in_meeting(meeting_id):
                self.meetings.pop(meeting_id, None)
            elif captions.enabled:
                captions.enabled, captions.state, captions.detail = False, "off", ""
                self._announce(meeting_id)
            return
        if event["type"] == "captions_status":
            captions.status = event
            if not captions.enabled or (event["state"], event["detail"]) == (captions.state, captions.detail):
                return
            captions.state, captions.detail = event["state"], event["detail"]
            self._announce(meeting_id)
            return
        participant = event["subject"]
        caption = {"participant": participant, "name": await self._name(captions, participant), "text": event["text"],
                   "start": event["start"], "end": event["end"], "language": event.get("language", "")}
        message = {"type": "caption", "participant_id": participant, **{k: v for k, v in caption.items()
                                                                         if k != "participant"},
                   "final": event.get("final", True), "merged": event.get("merged", 1)}
        for seat in self.s.in_meeting(meeting_id):
            if seat.id in captions.viewers:
                seat.send(message)
        if event.get("final", True):
            try:
                await self.transcripts.add(meeting_id, caption)
            except Exception:
                log.exception("storing a caption of meeting %s failed", meeting_id)

    async def _name(self, captions: MeetingCaptions, participant: str) -> str:
        seat = self.s.seats.get(participant)
        if seat is not None:
            captions.names[participant] = seat.name
        if participant not in captions.names:
            row = await self.s.db.run(lambda: Participant.get_or_none(Participant.id == participant))
            captions.names[participant] = row.display_name if row is not None else ""
        return captions.names[participant]
