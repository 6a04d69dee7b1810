"""RTP passthrough: one publisher track (up) fanned out to its subscribers' senders (down).

Nothing is decoded or encoded. Each packet arriving at the publisher's receiver is rewritten per
subscriber — SSRC, payload type, sequence number, timestamp, MID and abs-send-time as that
subscriber's session negotiated them — and written through the subscriber's sender, which keeps
it for NACK/RTX and counts it in its sender reports.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import cast

from aiortc import RTCRtpReceiver, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket, unwrap_rtx

from . import _fastpath, aiortc_private
from .keyframes import KeyframeRequester, SubscriberKeyframeBudget, is_keyframe_start
from .retransmissions import RetransmissionBudget
from .stats import SfuStats
from .twcc import TRANSPORT_CC_URI, SendHistory
from .vp8 import Vp8Rewriter

log = logging.getLogger("confmeet.sfu")

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
# A simulcast layer is sent while its packets keep coming: a browser stops sending its upper
# layers when its bandwidth estimate falls (and starts them as it climbs), and a video stream
# sends a packet at least every frame. How often the layers sent are looked at, and how long a
# silent layer still counts as sent (seconds).
LAYER_CHECK_INTERVAL = 0.25
LAYER_TIMEOUT = 1.0
KEYFRAME_RESENDS = 3  # times a packet of the latest keyframe is sent again outside the budget


def _initial_sequence_number() -> int:
    # The lower half, as aiortc does, so that SRTP's rollover counter is not hit early.
    return random.randrange(SEQ_MOD // 2)


def RtpRewriter(clock_rate: int, last_seq: int | None = None, last_ts: int | None = None) -> _fastpath.Rewriter:
    """Maps the sequence numbers and timestamps of one source onto a subscriber's own, so the
    subscriber sees one continuous stream even when the source restarts or is switched: its
    ``restart(seq, ts, now)`` makes (seq, ts), the next packet of a new or restarted source,
    follow the last packet sent with the timestamp advanced by the wall-clock time in between;
    ``rewrite(seq, ts, now)`` gives the subscriber's (seq, ts), or None for a packet older than
    the restart (it would land on sequence numbers already used), until 0x4000 numbers past
    the restart. In C (_fastpath.c), where each forwarded packet is rewritten."""
    return _fastpath.Rewriter(clock_rate, _initial_sequence_number() if last_seq is None else last_seq,
                              random.randrange(TS_MOD) if last_ts is None else last_ts)


def audio_level_byte(packet: RtpPacket) -> int:
    """The packet's audio level as its header extension's byte (V bit, then the level), as
    _fastpath writes it; -1 for none."""
    level = packet.extensions.audio_level
    return -1 if level is None else (0x80 if level[0] else 0) | level[1]


MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
PLAYOUT_DELAY_MAX = 0xFFF  # the largest delay the extension can state, in its 10 ms units


@dataclass
class HeaderTemplate:
    """A subscriber's RTP header extensions (MID, abs-send-time, audio level, the transport-wide
    sequence number, and a playout delay while its link needs one) in RFC 8285's one-byte form,
    with the constant part packed once: the same bytes RtpPacket.serialize writes for the
    extensions this SFU sets, written per packet by _fastpath.Down."""

    mid: bytes  # the MID element, whole
    abs_send_time_id: int
    audio_level_id: int
    playout_delay_id: int = 0
    transport_cc_id: int = 0
    playout_delay: bytes = b""  # the playout-delay element, whole (b"": none)

    @classmethod
    def for_subscriber(cls, mid: str | None, extensions: list) -> HeaderTemplate | None:
        """None when the negotiated IDs or the MID do not fit the one-byte form (the SFU offers
        IDs below 15 and MIDs of a few characters, so a subscriber cannot make it so; a track
        negotiated otherwise is declined)."""
        ids = {e.uri: e.id for e in extensions}
        mid_bytes = (mid or "").encode("utf8") if ids.get(MID_URI) else b""
        if any(i > 14 for i in ids.values()) or len(mid_bytes) > 16:
            return None
        mid_element = bytes([(ids[MID_URI] << 4) | (len(mid_bytes) - 1)]) + mid_bytes if mid_bytes else b""
        return cls(mid_element, ids.get(ABS_SEND_TIME_URI, 0), ids.get(AUDIO_LEVEL_URI, 0),
                   ids.get(PLAYOUT_DELAY_URI, 0), ids.get(TRANSPORT_CC_URI, 0))

    def set_playout_delay(self, minimum_ms: int) -> None:
        """Ask the subscriber's jitter buffer to hold frames at least ``minimum_ms`` (0: stop
        asking; nothing when the subscriber did not negotiate the extension). The maximum is left
        at the largest the extension states, so the browser's own estimate still rules above it."""
        if not self.playout_delay_id:
            return
        if minimum_ms <= 0:
            self.playout_delay = b""
            return
        units = min(PLAYOUT_DELAY_MAX, round(minimum_ms / 10))
        self.playout_delay = bytes([(self.playout_delay_id << 4) | 2]) + (
            (units << 12) | PLAYOUT_DELAY_MAX).to_bytes(3, "big")

    @property
    def constant(self) -> bytes:
        """The elements written the same in every packet: the MID, and the playout delay if one
        is set. The rest (abs-send-time, audio level, transport-wide sequence number) follow per
        packet, in that order, where negotiated, then padding to 32 bits (_fastpath.c)."""
        return self.mid + self.playout_delay


