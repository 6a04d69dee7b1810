"""The room host: the SFU's only interface. Signaling sends it JSON-serialisable messages and
reads its events; no SFU object crosses it, so rooms can later live in worker processes.

Requests (``await host.request(room, message)``), each answered by one reply dict:

=====================================================================  ==============================
message                                                                reply
=====================================================================  ==============================
``{"type": "join", "participant", "name"?}``                           ``{"type": "joined", ...}``
``{"type": "room", "participant"}``                                    ``{"type": "room", ...}``
``{"type": "offer", "participant", "sdp", "tracks"?}``                 ``{"type": "answer", "sdp"}``
``{"type": "answer", "participant", "sdp"}``                           ``{"type": "ok"}``
``{"type": "candidate", "participant", "candidate": {...} | null}``    ``{"type": "ok"}``
``{"type": "leave", "participant"}``                                   ``{"type": "left"}``
``{"type": "stats", "participant"}``                                   ``{"type": "stats", ...}``
``{"type": "hold", "participant", "source", "held"}``                  ``{"type": "ok"}``
``{"type": "video_layer", "participant", "publisher", "track_id",``    ``{"type": "ok"}``
``"max_layer": int (-1: none) | null}``
``{"type": "sink_start", "participant", "sink", "options"?}``          ``{"type": "ok"}``
``{"type": "sink_stop", "participant", "sink"}``                       ``{"type": "sink_stopped", ...}``
=====================================================================  ==============================

Sinks (a recording, the captions) are made by the factories given to the host, by name; each
consumes the room's tracks from its start until it is stopped or the room empties. Either way the
room emits ``{"type": "sink_stopped", "sink", "result"}`` with the sink's result.

Any failure is ``{"type": "error", "code", "message"}`` (codes in ``errors.SfuError``).

Events are dicts with ``type``, ``room`` and ``to`` (the participant it is for, or None for the
whole room); the rest is named as docs/protocol.md names it for clients, so that signaling passes
events on without renaming anything: ``participant_joined`` and ``participant_left``
(``participant_id``, ``name`` / ``reason``), ``track_published`` and ``track_unpublished``
(``track``: ``{participant, track_id, kind, source, stream_id, codec}``), ``offer`` (``sdp``,
``tracks``: each a track with its ``mid``), ``active_speaker`` (``participant_id``,
``level_dbov``), ``connection_quality`` (``participant_id``, ``quality``, ``loss``,
``jitter_ms``), ``last_n`` (``participants``: whose cameras the participant receives, the most
recent speaker first; null: everyone's), and the sinks' events (``sink_stopped``, ``caption``, ...). SfuWorkers adds
``media_lost`` (``participants``: everyone of a room whose worker died).

Ordering: one participant's requests are handled one at a time, in the order ``request`` was
called. The client makes the first offer; the server offers (event ``offer``) only after it has
answered that, and an offer caused by a request is emitted after that request's reply. The
server is the impolite peer: a client offer arriving while the server's offer waits for its
answer gets ``{"type": "error", "code": "glare"}``; the client rolls back, answers, and offers
again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import SfuError
from .ice import CandidateGatherer, IceSettings
from .peer import SOURCES
from .room import DEFAULT_LAST_N, Room, TrackSink
from .speaker import SpeakerSettings
from .stats import SfuStats

log = logging.getLogger("confmeet.sfu")

Handler = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
# Makes a sink for a room from the ``options`` of its ``sink_start`` message (and the room's
# event emitter, for the sink's own events); raises SfuError("bad_message") for bad options.
SinkFactory = Callable[[str, dict[str, Any], Callable[[str | None, dict[str, Any]], None]], TrackSink]


class EventStream:
    """The host's events, in order, for one reader: ``async for event in stream``."""

    def __init__(self, on_close: Callable[[EventStream], None]) -> None:
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._on_close = on_close

    def put(self, event: dict[str, Any]) -> None:
        self._queue.put_nowait(event)

    def close(self) -> None:
        self._queue.put_nowait(None)
        self._on_close(self)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event


def _text(message: dict[str, Any], field: str, required: bool = True) -> str:
    value = message.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise SfuError("bad_message", f"{field!r} must be a non-empty string")
    return value


def _track_labels(message: dict[str, Any]) -> list[dict[str, str]]:
    labels = message.get("tracks", [])
    if not isinstance(labels, list):
        raise SfuError("bad_message", "'tracks' must be a list")
    for label in labels:
        if not (isinstance(label, dict) and label.get("source") in SOURCES
                and isinstance(label.get("mid") or label.get("track_id"), str)):
            raise SfuError("bad_message", "each of 'tracks' must name a 'mid' or 'track_id' and a "
                                          f"'source' among {', '.join(SOURCES)}")
    return labels


