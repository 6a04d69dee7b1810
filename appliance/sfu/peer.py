"""One participant's session with the SFU: its peer connection, the tracks it publishes (up) and
the tracks it receives (down).

A peer is an actor: everything that changes its state — the participant's own signaling and the
room's requests alike — is queued to one task and runs in order, so negotiation never
interleaves. Only the media path (RTP arriving at a receiver) runs outside it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol, TypeVar

from aiortc import (
    RTCConfiguration,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import (
    InternalError,
    InvalidAccessError,
    InvalidStateError,
    OperationError,
)
from aiortc.rtp import RtpPacket

from . import aiortc_private, twcc
from .allocation import Demand, DownlinkAllocator, PlayoutDelay
from .errors import SfuError
from .forwarder import DownlinkEstimate, DownTrack, ForwardedTrack, UpTrack
from .ice import (
    CandidateGatherer,
    drop_mdns_candidates,
    is_mdns_candidate,
    parse_candidate,
)
from .negotiation import (
    SfuPeerConnection,
    check_offer,
    codec_preferences,
    parse_description,
)
from .quality import Quality
from .stats import SfuStats

log = logging.getLogger("confmeet.sfu")

SOURCES = ("camera", "microphone", "screen")
DEFAULT_SOURCE = {"audio": "microphone", "video": "camera"}
RECEIVING = ("recvonly", "sendrecv")
T = TypeVar("T")
# A REMB older than this no longer describes the downlink (browsers send one a second or more).
REMB_STALE_S = 5.0


class RoomLink(Protocol):
    """What a peer may ask of its room."""

    stats: SfuStats

    def emit(self, to: str | None, event: dict[str, Any]) -> None: ...

    def track_published(self, up: UpTrack) -> None: ...

    def track_unpublished(self, up: UpTrack) -> None: ...

    def audio_level(self, participant: str, level: int) -> None: ...

    def connection_lost(self, participant: str, reason: str) -> None: ...

    def down_stopped(self, down: DownTrack) -> None: ...


class Peer:
    def __init__(self, participant: str, name: str, room: RoomLink, gatherer: CandidateGatherer,
                 configuration: RTCConfiguration) -> None:
        self.participant = participant
        self.name = name
        self.room = room
        self.gatherer = gatherer
        self.pc = SfuPeerConnection(configuration)
        self.pc.on("connectionstatechange", self._on_connection_state)
        self.ups: dict[RTCRtpTransceiver, UpTrack] = {}
        self.held_sources: set[str] = set()  # sources a moderator muted (see RoomHost "hold")
        self.downs: dict[tuple[str, str], DownTrack] = {}
        self.wanted: dict[tuple[str, str], UpTrack] = {}
        self.max_layers: dict[tuple[str, str], int | None] = {}  # asked for with "video_layer"
        # Whose cameras the room's last-N forwards, as its latest last_n event listed them (None: all).
        self.last_n: list[str] | None = None
        self.labels: dict[str, str] = {}
        self.negotiated = False
        self.quality: Quality | None = None
        self.rtt_s: float | None = None  # the latest round trip SFU -> participant -> SFU (an ICE check)
        self.closed = False
        self.joined_at = time.monotonic()
        self._media_forwarded = False
        self._up_by_receiver: dict[RTCRtpReceiver, UpTrack] = {}
        self._tapped: set[RTCRtpReceiver] = set()
        self._offer_needed = False
        self._sync_queued = False
        self._uplink_counts: dict[tuple[RTCRtpReceiver, int], tuple[int, int]] = {}
        self.allocator = DownlinkAllocator()
        self.transport_sequence = twcc.SendHistory()  # numbers the video sent this participant (transport-cc)
        self.playout = PlayoutDelay()
        self._padding_due = 0.0  # bytes of probe padding owed (see pad)
        self._queue: asyncio.Queue[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any] | None]] = (
            asyncio.Queue())
        self._task = asyncio.get_running_loop().create_task(self._run())

    # ------------------------------------------------------------------ the actor
    async def call(self, action: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``action(*args)`` in the peer's task and return its result."""
        if self.closed:
            raise SfuError("unknown_participant", f"participant {self.participant!r} has left")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((partial(action, *args), future))
        return await future

    def post(self, action: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Queue ``action(*args)`` to the peer's task without waiting for it."""
        if not self.closed:
            self._queue.put_nowait((partial(action, *args), None))

    async def _run(self) -> None:
        while not self.closed:
            action, future = await self._queue.get()
            try:
                result = await action()
            except Exception as exc:
                if future is None:
                    log.exception("participant %s: %s failed", self.participant, action)
                elif not future.done():
                    future.set_exception(exc)
            else:
                if future is not None and not future.done():
                    future.set_result(result)
        gone = SfuError("unknown_participant", f"participant {self.participant!r} has left")
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if future is not None and not future.done():
                future.set_exception(gone)

    async def close(self) -> None:
        await self.call(self._shutdown)
        await self._task

    async def _shutdown(self) -> None:
        self.closed = True
        for transceiver in list(self.ups):
            self._unpublish(transceiver)
        for down in self.downs.values():
            down.stop()
            self.room.down_stopped(down)
        self.downs.clear()
        self.wanted.clear()
        await self.pc.close()

    def _on_connection_state(self) -> None:
        if self.pc.connectionState == "connected":
            aiortc_private.receive_srtp_directly(self.pc)
        # "closed" without our asking: the client shut DTLS down (closed its peer connection).
        if self.pc.connectionState == "failed" and not self.closed:
            cause = "ice" if self.pc.iceConnectionState == "failed" else "dtls"
            self.room.stats.connection_failures[cause] += 1
        if self.pc.connectionState in ("failed", "closed") and not self.closed:
            self.room.connection_lost(self.participant, f"connection_{self.pc.connectionState}")

    # ------------------------------------------------------------------ the participant's signaling
    async def handle_offer(self, sdp: str, tracks: list[dict[str, str]]) -> dict[str, Any]:
        if self.pc.signalingState == "have-local-offer":
            raise SfuError("glare", "the server's offer is waiting for your answer: answer it "
                                    "(rolling back your own offer first), then offer again")
        check_offer(sdp)
        for label in tracks:
            self.labels[label.get("mid") or label["track_id"]] = label["source"]
        await self._set_remote(sdp, "offer")
        self._tap_receivers()
        answer = await self.pc.createAnswer()
        self.gatherer.prepare(self.pc)
        await self.pc.setLocalDescription(answer)
        self._update_publications()
        self.negotiated = True
        return {"type": "answer", "sdp": self.gatherer.announce(self.pc.localDescription.sdp)}

    async def handle_answer(self, sdp: str) -> dict[str, Any]:
        if self.pc.signalingState != "have-local-offer":
            raise SfuError("invalid_state", "no offer of the server is waiting for an answer")
        parse_description(sdp)
        await self._set_remote(sdp, "answer")
        for key, down in list(self.downs.items()):
            if not down.accepted and not down.accept_negotiation():
                log.info("participant %s declined track %s", self.participant, key)
                down.stop()
                self.room.down_stopped(down)
                del self.downs[key]
                self.wanted.pop(key, None)
        return {"type": "ok"}

    async def add_candidate(self, candidate: str) -> dict[str, Any]:
        """Add a trickled candidate; an empty string means end-of-candidates."""
        if self.pc.remoteDescription is None:
            raise SfuError("invalid_state", "send your offer before your ICE candidates")
        if not candidate:
            await self.pc.addIceCandidate(None)
        elif not is_mdns_candidate(candidate):
            try:
                ice_candidate = parse_candidate(candidate)
            except ValueError as exc:
                raise SfuError("invalid_candidate", str(exc)) from None
            # Every m-line is bundled on the first transport; route the candidate there.
            ice_candidate.sdpMid = self._primary_mid()
            await self.pc.addIceCandidate(ice_candidate)
        return {"type": "ok"}

    async def _set_remote(self, sdp: str, kind: str) -> None:
        description = RTCSessionDescription(sdp=drop_mdns_candidates(sdp), type=kind)
        try:
            await self.pc.setRemoteDescription(description)
        except (ValueError, InternalError, InvalidAccessError, InvalidStateError, OperationError) as exc:
            raise SfuError("invalid_sdp", f"the {kind} was refused: {exc}") from None

    def _primary_mid(self) -> str | None:
        mid = next((t.mid for t in self.pc.getTransceivers() if not aiortc_private.is_bundled(t)), None)
        if mid is None and self.pc.sctp is not None:
            mid = self.pc.sctp.mid
        return mid

    # ------------------------------------------------------------------ publishing (up)
    def _tap_receivers(self) -> None:
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            if aiortc_private.offered_direction(transceiver) in RECEIVING and receiver not in self._tapped:
                aiortc_private.tap_receiver(receiver, partial(self._on_rtp, receiver))
                self._tapped.add(receiver)

    async def _on_rtp(self, receiver: RTCRtpReceiver, packet: RtpPacket) -> bool:
        up = self._up_by_receiver.get(receiver)
        return up is None or await up.on_rtp(packet)

    def _update_publications(self) -> None:
        remote = parse_description(self.pc.remoteDescription.sdp)
        by_mid = {t.mid: t for t in self.pc.getTransceivers()}
        for media in remote.media:
            transceiver = by_mid.get(media.rtp.muxId)
            if transceiver is None or media.kind not in DEFAULT_SOURCE:
                continue
            receiving = transceiver.currentDirection in RECEIVING
            msid = (media.msid or "").split()
            track_id = msid[1] if len(msid) == 2 else f"{self.participant}-{transceiver.mid}"
            up = self.ups.get(transceiver)
            if up is not None and (not receiving or up.track_id != track_id):
                self._unpublish(transceiver)
            if receiving and transceiver not in self.ups:
                self._publish(transceiver, track_id)

    def _publish(self, transceiver: RTCRtpTransceiver, track_id: str) -> None:
        source = (self.labels.get(transceiver.mid or "") or self.labels.get(track_id)
                  or DEFAULT_SOURCE[transceiver.kind])
        on_level = partial(self.room.audio_level, self.participant) if transceiver.kind == "audio" else None
        up = UpTrack(self.participant, track_id, source, transceiver, self.room.stats, on_level,
                     rids=self.pc.simulcast.get(transceiver.mid or ""))
        up.held = source in self.held_sources
        self.ups[transceiver] = up
        self._up_by_receiver[transceiver.receiver] = up
        self.room.track_published(up)

    def _unpublish(self, transceiver: RTCRtpTransceiver) -> None:
        up = self.ups.pop(transceiver)
        self._up_by_receiver.pop(transceiver.receiver, None)
        up.close()
        self.room.track_unpublished(up)

    # ------------------------------------------------------------------ subscribing (down)
    async def subscribe(self, up: UpTrack) -> None:
        if not up.closed:
            self.wanted[up.key] = up
            self._request_sync()

    async def set_max_layer(self, key: tuple[str, str], layer: int | None) -> None:
        self.max_layers[key] = layer
        down = self.downs.get(key)
        if down is not None:
            down.set_max_layer(layer)

    @property
    def cameras_shown(self) -> frozenset[str] | None:
        return None if self.last_n is None else frozenset(self.last_n)

    def show_cameras(self, publishers: list[str] | None) -> None:
        """Forward only these publishers' cameras (None: everyone's): the room's last-N. Not
        queued to the peer's task: it only pauses and resumes down tracks, as the media path
        would."""
        self.last_n = publishers
        for down in self.downs.values():
            self._show(down)

    def _show(self, down: DownTrack) -> None:
        if down.kind == "video" and down.up.source == "camera":
            down.set_shown(self.last_n is None or down.up.publisher in self.last_n)

    async def unsubscribe(self, key: tuple[str, str]) -> None:
        self.wanted.pop(key, None)
        self.max_layers.pop(key, None)
        down = self.downs.pop(key, None)
        if down is not None:
            down.stop()
            self.room.down_stopped(down)
            down.transceiver.direction = "inactive"
            await down.sender.stop()
            self._offer_needed = True
        self._request_sync()

    def _request_sync(self) -> None:
        if not self._sync_queued:
            self._sync_queued = True
            self.post(self.sync_downstream)

    async def sync_downstream(self) -> None:
        """Offer the participant what it should receive now, unless a negotiation is under way
        (then this runs again once the participant has answered)."""
        self._sync_queued = False
        if (self.closed or not self.negotiated or self.pc.signalingState != "stable"
                or self.pc.connectionState == "closed"):
            return
        for key, up in self.wanted.items():
            if key not in self.downs and not up.closed:
                self.downs[key] = self._add_down(up)
                self._offer_needed = True
        if not self._offer_needed:
            return
        self._offer_needed = False
        try:
            offer = await self.pc.createOffer()
            self.gatherer.prepare(self.pc)
            await self.pc.setLocalDescription(offer)
        except InvalidStateError:  # the connection closed while we were offering
            return
        tracks = [{"mid": down.transceiver.mid, **down.up.describe()} for down in self.downs.values()]
        self.room.emit(self.participant, {"type": "offer", "tracks": tracks,
                                          "sdp": self.gatherer.announce(self.pc.localDescription.sdp)})

    def _add_down(self, up: UpTrack) -> DownTrack:
        transceiver = self.pc.addTransceiver(ForwardedTrack(up.kind, up.track_id), direction="sendonly")
        transceiver.setCodecPreferences(codec_preferences(up.codec))
        aiortc_private.set_stream_id(transceiver.sender, up.publisher)
        down = DownTrack(self.participant, up, transceiver, self.room.stats, self.transport_sequence)
        down.set_max_layer(self.max_layers.get(up.key))
        self._show(down)
        down.on_first_packet = self._first_packet
        self.room.stats.subscribed_tracks[up.kind] += 1
        aiortc_private.on_keyframe_request(transceiver.sender, down.keyframe_requested)
        aiortc_private.gate_retransmissions(transceiver.sender, down.allow_retransmission)
        aiortc_private.on_remb(transceiver.sender, down.remb_received)
        aiortc_private.on_rtcp_feedback(transceiver.sender, self._feedback)
        aiortc_private.on_sender_started(transceiver.sender, partial(self.post, self._start_down, down))
        return down

    def _first_packet(self, down: DownTrack) -> None:
        now = time.monotonic()
        if down.kind == "video" and down.started_at is not None:  # gated until a keyframe came
            self.room.stats.keyframe_wait.observe(now - down.started_at)
        if not self._media_forwarded:
            self._media_forwarded = True
            self.room.stats.first_media.observe(now - self.joined_at)

    def _feedback(self, kind: str, count: int) -> None:
        self.room.stats.feedback_received[kind] += count

    async def _start_down(self, down: DownTrack) -> None:
        if self.downs.get(down.up.key) is not down:
            # Unsubscribed while its offer was out; aiortc started the sender all the same.
            await down.sender.stop()
        elif down.accepted:
            down.start()
            aiortc_private.on_transport_feedback(down.sender.transport, self._transport_feedback)

    def _transport_feedback(self, message: twcc.Feedback) -> None:
        """The browser's transport-cc feedback on the video it was sent: the queue on its
        downlink, which a probe must not build (allocation.py)."""
        now = time.monotonic()
        self.room.stats.feedback_received["transport-cc"] += 1
        queue = self.transport_sequence.feedback(message, now)
        if queue is not None:
            self.allocator.queue_measured(now, queue)

    # ------------------------------------------------------------------ measurements
    def downlink_estimate(self) -> DownlinkEstimate:
        """What the participant's browser says its downlink carries: the latest REMB on any of
        its down tracks, and the loss their latest receiver reports give, each weighted by the
        packets sent it (what the link loses: one stream's few packets, an audio stream's for
        one, are no measure of the link alone)."""
        latest = max((down for down in self.downs.values() if down.remb_at is not None),
                     key=lambda down: down.remb_at, default=None)  # type: ignore[arg-type,return-value]
        losses = [(link.loss, down.packets) for down in self.downs.values() if (link := down.downlink()) is not None]
        packets = sum(count for _, count in losses)
        return DownlinkEstimate(
            bitrate_bps=latest.remb_bps if latest is not None else None,
            loss=(sum(loss * count for loss, count in losses) / packets if packets
                  else max(loss for loss, _ in losses) if losses else None),
            age_s=time.monotonic() - latest.remb_at if latest is not None and latest.remb_at is not None else None)

    def allocate(self, now: float) -> None:
        """Share the downlink over the video this participant receives: each video's layer
        within what its browser's estimate says the link carries (allocation.py). Its up tracks'
        layer bitrates must have been measured just before."""
        demands, audio_bps = [], 0.0
        for down in self.downs.values():
            if not down.started or down.paused:
                continue
            if down.kind == "audio":
                audio_bps += down.up.layers[0].bitrate_bps or 0.0
            else:
                demands.append(Demand(down.up.key, tuple(layer.bitrate_bps for layer in down.up.layers),
                                      down.max_layer, 0 if down.up.source == "screen" else 1))
        estimate = self.downlink_estimate()
        bitrate = estimate.bitrate_bps if estimate.age_s is not None and estimate.age_s < REMB_STALE_S else None
        probes = self.allocator.probes
        decision = self.allocator.update(now, bitrate, estimate.loss, audio_bps, demands, self.rtt_s)
        self.room.stats.probes += self.allocator.probes - probes
        delay = self.playout.update(now, estimate.loss, self.rtt_s)
        for down in self.downs.values():
            if down.kind == "video":
                down.set_bandwidth_layer(decision.caps.get(down.up.key))
                down.set_playout_delay(delay)

    def pad(self, seconds: float) -> None:
        """Send the probe padding the allocator asked for over the last ``seconds``, through a
        video this participant receives."""
        if not self.allocator.probe_bps:
            self._padding_due = 0.0
            return
        self._padding_due += self.allocator.probe_bps * seconds / 8
        ntp_time = aiortc_private.current_ntp_time()
        for down in self.downs.values():
            if down.kind == "video" and down.started and not down.paused and down.output is not None:
                try:
                    while self._padding_due > 0:
                        sent = down.output.pad(ntp_time, down.transport_sequence)
                        if not sent:
                            break  # no RTX on this one, or nothing sent yet: try another
                        self._padding_due -= sent
                        self.room.stats.padding_bytes += sent
                except ConnectionError:
                    return
                if self._padding_due <= 0:
                    return
        self._padding_due = 0.0  # nothing could carry it: owe nothing

    async def report_quality(self) -> None:
        """Grade the connection from RTCP receiver reports (downlink) and the server's own
        reception statistics (uplink); tell the room when the grade changes."""
        loss, jitter_ms, measured = 0.0, 0.0, False
        for down in self.downs.values():
            link = down.downlink()
            if link is not None:
                measured = True
                loss = max(loss, link.loss)
                jitter_ms = max(jitter_ms, 1000 * link.jitter_s)
        for up in self.ups.values():
            for ssrc, stream in aiortc_private.media_streams(up.receiver).items():
                lost, received = stream.packets_lost, stream.packets_received
                last_lost, last_received = self._uplink_counts.get((up.receiver, ssrc), (0, 0))
                self._uplink_counts[(up.receiver, ssrc)] = (lost, received)
                expected = (lost - last_lost) + (received - last_received)
                if expected > 0:
                    measured = True
                    loss = max(loss, max(0, lost - last_lost) / expected)
                    jitter_ms = max(jitter_ms, 1000 * stream.jitter / up.codec.clockRate)
        if not measured:
            return
        quality = Quality.grade(loss, jitter_ms)
        if self.quality is None or quality.level != self.quality.level:
            self.room.emit(None, {"type": "connection_quality", "participant_id": self.participant,
                                  **quality.describe()})
        self.quality = quality

    async def measure_round_trip(self) -> None:
        """An ICE consent check to the participant, timed (what a browser's
        ``currentRoundTripTime`` is); a lost one leaves the last measurement. Not queued to the
        peer's task: it would hold negotiation up for a round trip."""
        if not self.closed:
            rtt = await aiortc_private.ice_round_trip(self.pc)
            if rtt is not None:
                self.rtt_s = rtt

    async def describe_stats(self) -> dict[str, Any]:
        return {
            "type": "stats",
            "connection_state": self.pc.connectionState,
            "published": [{"track_id": up.track_id, "kind": up.kind, "source": up.source,
                           "codec": up.codec.mimeType, "packets": up.packets, "bytes": up.bytes,
                           "keyframes": up.keyframes_seen, "plis_sent": up.plis_sent,
                           "layers": [layer.describe() for layer in up.layers] if up.simulcast else None}
                          for up in self.ups.values()],
            "subscribed": [{"track_id": down.up.track_id, "publisher": down.up.publisher,
                            "kind": down.kind, "packets": down.packets, "bytes": down.bytes,
                            "retransmitted": down.retransmitted, "remb_bps": down.remb_bps,
                            "retransmissions_refused": down.retransmissions_refused,
                            "forwarding": down.started and not down.paused,
                            "paused": down.paused, "waiting_for_keyframe": down.gated,
                            "layer": down.layer, "target_layer": down.target,
                            "bandwidth_layer": down.bandwidth_layer,
                            "layer_switches": down.layer_switches}
                           for down in self.downs.values()],
            "quality": self.quality.describe() if self.quality else None,
            "downlink": dataclasses.asdict(self.downlink_estimate()),
            "probes": self.allocator.probes, "probe_bps": self.allocator.probe_bps,
            "downlink_queue_ms": (None if self.transport_sequence.queue_s is None
                                  else round(1000 * self.transport_sequence.queue_s, 1)),
        }


def quiet_closed_peer_races(loop: asyncio.AbstractEventLoop) -> None:
    """aiortc starts each connection's ICE/DTLS in a task nobody awaits; when the peer is closed
    while that task still runs (someone leaves during set-up), it fails with InvalidStateError and
    asyncio logs "Task exception was never retrieved" with a traceback. That is a normal end of a
    connection, so it is logged as one line; every other unhandled error keeps the default report."""
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        task = context.get("future")
        coro = getattr(task, "get_coro", lambda: None)()
        if isinstance(exc, InvalidStateError) and "RTCPeerConnection" in getattr(coro, "__qualname__", ""):
            log.debug("a peer connection closed while connecting: %s", exc)
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
