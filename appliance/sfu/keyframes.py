"""Keyframes in passthrough forwarding: spotting them in RTP payloads and asking publishers for
them (PLI), coalesced and rate-limited but never dropped."""

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


# Keyframe requests a publisher track gets, and what one subscriber may ask of it (seconds).
# Urgent requests (a subscriber starting, a held track resumed, a source restarted) are rare, tied
# to events, and someone sees black until they are served: they keep a short floor. Subscribers'
# PLI/FIR are repairs, as frequent as their links are bad (Chromium repeats its request every
# ~200 ms while its decoder waits): one a second at most per publisher track, LiveKit's default for
# its mid and high layers (500 ms for the low one); mediasoup's ``keyFrameRequestDelay`` does the
# same per producer and is off by default. Neither budgets one subscriber: with simulcast a weak
# subscriber sits on the low layer and its requests cost only that layer. Without simulcast every
# keyframe goes to everyone (3-5 times a delta frame, a tenth of a second of the stream's bits), so
# one subscriber alone gets one per SUBSCRIBER_KEYFRAME_INTERVAL: 5 s bounds what a weak link costs
# the others to under 5 % of their bits, while a subscriber that lost one frame on a good link
# still gets its keyframe at once (its first request in 5 s goes straight on), and a held request
# is never lost, only late.
URGENT_KEYFRAME_INTERVAL = 0.3
PUBLISHER_KEYFRAME_INTERVAL = 1.0
SUBSCRIBER_KEYFRAME_INTERVAL = 5.0
PLI_RETRY_AFTER = 1.0  # a PLI (or its keyframe) can be lost: asked again while still wanted


class KeyframeRequester:
    """Asks one publisher's video track for a keyframe until one arrives.

    ``request()`` may be called any number of times. Requests made while a keyframe is already
    asked for are served by that keyframe; a request within ``min_interval`` of the last PLI is
    sent when that interval is over (deferred, never dropped), an urgent one after
    ``urgent_interval`` (a pending request turns urgent, and an urgent request wakes a deferred
    wait); while a keyframe is wanted the PLI is repeated every ``retry_after`` (browsers send no
    periodic keyframes). ``keyframe_received()`` satisfies every request made before it.
    """

    def __init__(self, send_pli: Callable[[], Awaitable[bool]], min_interval: float = PUBLISHER_KEYFRAME_INTERVAL,
                 retry_after: float = PLI_RETRY_AFTER, urgent_interval: float = URGENT_KEYFRAME_INTERVAL) -> None:
        self._send_pli = send_pli
        self.min_interval = min_interval
        self.urgent_interval = urgent_interval
        self.retry_after = retry_after
        self.sent = 0
        self._last_sent = -float("inf")
        self._urgent = False
        self._arrived = asyncio.Event()
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def wanted(self) -> bool:
        return self._task is not None

    def request(self, urgent: bool = False) -> None:
        self._arrived.clear()
        if urgent and not self._urgent:
            self._urgent = True
            self._woken.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def keyframe_received(self) -> None:
        self._arrived.set()
        self._urgent = False

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        try:
            while not self._arrived.is_set():
                interval = self.urgent_interval if self._urgent else self.min_interval
                wait = self._last_sent + interval - time.monotonic()
                if wait > 0:
                    self._woken.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._woken.wait(), wait)
                    continue
                if await self._send_pli():
                    self.sent += 1
                    self._last_sent = time.monotonic()
                    timeout = self.retry_after
                else:  # the publisher's SSRC is not known yet: wait for its first packet
                    timeout = min(self.urgent_interval, self.min_interval)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), timeout)
        except Exception:
            log.exception("keyframe requests stopped")
        finally:
            self._task = None


class SubscriberKeyframeBudget:
    """One subscriber's keyframe requests (PLI/FIR) for one down track, held to its budget.

    The first request goes on at once, and so does any request ``interval`` after the last one
    that went on; a request within that interval is held, and goes on when the interval ends
    unless a keyframe reached the subscriber in the meantime (another subscriber's, a newcomer's):
    a weak subscriber still gets a keyframe every ``interval`` at most, and never none.
    """

    def __init__(self, forward: Callable[[], None], interval: float = SUBSCRIBER_KEYFRAME_INTERVAL) -> None:
        self._forward = forward
        self.interval = interval
        self._last = -float("inf")
        self._held: asyncio.TimerHandle | None = None

    def request(self) -> bool:
        """True when the request went on to the publisher now, False when it is held."""
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._pass_on(now)
            return True
        if self._held is None:
            self._held = asyncio.get_running_loop().call_later(self._last + self.interval - now, self._release)
        return False

    def keyframe_forwarded(self) -> None:
        if self._held is not None:
            self._held.cancel()
            self._held = None

    def close(self) -> None:
        self.keyframe_forwarded()

    def _release(self) -> None:
        self._held = None
        self._pass_on(time.monotonic())

    def _pass_on(self, now: float) -> None:
        self.keyframe_forwarded()
        self._last = now
        self._forward()
