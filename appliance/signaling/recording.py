"""Recording over signaling: hosts and moderators start and stop a meeting's recording; everyone
in it is told (``recording`` events, ``joined.recording`` for late joiners), and the SFU's
recording sink writes it (appliance/recording/). docs/protocol.md, "Recording".
"""

from __future__ import annotations

from typing import Any

from ..recording.service import Recordings
from ..recording.sink import SINK
from .e2ee import E2ee
from .protocol import Seat, SignalingError, sfu_refusal
from .room import Feature, RoomView, moderator


class Recording(Feature):
    def __init__(self, room: RoomView, recordings: Recordings, e2ee: E2ee | None = None) -> None:
        self.room = room
        self.recordings = recordings
        self.e2ee = e2ee
        self.handlers = {"recording_start": self.start, "recording_stop": self.stop}

    async def joined(self, seat: Seat) -> dict[str, Any]:
        return {"recording": self.recordings.view(seat.meeting_id)}

    async def start(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "start a recording")
        if seat.breakout is not None:
            raise SignalingError("in_breakout", "a recording records the main room: go back to it to start one")
        if self.e2ee is not None:
            await self.e2ee.refuse(seat.meeting_id, "record it")
        live = await self.recordings.begin(seat.meeting_id, seat.name, seat.account)
        try:
            reply = await self.room.sfu.request(seat.meeting_id, {
                "type": "sink_start", "participant": seat.id, "sink": SINK, "options": {"recording_id": live.id}})
            if reply.get("type") == "error":
                raise sfu_refusal(reply, "starting the recording")
        except BaseException:
            await self.recordings.abandon(live)
            raise
        self.room.broadcast(seat.meeting_id, {"type": "recording", "active": True, "recording": live.view()})
        await self.room.audit(seat, "recording.started", recording=live.id)
        return {"type": "ok", "recording": live.view()}

    async def stop(self, seat: Seat, message: dict[str, Any]) -> dict[str, Any]:
        moderator(seat, "stop the recording")
        live = self.recordings.live.get(seat.meeting_id)
        if live is None:
            raise SignalingError("not_recording", "this meeting is not being recorded")
        live.stop_reason = live.stop_reason or f"stopped by {seat.name}"
        reply = await self.room.sfu.request(seat.meeting_id, {"type": "sink_stop", "participant": seat.id,
                                                              "sink": SINK})
        if reply.get("type") == "error" and reply.get("code") != "not_running":
            raise sfu_refusal(reply, "stopping the recording")
        await self.room.audit(seat, "recording.stopped", recording=live.id)
        return {"type": "ok", "recording": {"id": live.id}}

    async def media_lost(self, meeting_id: str) -> None:
        """The sink died with the SFU worker: what it wrote is kept, as after a crash."""
        live = self.recordings.live.get(meeting_id)
        if live is None:
            return
        live.stop_reason = live.stop_reason or "the media server of the meeting stopped"
        ended = await self.recordings.finish(meeting_id, {"recording_id": live.id})
        if ended is not None:
            self.room.broadcast(meeting_id, {"type": "recording", "active": False, "recording": ended})

    # ------------------------------------------------------------------ the sink's events
    def handles(self, event: dict[str, Any]) -> bool:
        return event["type"] in ("sink_failed", "sink_stopped") and event.get("sink") == SINK

    async def sfu_event(self, event: dict[str, Any]) -> None:
        meeting_id = event["room"]
        if event["type"] == "sink_failed":  # a full disk, say: stop it, with the reason
            live = self.recordings.live.get(meeting_id)
            if live is not None and live.id == event.get("recording_id"):
                live.stop_reason = event.get("reason", "the recording failed")
                seats = self.room.in_meeting(meeting_id)
                await self.room.sfu.request(meeting_id, {"type": "sink_stop", "sink": SINK,
                                                         "participant": seats[0].id if seats else SINK})
            return
        ended = await self.recordings.finish(meeting_id, event.get("result") or {})
        if ended is not None:
            self.room.broadcast(meeting_id, {"type": "recording", "active": False, "recording": ended})