def _candidate(message: dict[str, Any]) -> str:
    candidate = message.get("candidate")
    if candidate is None:
        return ""
    if not isinstance(candidate, dict) or not isinstance(candidate.get("candidate", ""), str):
        raise SfuError("bad_message", "'candidate' must be null or an object with a 'candidate' string")
    return candidate.get("candidate", "")


class RoomHost:
    """Hosts every room of this process (see the module doc for the messages)."""

    def __init__(self, ice: IceSettings | None = None, speaker: SpeakerSettings | None = None,
                 quality_interval: float = 2.0, sinks: dict[str, SinkFactory] | None = None,
                 last_n: int = DEFAULT_LAST_N) -> None:
        self.ice = ice or IceSettings()
        self.speaker = speaker or SpeakerSettings()
        self.last_n = last_n  # cameras forwarded to each participant (the most recent speakers'); 0: all
        self.quality_interval = quality_interval
        self.stats = SfuStats()
        self._gatherer = CandidateGatherer(self.ice)
        self._rooms: dict[str, Room] = {}
        self._streams: set[EventStream] = set()
        self._closed = False
        self._sink_factories = dict(sinks or {})
        self._stopping: set[asyncio.Task[None]] = set()
        self._handlers: dict[str, Handler] = {
            "join": self._join, "room": self._describe_room, "offer": self._offer, "answer": self._answer,
            "candidate": self._add_candidate, "leave": self._leave, "stats": self._stats,
            "hold": self._hold, "video_layer": self._video_layer, "sink_start": self._sink_start, "sink_stop": self._sink_stop,
        }

    async def request(self, room: str, message: dict[str, Any]) -> dict[str, Any]:
        try:
            if self._closed:
                raise SfuError("closed", "the SFU is shutting down")
            if not isinstance(room, str) or not room:
                raise SfuError("bad_message", "the room must be a non-empty string")
            if not isinstance(message, dict):
                raise SfuError("bad_message", "a message must be an object")
            handler = self._handlers.get(message.get("type"))  # type: ignore[arg-type]
            if handler is None:
                raise SfuError("unknown_type", f"unknown message type {message.get('type')!r}; "
                                               f"expected one of {', '.join(self._handlers)}")
            return await handler(room, _text(message, "participant"), message)
        except SfuError as exc:
            return exc.reply()
        except Exception:
            kind = message.get("type") if isinstance(message, dict) else type(message).__name__
            log.exception("room %s: a %r request failed", room, kind)
            return SfuError("internal", "the SFU failed to handle this request; see the server log").reply()

    def subscribe_events(self) -> EventStream:
        stream = EventStream(self._streams.discard)
        self._streams.add(stream)
        return stream

    async def close(self) -> None:
        self._closed = True
        for room in list(self._rooms.values()):
            await room.close()
        while self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        for stream in list(self._streams):
            stream.close()

    @property
    def rooms(self) -> list[str]:
        return list(self._rooms)

    def room_reports(self) -> dict[str, dict[str, Any]]:
        """Each room's figures for the metrics (see Room.report)."""
        return {name: room.report() for name, room in self._rooms.items()}

    # ------------------------------------------------------------------ handlers
    def _room(self, name: str) -> Room:
        room = self._rooms.get(name)
        if room is None:
            raise SfuError("unknown_participant", f"nobody has joined room {name!r}")
        return room

    async def _join(self, room_name: str, participant: str, message: dict[str, Any]) -> dict[str, Any]:
        name = _text(message, "name", required=False)
        room = self._rooms.get(room_name)
        if room is None:
            room = Room(room_name, self._gatherer, self.ice.rtc_configuration(), self._emit,
                        self._room_empty, self.stats, self.speaker, self.quality_interval, self.last_n)
            self._rooms[room_name] = room
            self.stats.rooms += 1
        return await room.join(participant, name, self.ice.client_ice_servers())

    async def _describe_room(self, room_name: str, participant: str, message: dict[str, Any]) -> dict[str, Any]:
        """The room as a participant in it sees it now (as ``joined`` says it, for a resume)."""
        room = self._room(room_name)
        return {**room.describe(self.ice.client_ice_servers(), participant), "type": "room"}

    async def _offer(self, room_name: str, participant: str, message: dict[str, Any]) -> dict[str, Any]:
        sdp, labels = _text(message, "sdp"), _track_labels(message)
        peer = self._room(room_name).peer(participant)
        reply = await peer.call(peer.handle_offer, sdp, labels)
        # Queued only now, so that an offer of the server is emitted after this reply.
        peer.post(peer.sync_downstream)
        return reply

    async def _answer(self, room_name: str, participant: str, message: dict[str, Any]) -> dict[str, Any]:
        sdp = _text(message, "sdp")
        peer = self._room(room_name).peer(participant)
        reply = await peer.call(peer.handle_answer, sdp)
        peer.post(peer.sync_downstream)
        return reply

    async def _add_candidate(self, room_name: str, participant: str,
                             message: dict[str, Any]) -> dict[str, Any]:
        candidate = _candidate(message)
        peer = self._room(room_name).peer(participant)
        return await peer.call(peer.add_candidate, candidate)

    async def _leave(self, room_name: str, participant: str, message: dict[str, Any]) -> dict[str, Any]:
        await self._room(room_name).leave(participant, "left")
        return {"type": "left"}

    async def _hold(self, room_name: str, participant: str, message: dict[str, Any]) -> dict[str, Any]:
        """Stop or resume forwarding a participant's tracks of one source (a moderator's mute).
        The hold also applies to tracks of that source published later."""
        source = _text(message, "source")
        if source not in SOURCES:
            raise SfuError("bad_message", f"'source' must be one of {', '.join(SOURCES)}")
        held = message.get("held")
        if not isinstance(held, bool):
            raise SfuError("bad_message", "'held' must be true or false")
        peer = self._room(room_name).peer(participant)
        if held:
            peer.held_sources.add(source)
        else:
            peer.held_sources.discard(source)
        for up in peer.ups.values():
            if up.source == source:
                up.hold(held)
        return {"type": "ok"}

    async def _video_layer(self, room_name: str, participant: str, message: dict[str, Any]) -> dict[str, Any]:
        """The highest simulcast layer (0 the lowest; null: any; -1: none, a video not shown)
        the participant wants of one track published in the room, received yet or not."""
        publisher, track_id = _text(message, "publisher"), _text(message, "track_id")
        max_layer = message.get("max_layer")
        if max_layer is not None and (not isinstance(max_layer, int) or isinstance(max_layer, bool) or max_layer < -1):
            raise SfuError("bad_message", "'max_layer' must be a layer number (0 the lowest), -1 (none) or null")
        room = self._room(room_name)
        peer = room.peer(participant)
        if (publisher, track_id) not in room.tracks:
            raise SfuError("unknown_track", f"no track {track_id!r} of {publisher!r} is published in the room")
        await peer.call(peer.set_max_layer, (publisher, track_id), max_layer)
        return {"type": "ok"}

    async def _sink_start(self, room_name: str, participant: str, message: dict[str, Any]) -> dict[str, Any]:
        name = _text(message, "sink")
        factory = self._sink_factories.get(name)
        if factory is None:
            raise SfuError("unknown_sink", f"no sink named {name!r}; this SFU has "
                                           f"{', '.join(self._sink_factories) or 'none'}")
        options = message.get("options", {})
        if not isinstance(options, dict):
            raise SfuError("bad_message", "'options' must be an object")
        room = self._room(room_name)
        room.peer(participant)  # only someone in the room starts a sink
        if name in room.sinks:
            raise SfuError("already_running", f"{name} is already running in room {room_name!r}")
        room.start_sink(name, factory(room_name, options, room.emit))
        return {"type": "ok"}

    async def _sink_stop(self, room_name: str, participant: str, message: dict[str, Any]) -> dict[str, Any]:
        name = _text(message, "sink")
        result = await self._room(room_name).stop_sink(name)
        return {"type": "sink_stopped", "sink": name, "result": result}

    async def _stats(self, room_name: str, participant: str, message: dict[str, Any]) -> dict[str, Any]:
        room = self._room(room_name)
        peer = room.peer(participant)
        level = round(room.speaker.level(participant, time.monotonic()), 1)
        return {**await peer.call(peer.describe_stats), "participant": participant,
                "audio_level_dbov": level}

    # ------------------------------------------------------------------ room callbacks
    def _emit(self, event: dict[str, Any]) -> None:
        for stream in self._streams:
            stream.put(event)

    def _room_empty(self, room: Room) -> None:
        if self._rooms.get(room.name) is room:
            del self._rooms[room.name]
            self.stats.rooms -= 1
        room.stop()
        task = asyncio.get_running_loop().create_task(room.wait_stopped())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