class ForwardedTrack(MediaStreamTrack):
    """The track a downstream sender is created with: it names the sender's msid and never yields
    a frame, so the sender's encoder stays idle while RTP is written past it."""

    def __init__(self, kind: str, track_id: str) -> None:
        super().__init__()
        self.kind = kind
        self._id = track_id

    async def recv(self) -> None:  # type: ignore[override]
        await asyncio.get_running_loop().create_future()


@dataclass
class Layer:
    """One encoding of a published video track: a simulcast layer (named by its rid), or the
    track's only stream. What it is known by (its SSRCs, learned from its first packets) and its
    own keyframe requests: a PLI names one SSRC, and each layer's encoder answers its own."""

    index: int  # 0 is the lowest
    rid: str | None
    keyframes: KeyframeRequester | None
    media_ssrc: int | None = None
    rtx_ssrc: int | None = None
    last_packet_at: float = -float("inf")
    packets: int = 0
    bytes: int = 0
    keyframes_seen: int = 0
    # Payload bytes of the media stream alone: not the retransmissions, nor the padding a browser
    # sends as retransmissions while it probes its uplink (what a layer costs a subscriber).
    media_bytes: int = 0
    bitrate_bps: float | None = None  # media_bytes per second lately, in bits (None: not sent now), see measure
    _metered: tuple[float, int] | None = None  # (when, media_bytes then) at the last measure
    # The media stream's sequence numbers received lately, a bit each: a retransmission of one
    # already here is a duplicate (a browser probing its uplink sends its padding as such).
    _received: bytearray = field(default_factory=lambda: bytearray(SEQ_MOD // 8))

    def mark_received(self, seq: int) -> None:
        """Note a sequence number, and forget the one half the number space away, so that no
        mark outlives the numbers' wrap."""
        self._received[seq >> 3] |= 1 << (seq & 7)
        far = (seq + SEQ_MOD // 2) % SEQ_MOD
        self._received[far >> 3] &= ~(1 << (far & 7)) & 0xFF

    def was_received(self, seq: int) -> bool:
        return bool(self._received[seq >> 3] & (1 << (seq & 7)))

    def set_media_ssrc(self, ssrc: int) -> None:
        """The media stream's SSRC, learned or changed: a new source, whose numbers start afresh."""
        self.media_ssrc = ssrc
        self._received = bytearray(SEQ_MOD // 8)

    def measure(self, now: float, sent: bool) -> None:
        if self._metered is not None and sent and now > self._metered[0]:
            rate = 8 * (self.media_bytes - self._metered[1]) / (now - self._metered[0])
            self.bitrate_bps = rate if self.bitrate_bps is None else 0.5 * (self.bitrate_bps + rate)
        elif not sent:
            self.bitrate_bps = None
        self._metered = (now, self.media_bytes)

    def describe(self) -> dict[str, object]:
        return {"rid": self.rid, "packets": self.packets, "bytes": self.bytes, "bitrate_bps": self.bitrate_bps,
                "keyframes": self.keyframes_seen, "plis_sent": self.keyframes.sent if self.keyframes else 0}


class UpTrack:
    """A track a participant publishes: it receives the RTP and fans it out to down tracks.

    A simulcast track (``rids``, lowest layer first) is received as one stream per layer, told
    apart by the rid header extension of their first packets (RTX streams by the repaired-rid);
    each down track forwards one layer of it."""

    def __init__(self, publisher: str, track_id: str, source: str, transceiver: RTCRtpTransceiver,
                 stats: SfuStats, on_audio_level: Callable[[int], None] | None = None,
                 rids: list[str] | None = None) -> None:
        self.publisher = publisher
        self.track_id = track_id
        self.source = source
        self.kind: str = transceiver.kind
        self.receiver: RTCRtpReceiver = transceiver.receiver
        negotiated = aiortc_private.codecs(transceiver)
        self.codec: RTCRtpCodecParameters = next(c for c in negotiated if c.name != "rtx")
        self.payload_type = cast(int, self.codec.payloadType)  # negotiated codecs always have one
        self.rtx_payload_types = {c.payloadType for c in negotiated
                                  if c.name == "rtx" and c.parameters.get("apt") == self.payload_type}
        self.stats = stats
        self.on_audio_level = on_audio_level
        self.simulcast = bool(rids) and self.kind == "video"
        self.layers: tuple[Layer, ...] = tuple(
            Layer(index, rid, KeyframeRequester(partial(self._send_pli, index)) if self.kind == "video" else None)
            for index, rid in enumerate(rids if self.simulcast else [None]))  # type: ignore[arg-type]
        self._layer_by_rid = {layer.rid: layer for layer in self.layers}
        self._layer_by_ssrc: dict[int, Layer] = {}
        self.sending: tuple[int, ...] = ()  # the simulcast layers the publisher sends now
        # The layer the taps get: the highest sent, moved to at its keyframe as a down track is.
        self._tap_layer: int | None = None if self.simulcast else 0
        self._tap_target = len(self.layers) - 1
        self._next_layer_check = 0.0
        self.downs: tuple[DownTrack, ...] = ()
        self._natives: tuple[_fastpath.Down, ...] = ()  # theirs, in the same order
        self.packets = 0
        self.bytes = 0
        self.keyframes_seen = 0
        self.duplicates = 0  # retransmissions of packets already received, dropped
        self.closed = False
        self.held = False  # a moderator muted it: received, not forwarded
        # Observers of every packet forwarded (recording, captions), of one layer (the highest
        # sent); called synchronously, so they must only copy or queue the packet.
        self.taps: tuple[Callable[[UpTrack, RtpPacket], None], ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return self.publisher, self.track_id

    @property
    def top(self) -> Layer:
        return self.layers[-1]

    @property
    def plis_sent(self) -> int:
        return sum(layer.keyframes.sent for layer in self.layers if layer.keyframes is not None)

    def describe(self) -> dict[str, str]:
        """The track as clients see it (docs/protocol.md); ``stream_id`` is the msid stream id the
        subscribers' receivers report (the publisher's participant id)."""
        return {"participant": self.publisher, "track_id": self.track_id, "kind": self.kind,
                "source": self.source, "stream_id": self.publisher, "codec": self.codec.mimeType}

    def add(self, down: DownTrack) -> None:
        if not self.closed and down not in self.downs:
            self.downs += (down,)
            self._natives += (down.native,)

    def discard(self, down: DownTrack) -> None:
        self.downs = tuple(d for d in self.downs if d is not down)
        self._natives = tuple(d.native for d in self.downs)

    def add_tap(self, tap: Callable[[UpTrack, RtpPacket], None]) -> None:
        if not self.closed and tap not in self.taps:
            self.taps += (tap,)

    def remove_tap(self, tap: Callable[[UpTrack, RtpPacket], None]) -> None:
        self.taps = tuple(t for t in self.taps if t != tap)

    def hold(self, held: bool) -> None:
        """Stop (or resume) forwarding; a resumed video track starts again from a keyframe."""
        if self.held and not held:
            for layer in self.layers:
                self.request_keyframe(urgent=True, layer=layer.index)
        self.held = held

    def request_keyframe(self, urgent: bool = False, layer: int | None = None) -> None:
        """Ask the publisher for a keyframe of ``layer`` (by default the one the taps get):
        ``urgent`` when someone sees nothing until it comes (a subscriber starting or
        switching layers, the track resumed or its source restarted), not for a subscriber's
        repair request (see keyframes.py for the intervals)."""
        requester = self.layers[self._tap_target if layer is None else layer].keyframes
        if requester is not None and not self.closed:
            requester.request(urgent)

    def best_layer(self, max_layer: int) -> int:
        """The layer to forward to someone who wants ``max_layer`` at most: the highest layer
        sent up to it, else the lowest sent above it; ``max_layer`` itself while none is sent
        (a track's start: its first packets decide)."""
        if not self.sending:
            return max_layer
        return max((i for i in self.sending if i <= max_layer), default=self.sending[0])

    def _check_layers(self, now: float) -> None:
        self._next_layer_check = now + LAYER_CHECK_INTERVAL
        sending = tuple(layer.index for layer in self.layers if now - layer.last_packet_at < LAYER_TIMEOUT)
        if sending != self.sending:
            self.sending = sending
            if sending and sending[-1] != self._tap_target:
                self._tap_target = sending[-1]
                if self.taps:
                    self.request_keyframe(urgent=True)
            for down in self.downs:
                down.retarget()

    def measure(self, now: float) -> None:
        """Bring each layer's bitrate up to date (every allocation interval: a layer's rate is
        the bytes since the last call, smoothed with the rate before)."""
        for layer in self.layers:
            layer.measure(now, now - layer.last_packet_at < LAYER_TIMEOUT)

    def keyframe_wanted(self, layer: int) -> bool:
        requester = self.layers[layer].keyframes
        return requester is not None and requester.wanted

    def close(self) -> None:
        self.closed = True
        for layer in self.layers:
            if layer.keyframes is not None:
                layer.keyframes.close()
        for down in self.downs:
            down.started = down.native.fast = False
        self.downs = self._natives = ()
        self.taps = ()

    async def _send_pli(self, index: int) -> bool:
        ssrc = self.layers[index].media_ssrc
        if ssrc is None or self.closed:
            return False
        await aiortc_private.send_pli(self.receiver, ssrc)
        self.stats.plis_sent += 1
        return True

    def _simulcast_layer(self, packet: RtpPacket) -> Layer | None:
        """The layer a packet belongs to: by its SSRC once known, else by its rid (a media
        stream) or repaired-rid (its RTX stream), which browsers send until the SFU's receiver
        reports acknowledge the stream."""
        layer = self._layer_by_ssrc.get(packet.ssrc)
        if layer is not None:
            return layer
        if packet.payload_type == self.payload_type:
            layer = self._layer_by_rid.get(packet.extensions.rtp_stream_id)
            if layer is not None:
                self._layer_by_ssrc.pop(layer.media_ssrc, None)  # type: ignore[arg-type]
                layer.set_media_ssrc(packet.ssrc)
                if layer.rtx_ssrc is not None:
                    aiortc_private.map_rtx_stream(self.receiver, layer.rtx_ssrc, packet.ssrc)
        elif packet.payload_type in self.rtx_payload_types:
            rid = packet.extensions.repaired_rtp_stream_id or packet.extensions.rtp_stream_id
            layer = self._layer_by_rid.get(rid)
            if layer is not None:
                self._layer_by_ssrc.pop(layer.rtx_ssrc, None)  # type: ignore[arg-type]
                layer.rtx_ssrc = packet.ssrc
                if layer.media_ssrc is not None:
                    aiortc_private.map_rtx_stream(self.receiver, packet.ssrc, layer.media_ssrc)
        if layer is not None:
            self._layer_by_ssrc[packet.ssrc] = layer
        return layer

    async def on_rtp(self, packet: RtpPacket) -> bool:
        """Forward a packet the publisher sent; False when its stream is not known (yet): a
        simulcast stream whose rid has not come, which must not be acknowledged."""
        if self.simulcast:
            layer = self._simulcast_layer(packet)
            if layer is None:  # a stream whose rid is not (or not yet) known
                return False
        else:
            layer = self.layers[0]
        if packet.payload_type == self.payload_type:
            if packet.ssrc != layer.media_ssrc:
                if self.simulcast:  # an RTX SSRC carrying the media payload type
                    return True
                layer.set_media_ssrc(packet.ssrc)
            layer.media_bytes += len(packet.payload)
            layer.mark_received(packet.sequence_number)
        elif (packet.payload_type in self.rtx_payload_types and len(packet.payload) > 2
              and layer.media_ssrc is not None):
            packet = unwrap_rtx(packet, payload_type=self.payload_type, ssrc=layer.media_ssrc)
            if layer.was_received(packet.sequence_number):  # nobody needs it again
                self.duplicates += 1
                self.stats.duplicates_dropped += 1
                return True
            layer.mark_received(packet.sequence_number)
        else:  # padding-only RTX, or a payload type this track did not negotiate
            return True
        self.packets += 1
        self.bytes += len(packet.payload)
        layer.packets += 1
        layer.bytes += len(packet.payload)
        now = time.monotonic()
        layer.last_packet_at = now
        if self.simulcast:
            if now >= self._next_layer_check or layer.index not in self.sending:
                self._check_layers(now)
        self.stats.count_received(self.kind, len(packet.payload))
        level = packet.extensions.audio_level
        if level is not None and self.on_audio_level is not None:
            self.on_audio_level(level[1])
        keyframe = layer.keyframes is not None and is_keyframe_start(self.codec.name, packet.payload)
        if keyframe:
            self.keyframes_seen += 1
            layer.keyframes_seen += 1
            layer.keyframes.keyframe_received()  # type: ignore[union-attr]
        if self.held:
            return True
        if self.taps and layer.index != self._tap_layer and layer.index == self._tap_target and keyframe:
            self._tap_layer = layer.index
        if layer.index == self._tap_layer:
            for tap in self.taps:
                try:
                    tap(self, packet)
                except Exception:
                    log.exception("a tap on track %s of %s failed; it is removed", self.track_id, self.publisher)
                    self.remove_tap(tap)
        downs = self.downs
        if downs:
            ntp_time = aiortc_private.current_ntp_time()
            if packet.csrc:
                left: Iterable[int] = range(len(downs))
            else:  # each down track in its steady state in C; the rest decide here first
                left = _fastpath.fanout(self._natives, packet.payload, packet.marker, packet.sequence_number,
                                        packet.timestamp, packet.ssrc, audio_level_byte(packet),
                                        packet.padding_size, keyframe, now, ntp_time)
            for index in left:
                downs[index].write(packet, keyframe, now, ntp_time, layer.index)
        return True


@dataclass(frozen=True)
class Downlink:
    """What a subscriber's latest receiver report says of one down track."""

    loss: float  # fraction of packets lost since the previous report, 0..1
    jitter_s: float


@dataclass(frozen=True)
class DownlinkEstimate:
    """What a subscriber says of its downlink as a whole: the bitrate its latest REMB allows
    (None before the first, or when it sends none) and the loss its latest receiver reports
    give over its down tracks, weighted by the packets each was sent (None before the first
    report)."""

    bitrate_bps: int | None
    loss: float | None
    age_s: float | None  # seconds since that REMB


class DownTrack:
    """One subscriber's copy of an up track, written through one of its senders: of a simulcast
    track, one layer at a time. It forwards ``layer`` and moves to ``target`` — the best layer
    the publisher sends up to ``max_layer`` — at that layer's next keyframe (asked for when the
    target changes), the sequence numbers and timestamps going on without a gap. A video the
    subscriber does not show (``max_layer`` -1) or the room leaves out of its last N
    (``shown`` False) is paused: its target is None and nothing of it is forwarded; it starts
    again from a keyframe."""

    def __init__(self, subscriber: str, up: UpTrack, transceiver: RTCRtpTransceiver,
                 stats: SfuStats, history: SendHistory | None = None) -> None:
        self.subscriber = subscriber
        self.up = up
        self.kind = up.kind
        self.transceiver = transceiver
        self.sender = transceiver.sender
        self.ssrc: int = transceiver.sender._ssrc
        self.stats = stats
        self.rewriter = RtpRewriter(up.codec.clockRate)
        # What is sent, as sent, and the steady state's forwarding path (see _fastpath.c).
        self.native = _fastpath.Down(self.ssrc, self.kind == "video", self.rewriter, stats.forwarded)
        self.vp8 = Vp8Rewriter() if up.codec.name == "VP8" else None
        self.payload_type = 0
        self.mid: str | None = None
        self.header: HeaderTemplate | None = None
        self._history = history  # the subscriber transport's transport-wide sequence numbers
        self.transport_sequence: SendHistory | None = None  # that, once negotiated on this track
        self.layer: int | None = None  # the layer forwarded now (None: waiting for a keyframe)
        self.max_layer = len(up.layers) - 1  # the highest layer wanted (-1: none): all unless told otherwise
        self.bandwidth_layer: int | None = None  # the highest the subscriber's downlink takes (None: any)
        self.shown = True  # False: a camera the room's last-N leaves out for this subscriber
        self.target = self._best()  # the layer to forward: sent, wanted and fitting (None: paused)
        self.layer_switches = 0
        self.accepted = False
        self.started = False
        self.output: aiortc_private.ForwardingSender | None = None
        self.lost = 0  # packets lost, as the subscriber's receiver reports count them; never goes down
        self.retransmissions = RetransmissionBudget()
        self.retransmitted = 0  # packets sent again on the subscriber's NACKs
        self.retransmissions_refused = 0  # NACKed packets not sent again: over the budget
        self.keyframe_timestamp: int | None = None  # the latest keyframe forwarded (as sent)
        self.playout_delay_ms = 0  # the least the subscriber's jitter buffer is asked to hold (video)
        self._keyframe_resends: dict[int, int] = {}  # its packets sent again, by sequence number
        self.remb_bps: int | None = None  # the subscriber's latest REMB naming this track
        self.remb_at: float | None = None
        self.started_at: float | None = None
        # The subscriber's own PLI/FIR, held to its budget (video only).
        self.keyframe_budget = (SubscriberKeyframeBudget(self._repair_keyframe) if self.kind == "video" else None)
        # Told of the first packet forwarded (the metrics: keyframe wait, join -> first media).
        self.on_first_packet: Callable[[DownTrack], None] | None = None

    @property
    def source_ssrc(self) -> int | None:
        """The source forwarded now (None: waiting for a keyframe, or paused)."""
        return self.native.source_ssrc

    @source_ssrc.setter
    def source_ssrc(self, ssrc: int | None) -> None:
        self.native.source_ssrc = ssrc

    @property
    def packets(self) -> int:
        return self.native.packets

    @property
    def bytes(self) -> int:
        """Payload bytes forwarded."""
        return self.native.bytes

    @property
    def gated(self) -> bool:
        """Video waiting for a keyframe before anything is forwarded (not paused)."""
        return self.kind == "video" and self.source_ssrc is None and self.target is not None

    def accept_negotiation(self) -> bool:
        """Take the payload type, MID and header extension IDs the subscriber's answer agreed
        on; False when it declined the track."""
        if self.transceiver.currentDirection not in ("sendonly", "sendrecv"):
            return False
        codec = next((c for c in aiortc_private.codecs(self.transceiver)
                      if is_codec_compatible(c, self.up.codec)), None)
        if codec is None:
            return False
        self.payload_type = cast(int, codec.payloadType)
        extensions = aiortc_private.header_extensions(self.transceiver)
        header = HeaderTemplate.for_subscriber(self.transceiver.mid, extensions)
        if header is None:
            log.warning("%s's answer for track %s of %s has header extension IDs or a MID the one-byte form "
                        "cannot carry; the track is not sent", self.subscriber, self.up.track_id, self.up.publisher)
            return False
        self.payload_type = self.native.payload_type = cast(int, codec.payloadType)
        self.mid = self.transceiver.mid
        self.header = header
        self.transport_sequence = (self._history if any(e.uri == TRANSPORT_CC_URI for e in extensions)
                                   else None)
        self.native.send_times = None if self.transport_sequence is None else self.transport_sequence.times
        header.set_playout_delay(self.playout_delay_ms)
        self._set_header()
        self.accepted = True
        return True

    def _set_header(self) -> None:
        header = cast(HeaderTemplate, self.header)
        self.native.set_template(header.constant, header.abs_send_time_id, header.audio_level_id,
                                 header.transport_cc_id)

    def downlink(self) -> Downlink | None:
        """The subscriber's latest receiver report on this track (None before the first); it
        also brings ``lost`` up to date."""
        report = aiortc_private.latest_receiver_report(self.sender)
        if report is None:
            return None
        self.lost = max(self.lost, report.packetsLost)
        return Downlink(report.fractionLost / 256, report.jitter / self.up.codec.clockRate)

    def start(self) -> None:
        """Begin forwarding; video waits for a keyframe, which is requested now."""
        if self.started or self.up.closed:
            return
        self.output = aiortc_private.ForwardingSender(self.sender, self.native)
        self.started = self.native.fast = True
        self.started_at = time.monotonic()
        self.up.add(self)
        # The layers sent may have changed since it was made: only started ones hear of it.
        self.target = self._best()
        if self.target is not None:
            self.up.request_keyframe(urgent=True, layer=self.target)

    def set_max_layer(self, layer: int | None) -> None:
        """Forward no layer above ``layer`` (clamped to the track's layers; None: the highest;
        negative: none, the video is paused)."""
        top = len(self.up.layers) - 1
        self.max_layer = top if layer is None else -1 if layer < 0 else min(layer, top)
        self.retarget()

    def set_shown(self, shown: bool) -> None:
        """Forward this video or not, as the room's last-N says (see room.py)."""
        if shown != self.shown:
            self.shown = shown
            self.retarget()

    @property
    def paused(self) -> bool:
        return self.target is None

    @property
    def allowed_layer(self) -> int:
        """The highest layer wanted, shown and fitting the subscriber's downlink (-1: none)."""
        if not self.shown:
            return -1
        return self.max_layer if self.bandwidth_layer is None else min(self.max_layer, self.bandwidth_layer)

    def _best(self) -> int | None:
        allowed = self.allowed_layer
        return None if allowed < 0 else self.up.best_layer(allowed)

    def set_bandwidth_layer(self, layer: int | None) -> None:
        """Forward no layer above ``layer``, for the subscriber's downlink (None: no limit); see
        allocation.py."""
        if layer != self.bandwidth_layer:
            self.bandwidth_layer = layer
            self.retarget()

    def retarget(self) -> None:
        """Head for the best layer now (the wanted one, or the layers sent, changed): from its
        next keyframe on, asked for now; until it comes the layer forwarded now goes on."""
        target = self._best()
        if target == self.target:
            return
        self.target = target
        if target is None:  # paused: at once, and from a keyframe when it resumes
            self.source_ssrc = self.layer = None
        elif self.started and target != self.layer:
            self.up.request_keyframe(urgent=True, layer=target)

    def _repair_keyframe(self) -> None:
        layer = self.target if self.layer is None else self.layer
        if layer is not None:
            self.up.request_keyframe(layer=layer)

    def stop(self) -> None:
        self.started = self.native.fast = False
        self.native.unbind()
        self.up.discard(self)
        if self.keyframe_budget is not None:
            self.keyframe_budget.close()

    def set_playout_delay(self, minimum_ms: int) -> None:
        """Ask the subscriber to play this video at least ``minimum_ms`` late (0: as it likes),
        from the next packet on (see Peer.allocate)."""
        if minimum_ms != self.playout_delay_ms:
            self.playout_delay_ms = minimum_ms
            if self.header is not None:
                self.header.set_playout_delay(minimum_ms)
                self._set_header()

    def remb_received(self, bitrate: int) -> None:
        self.remb_bps, self.remb_at = bitrate, time.monotonic()

    def allow_retransmission(self, packet: RtpPacket) -> bool:
        """The subscriber NACKed ``packet``, which its sender still has (as sent). A packet of
        the latest keyframe is sent again whatever the budget, up to ``KEYFRAME_RESENDS``
        times (counted in it all the same): until that keyframe is whole the subscriber sees
        nothing of the track, and a track just started or resumed has forwarded too little
        yet for its budget to carry one packet."""
        now = time.monotonic()
        always = False
        if packet.timestamp == self.keyframe_timestamp:
            resends = self._keyframe_resends.get(packet.sequence_number, 0)
            always = resends < KEYFRAME_RESENDS
            self._keyframe_resends[packet.sequence_number] = resends + 1
        if self.retransmissions.allow(now, len(packet.payload), self.native, always):
            if self.transport_sequence is not None:  # a packet sent again is a packet of its own
                packet.extensions.transport_sequence_number = self.transport_sequence.take(now)
            self.retransmitted += 1
            self.stats.retransmissions["sent"] += 1
            return True
        self.retransmissions_refused += 1
        self.stats.retransmissions["refused"] += 1
        return False

    def keyframe_requested(self) -> None:
        """The subscriber sent a PLI or FIR for this track."""
        if self.keyframe_budget is None:
            return
        outcome = "honoured" if self.keyframe_budget.request() else "throttled"
        self.stats.keyframe_requests[outcome] += 1

    def write(self, packet: RtpPacket, keyframe: bool, now: float, ntp_time: int, layer: int = 0) -> None:
        """Forward ``packet`` of ``layer`` (a keyframe's first when ``keyframe``), deciding
        first whether and how: what _fastpath.fanout leaves to Python (see UpTrack.on_rtp)."""
        if not self.started:
            return
        if packet.ssrc != self.source_ssrc:
            if layer != self.target:  # a layer neither forwarded nor switched to
                return
            if self.kind == "video" and not keyframe:
                if layer == self.layer:  # the layer's source restarted mid-stream: gate it
                    self.source_ssrc = self.layer = None
                if not self.up.keyframe_wanted(layer):
                    self.up.request_keyframe(urgent=True, layer=layer)
                return
            if self.layer is not None and self.layer != layer:
                self.layer_switches += 1
                self.stats.layer_switches += 1
            self.source_ssrc, self.layer = packet.ssrc, layer
            self.rewriter.restart(packet.sequence_number, packet.timestamp, now)
            if self.vp8 is not None:
                self.vp8.restart(self.native.last_payload, packet.payload)
                self.native.set_vp8(*self.vp8.offsets)
        try:
            self.output.bind()  # type: ignore[union-attr]
            mapped = self.native.forward(packet.payload, packet.marker, packet.sequence_number, packet.timestamp,
                                         audio_level_byte(packet), packet.padding_size, packet.csrc, now, ntp_time)
        except ConnectionError:  # the subscriber's transport closed under us
            return
        if mapped is None:  # older than the source's restart
            return
        if keyframe:
            self.keyframe_budget.keyframe_forwarded()  # type: ignore[union-attr]
            self.keyframe_timestamp = mapped[1]
            self._keyframe_resends.clear()
        if self.native.packets == 1 and self.on_first_packet is not None:
            self.on_first_packet(self)
