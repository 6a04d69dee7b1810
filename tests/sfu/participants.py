"""aiortc clients that join rooms of a RoomHost over loopback, as a browser would."""

from __future__ import annotations

import array
import asyncio
import fractions
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import (
    AudioStreamTrack,
    MediaStreamError,
    MediaStreamTrack,
    VideoStreamTrack,
)
from av import AudioFrame, VideoFrame

from appliance.sfu import IceSettings, RoomHost
from appliance.sfu.ice import CandidateGatherer

LOOPBACK = CandidateGatherer(IceSettings(loopback=True))
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms
VIDEO_FPS = 15  # 640x480 VP8 encoding is the tests' main CPU cost on two cores


class ToneTrack(AudioStreamTrack):
    """A sine tone, 48 kHz mono."""

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.5) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self._pts = 0
        self._began: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._began is None:
            self._began = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._began + self._pts / AUDIO_RATE - time.monotonic()))
        samples = array.array("h", (
            int(32767 * self.amplitude * math.sin(2 * math.pi * self.frequency * t / AUDIO_RATE))
            for t in range(self._pts, self._pts + AUDIO_SAMPLES)))
        frame = AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        frame.planes[0].update(samples.tobytes())
        frame.pts = self._pts
        frame.sample_rate = AUDIO_RATE
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._pts += AUDIO_SAMPLES
        return frame


