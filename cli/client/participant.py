"""A participant of a meeting, as a program: one signaling connection and one aiortc peer connection
(docs/protocol.md). It joins (or takes its seat back after a blip) and leaves, publishes tracks,
offers, answers the server's offers, and receives what the server sends, decoded or only counted.

aiortc has no rollback, so a participant cannot recover from glare (docs/protocol.md) the polite
way: it must not offer while a server offer may be on its way (first thing after joining is safe:
the server offers only after answering that).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamTrack

from appliance.sfu import aiortc_private
from appliance.sfu.ice import CandidateGatherer, IceSettings

from . import REQUEST_TIMEOUT, ClientError
from .clips import EncodedClip, LoopedTrack, SimulcastCamera, send_loop, send_looped
from .received import CountedTrack, ReceivedTrack
from .signaling import SignalingClient, SignalingError, signaling_url

CONNECT_TIMEOUT = 15.0  # ICE + DTLS
SOURCES = {"video": "camera", "audio": "microphone"}  # what a published track is, by its kind
CLOSED = "RTCPeerConnection is closed"  # aiortc's InvalidStateError on a connection that ended
# aioice never gathers on 127.0.0.1: against an appliance on loopback, gather there only.
LOOPBACK = CandidateGatherer(IceSettings(loopback=True))


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SentTrack(MediaStreamTrack):
    """A published track as one peer connection sends it. aiortc stops a sender's track when its
    connection ends, the SFU's closing it included (as when the seat moves to another room): this
    one stops, its source goes on for the next connection (``media_reset``)."""

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self.source = source

    async def recv(self) -> Any:
        return await self.source.recv()


class Participant:
    """A seat in a meeting of the appliance at ``base_url``, signed in with ``token``.

    With ``receive`` it takes whatever the server offers (``received``), decoding it as a browser
    would (``decode``) or only counting it; without, it declines it. ``events`` are the server's
    events in order, ``failures`` what went wrong on the way (an answer refused, an offer that
    cannot be applied, an ``error`` event, the meeting ended, the media or signaling connection
    lost), ``joined`` the latest ``joined`` of its seat. ``headers`` go with the WebSocket's
    request; ``tls`` verifies an https appliance (default: the system's certificates).
    """

    def __init__(self, base_url: str, token: str, *, name: str = "", receive: bool = True, decode: bool = True,
                 headers: dict[str, str] | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.url = signaling_url(base_url, token)
        self.loopback = is_loopback(urllib.parse.urlsplit(base_url).hostname or "")
        self.name = name
        self.receive = receive
        self.decode = decode
        self.signaling: SignalingClient | None = None
        self.pc: RTCPeerConnection | None = None
        self.joined: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.received: list[ReceivedTrack | CountedTrack] = []
        self.failures: list[str] = []
        self.join_sent_at = 0.0
        self.leaving = False
        self.frame_arrived = asyncio.Event()
        self._headers = headers
        self._tls = tls
        self._connections: list[SignalingClient] = []
        self._negotiating = asyncio.Lock()
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []  # cancelled by close()
        self._simulcast: list[SimulcastCamera] = []
        self._published: list[MediaStreamTrack] = []  # what publish() was given

    # ------------------------------------------------------------------ signaling
    async def connect(self) -> None:
        """Open a signaling connection (again, after ``drop``)."""
        self.signaling = await SignalingClient.connect(self.url, self._on_event, self._on_close,
                                                       headers=self._headers, tls=self._tls)
        self._connections.append(self.signaling)

    async def request(self, message: dict[str, Any], timeout: float = REQUEST_TIMEOUT, *,
                      check: bool = False) -> dict[str, Any]:
        """See SignalingClient.request."""
        assert self.signaling is not None, "connect() first"
        return await self.signaling.request(message, timeout, check=check)

    async def send_raw(self, text: str) -> None:
        assert self.signaling is not None, "connect() first"
        await self.signaling.send_raw(text)

    async def drop(self) -> None:
        """Lose the signaling connection without a word (a network blip); the peer connection stays."""
        assert self.signaling is not None, "connect() first"
        self.signaling.drop()
        await asyncio.sleep(0.05)

    @property
    def arrived(self) -> list[dict[str, Any]]:
        """Every message of every connection so far, replies included, in order."""
        return [message for connection in self._connections for message in connection.arrived]

    @property
    def closed_with(self) -> int | None:
        """The close code of the signaling connection; None while it is open."""
        return self.signaling.close_code if self.signaling is not None else None

    @property
    def failure(self) -> str | None:
        """The latest of ``failures``."""
        return self.failures[-1] if self.failures else None

    # ------------------------------------------------------------------ the seat
    async def join(self, meeting: str, name: str = "", *, check: bool = False, **fields: Any) -> dict[str, Any]:
        """Ask for a seat in ``meeting`` (its code or id) as ``name`` (default: the one this
        participant was made with, else the account's), with more ``fields`` of ``join`` if given;
        returns the reply (see request for ``check``)."""
        body = {"type": "join", "meeting": meeting, **fields}
        if name or self.name:
            body["name"] = name or self.name
        self.join_sent_at = time.monotonic()
        return self._seated(await self.request(body, check=check))

    async def resume(self) -> dict[str, Any]:
        """Connect again and take the seat back (after ``drop``); returns the reply."""
        await self.connect()
        return self._seated(await self.request({"type": "join", "resume": self.joined["session"]}))

    def _seated(self, reply: dict[str, Any]) -> dict[str, Any]:
        if reply["type"] == "joined":
            self.joined = reply
        return reply

    async def leave(self) -> None:
        """Say ``leave`` (5 s at most: the seat goes anyway once the connection closes), then close."""
        self.leaving = True
        if self.signaling is not None:
            try:
                await self.signaling.request({"type": "leave"}, timeout=5)
            except SignalingError:
                pass
        await self.close()

    async def close(self) -> None:
        """Close the peer connection and the signaling connection without ``leave``, as a closing
        tab does."""
        self.leaving = True
        for task in self._tasks:
            task.cancel()
        for camera in self._simulcast:
            camera.stop()
        if self.pc is not None:
            try:
                await self.pc.close()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # An earlier close of this connection ran in a task cancelled above (aiortc then
                # cancels the future every close awaits): that one was stopping it already.
        for track in self._published:  # a sender stops only what it sends (SentTrack)
            track.stop()
        if self.signaling is not None:
            await self.signaling.close()

    # ------------------------------------------------------------------ media
    def _peer(self) -> RTCPeerConnection:
        """The peer connection, made on first use with the ICE servers of ``joined``: an explicit
        list, even empty (aiortc's default is a public STUN server), and max-bundle as browsers
        effectively do."""
        if self.pc is None:
            servers = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
                       for s in self.joined.get("ice_servers") or []]
            self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
            self.pc.on("track", self._on_track)
            self.pc.on("connectionstatechange", self._on_connection_state)
        return self.pc

    def publish(self, track: MediaStreamTrack) -> RTCRtpTransceiver:
        """Send ``track`` (a camera if video, a microphone if audio) from the next ``offer``."""
        self._published.append(track)
        return self._peer().addTransceiver(SentTrack(track), direction="sendonly")

    def publish_clip(self, clip: EncodedClip) -> LoopedTrack:
        """Send ``clip``, looped (see clips.send_looped), from the next ``offer``."""
        return send_looped(self._peer(), clip)

    def publish_simulcast(self, clips: list[EncodedClip]) -> SimulcastCamera:
        """Send ``clips`` (clips.encode_simulcast_clips) as a camera's simulcast layers, looped,
        from the next ``offer``."""
        camera = SimulcastCamera(self._peer(), clips)
        self._simulcast.append(camera)
        return camera

    async def offer(self, *, check: bool = False) -> dict[str, Any]:
        """Offer what this participant publishes, apply the server's answer, and return the reply
        (see request for ``check``)."""
        pc = self._peer()
        async with self._negotiating:
            offer = await pc.createOffer()
            self._prepare_gathering()
            await pc.setLocalDescription(offer)
            tracks = [{"mid": t.mid, "source": SOURCES[t.kind]}
                      for t in pc.getTransceivers() if t.direction == "sendonly" and t.mid]
            sdp = pc.localDescription.sdp
            for camera in self._simulcast:
                sdp = camera.describe(sdp)
            reply = await self.request({"type": "offer", "sdp": sdp, "tracks": tracks}, check=check)
            if reply["type"] == "answer":
                await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
                for camera in self._simulcast:
                    camera.start(reply["sdp"])
            return reply

    async def connected(self) -> None:
        """Wait for the media connection (ICE and DTLS) to the appliance."""
        try:
            await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT)
        except TimeoutError:
            state = self.pc.connectionState if self.pc else "none"
            raise ClientError(f"{self.name}: no media connection to the appliance after "
                              f"{CONNECT_TIMEOUT:.0f} s (state {state}): UDP from here must reach "
                              "the addresses the appliance announces (ICE)") from None

    async def media_round_trip(self) -> float | None:
        """Seconds to the SFU and back over the media path (an ICE consent check, as a browser
        measures its round trip); None when the check or its answer was lost, or before the media
        connection is up."""
        return None if self.pc is None else await aiortc_private.ice_round_trip(self.pc)

    def _prepare_gathering(self) -> None:
        if self.loopback:
            LOOPBACK.prepare(self._peer())

    def _on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        kind = event.get("type")
        if kind == "offer":
            self._task(self._answer(event))
        elif kind == "joined":  # admitted from the lobby
            self.joined = event
        elif kind == "media_reset":
            self._task(self._reset_media(event))
        elif kind == "meeting_ended":
            self.failures.append("the meeting was ended")
        elif kind == "error":
            self.failures.append(f"the server reported: {event.get('message')} ({event.get('code')})")

    def _on_close(self, connection: SignalingClient) -> None:
        if not self.leaving and not connection.dropped and not self.failures:
            self.failures.append(str(connection.closed))

    async def _reset_media(self, event: dict[str, Any]) -> None:
        """The server lost our media (the SFU worker of the meeting stopped) and took the seat
        back into the SFU: a new peer connection with its ICE servers, the same tracks, offered
        afresh (docs/protocol.md, ``media_reset``)."""
        try:
            await self._renegotiate_afresh(event)
        except Exception as exc:  # whatever stops it, the participant has no media: say so
            self.failures.append(f"cannot connect the media again: {exc!r}")

    async def _renegotiate_afresh(self, event: dict[str, Any]) -> None:
        async with self._negotiating:
            old = self.pc
            sending = [] if old is None else [t.sender for t in old.getTransceivers() if t.direction == "sendonly"]
            tracks = [track for track in map(aiortc_private.detach_track, sending) if track is not None]
            if old is not None:
                await old.close()
            self.pc = None
            self.joined = {**self.joined, "ice_servers": event.get("ice_servers") or []}
            self._connected.clear()
            for track in tracks:
                if isinstance(track, LoopedTrack):
                    send_loop(self._peer(), track)
                elif not isinstance(track, SentTrack):
                    self._peer().addTransceiver(track, direction="sendonly")
            for source in self._published:  # whether or not aiortc stopped what sent it
                self._peer().addTransceiver(SentTrack(source), direction="sendonly")
        await self.offer()

    async def _answer(self, offer: dict[str, Any]) -> None:
        pc = self._peer()
        async with self._negotiating:
            if pc.signalingState == "closed":
                return
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
                if not self.receive:
                    for transceiver in pc.getTransceivers():
                        if transceiver.direction == "recvonly":
                            transceiver.direction = "inactive"
                answer = await pc.createAnswer()
                self._prepare_gathering()
                await pc.setLocalDescription(answer)
                await self.request({"type": "answer", "sdp": pc.localDescription.sdp}, check=True)
            except SignalingError as exc:
                self.failures.append(f"the server refused our answer: {exc}")
            except InvalidStateError as exc:
                # Not an offer to a connection that ended meanwhile (the SFU closed it: a media_reset follows).
                if str(exc) != CLOSED:
                    self.failures.append(f"cannot apply the server's offer: {exc!r}")
            except Exception as exc:  # aiortc raises assorted errors on an offer it cannot apply
                self.failures.append(f"cannot apply the server's offer: {exc!r}")

    def _on_connection_state(self) -> None:
        assert self.pc is not None
        if self.pc.connectionState == "connected":
            self._connected.set()
        elif self.pc.connectionState == "failed" and not self.leaving:
            self.failures.append("the media connection failed (ICE/DTLS)")

    def _on_track(self, track: MediaStreamTrack) -> None:
        if not self.receive or self.pc is None:
            return
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
        kind = ReceivedTrack if self.decode else CountedTrack
        received = kind(track, transceiver, self.frame_arrived.set)
        self.received.append(received)
        self._task(self._receive(received, transceiver))

    async def _receive(self, received: ReceivedTrack | CountedTrack, transceiver: RTCRtpTransceiver) -> None:
        await asyncio.sleep(0)  # aiortc fires "track" before it stores the remote description
        assert self.pc is not None
        received.stream_id = stream_id(self.pc.remoteDescription.sdp, transceiver.mid)
        await received.consume()

    def _task(self, coroutine: Any) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coroutine))

    # ------------------------------------------------------------------ inspection
    def video(self) -> list[ReceivedTrack | CountedTrack]:
        return [r for r in self.received if r.kind == "video"]

    def frames_from(self, participant: str, kind: str) -> int:
        """Frames received so far of ``participant``'s tracks of ``kind``."""
        return sum(r.frames for r in self.received if r.stream_id == participant and r.kind == kind)

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not met in {timeout}s; events: {[e['type'] for e in self.events]}")
            await asyncio.sleep(0.05)

    async def wait_for_video(self, tracks: int, timeout: float) -> float:
        """Wait until ``tracks`` video tracks have each shown a frame; returns the time from the
        join request to the last of those first frames, in ms."""
        deadline = time.monotonic() + timeout
        while True:
            if self.failure:
                raise ClientError(self.failure)
            arrived = [r.first_frame_at for r in self.video() if r.first_frame_at is not None]
            if len(arrived) >= tracks:
                return 1000 * (max(sorted(arrived)[:tracks]) - self.join_sent_at)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClientError(f"saw video from {len(arrived)} of {tracks} publisher(s) within "
                                  f"{timeout:.0f} s of joining")
            self.frame_arrived.clear()
            try:
                await asyncio.wait_for(self.frame_arrived.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass


def stream_id(sdp: str, mid: str | None) -> str:
    """The stream (the publishing participant) of the m-section ``mid`` names in ``sdp``: the
    first field of its ``a=msid``; empty if there is none."""
    section: list[str] = []
    for line in sdp.splitlines() + ["m="]:
        if line.startswith("m="):
            if f"a=mid:{mid}" in section:
                return next((m.split(":", 1)[1].split()[0] for m in section if m.startswith("a=msid:")), "")
            section = []
        section.append(line)
    return ""
