"""What a participant receives: each track decoded as a browser plays it (``ReceivedTrack``) or only
counted from its RTP (``CountedTrack``), and each receiver's view of its link (``Link``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiortc import RTCRtpReceiver, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from appliance.sfu import aiortc_private
from appliance.sfu.keyframes import is_keyframe_start

from . import ClientError


class DecodeErrorCounter(threading.Event):
    """Stands in for a receiver's decode-error event: aiortc's decoder thread sets it for every
    frame it fails to decode (and the receiver then asks for a keyframe); this also counts."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def set(self) -> None:
        self.count += 1
        super().set()


def count_decode_errors(receiver: RTCRtpReceiver) -> DecodeErrorCounter:
    # aiortc 1.16 private attribute; the receiver hands it to its decoder thread in receive().
    if not hasattr(receiver, "_RTCRtpReceiver__decoder_error"):
        raise ClientError("this aiortc version cannot count decode errors: use aiortc 1.16")
    counter = DecodeErrorCounter()
    receiver._RTCRtpReceiver__decoder_error = counter  # type: ignore[attr-defined]
    return counter


@dataclass
class LinkSample:
    """A received track's link as its receiver sees it, at one moment."""

    packets: int = 0
    lost: int = 0
    payload_bytes: int = 0


class Link:
    """Counts a receiver's media bytes (aiortc's statistics have no byte count), reads its packet,
    loss and jitter statistics, and keeps the jitter each of its RTCP receiver reports tells the
    sender: the receiving participant's view of its downlink."""

    def __init__(self, transceiver: RTCRtpTransceiver) -> None:
        self.receiver = transceiver.receiver
        media = [c for c in aiortc_private.codecs(transceiver) if c.name != "rtx"]
        self._media_types = {c.payloadType for c in media}
        self._clock_rate = media[0].clockRate if media else 90000
        self.payload_bytes = 0
        self.reported_jitters: list[float] = []  # seconds, one per receiver report on the media stream
        aiortc_private.on_receiver_reports(self.receiver, self._reported)
        handle = self.receiver._handle_rtp_packet

        async def counted(packet: Any, arrival_time_ms: int) -> None:
            if packet.payload_type in self._media_types:
                self.payload_bytes += len(packet.payload)
            await handle(packet, arrival_time_ms)

        self.receiver._handle_rtp_packet = counted  # type: ignore[method-assign]

    def _reported(self, blocks: list[Any]) -> None:
        media = aiortc_private.media_streams(self.receiver)
        self.reported_jitters += [block.jitter / self._clock_rate for block in blocks if block.ssrc in media]

    async def sample(self) -> LinkSample:
        """Now: packets received and lost on the media stream (all of them together, if the sender
        restarted on another SSRC)."""
        sample = LinkSample(payload_bytes=self.payload_bytes)
        for stream in aiortc_private.media_streams(self.receiver).values():
            sample.packets += stream.packets_received
            sample.lost += stream.packets_lost
        return sample


class ReceivedTrack:
    """A track a participant receives, decoded as a browser plays it: its frames, when the first
    came, the video's sizes, the audio's peak, the decode errors, the link. ``stream_id`` names the
    participant who publishes it."""

    def __init__(self, track: MediaStreamTrack, transceiver: RTCRtpTransceiver,
                 on_frame: Callable[[], None]) -> None:
        self.track = track
        self.kind = track.kind
        self.receiver = transceiver.receiver
        self.stream_id = ""
        self.decode_errors = count_decode_errors(transceiver.receiver) if self.kind == "video" else None
        self.link = Link(transceiver)
        self.frames = 0
        self.first_frame_at: float | None = None
        self.sizes: set[tuple[int, int]] = set()
        self.peak = 0  # the largest audio sample
        self._on_frame = on_frame

    async def consume(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                self.frames += 1
                if self.first_frame_at is None:
                    self.first_frame_at = time.monotonic()
                    self._on_frame()
                if isinstance(frame, VideoFrame):
                    self.sizes.add((frame.width, frame.height))
                elif isinstance(frame, AudioFrame):
                    samples = np.frombuffer(frame.planes[0], np.int16)
                    self.peak = max(self.peak, int(samples.max()), -int(samples.min()))
        except MediaStreamError:
            pass

    async def packets_received(self) -> int:
        return sum(s.packets_received for s in aiortc_private.media_streams(self.receiver).values())


class CountedTrack:
    """A track a participant receives without decoding it: packets, keyframes and frames are
    counted from the RTP (a VP8 frame ends at the packet with the marker bit; frames before the
    first keyframe would not decode and are not counted). aiortc's receiver still handles every
    packet (statistics, receiver reports, NACK, REMB); only its decoder never runs."""

    decode_errors = None

    def __init__(self, track: MediaStreamTrack, transceiver: RTCRtpTransceiver,
                 on_frame: Callable[[], None]) -> None:
        self.track = track
        self.kind = track.kind
        self.receiver = transceiver.receiver
        self.stream_id = ""
        self.frames = 0
        self.keyframes = 0
        self.media_bytes = 0  # video payload bytes received (RTX not counted)
        self.first_frame_at: float | None = None
        self._on_frame = on_frame
        self._media_types = {c.payloadType for c in aiortc_private.codecs(transceiver) if c.name != "rtx"}
        self._decodable = False
        aiortc_private.tap_receiver(self.receiver, self._on_rtp)
        self.link = Link(transceiver)

    async def _on_rtp(self, packet: Any) -> bool:
        """Count a video frame at its last packet; True: the receiver's own handling goes on."""
        if self.kind != "video" or packet.payload_type not in self._media_types:
            return True  # audio is counted by the receiver's statistics; RTX repeats what was counted
        self.media_bytes += len(packet.payload)
        if is_keyframe_start("VP8", packet.payload):
            self.keyframes += 1
            self._decodable = True
        if packet.marker and self._decodable:
            self.frames += 1
            if self.first_frame_at is None:
                self.first_frame_at = time.monotonic()
                self._on_frame()
        return True

    async def consume(self) -> None:
        """Nothing to take from the track: the counting happens as packets arrive."""

    async def packets_received(self) -> int:
        return sum(s.packets_received for s in aiortc_private.media_streams(self.receiver).values())
