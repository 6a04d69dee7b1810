"""``confmeet loadtest``: load a meeting of any confmeet appliance with publishers and
subscribers, and measure what its SFU forwards, at what cost, and what the subscribers receive.

* Publishers (in this process) send a 640x480 VP8 camera at ~800 kbps, 30 fps, and an Opus
  microphone. Both are encoded once at start and looped as packets, so sending costs no
  encoding; a keyframe request (PLI/FIR) restarts the video loop at its keyframe, as a browser
  answers one with a fresh keyframe.
* Subscribers publish nothing and receive every publisher of their room. A few per worker
  (``--decode``) decode it as a browser would, counting frames and decode errors; the others
  count packets, keyframes and frames (VP8 frames end at the RTP marker bit) from the RTP
  headers without decoding, the way ``lk load-test`` does, so that the load generator does not
  become what is measured. The subscribers are spread over worker processes (``--workers``);
  each worker is this module run as a child process, talking JSON lines on its standard input
  and output, and reports the CPU it used in the window beside the SFU's.
* ``--rooms R`` loads R meetings at once, each with the publishers and subscribers asked for.
* The appliance's ``/metrics`` is sampled before anyone joins and at the start and end of the
  steady-state window (which opens ``--settle`` seconds after every subscriber has seen a frame
  of every publisher, so that joining stays out of it):
  SFU process CPU per forwarded packet, forwarded packets per second, memory per participant.

The clients follow docs/protocol.md. They offer once, first thing after joining; the server offers
only after answering that, so the glare the protocol describes cannot happen to them (aiortc
has no rollback, so they could not recover from it the polite way either).
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import ipaddress
import itertools
import json
import math
import os
import random
import re
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TextIO

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # aiortc and PyAV take half a second to import: only a load test pays it
    from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpTransceiver
    from aiortc.mediastreams import MediaStreamTrack

VIDEO_WIDTH, VIDEO_HEIGHT, VIDEO_FPS = 640, 480, 30
VIDEO_BITRATE = 800_000
AUDIO_RATE, AUDIO_SAMPLES, AUDIO_BITRATE = 48_000, 960, 32_000  # 20 ms Opus frames
CLIP_SECONDS = 5
REQUEST_TIMEOUT = 15.0  # a signaling or HTTP reply
CONNECT_TIMEOUT = 15.0  # ICE + DTLS
FIRST_FRAME_TIMEOUT = 20.0  # from a subscriber's join to a frame of every publisher
PING_INTERVAL = 10.0
PROGRESS_INTERVAL = 0.5


class LoadTestError(Exception):
    """A problem the operator can act on; the command prints it on one line and exits non-zero."""


class SignalingError(Exception):
    """An ``error`` reply of the signaling server, or the connection's end."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------- the appliance's HTTP side
class ApplianceApi:
    """The REST calls a load test needs, with stdlib HTTP (no proxies: the media cannot use them)."""

    def __init__(self, url: str, metrics_token: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise LoadTestError(f"--url {url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self.token: str | None = None
        self.metrics_token = metrics_token
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or ""

    def signaling_url(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc,
                                        parts.path + "/ws/signaling",
                                        urllib.parse.urlencode({"token": self.token or ""}), ""))

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   token: str | None = None) -> tuple[int, Any]:
        return await asyncio.to_thread(self._call, method, path, body, token or self.token)

    def _call(self, method: str, path: str, body: dict[str, Any] | None, token: str | None) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=REQUEST_TIMEOUT) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LoadTestError(f"cannot reach the appliance at {self.url}: {reason}") from None
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    @staticmethod
    def _message(payload: Any) -> str:
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            return str(payload["error"].get("message", ""))
        return ""

    async def sign_in(self, email: str, password: str) -> None:
        status, payload = await self.call("POST", "/api/v1/auth/login", {"email": email, "password": password})
        if status in (400, 401, 422):
            raise LoadTestError(f"cannot sign in as {email}: {self._message(payload) or f'HTTP {status}'}")
        if status != 200 or not isinstance(payload, dict) or "access_token" not in payload:
            raise LoadTestError(f"{self.url} does not look like a confmeet appliance: "
                                f"POST /api/v1/auth/login answered HTTP {status}")
        self.token = payload["access_token"]

    async def meeting(self, code: str) -> dict[str, Any]:
        quoted = urllib.parse.quote(code.strip().lower(), safe="")
        status, payload = await self.call("GET", f"/api/v1/meetings/by-code/{quoted}")
        if status == 404:
            raise LoadTestError(f"meeting {code!r} not found on {self.url}")
        if status != 200 or not isinstance(payload, dict):
            raise LoadTestError(f"cannot look up meeting {code!r}: "
                                f"{self._message(payload) or f'HTTP {status}'}")
        if payload.get("status") == "ended":
            raise LoadTestError(f"meeting {code!r} has ended: start another, or leave out --meeting")
        return payload

    async def create_meeting(self, title: str) -> dict[str, Any]:
        status, payload = await self.call("POST", "/api/v1/meetings", {"title": title})
        if status != 201 or not isinstance(payload, dict):
            raise LoadTestError(f"cannot create a meeting: {self._message(payload) or f'HTTP {status}'}")
        return payload

    async def end_meeting(self, meeting_id: str) -> None:
        await self.call("POST", f"/api/v1/meetings/{urllib.parse.quote(meeting_id, safe='')}/end")

    async def metrics(self) -> MetricsSample | None:
        """The appliance's own counters now; None when it exports none."""
        # /metrics is for the monitoring server: from loopback, or with its bearer token.
        status, text = await self.call("GET", "/metrics", token=self.metrics_token)
        if status != 200 or not isinstance(text, str):
            return None
        return MetricsSample.parse(text, time.monotonic())


# ---------------------------------------------------------------------------- /metrics
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_KIND = re.compile(r'kind="([^"]*)"')
_ROOM = re.compile(r'room="([^"]*)"')
FORWARDED = ("confmeet_sfu_forwarded_packets_total", "confmeet_sfu_forwarded_packets")
WORKER_CPU = ("confmeet_sfu_worker_cpu_seconds_total", "confmeet_sfu_worker_cpu_seconds")
ROOM_SERIES = {"confmeet_room_forwarded_bytes_total": "forwarded_bytes",
               "confmeet_room_downlink_loss_ratio": "downlink_loss",
               "confmeet_room_downlink_jitter_seconds": "downlink_jitter_seconds",
               "confmeet_room_rtt_seconds": "rtt_seconds"}