class ColourTrack(VideoStreamTrack):
    """Frames of one colour, 640x480 unless told (a moving bar keeps the encoder honest)."""

    def __init__(self, rgb: tuple[int, int, int] = (200, 30, 30), width: int = 640, height: int = 480) -> None:
        super().__init__()
        self.rgb = rgb
        self.width, self.height = width, height
        self._count = 0
        self._began: float | None = None

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._began is None:
            self._began = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._began + self._count / VIDEO_FPS - time.monotonic()))
        row = bytes(self.rgb) * self.width
        bar = (self._count * 8) % self.height
        image = b"".join(b"\xff" * 3 * self.width if bar <= y < bar + 16 else row for y in range(self.height))
        frame = VideoFrame(width=self.width, height=self.height, format="rgb24")
        frame.planes[0].update(image)
        frame.pts = self._count * (90000 // VIDEO_FPS)
        frame.time_base = fractions.Fraction(1, 90000)
        self._count += 1
        return frame


@dataclass
class Received:
    """A track a participant receives, read continuously as a browser would play it."""

    track: MediaStreamTrack
    stream_id: str = ""
    frames: int = 0
    sizes: set[tuple[int, int]] = field(default_factory=set)
    peak: int = 0  # audio: the largest sample seen
    first_frame_at: float | None = None

    async def consume(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                self.frames += 1
                if self.first_frame_at is None:
                    self.first_frame_at = time.monotonic()
                if isinstance(frame, VideoFrame):
                    self.sizes.add((frame.width, frame.height))
                elif isinstance(frame, AudioFrame):
                    self.peak = max(self.peak, max(map(abs, array.array("h", bytes(frame.planes[0])))))
        except MediaStreamError:
            pass


class Participant:
    def __init__(self, host: RoomHost, room: str, participant: str, auto_answer: bool = True,
                 receive_audio: bool = True) -> None:
        self.host = host
        self.room = room
        self.id = participant
        self.auto_answer = auto_answer
        self.receive_audio = receive_audio  # False: the server's offers of audio are answered inactive
        # max-bundle as browsers effectively do; aiortc's "balanced" leaves a second video
        # m-line of one offer on a transport it has already stopped.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.events: list[dict[str, Any]] = []
        self.received: list[Received] = []
        self.server_offers: asyncio.Queue[str] = asyncio.Queue()
        self.failures: list[dict[str, Any]] = []  # error replies to automatic answers
        self.negotiating = asyncio.Lock()  # a browser handles one signaling message at a time
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        return await self.host.request(self.room, {"participant": self.id, **message})

    async def join(self, name: str = "") -> dict[str, Any]:
        return await self.request({"type": "join", "name": name or self.id})

    def publish(self, track: MediaStreamTrack, codec: str | None = None) -> None:
        """Send ``track``, with only the ``codec`` mime type on offer if given."""
        transceiver = self.pc.addTransceiver(track, direction="sendonly")
        if codec is not None:
            capabilities = RTCRtpSender.getCapabilities(track.kind).codecs
            transceiver.setCodecPreferences([c for c in capabilities if c.mimeType == codec])

    async def offer(self, tracks: list[dict[str, str]] | None = None,
                    trickle: bool = False) -> dict[str, Any]:
        """Offer the current tracks and apply the server's answer; with ``trickle`` the
        candidates go as candidate messages after the offer instead of inside it."""
        offer = await self.pc.createOffer()
        LOOPBACK.prepare(self.pc)
        await self.pc.setLocalDescription(offer)
        sdp = self.pc.localDescription.sdp
        candidates = [line[2:] for line in sdp.splitlines() if line.startswith("a=candidate:")]
        if trickle:
            sdp = "".join(line + "\r\n" for line in sdp.splitlines()
                          if not line.startswith(("a=candidate:", "a=end-of-candidates")))
        async with self.negotiating:
            reply = await self.request({"type": "offer", "sdp": sdp, "tracks": tracks or []})
            if reply["type"] == "answer":
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        if reply["type"] == "answer" and trickle:
            for candidate in candidates:
                assert (await self.request({"type": "candidate", "candidate": {
                    "candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0}}))["type"] == "ok"
        return reply

    async def answer(self, sdp: str) -> dict[str, Any]:
        async with self.negotiating:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if not self.receive_audio:
                for transceiver in self.pc.getTransceivers():
                    if transceiver.kind == "audio" and transceiver.sender.track is None:
                        transceiver.direction = "inactive"
            answer = await self.pc.createAnswer()
            LOOPBACK.prepare(self.pc)
            await self.pc.setLocalDescription(answer)
            return await self.request({"type": "answer", "sdp": self.pc.localDescription.sdp})

    def deliver(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event["type"] == "offer" and event["to"] == self.id:
            if self.auto_answer:
                self._tasks.append(asyncio.get_running_loop().create_task(self._auto_answer(event["sdp"])))
            else:
                self.server_offers.put_nowait(event["sdp"])

    async def _auto_answer(self, sdp: str) -> None:
        if self.pc.signalingState == "closed":
            return
        reply = await self.answer(sdp)
        if reply != {"type": "ok"}:
            self.failures.append(reply)

    def _on_track(self, track: MediaStreamTrack) -> None:
        received = Received(track)
        self.received.append(received)
        self._tasks.append(asyncio.get_running_loop().create_task(self._receive(received)))

    async def _receive(self, received: Received) -> None:
        # aiortc fires "track" before it stores the remote description that names the stream.
        await asyncio.sleep(0)
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is received.track)
        media = next(m for m in _media_sections(self.pc.remoteDescription.sdp)
                     if f"a=mid:{transceiver.mid}" in m)
        msid = next(line for line in media if line.startswith("a=msid:"))
        received.stream_id = msid.removeprefix("a=msid:").split()[0]
        await received.consume()

    def tracks_from(self, publisher: str, kind: str) -> list[Received]:
        return [r for r in self.received if r.stream_id == publisher and r.track.kind == kind]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.id}: condition not met in {timeout}s; events: "
                                   f"{[e['type'] for e in self.events]}")
            await asyncio.sleep(min(0.05, remaining))

    async def wait_for_media(self, publisher: str, video_frames: int = 0, audio_frames: int = 0,
                             timeout: float = 10.0) -> None:
        """Wait until this participant decoded that many frames of the publisher's one video
        and/or one audio track."""
        def enough(kind: str, frames: int) -> bool:
            tracks = self.tracks_from(publisher, kind)
            return not frames or (len(tracks) == 1 and tracks[0].frames >= frames)
        await self.wait_until(lambda: enough("video", video_frames) and enough("audio", audio_frames),
                              timeout)

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


def _media_sections(sdp: str) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        if sections:
            sections[-1].append(line)
    return sections


class Meeting:
    """A RoomHost with participants, and the event pump signaling would be."""

    def __init__(self, host: RoomHost) -> None:
        self.host = host
        self.participants: dict[str, Participant] = {}
        self.events: list[dict[str, Any]] = []
        self._stream = host.subscribe_events()
        self._pump = asyncio.get_running_loop().create_task(self._run())

    def participant(self, participant: str, room: str = "room", auto_answer: bool = True,
                    receive_audio: bool = True) -> Participant:
        client = Participant(self.host, room, participant, auto_answer, receive_audio)
        self.participants[participant] = client
        return client

    async def _run(self) -> None:
        async for event in self._stream:
            self.events.append(event)
            for client in list(self.participants.values()):
                if client.room == event["room"] and event["to"] in (None, client.id):
                    client.deliver(event)

    async def close(self) -> None:
        for client in self.participants.values():
            await client.close()
        await self.host.close()
        await self._pump
