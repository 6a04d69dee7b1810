"""A room: its peers, the tracks published in it, and who is speaking.

Last-N: each participant receives the cameras of at most ``last_n`` others, those who spoke most
recently (who never spoke ranks by arrival, the earliest first); the others' cameras are paused
for it, and each participant is told whose it gets (event ``last_n``) when that changes. A
screen share is always forwarded. Someone who starts speaking enters everyone's last N at once,
from a keyframe asked for then.

The room routes between peers only by queueing actions to them (subscribe, unsubscribe,
report_quality); it never negotiates on a peer's behalf.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiortc import RTCConfiguration

from . import allocation
from .errors import SfuError
from .forwarder import DownTrack, UpTrack
from .ice import CandidateGatherer
from .peer import Peer
from .speaker import ActiveSpeakerDetector, SpeakerSettings
from .stats import SfuStats

log = logging.getLogger("confmeet.sfu")

SPEAKER_INTERVAL = 0.2
DEFAULT_LAST_N = 25
ROUND_TRIP_INTERVAL = 1.0


class TrackSink(Protocol):
    """Something that consumes a room's published tracks as they arrive (a recording, the
    captions): told of every track present and to come, it taps the packets it wants. One with
    ``keeps_room = True`` keeps its room open while nobody is in it (a recording goes on while
    everyone is in breakout rooms, until whoever started it stops it); others stop when the room
    empties."""

    def track_added(self, up: UpTrack) -> None: ...

    def track_removed(self, up: UpTrack) -> None: ...

    async def stop(self) -> dict[str, Any]:
        """Finish; the result is what the ``sink_stopped`` event and reply carry."""


class Room:
    def __init__(self, name: str, gatherer: CandidateGatherer, configuration: RTCConfiguration,
                 emit: Callable[[dict[str, Any]], None], on_empty: Callable[[Room], None],
                 stats: SfuStats, speaker: SpeakerSettings, quality_interval: float,
                 last_n: int = DEFAULT_LAST_N) -> None:
        self.name = name
        self.gatherer = gatherer
        self.configuration = configuration
        self.stats = stats
        self.peers: dict[str, Peer] = {}
        self.tracks: dict[tuple[str, str], UpTrack] = {}
        self.speaker = ActiveSpeakerDetector(speaker)
        self.quality_interval = quality_interval
        self.last_n = last_n
        self._recent: list[str] = []  # participants, the most recent speaker first, then by arrival
        self._emit = emit
        self._on_empty = on_empty
        self._emptied = False  # on_empty was called: the room is closing
        self._leaving: set[str] = set()
        self._departures: set[asyncio.Task[None]] = set()
        self._measuring: set[asyncio.Task[None]] = set()  # round trips to the participants
        self.sinks: dict[str, TrackSink] = {}
        # Bytes and packets of tracks gone from the room, so that its totals never go down.
        self._received_gone = 0
        self._forwarded_gone = 0
        self._sent_gone = 0
        self._lost_gone = 0
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def emit(self, to: str | None, event: dict[str, Any]) -> None:
        """Send an event to one participant, or to the whole room when ``to`` is None."""
        self._emit({**event, "room": self.name, "to": to})

    def peer(self, participant: str) -> Peer:
        peer = self.peers.get(participant)
        if peer is None or participant in self._leaving:
            raise SfuError("unknown_participant",
                           f"participant {participant!r} is not in room {self.name!r}: join first")
        return peer

    async def join(self, participant: str, name: str, ice_servers: list[dict[str, Any]]) -> dict[str, Any]:
        if participant in self.peers:
            raise SfuError("already_joined", f"participant {participant!r} is already in room {self.name!r}")
        joined = {**self.describe(ice_servers), "type": "joined"}
        peer = Peer(participant, name, self, self.gatherer, self.configuration)
        self.peers[participant] = peer
        self._recent.append(participant)
        self.stats.active_peers += 1
        for up in self.tracks.values():
            peer.post(peer.subscribe, up)
        self.emit(None, {"type": "participant_joined", "participant_id": participant, "name": name})
        self._apply_last_n()
        return joined

    def describe(self, ice_servers: list[dict[str, Any]], participant: str | None = None) -> dict[str, Any]:
        """Who is in the room and what they publish, with the ICE servers for clients; for a
        ``participant`` in it also whose cameras it gets (its latest ``last_n`` event's list: a
        resume's catching up, since events to a dropped signaling socket are lost)."""
        described = {"ice_servers": ice_servers,
                     "participants": [{"participant": p.participant, "name": p.name} for p in self.peers.values()],
                     "tracks": [up.describe() for up in self.tracks.values()]}
        if participant is not None:
            described["last_n"] = self.peer(participant).last_n
        return described

    async def leave(self, participant: str, reason: str) -> None:
        peer = self.peer(participant)
        self._leaving.add(participant)
        try:
            await peer.close()
        finally:
            self._leaving.discard(participant)
            del self.peers[participant]
            self._recent.remove(participant)
            self.stats.active_peers -= 1
            self.speaker.forget(participant)
        self.emit(None, {"type": "participant_left", "participant_id": participant, "reason": reason})
        if self.peers:
            self._apply_last_n()
        else:
            self._check_empty()

    def _check_empty(self) -> None:
        """Nobody left, and no sink that keeps the room: it closes (on_empty stops it)."""
        if not self._emptied and not self.peers and not any(getattr(s, "keeps_room", False) for s in self.sinks.values()):
            self._emptied = True
            self._on_empty(self)

    async def close(self) -> None:
        for participant in list(self.peers):
            # One may have left meanwhile, its connection lost while another's closed.
            if participant in self.peers and participant not in self._leaving:
                await self.leave(participant, "closed")
        await asyncio.gather(*self._departures)
        self.stop()
        await self.wait_stopped()

    def stop(self) -> None:
        """Stop the periodic work; sinks still attached are stopped in the background."""
        self._ticker.cancel()
        for task in self._measuring:
            task.cancel()
        for name in list(self.sinks):
            task = asyncio.get_running_loop().create_task(self.stop_sink(name))
            self._departures.add(task)
            task.add_done_callback(self._departures.discard)

    async def wait_stopped(self) -> None:
        while self._departures:
            await asyncio.gather(*self._departures, return_exceptions=True)

    # ------------------------------------------------------------------ sinks
    def start_sink(self, name: str, sink: TrackSink) -> None:
        if name in self.sinks:
            raise SfuError("already_running", f"{name} is already running in room {self.name!r}")
        self.sinks[name] = sink
        for up in self.tracks.values():
            sink.track_added(up)

    async def stop_sink(self, name: str) -> dict[str, Any]:
        sink = self.sinks.pop(name, None)
        if sink is None:
            raise SfuError("not_running", f"{name} is not running in room {self.name!r}")
        for up in self.tracks.values():
            sink.track_removed(up)
        try:
            result = await sink.stop()
        except Exception as exc:
            log.exception("room %s: stopping %s failed", self.name, name)
            result = {"error": str(exc) or type(exc).__name__}
        self.emit(None, {"type": "sink_stopped", "sink": name, "result": result})
        self._check_empty()
        return result

    # ------------------------------------------------------------------ called by peers
    def track_published(self, up: UpTrack) -> None:
        self.tracks[up.key] = up
        self.stats.published_tracks[up.kind] += 1
        self.emit(None, {"type": "track_published", "track": up.describe()})
        for sink in self.sinks.values():
            sink.track_added(up)
        for peer in self.peers.values():
            if peer.participant != up.publisher:
                peer.post(peer.subscribe, up)
        if up.source == "camera":
            self._apply_last_n()

    def track_unpublished(self, up: UpTrack) -> None:
        self.tracks.pop(up.key, None)
        self.stats.published_tracks[up.kind] -= 1
        self._received_gone += up.bytes
        self.emit(None, {"type": "track_unpublished", "track": up.describe()})
        for sink in self.sinks.values():
            sink.track_removed(up)
        for peer in self.peers.values():
            if peer.participant != up.publisher:
                peer.post(peer.unsubscribe, up.key)
        if up.source == "camera":
            self._apply_last_n()

    def down_stopped(self, down: DownTrack) -> None:
        down.downlink()
        self._forwarded_gone += down.bytes
        self._sent_gone += down.packets
        self._lost_gone += down.lost
        self.stats.subscribed_tracks[down.kind] -= 1

    def report(self) -> dict[str, Any]:
        """The room for the metrics: who is in it; its media bytes in and out, the packets sent on
        its downlinks and how many of those the subscribers' receiver reports count as lost, all
        since it opened; the mean over its down tracks of the jitter those reports give, and the
        mean over its participants of their latest round trips, and the lowest downlink estimate
        (REMB) among its subscribers (None before the first)."""
        downs = [down for peer in self.peers.values() for down in peer.downs.values()]
        links = [link for down in downs if (link := down.downlink()) is not None]
        rtts = [peer.rtt_s for peer in self.peers.values() if peer.rtt_s is not None]
        estimates = [estimate for peer in self.peers.values()
                     if (estimate := peer.downlink_estimate().bitrate_bps) is not None]
        return {
            "participants": len(self.peers),
            "tracks": len(self.tracks),
            "received_bytes": self._received_gone + sum(up.bytes for up in self.tracks.values()),
            "forwarded_bytes": self._forwarded_gone + sum(down.bytes for down in downs),
            "downlink_packets_sent": self._sent_gone + sum(down.packets for down in downs),
            "downlink_packets_lost": self._lost_gone + sum(down.lost for down in downs),
            "downlink_jitter_seconds": sum(link.jitter_s for link in links) / len(links) if links else None,
            "rtt_seconds": sum(rtts) / len(rtts) if rtts else None,
            "downlink_estimate_min_bps": min(estimates) if estimates else None,
        }

    def audio_level(self, participant: str, level: int) -> None:
        self.speaker.add_level(participant, level, time.monotonic())

    def connection_lost(self, participant: str, reason: str) -> None:
        if participant in self.peers and participant not in self._leaving:
            log.info("room %s: participant %s left: %s", self.name, participant, reason)
            task = asyncio.get_running_loop().create_task(self._leave_lost(participant, reason))
            self._departures.add(task)
            task.add_done_callback(self._departures.discard)

    async def _leave_lost(self, participant: str, reason: str) -> None:
        # The participant may have left by request (or signaling released it) since the loss.
        if participant in self.peers and participant not in self._leaving:
            await self.leave(participant, reason)

    def _apply_last_n(self) -> None:
        """Give each participant the cameras of the ``last_n`` others who spoke most recently
        (see the module's docstring), and tell it when that changed."""
        cameras = {up.publisher for up in self.tracks.values() if up.source == "camera" and not up.closed}
        ranked = [participant for participant in self._recent if participant in cameras]
        for peer in self.peers.values():
            others = [participant for participant in ranked if participant != peer.participant]
            chosen = others[:self.last_n] if self.last_n and len(others) > self.last_n else None
            shown = None if chosen is None else frozenset(chosen)
            if shown != peer.cameras_shown:
                peer.show_cameras(chosen)
                self.emit(peer.participant, {"type": "last_n", "participants": chosen})

    # ------------------------------------------------------------------ periodic work
    def _allocate(self, now: float) -> None:
        """Measure every published layer's bitrate, then share each subscriber's downlink."""
        for peer in self.peers.values():
            for up in peer.ups.values():
                up.measure(now)
        for peer in self.peers.values():
            if not peer.closed:
                peer.allocate(now)

    async def _tick(self) -> None:
        next_quality = time.monotonic() + self.quality_interval
        next_round_trip = time.monotonic() + ROUND_TRIP_INTERVAL
        next_allocation = time.monotonic() + allocation.INTERVAL
        last = time.monotonic()
        while True:
            await asyncio.sleep(SPEAKER_INTERVAL)
            now = time.monotonic()
            try:
                if now >= next_allocation:
                    next_allocation = now + allocation.INTERVAL
                    self._allocate(now)
                for peer in self.peers.values():
                    peer.pad(now - last)
            except Exception:
                log.exception("room %s: downlink allocation failed", self.name)
            last = now
            try:
                change = self.speaker.update(now)
            except Exception:
                log.exception("room %s: active-speaker detection failed", self.name)
                change = None
            if change is not None:
                self.emit(None, {"type": "active_speaker", "participant_id": change.participant,
                                 "level_dbov": change.level_dbov})
                if change.participant in self.peers:
                    self._recent.remove(change.participant)
                    self._recent.insert(0, change.participant)
                    self._apply_last_n()
            if now >= next_round_trip:
                next_round_trip = now + ROUND_TRIP_INTERVAL
                for peer in self.peers.values():
                    task = asyncio.get_running_loop().create_task(peer.measure_round_trip())
                    self._measuring.add(task)
                    task.add_done_callback(self._measuring.discard)
            if now >= next_quality:
                next_quality = now + self.quality_interval
                for peer in self.peers.values():
                    peer.post(peer.report_quality)
