"""Media to send, encoded once: a browser's camera and microphone as pre-encoded clips, looped in
real time as packets, so that sending them costs no encoding (the load generator must stay light).
"""

from __future__ import annotations

import asyncio
import fractions
import math
import random
import time
from dataclasses import dataclass

import av
from aiortc import RTCPeerConnection, RTCRtpParameters, RTCRtpSender
from aiortc import sdp as aiortc_sdp
from aiortc.clock import current_ntp_time
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, HeaderExtensionsMap, RtcpPsfbPacket, RtpPacket

VIDEO_WIDTH, VIDEO_HEIGHT, VIDEO_FPS = 640, 480, 30
VIDEO_BITRATE = 800_000
AUDIO_RATE, AUDIO_SAMPLES, AUDIO_BITRATE = 48_000, 960, 32_000  # 20 ms Opus frames
CLIP_SECONDS = 5


@dataclass
class EncodedClip:
    """A few seconds of encoded media, frame by frame; ``frames[0]`` is a keyframe."""

    kind: str
    mime: str  # the codec's, as in RTCRtpCodecCapability.mimeType
    frames: list[bytes]
    time_base: fractions.Fraction
    ticks_per_frame: int
    frame_seconds: float

    @property
    def bitrate(self) -> float:
        return 8 * sum(map(len, self.frames)) / (len(self.frames) * self.frame_seconds)


