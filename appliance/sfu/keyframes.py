"""Keyframes in passthrough forwarding: spotting them in RTP payloads and asking publishers for
them (PLI), coalesced but never dropped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiortc.codecs.vpx import VpxPayloadDescriptor

log = logging.getLogger("confmeet.sfu")

H264_IDR = 5
H264_SPS = 7
H264_STAP_A = 24
H264_FU_A = 28


def is_keyframe_start(codec_name: str, payload: bytes) -> bool:
    """Whether this RTP payload is the first packet of a keyframe."""
    if not payload:
        return False
    if codec_name == "VP8":
        return _vp8_keyframe_start(payload)
    if codec_name == "H264":
        return _h264_keyframe_start(payload)
    return False


def _vp8_keyframe_start(payload: bytes) -> bool:
    # RFC 7741: the start of partition 0, whose frame tag has the inverse keyframe bit P clear.
    try:
        descriptor, frame = VpxPayloadDescriptor.parse(payload)
    except ValueError:
        return False
    return (descriptor.partition_start == 1 and descriptor.partition_id == 0
            and len(frame) > 0 and frame[0] & 0x01 == 0)


def _h264_keyframe_start(payload: bytes) -> bool:
    # RFC 6184: an SPS or IDR slice, alone, aggregated in a STAP-A, or starting a FU-A.
    nal_type = payload[0] & 0x1F
    if nal_type in (H264_IDR, H264_SPS):
        return True
    if nal_type == H264_STAP_A:
        pos = 1
        while pos + 2 < len(payload):
            size = int.from_bytes(payload[pos:pos + 2], "big")
            if payload[pos + 2] & 0x1F in (H264_IDR, H264_SPS):
                return True
            pos += 2 + size
        return False
    if nal_type == H264_FU_A and len(payload) > 1:
        fu_header = payload[1]
        return bool(fu_header & 0x80) and fu_header & 0x1F in (H264_IDR, H264_SPS)
    return False


class KeyframeRequester:
    """Asks one publisher's video track for a keyframe until one arrives.

    ``request()`` may be called any number of times (subscribers' PLI/FIR, new subscribers).
    Requests made while a keyframe is already asked for are served by that keyframe; at most one
    PLI goes out per ``min_interval``, so a request within it is sent when it is over (deferred,
    never dropped); while a keyframe is wanted the PLI is repeated every ``retry_after`` (a PLI
    can be lost, and browsers send no periodic keyframes). ``keyframe_received()`` satisfies
    every request made before it.
    """

    def __init__(self, send_pli: Callable[[], Awaitable[bool]], min_interval: float = 0.3,
                 retry_after: float = 1.0) -> None:
        self._send_pli = send_pli
        self.min_interval = min_interval
        self.retry_after = retry_after
        self.sent = 0
        self._last_sent = -float("inf")
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def wanted(self) -> bool:
        return self._task is not None

    def request(self) -> None:
        self._arrived.clear()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def keyframe_received(self) -> None:
        self._arrived.set()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        try:
            while not self._arrived.is_set():
                wait = self._last_sent + self.min_interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                if await self._send_pli():
                    self.sent += 1
                    self._last_sent = time.monotonic()
                    timeout = self.retry_after
                else:  # the publisher's SSRC is not known yet: wait for its first packet
                    timeout = self.min_interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), timeout)
        except Exception:
            log.exception("keyframe requests stopped")
        finally:
            self._task = None
