"""An aiortc client speaking the signaling protocol over a real WebSocket (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import websockets
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from sfu.participants import LOOPBACK, Received, _media_sections


class SignalingClient:
    def __init__(self, base_url: str, token: str) -> None:
        self.url = base_url.replace("http://", "ws://") + f"/ws/signaling?token={token}"
        self.ws: websockets.ClientConnection | None = None
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.pc.on("track", self._on_track)
        self.events: list[dict[str, Any]] = []
        self.arrived: list[dict[str, Any]] = []  # every message, replies included, in order
        self.received: list[Received] = []
        self.failures: list[dict[str, Any]] = []
        self.joined: dict[str, Any] = {}
        self.closed_with: int | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._negotiating = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ the socket
    async def connect(self) -> None:
        self.ws = await websockets.connect(self.url)
        self.closed_with = None
        self._tasks.append(asyncio.create_task(self._read(self.ws)))

    async def _read(self, ws: websockets.ClientConnection) -> None:
        try:
            async for raw in ws:
                message = json.loads(raw)
                self.arrived.append(message)
                if "re" in message and message["re"] in self._pending:
                    self._pending.pop(message["re"]).set_result(message)
                    continue
                self.events.append(message)
                if message["type"] == "offer":
                    self._tasks.append(asyncio.create_task(self._answer(message["sdp"])))
        except websockets.ConnectionClosed:
            pass
        self.closed_with = ws.close_code

    async def send_raw(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send(text)

    async def request(self, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        assert self.ws is not None
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        await self.ws.send(json.dumps({**message, "id": request_id}))
        return await asyncio.wait_for(future, timeout)

    async def drop(self) -> None:
        """Lose the WebSocket without a word (a network blip); the peer connection stays."""
        assert self.ws is not None
        self.ws.transport.abort()
        await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ meeting
    async def join(self, meeting: str, name: str = "", **extra: Any) -> dict[str, Any]:
        body = {"type": "join", "meeting": meeting, **extra}
        if name:
            body["name"] = name
        reply = await self.request(body)
        if reply["type"] == "joined":
            self.joined = reply
        return reply

    async def resume(self) -> dict[str, Any]:
        await self.connect()
        return await self.request({"type": "join", "resume": self.joined["session"]})

    def publish(self, track: MediaStreamTrack) -> None:
        self.pc.addTransceiver(track, direction="sendonly")

    async def offer(self) -> dict[str, Any]:
        async with self._negotiating:
            await self.pc.setLocalDescription(await self._prepared(self.pc.createOffer()))
            tracks = [{"mid": t.mid, "source": "camera" if t.kind == "video" else "microphone"}
                      for t in self.pc.getTransceivers() if t.direction == "sendonly" and t.mid]
            reply = await self.request({"type": "offer", "sdp": self.pc.localDescription.sdp, "tracks": tracks})
            if reply["type"] == "answer":
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
            return reply

    async def _prepared(self, description_coro: Any) -> Any:
        description = await description_coro
        LOOPBACK.prepare(self.pc)
        return description

    async def _answer(self, sdp: str) -> None:
        async with self._negotiating:
            if self.pc.signalingState == "closed":
                return
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await self.pc.setLocalDescription(await self._prepared(self.pc.createAnswer()))
            reply = await self.request({"type": "answer", "sdp": self.pc.localDescription.sdp})
            if reply["type"] != "ok":
                self.failures.append(reply)

    def _on_track(self, track: MediaStreamTrack) -> None:
        received = Received(track)
        self.received.append(received)
        self._tasks.append(asyncio.create_task(self._receive(received)))

    async def _receive(self, received: Received) -> None:
        await asyncio.sleep(0)  # aiortc fires "track" before it stores the remote description
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is received.track)
        media = next(m for m in _media_sections(self.pc.remoteDescription.sdp) if f"a=mid:{transceiver.mid}" in m)
        received.stream_id = next(line for line in media if line.startswith("a=msid:")).split(":")[1].split()[0]
        await received.consume()

    # ------------------------------------------------------------------ inspection
    def frames_from(self, participant: str, kind: str) -> int:
        return sum(r.frames for r in self.received if r.stream_id == participant and r.track.kind == kind)

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not met in {timeout}s; events: {[e['type'] for e in self.events]}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.ws is not None:
            await self.ws.close()
        await self.pc.close()