def encode_video_clip(seconds: float = CLIP_SECONDS, width: int = VIDEO_WIDTH, height: int = VIDEO_HEIGHT,
                      bitrate: int = VIDEO_BITRATE) -> EncodedClip:
    """VP8 at 30 fps (by default 640x480, ~800 kbps) in real-time CBR like a browser's camera: a
    random texture of 4x4 blocks panning a 128th of the width a frame (texture detail fills the
    bitrate, the pan makes every frame differ), one keyframe at the start."""
    rng = random.Random(640480)
    block = 4
    texture: list[bytes] = []
    for _ in range(height // block):
        row = bytes(value for value in rng.randbytes(2 * width // block) for _ in range(block))
        texture.extend([row] * block)
    chroma_u = bytes([100]) * (width * height // 4)
    chroma_v = bytes([160]) * (width * height // 4)
    step = max(1, round(width / 128))

    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, VIDEO_FPS)
    codec.bit_rate = bitrate
    codec.gop_size = 1 << 30
    codec.qmin, codec.qmax = 2, 56
    codec.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0",
                     "minrate": str(bitrate), "maxrate": str(bitrate),
                     "bufsize": str(bitrate), "undershoot-pct": "100", "overshoot-pct": "15",
                     "static-thresh": "1", "partitions": "0"}
    frames: list[bytes] = []
    for index in range(int(seconds * VIDEO_FPS)):
        offset = (step * index) % width
        picture = av.VideoFrame(width, height, "yuv420p")
        picture.planes[0].update(b"".join(row[offset:offset + width] for row in texture))
        picture.planes[1].update(chroma_u)
        picture.planes[2].update(chroma_v)
        picture.pts = index
        frames.extend(bytes(packet) for packet in codec.encode(picture))
    frames.extend(bytes(packet) for packet in codec.encode(None))
    return EncodedClip("video", "video/VP8", frames, fractions.Fraction(1, 90_000), 90_000 // VIDEO_FPS, 1 / VIDEO_FPS)


def encode_simulcast_clips(seconds: float = CLIP_SECONDS) -> list[EncodedClip]:
    """The camera as a browser sends it with simulcast, lowest layer first, as the web client
    asks for its layers (appliance/web/meeting.js): a quarter of the picture at 150 kbit/s, half
    at 500, and the whole (the clip encode_video_clip makes)."""
    return [encode_video_clip(seconds, VIDEO_WIDTH // 4, VIDEO_HEIGHT // 4, 150_000),
            encode_video_clip(seconds, VIDEO_WIDTH // 2, VIDEO_HEIGHT // 2, 500_000),
            encode_video_clip(seconds)]


def encode_audio_clip(seconds: float = CLIP_SECONDS) -> EncodedClip:
    """48 kHz Opus in 20 ms frames: a 440 Hz tone, its loudness swelling twice a second."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format = AUDIO_RATE, "mono", "s16"
    codec.bit_rate = AUDIO_BITRATE
    codec.time_base = fractions.Fraction(1, AUDIO_RATE)
    codec.options = {"application": "voip"}
    frames: list[bytes] = []
    for index in range(int(seconds * AUDIO_RATE / AUDIO_SAMPLES)):
        first = index * AUDIO_SAMPLES
        samples = b"".join(
            int(12_000 * (0.6 + 0.4 * math.sin(4 * math.pi * t / AUDIO_RATE))
                * math.sin(2 * math.pi * 440 * t / AUDIO_RATE)).to_bytes(2, "little", signed=True)
            for t in range(first, first + AUDIO_SAMPLES))
        chunk = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        chunk.planes[0].update(samples)
        chunk.sample_rate = AUDIO_RATE
        chunk.pts = first
        frames.extend(bytes(packet) for packet in codec.encode(chunk))
    frames.extend(bytes(packet) for packet in codec.encode(None))
    return EncodedClip("audio", "audio/opus", frames, fractions.Fraction(1, AUDIO_RATE), AUDIO_SAMPLES,
                       AUDIO_SAMPLES / AUDIO_RATE)



class LoopedTrack(MediaStreamTrack):
    """Yields the clip's frames as ``av.Packet`` (RTCRtpSender packetises those as they are, as for
    ``MediaPlayer(decode=False)``) in real time, with timestamps that keep rising across loops;
    ``request_keyframe`` restarts the loop at its keyframe."""

    def __init__(self, clip: EncodedClip) -> None:
        super().__init__()
        self.kind = clip.kind
        self.clip = clip
        self.sent = 0
        self._next = 0
        self._began: float | None = None
        self._restart = False

    def request_keyframe(self) -> None:
        self._restart = True

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        if self._began is None:
            self._began = time.monotonic()
        else:
            due = self._began + self.sent * self.clip.frame_seconds
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        if self._restart or self._next == len(self.clip.frames):
            self._next, self._restart = 0, False
        packet = av.Packet(self.clip.frames[self._next])
        packet.pts = self.sent * self.clip.ticks_per_frame
        packet.time_base = self.clip.time_base
        self._next += 1
        self.sent += 1
        return packet


def send_looped(pc: RTCPeerConnection, clip: EncodedClip) -> LoopedTrack:
    """Send ``clip`` from ``pc``, looped, on a sendonly transceiver that offers only the clip's
    codec. A keyframe request (PLI/FIR) restarts the loop at its keyframe, as a browser answers one
    with a fresh keyframe."""
    return send_loop(pc, LoopedTrack(clip))


def send_loop(pc: RTCPeerConnection, track: LoopedTrack) -> LoopedTrack:
    """Send a looped track (see send_looped), a new one or one a closed connection sent."""
    transceiver = pc.addTransceiver(track, direction="sendonly")
    transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities(track.clip.kind).codecs
                                     if c.mimeType == track.clip.mime])
    # aiortc calls this on PLI/FIR; with pre-encoded packets its own would do nothing.
    transceiver.sender._send_keyframe = track.request_keyframe  # type: ignore[method-assign]
    return track


RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
SIMULCAST_RIDS = ("q", "h", "f")  # lowest first, as the web client names its camera's layers


class _Silent(MediaStreamTrack):
    """A video track that never yields a frame: the sender's own RTP loop stays idle."""

    kind = "video"

    async def recv(self) -> av.Packet:  # type: ignore[override]
        await asyncio.Future()


class _SimulcastLayer:
    """One layer's stream: its own SSRC, its clip looped in real time, its keyframe requests."""

    def __init__(self, rid: str, clip: EncodedClip) -> None:
        self.rid = rid
        self.ssrc = random.randrange(1, 1 << 32)
        self.track = LoopedTrack(clip)
        self.picture_id = random.randrange(1 << 15)
        self.sequence_number = random.randrange(1 << 15)
        self.timestamp_origin = random.randrange(1 << 32)

    async def _handle_rtcp_packet(self, packet: object) -> None:
        """aiortc's transport routes RTCP for this SSRC here: PLI and FIR restart the loop at its
        keyframe (receiver reports and NACKs are not answered: the load test runs on loopback)."""
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            self.track.request_keyframe()


class SimulcastCamera:
    """Sends clips of one camera (encode_simulcast_clips) as simulcast layers on one video m-line,
    as Chromium does: aiortc sends no simulcast, so the offer this peer sends is given
    ``a=rid:… send`` lines, ``a=simulcast:send q;h;f`` and the rtp-stream-id extension
    (``describe``), loses its ``a=ssrc`` lines (a browser's simulcast offer has none), and each
    layer's RTP is written here through the transceiver's DTLS transport, with its rid, the mid
    and abs-send-time on every packet. A PLI or FIR on a layer's SSRC restarts that layer at its
    keyframe."""

    def __init__(self, pc: RTCPeerConnection, clips: list[EncodedClip]) -> None:
        self.transceiver = pc.addTransceiver(_Silent(), direction="sendonly")
        self.transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                              if c.mimeType == "video/VP8"])
        self.layers = [_SimulcastLayer(rid, clip) for rid, clip in zip(SIMULCAST_RIDS, clips)]
        self._tasks: list[asyncio.Task] = []

    @property
    def sent(self) -> int:
        """Frames of the top layer sent so far."""
        return self.layers[-1].track.sent

    def describe(self, sdp: str) -> str:
        """``sdp`` (this peer's offer) as a browser sending simulcast writes this m-line."""
        sections = sdp.split("\r\nm=")
        for index, section in enumerate(sections):
            lines = section.split("\r\n")
            if f"a=mid:{self.transceiver.mid}" not in lines:
                continue
            ids = {int(line[len("a=extmap:"):].split()[0].split("/")[0]) for line in lines if line.startswith("a=extmap:")}
            rid_id = next(i for i in range(1, 15) if i not in ids)
            kept = [line for line in lines if line and not line.startswith(("a=ssrc:", "a=ssrc-group:"))]
            kept += [f"a=extmap:{rid_id} {RID_URI}", *(f"a=rid:{layer.rid} send" for layer in self.layers),
                     "a=simulcast:send " + ";".join(layer.rid for layer in self.layers)]
            sections[index] = "\r\n".join(kept) + ("\r\n" if index == len(sections) - 1 else "")
        return "\r\nm=".join(sections)

    def start(self, answer: str) -> None:
        """Begin sending, with the header extension IDs of ``answer`` (the SFU's); nothing once
        sending (a later answer keeps the IDs)."""
        if self._tasks:
            return
        media = next(m for m in aiortc_sdp.SessionDescription.parse(answer).media
                     if m.rtp.muxId == self.transceiver.mid)
        extensions_map = HeaderExtensionsMap()
        extensions_map.configure(RTCRtpParameters(headerExtensions=media.rtp.headerExtensions))
        payload_type = next(c.payloadType for c in media.rtp.codecs if c.mimeType.lower() == "video/vp8")
        self._tasks = [asyncio.ensure_future(self._send(layer, payload_type, extensions_map)) for layer in self.layers]

    async def _send(self, layer: _SimulcastLayer, payload_type: int, extensions_map: HeaderExtensionsMap) -> None:
        transport = self.transceiver.sender.transport
        while transport.state != "connected":
            await asyncio.sleep(0.02)
        transport._rtp_router.register_sender(layer, layer.ssrc)
        try:
            while True:
                frame = await layer.track.recv()
                payloads = Vp8Encoder._packetize(bytes(frame), layer.picture_id)
                layer.picture_id = (layer.picture_id + 1) % (1 << 15)
                timestamp = (layer.timestamp_origin + frame.pts) % (1 << 32)
                for index, payload in enumerate(payloads):
                    packet = RtpPacket(payload_type=payload_type, marker=int(index == len(payloads) - 1),
                                       sequence_number=layer.sequence_number, timestamp=timestamp,
                                       ssrc=layer.ssrc, payload=payload)
                    packet.extensions.mid = self.transceiver.mid
                    packet.extensions.rtp_stream_id = layer.rid
                    packet.extensions.abs_send_time = (current_ntp_time() >> 14) & 0xFFFFFF
                    layer.sequence_number = (layer.sequence_number + 1) % (1 << 16)
                    await transport._send_rtp(packet.serialize(extensions_map))
        except (ConnectionError, MediaStreamError):
            pass

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for layer in self.layers:
            layer.track.stop()
