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
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

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


def encode_video_clip(seconds: float = CLIP_SECONDS) -> EncodedClip:
    """640x480 VP8 at 30 fps, ~800 kbps in real-time CBR like a browser's camera: a random
    texture of 4x4 blocks panning 5 pixels a frame (texture detail fills the bitrate, the pan
    makes every frame differ), one keyframe at the start."""
    rng = random.Random(640480)
    block = 4
    texture: list[bytes] = []
    for _ in range(VIDEO_HEIGHT // block):
        row = bytes(value for value in rng.randbytes(2 * VIDEO_WIDTH // block) for _ in range(block))
        texture.extend([row] * block)
    chroma_u = bytes([100]) * (VIDEO_WIDTH * VIDEO_HEIGHT // 4)
    chroma_v = bytes([160]) * (VIDEO_WIDTH * VIDEO_HEIGHT // 4)

    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = VIDEO_WIDTH, VIDEO_HEIGHT, "yuv420p"
    codec.time_base = fractions.Fraction(1, VIDEO_FPS)
    codec.bit_rate = VIDEO_BITRATE
    codec.gop_size = 1 << 30
    codec.qmin, codec.qmax = 2, 56
    codec.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0",
                     "minrate": str(VIDEO_BITRATE), "maxrate": str(VIDEO_BITRATE),
                     "bufsize": str(VIDEO_BITRATE), "undershoot-pct": "100", "overshoot-pct": "15",
                     "static-thresh": "1", "partitions": "0"}
    frames: list[bytes] = []
    for index in range(int(seconds * VIDEO_FPS)):
        offset = (5 * index) % VIDEO_WIDTH
        picture = av.VideoFrame(VIDEO_WIDTH, VIDEO_HEIGHT, "yuv420p")
        picture.planes[0].update(b"".join(row[offset:offset + VIDEO_WIDTH] for row in texture))
        picture.planes[1].update(chroma_u)
        picture.planes[2].update(chroma_v)
        picture.pts = index
        frames.extend(bytes(packet) for packet in codec.encode(picture))
    frames.extend(bytes(packet) for packet in codec.encode(None))
    return EncodedClip("video", "video/VP8", frames, fractions.Fraction(1, 90_000), 90_000 // VIDEO_FPS, 1 / VIDEO_FPS)


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
