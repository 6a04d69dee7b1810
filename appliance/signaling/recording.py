"""Recording over signaling: hosts and moderators start and stop a meeting's recording; everyone
in it is told (``recording`` events, ``joined.recording`` for late joiners), and the SFU's
recording sink writes it (appliance/recording/). While the main room is recorded, each open
breakout room is recorded too, as a recording of its own (its row names the room), started as the
rooms open or when the first person arrives in one, and stopped when the rooms close or the main
room's recording stops; a room's ``recording`` events go to the people in it. A recording goes on
while its room is empty (everyone in breakout rooms, or back from one) and stops when the meeting
empties. docs/protocol.md, "Recording".
"""

from __future__ import annotations

import logging
from typing import Any

from ..recording.service import Recordings
from ..recording.sink import SINK
from .e2ee import E2ee
from .protocol import Seat, SignalingError, sfu_refusal
from .room import Feature, RoomView, moderator

log = logging.getLogger("confmeet.recording")


class Recording(Feature):
    def __init__(self, room: RoomView, recordings: Recordings, e2ee: E2ee | None = None) -> None:
        self.room = room
        self.recordings = recordings
        self.e2ee = e2ee
        self.handlers = {"recording_start": self.start, "recording_stop": self.stop}
        self.breakouts: dict[str, dict[str, str]] = {}  # meeting → its open breakout rooms (SFU room → name)

    async def joined(self, seat: Seat) -> dict[str, Any]:
        return {"recording": self.recordings.view(seat.media_room)}  # a resumed seat may be in a breakout room

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
        for room, name in self.breakouts.get(seat.meeting_id, {}).items():
            await self._start_room(seat.meeting_id, room, name)
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
        await self._stop_rooms(seat.meeting_id, live.stop_reason)
        await self.room.audit(seat, "recording.stopped", recording=live.id)
        return {"type": "ok", "recording": {"id": live.id}}

    # ------------------------------------------------------------------ breakout rooms
    async def breakout_rooms(self, meeting_id: str, rooms: dict[str, str]) -> None:
        """The rooms open now are recorded while the main room is; closed ones stop."""
        before = self.breakouts.pop(meeting_id, {})
        if rooms:
            self.breakouts[meeting_id] = dict(rooms)
        for room in before:
            if room not in rooms:
                await self._stop_room(room, "the breakout rooms closed")
        for room, name in rooms.items():
            await self._start_room(meeting_id, room, name)

    async def moved(self, seat: Seat) -> None:
        """Someone arrived in a room: an open breakout room starts its recording with its first
        arrival (the main room being recorded), and the seat learns its room's recording."""
        room = seat.media_room
        name = self.breakouts.get(seat.meeting_id, {}).get(room)
        if name is not None:
            await self._start_room(seat.meeting_id, room, name)
        seat.send({"type": "recording", "active": room in self.recordings.live, "moved": True,
                   "recording": self.recordings.view(room)})

    async def _start_room(self, meeting_id: str, room: str, name: str) -> None:
        """A breakout room's own recording, if the main room's runs, the room has someone in it
        and none runs there yet (started as by whoever started the main room's)."""
        main = self.recordings.live.get(meeting_id)
        present = self.room.in_media_room(room)
        if main is None or not present or room in self.recordings.live:
            return
        try:
            live = await self.recordings.begin(room, main.started_by, None, room=name)
        except Exception as exc:  # the disk too full, say: the main room's recording goes on
            log.warning("the recording of breakout room %s did not start: %s", room, exc)
            return
        reply = await self.room.sfu.request(room, {"type": "sink_start", "participant": present[0].id, "sink": SINK,
                                                   "options": {"recording_id": live.id}})
        if reply.get("type") == "error":
            log.warning("the recording of breakout room %s did not start: %s", room, reply.get("message"))
            await self.recordings.abandon(live)
            return
        message = {"type": "recording", "active": True, "recording": live.view()}
        for seat in self.room.in_media_room(room):
            seat.send(message)

    async def _stop_room(self, room: str, reason: str) -> None:
        live = self.recordings.live.get(room)
        if live is None:
            return
        live.stop_reason = live.stop_reason or reason
        # Its sink_stopped event stores it; a room gone already (its worker died) sent none: media_lost.
        await self.room.sfu.request(room, {"type": "sink_stop", "participant": SINK, "sink": SINK})

    async def _stop_rooms(self, meeting_id: str, reason: str) -> None:
        for room in list(self.breakouts.get(meeting_id, {})):
            await self._stop_room(room, reason)

    def _tell(self, room: str, ended: dict[str, Any]) -> None:
        """A recording ended: the main room's is the meeting's news, a breakout room's its people's."""
        message = {"type": "recording", "active": False, "recording": ended}
        if "/" not in room:
            self.room.broadcast(room, message)
            return
        for seat in self.room.in_media_room(room):
            seat.send(message)

    async def meeting_emptied(self, meeting_id: str) -> None:
        """Everyone left: the recordings stop (not when one room empties: the main room's goes on
        while everyone is in breakout rooms, the sink keeping its SFU room open)."""
        if self.recordings.stopping:  # the appliance is stopping: the SFU's close finishes the files
            return                    # and recordings.close() stores them (app.py, drain)
        live = self.recordings.live.get(meeting_id)
        if live is not None:
            live.stop_reason = live.stop_reason or "everyone left the meeting"
            await self.room.sfu.request(meeting_id, {"type": "sink_stop", "participant": SINK, "sink": SINK})
        await self._stop_rooms(meeting_id, "everyone left the meeting")

    async def media_lost(self, meeting_id: str) -> None:
        """The sink died with the SFU worker: what it wrote is kept, as after a crash."""
        live = self.recordings.live.get(meeting_id)
        if live is None:
            return
        live.stop_reason = live.stop_reason or "the media server of the meeting stopped"
        ended = await self.recordings.finish(meeting_id, {"recording_id": live.id})
        if ended is not None:
            self._tell(meeting_id, ended)

    # ------------------------------------------------------------------ the sink's events
    def handles(self, event: dict[str, Any]) -> bool:
        return event["type"] in ("sink_failed", "sink_stopped") and event.get("sink") == SINK

    async def sfu_event(self, event: dict[str, Any]) -> None:
        room = event["room"]  # the main room's (the meeting's id) or a breakout room's
        if event["type"] == "sink_failed":  # a full disk, say: stop it, with the reason
            live = self.recordings.live.get(room)
            if live is not None and live.id == event.get("recording_id"):
                live.stop_reason = event.get("reason", "the recording failed")
                seats = self.room.in_media_room(room)
                await self.room.sfu.request(room, {"type": "sink_stop", "sink": SINK,
                                                   "participant": seats[0].id if seats else SINK})
            return
        main = self.recordings.live.get(room) if "/" not in room else None
        ended = await self.recordings.finish(room, event.get("result") or {})
        if ended is not None:
            self._tell(room, ended)
        if main is not None and room not in self.recordings.live:  # the main room's ended: the rooms' too
            await self._stop_rooms(room, main.stop_reason or "the main room's recording stopped")