@dataclass
class MetricsSample:
    at: float
    cpu_seconds: float | None = None
    rss_bytes: float | None = None
    forwarded: dict[str, float] | None = None  # packets by kind; None: no such counter
    worker_cpu_seconds: float = 0.0  # the SFU's worker processes, all together
    rooms: dict[str, dict[str, float]] = field(default_factory=dict)  # room -> ROOM_SERIES values

    @classmethod
    def parse(cls, text: str, at: float) -> MetricsSample:
        """Read the few series a load test needs from Prometheus text, ignoring the rest."""
        sample = cls(at)
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            if match is None:
                continue
            name, labels, raw = match.groups()
            try:
                value = float(raw)
            except ValueError:
                continue
            if name == "process_cpu_seconds_total":
                sample.cpu_seconds = value
            elif name == "process_resident_memory_bytes":
                sample.rss_bytes = value
            elif name in WORKER_CPU:
                sample.worker_cpu_seconds += value
            elif name in ROOM_SERIES:
                room = _ROOM.search(labels or "")
                if room:
                    sample.rooms.setdefault(room.group(1), {})[ROOM_SERIES[name]] = value
            elif name in FORWARDED:
                kind = _KIND.search(labels or "")
                forwarded = sample.forwarded if sample.forwarded is not None else {}
                key = kind.group(1) if kind else "all"
                forwarded[key] = forwarded.get(key, 0.0) + value
                sample.forwarded = forwarded
        return sample


def sfu_figures(before: MetricsSample | None, start: MetricsSample | None, end: MetricsSample | None,
                participants: int) -> dict[str, Any]:
    """CPU per forwarded packet, packets per second and memory per participant, from three
    samples of /metrics; a figure whose series is missing is None."""
    figures: dict[str, Any] = {
        "metrics_available": start is not None and end is not None, "window_s": None,
        "cpu_seconds": None, "cpu_percent": None, "forwarded_packets": None,
        "forwarded_packets_per_s": None, "cpu_us_per_forwarded_packet": None,
        "rss_bytes_before": before.rss_bytes if before else None,
        "rss_bytes_during": end.rss_bytes if end else None, "memory_per_participant_bytes": None,
    }
    if start is None or end is None:
        return figures
    window = end.at - start.at
    figures["window_s"] = round(window, 3)
    if start.cpu_seconds is not None and end.cpu_seconds is not None:
        # The appliance's process and its SFU worker processes.
        cpu = end.cpu_seconds + end.worker_cpu_seconds - start.cpu_seconds - start.worker_cpu_seconds
        figures["cpu_seconds"] = round(cpu, 3)
        figures["cpu_percent"] = round(100 * cpu / window, 1) if window > 0 else None
    if start.forwarded is not None and end.forwarded is not None:
        by_kind = {k: int(end.forwarded.get(k, 0) - start.forwarded.get(k, 0)) for k in end.forwarded}
        total = sum(by_kind.values())
        figures["forwarded_packets"] = by_kind
        figures["forwarded_packets_per_s"] = round(total / window, 1) if window > 0 else None
        if figures["cpu_seconds"] is not None and total > 0:
            figures["cpu_us_per_forwarded_packet"] = round(1e6 * figures["cpu_seconds"] / total, 2)
    if before and before.rss_bytes is not None and end.rss_bytes is not None and participants:
        figures["memory_per_participant_bytes"] = int((end.rss_bytes - before.rss_bytes) / participants)
    return figures


# ---------------------------------------------------------------------------- pre-encoded media
@dataclass
class EncodedClip:
    """A few seconds of encoded media, frame by frame; ``frames[0]`` is a keyframe."""

    kind: str
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
    import av

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
    return EncodedClip("video", frames, fractions.Fraction(1, 90_000), 90_000 // VIDEO_FPS, 1 / VIDEO_FPS)


def encode_audio_clip(seconds: float = CLIP_SECONDS) -> EncodedClip:
    """48 kHz Opus in 20 ms frames: a 440 Hz tone, its loudness swelling twice a second."""
    import av

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
    return EncodedClip("audio", frames, fractions.Fraction(1, AUDIO_RATE), AUDIO_SAMPLES,
                       AUDIO_SAMPLES / AUDIO_RATE)


@functools.cache
def looped_track_type() -> type[MediaStreamTrack]:
    """The track class that loops an EncodedClip (built on first use, with aiortc imported)."""
    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    class LoopedTrack(MediaStreamTrack):
        """Yields the clip's frames as ``av.Packet`` (RTCRtpSender packetises those as they are,
        as for ``MediaPlayer(decode=False)``) in real time, with timestamps that keep rising
        across loops."""

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

    return LoopedTrack


# ---------------------------------------------------------------------------- signaling
def _redacted(url: str) -> str:
    return url.split("?", 1)[0]


class SignalingClient:
    """One WebSocket to ``/ws/signaling``: requests get their reply by ``id``; everything else
    (events, and ``None`` once the socket has closed) goes to ``events``."""

    def __init__(self, websocket: Any) -> None:
        self._ws = websocket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.closed: str | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self._pinger = asyncio.get_running_loop().create_task(self._ping())

    @classmethod
    async def connect(cls, url: str) -> SignalingClient:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        try:
            websocket = await connect(url, open_timeout=REQUEST_TIMEOUT, compression=None, proxy=None,
                                      max_size=4 * 1024 * 1024)
        except InvalidStatus as exc:
            status = exc.response.status_code
            hint = " (no signaling endpoint: is this a confmeet appliance, and recent enough?)" \
                if status == 404 else ""
            raise LoadTestError(f"{_redacted(url)} refused the WebSocket with HTTP {status}{hint}") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise LoadTestError(f"cannot open {_redacted(url)}: {exc or type(exc).__name__}") from None
        return cls(websocket)

    async def request(self, message: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """Send a request and return its reply; an ``error`` reply raises SignalingError."""
        if self.closed:
            raise SignalingError("closed", self.closed)
        request_id = next(self._ids)
        reply_future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = reply_future
        try:
            await self._ws.send(json.dumps({**message, "id": request_id}))
            reply = await asyncio.wait_for(reply_future, timeout)
        except TimeoutError:
            raise SignalingError("timeout", f"no reply to {message['type']!r} within {timeout:.0f} s") from None
        except OSError as exc:
            raise SignalingError("closed", f"the signaling connection broke: {exc}") from None
        finally:
            self._pending.pop(request_id, None)
        if reply.get("type") == "error":
            raise SignalingError(str(reply.get("code")), str(reply.get("message", "")))
        return reply

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self._ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                waiting = self._pending.get(message.get("re"))  # type: ignore[arg-type]
                if waiting is not None and not waiting.done():
                    waiting.set_result(message)
                else:
                    self.events.put_nowait(message)
        except ConnectionClosed:
            pass
        finally:
            reason = f": {self._ws.close_reason}" if self._ws.close_reason else ""
            self.closed = f"the appliance closed the signaling connection (code {self._ws.close_code}{reason})"
            for waiting in self._pending.values():
                if not waiting.done():
                    waiting.set_exception(SignalingError("closed", self.closed))
            self.events.put_nowait(None)

    async def _ping(self) -> None:
        while self.closed is None:
            await asyncio.sleep(PING_INTERVAL)
            try:
                await self.request({"type": "ping"})
            except SignalingError:
                pass

    async def close(self) -> None:
        self._pinger.cancel()
        await self._ws.close()
        await self._reader


# ---------------------------------------------------------------------------- participants
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
        raise LoadTestError("this aiortc version cannot count decode errors: use aiortc 1.16")
    counter = DecodeErrorCounter()
    receiver._RTCRtpReceiver__decoder_error = counter  # type: ignore[attr-defined]
    return counter


@dataclass
class LinkSample:
    """A received track's link as its receiver sees it, at one moment."""

    packets: int = 0
    lost: int = 0
    payload_bytes: int = 0
    jitter_s: float = 0.0


class Link:
    """Counts a receiver's media bytes (aiortc's statistics have no byte count) and reads its
    packet, loss and jitter statistics: the subscriber's view of its downlink."""

    def __init__(self, transceiver: RTCRtpTransceiver) -> None:
        from appliance.sfu import internals

        self.receiver = transceiver.receiver
        media = [c for c in internals.codecs(transceiver) if c.name != "rtx"]
        self._media_types = {c.payloadType for c in media}
        self._clock_rate = media[0].clockRate if media else 90000
        self.payload_bytes = 0
        handle = self.receiver._handle_rtp_packet

        async def counted(packet: Any, arrival_time_ms: int) -> None:
            if packet.payload_type in self._media_types:
                self.payload_bytes += len(packet.payload)
            await handle(packet, arrival_time_ms)

        self.receiver._handle_rtp_packet = counted  # type: ignore[method-assign]

    async def sample(self) -> LinkSample:
        sample = LinkSample(payload_bytes=self.payload_bytes)
        for stats in (await self.receiver.getStats()).values():
            if stats.type == "inbound-rtp":
                sample.packets += stats.packetsReceived
                sample.lost += stats.packetsLost
                sample.jitter_s = max(sample.jitter_s, stats.jitter / self._clock_rate)
        return sample


class ReceivedTrack:
    """A track a subscriber receives, decoded and counted as a browser would play it."""

    def __init__(self, track: MediaStreamTrack, transceiver: RTCRtpTransceiver,
                 on_frame: Any) -> None:
        self.track = track
        self.kind = track.kind
        self.receiver = transceiver.receiver
        self.decode_errors = count_decode_errors(transceiver.receiver) if self.kind == "video" else None
        self.link = Link(transceiver)
        self.frames = 0
        self.first_frame_at: float | None = None
        self._on_frame = on_frame

    async def consume(self) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                await self.track.recv()
                self.frames += 1
                if self.first_frame_at is None:
                    self.first_frame_at = time.monotonic()
                    self._on_frame()
        except MediaStreamError:
            pass

    async def packets_received(self) -> int:
        stats = await self.receiver.getStats()
        return sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp")


class CountedTrack:
    """A track a subscriber receives without decoding it: packets, keyframes and frames are
    counted from the RTP (a VP8 frame ends at the packet with the marker bit; frames before the
    first keyframe would not decode and are not counted). aiortc's receiver still handles every
    packet (statistics, receiver reports, NACK, REMB); only its decoder never runs."""

    decode_errors = None

    def __init__(self, track: MediaStreamTrack, transceiver: RTCRtpTransceiver, on_frame: Any) -> None:
        from appliance.sfu import internals

        self.track = track
        self.kind = track.kind
        self.receiver = transceiver.receiver
        self.frames = 0
        self.keyframes = 0
        self.first_frame_at: float | None = None
        self._on_frame = on_frame
        self._media_types = {c.payloadType for c in internals.codecs(transceiver) if c.name != "rtx"}
        self._decodable = False
        internals.tap_receiver(self.receiver, self._on_rtp)
        self.link = Link(transceiver)

    async def _on_rtp(self, packet: Any) -> None:
        from appliance.sfu.keyframes import is_keyframe_start

        if self.kind != "video" or packet.payload_type not in self._media_types:
            return  # audio is counted by the receiver's statistics; RTX repeats what was counted
        if is_keyframe_start("VP8", packet.payload):
            self.keyframes += 1
            self._decodable = True
        if packet.marker and self._decodable:
            self.frames += 1
            if self.first_frame_at is None:
                self.first_frame_at = time.monotonic()
                self._on_frame()

    async def consume(self) -> None:
        """Nothing to take from the track: the counting happens as packets arrive."""

    async def packets_received(self) -> int:
        stats = await self.receiver.getStats()
        return sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp")


class Participant:
    """One participant: a signaling connection and a peer connection. A subscriber
    (``receive``) takes whatever the server offers, decoding it (``decode``) or only counting
    it; a publisher declines it."""

    def __init__(self, name: str, signaling: SignalingClient, loopback: bool, receive: bool,
                 decode: bool = True) -> None:
        self.name = name
        self.signaling = signaling
        self.loopback = loopback
        self.receive = receive
        self.decode = decode
        self.pc: RTCPeerConnection | None = None
        self.received: list[ReceivedTrack | CountedTrack] = []
        self.join_sent_at = 0.0
        self.failure: str | None = None
        self.leaving = False
        self.frame_arrived = asyncio.Event()
        self._negotiating = asyncio.Lock()
        self._connected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def _task(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def join(self, meeting: str) -> dict[str, Any]:
        from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer, RTCPeerConnection

        self.join_sent_at = time.monotonic()
        joined = await self.signaling.request({"type": "join", "meeting": meeting, "name": self.name})
        servers = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
                   for s in joined.get("ice_servers") or []]
        # An explicit list, even empty: aiortc's default is a public STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)
        self._task(self._handle_events())
        return joined

    def _prepare_gathering(self) -> None:
        """aioice never gathers on 127.0.0.1: against an appliance on loopback, gather there only."""
        if self.loopback:
            from appliance.sfu.ice import CandidateGatherer, IceSettings

            CandidateGatherer(IceSettings(loopback=True)).prepare(self.pc)  # type: ignore[arg-type]

    async def publish(self, clips: tuple[EncodedClip, EncodedClip]) -> list[Any]:
        """Send a camera and a microphone (sendonly, one codec each) and wait for the media
        connection; returns the two tracks."""
        from aiortc import RTCRtpSender

        assert self.pc is not None
        labelled = []
        tracks = []
        for clip, source, mime in ((clips[0], "camera", "video/VP8"), (clips[1], "microphone", "audio/opus")):
            track = looped_track_type()(clip)
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities(clip.kind).codecs
                                             if c.mimeType == mime])
            if clip.kind == "video":
                # aiortc calls this on PLI/FIR; with pre-encoded packets it would do nothing.
                transceiver.sender._send_keyframe = track.request_keyframe  # type: ignore[method-assign]
            labelled.append((transceiver, source))
            tracks.append(track)
        await self.offer(labelled)
        await self.connected()
        return tracks

    async def offer(self, labelled: list[tuple[Any, str]]) -> None:
        from aiortc import RTCSessionDescription

        assert self.pc is not None
        async with self._negotiating:
            offer = await self.pc.createOffer()
            self._prepare_gathering()
            await self.pc.setLocalDescription(offer)
            tracks = [{"mid": transceiver.mid, "source": source} for transceiver, source in labelled]
            reply = await self.signaling.request({"type": "offer", "sdp": self.pc.localDescription.sdp,
                                                  "tracks": tracks})
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))

    async def connected(self) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT)
        except TimeoutError:
            state = self.pc.connectionState if self.pc else "none"
            raise LoadTestError(f"{self.name}: no media connection to the appliance after "
                                f"{CONNECT_TIMEOUT:.0f} s (state {state}): UDP from here must reach "
                                "the addresses the appliance announces (ICE)") from None

    def _on_connection_state(self) -> None:
        assert self.pc is not None
        if self.pc.connectionState == "connected":
            self._connected.set()
        elif self.pc.connectionState == "failed" and not self.leaving:
            self.failure = "the media connection failed (ICE/DTLS)"

    async def _handle_events(self) -> None:
        while (event := await self.signaling.events.get()) is not None:
            kind = event.get("type")
            if kind == "offer":
                await self._answer(event)
            elif kind == "meeting_ended":
                self.failure = "the meeting was ended"
            elif kind == "error":
                self.failure = f"the server reported: {event.get('message')} ({event.get('code')})"
        if not self.leaving:
            self.failure = self.failure or self.signaling.closed

    async def _answer(self, event: dict[str, Any]) -> None:
        from aiortc import RTCSessionDescription

        assert self.pc is not None
        async with self._negotiating:
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=event["sdp"], type="offer"))
                if not self.receive:
                    for transceiver in self.pc.getTransceivers():
                        if transceiver.direction == "recvonly":
                            transceiver.direction = "inactive"
                answer = await self.pc.createAnswer()
                self._prepare_gathering()
                await self.pc.setLocalDescription(answer)
                await self.signaling.request({"type": "answer", "sdp": self.pc.localDescription.sdp})
            except SignalingError as exc:
                self.failure = f"the server refused our answer: {exc}"
            except Exception as exc:  # aiortc raises assorted errors on an offer it cannot apply
                self.failure = f"cannot apply the server's offer: {exc!r}"

    def _on_track(self, track: MediaStreamTrack) -> None:
        if not self.receive or self.pc is None:
            return
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
        kind = ReceivedTrack if self.decode else CountedTrack
        received = kind(track, transceiver, self.frame_arrived.set)
        self.received.append(received)
        self._task(received.consume())

    def video(self) -> list[ReceivedTrack | CountedTrack]:
        return [r for r in self.received if r.kind == "video"]

    async def wait_for_video(self, tracks: int, timeout: float) -> float:
        """Wait until ``tracks`` video tracks have each shown a frame; returns the time from the
        join request to the last of those first frames, in ms."""
        deadline = time.monotonic() + timeout
        while True:
            if self.failure:
                raise LoadTestError(self.failure)
            arrived = [r.first_frame_at for r in self.video() if r.first_frame_at is not None]
            if len(arrived) >= tracks:
                return 1000 * (max(sorted(arrived)[:tracks]) - self.join_sent_at)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadTestError(f"saw video from {len(arrived)} of {tracks} publisher(s) within "
                                    f"{timeout:.0f} s of joining")
            self.frame_arrived.clear()
            try:
                await asyncio.wait_for(self.frame_arrived.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    async def leave(self) -> None:
        self.leaving = True
        try:
            await self.signaling.request({"type": "leave"}, timeout=5)
        except SignalingError:
            pass
        for task in list(self._tasks):
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
        await self.signaling.close()


# ---------------------------------------------------------------------------- subscriber workers
@dataclass
class SubscriberResult:
    name: str
    worker: int
    room: int = 0
    decoded: bool = True
    error: str | None = None
    first_frame_ms: float | None = None
    video_tracks: int = 0
    video_fps: list[float] = field(default_factory=list)  # per video track, in the window
    video_frames: int = 0  # in the window, all tracks
    decode_errors: int = 0  # since joining
    audio_packets: int = 0  # in the window
    window_s: float = 0.0
    # The downlink as the subscriber's receivers saw it in the window, all tracks together.
    packets_lost: int = 0
    packets_received: int = 0
    payload_bytes: int = 0
    jitter_ms: float | None = None  # the largest of its tracks', at the end


class SubscriberSession:
    def __init__(self, name: str, worker: int, room: int, meeting: str, decode: bool) -> None:
        self.result = SubscriberResult(name, worker, room, decode)
        self.meeting = meeting
        self.participant: Participant | None = None
        self._marked_at: float | None = None
        self._start_frames: list[int] = []
        self._start_audio = 0
        self._start_links: list[LinkSample] = []

    async def run(self, config: dict[str, Any], emit: Any) -> None:
        try:
            signaling = await SignalingClient.connect(config["signaling_url"])
            self.participant = Participant(self.result.name, signaling, config["loopback"], receive=True,
                                           decode=self.result.decoded)
            await self.participant.join(self.meeting)
            emit({"type": "joined", "subscriber": self.result.name})
            await self.participant.offer([])
            self.result.first_frame_ms = round(
                await self.participant.wait_for_video(config["publishers"], FIRST_FRAME_TIMEOUT), 1)
            emit({"type": "first_frame", "subscriber": self.result.name, "ms": self.result.first_frame_ms})
        except Exception as exc:  # whatever stops one subscriber is its result, not the run's end
            self.result.error = str(exc) if isinstance(exc, (LoadTestError, SignalingError)) else repr(exc)
            emit({"type": "failed", "subscriber": self.result.name, "error": self.result.error})

    def video_frames(self) -> int:
        return sum(r.frames for r in self.participant.video()) if self.participant else 0

    async def _audio_packets(self) -> int:
        assert self.participant is not None
        counts = [await r.packets_received() for r in self.participant.received if r.kind == "audio"]
        return sum(counts)

    async def mark(self) -> None:
        if self.participant is None:
            return
        self._marked_at = time.monotonic()
        self._start_frames = [r.frames for r in self.participant.video()]
        self._start_audio = await self._audio_packets()
        self._start_links = [await r.link.sample() for r in self.participant.received]

    async def finish(self) -> SubscriberResult:
        result = self.result
        if self.participant is None or self._marked_at is None:
            return result
        window = time.monotonic() - self._marked_at
        video = self.participant.video()
        starts = self._start_frames + [0] * (len(video) - len(self._start_frames))
        result.window_s = round(window, 3)
        result.video_tracks = len(video)
        result.video_fps = [round((r.frames - start) / window, 2) for r, start in zip(video, starts)]
        result.video_frames = sum(r.frames - start for r, start in zip(video, starts))
        result.decode_errors = sum(r.decode_errors.count for r in video if r.decode_errors)
        result.audio_packets = await self._audio_packets() - self._start_audio
        ends = [await r.link.sample() for r in self.participant.received]
        starts_link = self._start_links + [LinkSample()] * (len(ends) - len(self._start_links))
        result.packets_lost = sum(max(0, e.lost - b.lost) for e, b in zip(ends, starts_link))
        result.packets_received = sum(e.packets - b.packets for e, b in zip(ends, starts_link))
        result.payload_bytes = sum(e.payload_bytes - b.payload_bytes for e, b in zip(ends, starts_link))
        result.jitter_ms = round(1000 * max(e.jitter_s for e in ends), 3) if ends else None
        if result.error is None and self.participant.failure:
            result.error = self.participant.failure
        return result


class SubscriberWorker:
    """The subscribers of one worker process; commands arrive on stdin, reports leave on ``out``."""

    def __init__(self, config: dict[str, Any], out: TextIO) -> None:
        self.config = config
        self.index: int = config["worker"]
        self.out = out
        self.sessions = [SubscriberSession(name, self.index, room, config["meetings"][room], n < config["decode"])
                         for n, (_, name, room) in enumerate(config["subscribers"])]
        self._cpu_at_mark: float | None = None

    def emit(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps({**message, "worker": self.index}) + "\n")
        self.out.flush()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def read_commands() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
            loop.call_soon_threadsafe(commands.put_nowait, {"type": "stop"})

        threading.Thread(target=read_commands, daemon=True).start()
        self.emit({"type": "ready"})
        start = await commands.get()
        if start["type"] != "start":
            return
        joins = [loop.create_task(self._join_at(session, start["at"] + position / self.config["join_rate"]))
                 for (position, _, _), session in zip(self.config["subscribers"], self.sessions)]
        progress = loop.create_task(self._report_progress())
        while (command := await commands.get())["type"] != "stop":
            if command["type"] == "mark":
                self._cpu_at_mark = time.process_time()
                await asyncio.gather(*(session.mark() for session in self.sessions))
        cpu = None if self._cpu_at_mark is None else round(time.process_time() - self._cpu_at_mark, 3)
        results = [asdict(await session.finish()) for session in self.sessions]
        self.emit({"type": "results", "subscribers": results, "cpu_seconds": cpu})
        progress.cancel()
        for task in joins:
            task.cancel()
        await asyncio.gather(*(s.participant.leave() for s in self.sessions if s.participant),
                             return_exceptions=True)
        self.emit({"type": "done"})

    async def _join_at(self, session: SubscriberSession, wall_time: float) -> None:
        await asyncio.sleep(max(0.0, wall_time - time.time()))
        await session.run(self.config, self.emit)

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            self.emit({"type": "progress", "video_frames": sum(s.video_frames() for s in self.sessions)})


def quiet_media_logs() -> None:
    """aiortc logs each decode failure as a warning: a load test counts them instead."""
    import logging

    for name in ("aiortc", "aioice", "websockets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def worker_main() -> None:
    """Entry point of a subscriber worker process (see WorkerProcess)."""
    reports = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever else writes to stdout lands on stderr, never in the reports
    quiet_media_logs()
    config = json.loads(sys.stdin.readline())
    asyncio.run(SubscriberWorker(config, reports).run())


class WorkerProcess:
    """A subscriber worker, seen from the main process."""

    def __init__(self, index: int, process: asyncio.subprocess.Process, on_report: Any) -> None:
        self.index = index
        self.process = process
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._on_report = on_report
        self._readers = [asyncio.get_running_loop().create_task(self._read_reports()),
                         asyncio.get_running_loop().create_task(self._read_stderr())]

    @classmethod
    async def start(cls, index: int, config: dict[str, Any], on_report: Any) -> WorkerProcess:
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from cli.loadtest import worker_main; worker_main()",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env)
        worker = cls(index, process, on_report)
        await worker.send(config)
        return worker

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        if self.process.returncode is None:
            try:
                self.process.stdin.write((json.dumps(message) + "\n").encode())
                await self.process.stdin.drain()
            except ConnectionError:
                pass

    async def _read_reports(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self._on_report(json.loads(line))
        await self.process.wait()
        self._on_report({"type": "exited", "worker": self.index, "code": self.process.returncode})

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr_tail.append(line.decode(errors="replace").rstrip())

    async def stop(self, timeout: float) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


# ---------------------------------------------------------------------------- the run
@dataclass
class Plan:
    url: str
    email: str
    password: str
    meeting: str | None
    publishers: int
    subscribers: int
    workers: int
    duration: float
    join_rate: float
    settle: float = 5.0  # seconds between the last first frame and the steady-state window
    metrics_token: str | None = None
    rooms: int = 1
    decode: int = 2  # subscribers per worker that decode; the others count without decoding

    @property
    def all_subscribers(self) -> int:
        return self.subscribers * self.rooms


@dataclass
class LiveState:
    """What the progress display shows."""

    plan: Plan
    phase: str = "starting"
    joined: int = 0
    first_frames: int = 0
    failed: int = 0
    window_started: float | None = None
    frames_by_worker: dict[int, int] = field(default_factory=dict)
    fps_samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=8))

    def add_frames(self, worker: int, frames: int) -> None:
        self.frames_by_worker[worker] = frames
        self.fps_samples.append((time.monotonic(), sum(self.frames_by_worker.values())))

    def fps_now(self) -> float | None:
        """Frames per second per received video track, over the last few reports."""
        if len(self.fps_samples) < 2 or self.joined == 0:
            return None
        (t0, f0), (t1, f1) = self.fps_samples[0], self.fps_samples[-1]
        tracks = max(1, (self.first_frames or self.joined) * self.plan.publishers)
        return (f1 - f0) / (t1 - t0) / tracks if t1 > t0 else None

    def render(self) -> Table:
        plan = self.plan
        table = Table.grid(padding=(0, 2))
        table.add_row(Text(self.phase, style="bold"),
                      f"subscribers joined {self.joined}/{plan.all_subscribers}",
                      f"first frames {self.first_frames}/{plan.all_subscribers}",
                      Text(f"failed {self.failed}", style="red" if self.failed else ""))
        fps = self.fps_now()
        window = ""
        if self.window_started is not None:
            elapsed = min(plan.duration, time.monotonic() - self.window_started)
            window = f"window {elapsed:4.1f}/{plan.duration:.0f} s"
        table.add_row("", f"video {fps:5.1f} fps per track" if fps is not None else "", window, "")
        return table


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def join_failure(meeting: str, exc: SignalingError) -> str:
    reasons = {
        "not_found": f"meeting {meeting!r} not found",
        "wrong_password": f"meeting {meeting!r} has a password; sign in as its host to load it",
        "forbidden": f"you may not join meeting {meeting!r}: {exc.message}",
        "meeting_ended": f"meeting {meeting!r} has ended",
        "unauthorized": f"the appliance refused our access token: {exc.message}",
    }
    return reasons.get(exc.code, f"cannot join meeting {meeting!r}: {exc}")


async def run_load_test(plan: Plan, state: LiveState) -> dict[str, Any]:
    api = ApplianceApi(plan.url, plan.metrics_token)
    state.phase = "signing in"
    await api.sign_in(plan.email, plan.password)
    if plan.meeting:
        meetings, created = [await api.meeting(plan.meeting)], []
    else:
        stamp = time.strftime("%Y-%m-%d %H:%M")
        meetings = [await api.create_meeting(f"confmeet loadtest {stamp}" + (f" room {r + 1}" if plan.rooms > 1 else ""))
                    for r in range(plan.rooms)]
        created = meetings
    loopback = is_loopback(api.host)
    before = await api.metrics()

    state.phase = "encoding media"
    clips = await asyncio.to_thread(lambda: (encode_video_clip(), encode_audio_clip()))

    publishers: list[Participant] = []
    workers: list[WorkerProcess] = []
    try:
        state.phase = "publishing"
        cameras = []
        for room, meeting in enumerate(meetings):
            for number in range(1, plan.publishers + 1):
                signaling = await SignalingClient.connect(api.signaling_url())
                name = f"loadtest-pub-{number}" + (f"-room-{room + 1}" if plan.rooms > 1 else "")
                publisher = Participant(name, signaling, loopback, receive=False)
                publishers.append(publisher)
                try:
                    await publisher.join(meeting["code"])
                except SignalingError as exc:
                    raise LoadTestError(join_failure(meeting["code"], exc)) from None
                try:
                    cameras.append((await publisher.publish(clips))[0])
                except SignalingError as exc:
                    raise LoadTestError(f"the appliance refused {publisher.name}'s media: {exc}") from None
        measured = await run_subscribers(plan, api, [m["code"] for m in meetings], loopback, state, workers, cameras)
    finally:
        state.phase = "leaving"
        await asyncio.gather(*(w.stop(timeout=20) for w in workers), return_exceptions=True)
        await asyncio.gather(*(p.leave() for p in publishers), return_exceptions=True)
        for meeting in created:
            await api.end_meeting(meeting["id"])
    problems = [f"{p.name}: {p.failure}" for p in publishers if p.failure]
    problems += [f"worker {w.index} exited with {w.process.returncode}: " + " / ".join(list(w.stderr_tail)[-3:])
                 for w in workers if w.process.returncode]
    return build_report(plan, meetings, clips, before, measured, problems)


@dataclass
class Measured:
    results: list[SubscriberResult]
    start: MetricsSample | None
    end: MetricsSample | None
    camera_fps: list[float]  # what each publisher sent during the window
    generator_cpu_seconds: float | None  # this process and the workers, in the window


async def run_subscribers(plan: Plan, api: ApplianceApi, meetings: list[str], loopback: bool, state: LiveState,
                          workers: list[WorkerProcess], cameras: list[Any]) -> Measured:
    """Start the worker processes, let the subscribers join, measure the window, collect."""
    changed = asyncio.Event()
    ready: set[int] = set()
    exited: dict[int, int | None] = {}
    settled: dict[str, str | None] = {}  # subscriber -> None (media flows) or its error
    reported: dict[int, list[dict[str, Any]]] = {}
    worker_cpu: dict[int, float | None] = {}

    def on_report(message: dict[str, Any]) -> None:
        kind, worker = message["type"], message["worker"]
        if kind == "ready":
            ready.add(worker)
        elif kind == "joined":
            state.joined += 1
        elif kind == "first_frame":
            settled[message["subscriber"]] = None
            state.first_frames += 1
        elif kind == "failed":
            settled[message["subscriber"]] = message["error"]
            state.failed += 1
        elif kind == "progress":
            state.add_frames(worker, message["video_frames"])
        elif kind == "results":
            reported[worker] = message["subscribers"]
            worker_cpu[worker] = message.get("cpu_seconds")
        elif kind == "exited":
            exited[worker] = message["code"]
        changed.set()

    async def until(condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            crashed = [w for w in workers if w.index in exited and w.index not in reported]
            if crashed:
                tail = "\n  ".join(crashed[0].stderr_tail) or "(no output)"
                raise LoadTestError(f"subscriber worker {crashed[0].index} exited with "
                                    f"{exited[crashed[0].index]} while {what}:\n  {tail}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadTestError(f"timed out after {timeout:.0f} s {what}")
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    state.phase = "starting workers"
    total = plan.all_subscribers
    names = [f"loadtest-sub-{n}" for n in range(1, total + 1)]
    for index in range(plan.workers):
        # [join position, name, room]: rooms take turns, so every worker serves every room.
        mine = [[position, names[position], position % len(meetings)]
                for position in range(index, total, plan.workers)]
        config = {"worker": index, "signaling_url": api.signaling_url(), "meetings": meetings,
                  "loopback": loopback, "publishers": plan.publishers, "subscribers": mine,
                  "join_rate": plan.join_rate, "decode": plan.decode}
        workers.append(await WorkerProcess.start(index, config, on_report))
    await until(lambda: len(ready) == len(workers), 60, "starting the worker processes")

    state.phase = "joining"
    at = time.time() + 0.2
    for worker in workers:
        await worker.send({"type": "start", "at": at})
    join_time = total / plan.join_rate + CONNECT_TIMEOUT + FIRST_FRAME_TIMEOUT + 10
    await until(lambda: len(settled) == total, join_time, "waiting for the subscribers' first frames")
    errors = [error for error in settled.values() if error]
    if len(errors) == total:
        raise LoadTestError(f"no subscriber received media; the first said: {errors[0]}")

    await asyncio.sleep(plan.settle)
    state.phase = "measuring"
    start = await api.metrics()
    sent_at_start = [(time.monotonic(), camera.sent) for camera in cameras]
    cpu_at_start = time.process_time()
    for worker in workers:
        await worker.send({"type": "mark"})
    state.window_started = time.monotonic()
    await asyncio.sleep(plan.duration)
    end = await api.metrics()
    camera_fps = [round((camera.sent - sent) / (time.monotonic() - t0), 2)
                  for camera, (t0, sent) in zip(cameras, sent_at_start)]
    own_cpu = time.process_time() - cpu_at_start
    for worker in workers:
        await worker.send({"type": "stop"})
    state.phase = "collecting"
    await until(lambda: len(reported) == len(workers), 30, "collecting the results")
    results = sorted((SubscriberResult(**r) for rs in reported.values() for r in rs),
                     key=lambda r: names.index(r.name))
    cpus = list(worker_cpu.values())
    generator = None if None in cpus else round(own_cpu + sum(cpus), 3)  # type: ignore[arg-type]
    return Measured(results, start, end, camera_fps, generator)


def build_report(plan: Plan, meetings: list[dict[str, Any]], clips: tuple[EncodedClip, EncodedClip],
                 before: MetricsSample | None, measured: Measured, problems: list[str]) -> dict[str, Any]:
    results = measured.results
    fps = [value for r in results for value in r.video_fps]
    first_frames = [r.first_frame_ms for r in results if r.first_frame_ms is not None]
    windows = [r for r in results if r.window_s > 0]
    summary = {
        "subscribers_ok": sum(1 for r in results if r.error is None),
        "subscribers_failed": sum(1 for r in results if r.error is not None),
        "subscribers_decoding": sum(1 for r in results if r.decoded),
        "video_fps_mean": round(statistics.fmean(fps), 2) if fps else None,
        "video_fps_min": min(fps) if fps else None,
        "decode_errors": sum(r.decode_errors for r in results),
        "first_frame_ms_p50": round(statistics.median(first_frames), 1) if first_frames else None,
        "first_frame_ms_max": max(first_frames) if first_frames else None,
        "audio_packets": sum(r.audio_packets for r in results),
        "audio_packets_per_s_mean": round(statistics.fmean(r.audio_packets / r.window_s for r in windows), 1)
        if windows else None,
    }
    sfu = sfu_figures(before, measured.start, measured.end,
                      (plan.publishers + plan.subscribers) * len(meetings))
    rooms = [room_figures(index, meeting, results, measured.start, measured.end)
             for index, meeting in enumerate(meetings)]
    window = sfu["window_s"] or plan.duration
    generator = measured.generator_cpu_seconds
    return {
        "url": plan.url, "meetings": [m["code"] for m in meetings],
        "publishers": plan.publishers, "subscribers": plan.subscribers, "workers": plan.workers,
        "decode_per_worker": plan.decode, "duration_s": plan.duration,
        "published_media": {"video": f"VP8 {VIDEO_WIDTH}x{VIDEO_HEIGHT}@{VIDEO_FPS}",
                            "video_kbps": round(clips[0].bitrate / 1000), "audio": "Opus",
                            "audio_kbps": round(clips[1].bitrate / 1000),
                            "video_fps_sent": measured.camera_fps},
        "summary": summary,
        "sfu": sfu,
        "rooms": rooms,
        "generator": {"cpu_seconds": generator,
                      "cpu_percent": None if generator is None else round(100 * generator / window, 1),
                      "cores": os.cpu_count()},
        "subscriber_results": [asdict(r) for r in results],
        "problems": problems,
    }


def room_figures(index: int, meeting: dict[str, Any], results: list[SubscriberResult],
                 start: MetricsSample | None, end: MetricsSample | None) -> dict[str, Any]:
    """One room's downlink as its subscribers measured it, beside what the appliance's metrics
    say of the same room (None where a series is missing)."""
    mine = [r for r in results if r.room == index and r.window_s > 0]
    window = statistics.fmean(r.window_s for r in mine) if mine else None
    expected = sum(r.packets_received + r.packets_lost for r in mine)
    jitters = [r.jitter_ms for r in mine if r.jitter_ms is not None]
    measured = {
        "loss": round(sum(r.packets_lost for r in mine) / expected, 4) if expected else None,
        "jitter_ms": round(statistics.fmean(jitters), 3) if jitters else None,
        "kbps": round(8 * sum(r.payload_bytes for r in mine) / window / 1000, 1) if window else None,
    }
    reported: dict[str, float | None] = {"loss": None, "jitter_ms": None, "rtt_ms": None, "kbps": None}
    first, last = (start.rooms.get(meeting["id"], {}) if start else {}), (end.rooms.get(meeting["id"], {}) if end else {})
    if last:
        reported["loss"] = last.get("downlink_loss")
        jitter, rtt = last.get("downlink_jitter_seconds"), last.get("rtt_seconds")
        reported["jitter_ms"] = None if jitter is None else round(1000 * jitter, 3)
        reported["rtt_ms"] = None if rtt is None else round(1000 * rtt, 3)
        if "forwarded_bytes" in first and "forwarded_bytes" in last and start and end and end.at > start.at:
            reported["kbps"] = round(8 * (last["forwarded_bytes"] - first["forwarded_bytes"]) / (end.at - start.at) / 1000, 1)
    return {"meeting": meeting["code"], "room": meeting["id"], "subscribers": measured, "appliance": reported}


# ---------------------------------------------------------------------------- output
def _number(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def render_report(report: dict[str, Any], console: Console) -> None:
    rooms = f"{len(report['meetings'])} meetings ({', '.join(report['meetings'])}), each with" \
        if len(report["meetings"]) > 1 \
        else f"meeting {report['meetings'][0]}:"
    results = Table(title=f"{rooms} {report['publishers']} publisher(s), {report['subscribers']} subscriber(s)")
    results.add_column("subscriber", no_wrap=True)
    for column in ("room", "worker", "decodes", "first frame", "fps mean / min", "decode errors", "audio packets"):
        results.add_column(column, justify="right")
    problems = []
    for r in report["subscriber_results"]:
        fps = r["video_fps"]
        name = r["name"].removeprefix("loadtest-")
        results.add_row(Text(name, style="red" if r["error"] else ""), str(r["room"] + 1), str(r["worker"]),
                        "yes" if r["decoded"] else "no",
                        _number(r["first_frame_ms"], 0, " ms"),
                        f"{statistics.fmean(fps):.1f} / {min(fps):.1f}" if fps else "n/a",
                        Text(str(r["decode_errors"]), style="red" if r["decode_errors"] else "")
                        if r["decoded"] else "-",
                        f"{r['audio_packets']:,}")
        if r["error"]:
            problems.append(f"{name}: {r['error']}")
    s, sfu, media = report["summary"], report["sfu"], report["published_media"]
    summary = Table(title="results", show_header=False)
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    rows = [
        ("each publisher sends", f"{media['video']} {media['video_kbps']} kbps, "
                                 f"{media['audio']} {media['audio_kbps']} kbps"),
        ("video frames sent per second", ", ".join(f"{v:.1f}" for v in media["video_fps_sent"])),
        ("subscribers receiving / failed", f"{s['subscribers_ok']} / {s['subscribers_failed']}"),
        ("received video fps, mean / min", f"{_number(s['video_fps_mean'])} / {_number(s['video_fps_min'])}"),
        ("decode errors", f"{s['decode_errors']} (in the {s['subscribers_decoding']} subscribers that decode)"),
        ("join to first frame, p50 / max",
         f"{_number(s['first_frame_ms_p50'], 0, ' ms')} / {_number(s['first_frame_ms_max'], 0, ' ms')}"),
        ("audio packets received", f"{s['audio_packets']:,} ({_number(s['audio_packets_per_s_mean'])}/s each)"),
    ]
    if sfu["metrics_available"]:
        forwarded = sfu["forwarded_packets"] or {}
        rows += [
            ("SFU forwarded packets/s", _number(sfu["forwarded_packets_per_s"]) + "".join(
                f", {kind} {count / sfu['window_s']:,.0f}" for kind, count in sorted(forwarded.items()))),
            ("SFU process CPU", _number(sfu["cpu_percent"], 1, " % of a core")),
            ("SFU CPU per forwarded packet", _number(sfu["cpu_us_per_forwarded_packet"], 1, " µs")),
            ("appliance memory per participant",
             _number(None if sfu["memory_per_participant_bytes"] is None
                     else sfu["memory_per_participant_bytes"] / 1e6, 2, " MB")),
        ]
    else:
        rows.append(("SFU figures", "n/a: cannot read the appliance's /metrics (from another machine: "
                                    "--metrics-token-env)"))
    generator = report["generator"]
    rows.append(("load generator CPU (this machine)",
                 f"{_number(generator['cpu_percent'], 1, ' % of a core')} of {generator['cores']} cores"))
    for measure, value in rows:
        summary.add_row(measure, value)
    links = Table(title="each room's downlink: the subscribers' receivers / the appliance's metrics")
    for column in ("meeting", "loss", "jitter", "round trip (appliance)", "media kbit/s"):
        links.add_column(column, justify="right")
    for room in report["rooms"]:
        ours, theirs = room["subscribers"], room["appliance"]
        links.add_row(room["meeting"],
                      f"{_number(ours['loss'], 4)} / {_number(theirs['loss'], 4)}",
                      f"{_number(ours['jitter_ms'], 2, ' ms')} / {_number(theirs['jitter_ms'], 2, ' ms')}",
                      _number(theirs["rtt_ms"], 2, " ms"),
                      f"{_number(ours['kbps'], 0)} / {_number(theirs['kbps'], 0)}")
    console.print(results)
    console.print(summary)
    console.print(links)
    for problem in problems + report["problems"]:
        console.print(f"[bold yellow]problem:[/] {problem}", highlight=False)


def read_password(password_stdin: bool, password_env: str | None) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise LoadTestError(f"the environment variable {password_env} (--password-env) is not set")
        return value
    if sys.stdin.isatty():
        return typer.prompt("Password", hide_input=True)
    raise LoadTestError("give the password with --password-stdin or --password-env VAR")


def loadtest(
    url: Annotated[str, typer.Option(help="The appliance's base URL.")] = "http://127.0.0.1:8800",
    email: Annotated[Optional[str], typer.Option(help="Sign in as this account.")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                 help="Read the password from standard input.")] = False,
    password_env: Annotated[Optional[str], typer.Option(
        "--password-env", metavar="VAR", help="Read the password from this environment variable.")] = None,
    meeting: Annotated[Optional[str], typer.Option(
        metavar="CODE", help="Join this meeting (default: create one, and end it afterwards).")] = None,
    publishers: Annotated[int, typer.Option(
        min=1, help="Participants sending a camera (VP8 640x480, 30 fps, ~800 kbps) and a microphone.")] = 1,
    subscribers: Annotated[int, typer.Option(
        min=1, help="Participants receiving every publisher (of their meeting).")] = 1,
    rooms: Annotated[int, typer.Option(
        min=1, help="Meetings loaded at once, each with --publishers and --subscribers.")] = 1,
    decode: Annotated[int, typer.Option(
        min=0, help="Subscribers per worker that decode what they receive (fps, decode errors); the "
                    "others count frames from the RTP headers, so the generator stays light.")] = 2,
    workers: Annotated[Optional[int], typer.Option(
        min=1, help="Processes the subscribers are spread over (default: min(subscribers, CPUs)).")] = None,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of steady state to measure.")] = 20.0,
    join_rate: Annotated[float, typer.Option(min=0.1, help="Subscribers joining per second.")] = 10.0,
    settle: Annotated[float, typer.Option(
        min=0, help="Seconds to wait after the last subscriber's first frame before measuring, so that "
                    "joining (ICE, DTLS, bandwidth ramp-up) stays out of the steady-state figures.")] = 5.0,
    metrics_token_env: Annotated[Optional[str], typer.Option(
        "--metrics-token-env", metavar="VAR",
        help="Read the appliance's metrics_token from this environment variable (needed for its /metrics "
             "unless this machine's address is in its metrics_addresses).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON for scripts.")] = False,
) -> None:
    """Load meetings with publishers and subscribers and measure the SFU (like `lk load-test`).

    SFU figures come from the appliance's /metrics: load an otherwise idle appliance. The load
    generator's own CPU is reported beside them: on the same machine, it competes with the SFU."""
    out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    try:
        if email is None:
            raise LoadTestError("give --email (and the password) of an account of the appliance")
        if meeting and rooms > 1:
            raise LoadTestError("--meeting loads one meeting: leave it out to load --rooms new ones")
        metrics_token = None
        if metrics_token_env:
            metrics_token = os.environ.get(metrics_token_env)
            if metrics_token is None:
                raise LoadTestError(f"the environment variable {metrics_token_env} (--metrics-token-env) is not set")
        plan = Plan(url, email, read_password(password_stdin, password_env), meeting, publishers,
                    subscribers, min(workers or os.cpu_count() or 1, subscribers * rooms), duration, join_rate,
                    settle, metrics_token, rooms, decode)
        quiet_media_logs()
        state = LiveState(plan)
        if as_json:
            report = asyncio.run(run_load_test(plan, state))
        else:
            with Live(get_renderable=state.render, console=err, refresh_per_second=4, transient=True):
                report = asyncio.run(run_load_test(plan, state))
    except LoadTestError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        render_report(report, out)
    if report["summary"]["subscribers_failed"] or report["problems"]:
        raise typer.Exit(1)
