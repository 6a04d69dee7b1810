from __future__ import annotations

import asyncio
import fractions
import time

from aiortc.codecs.vpx import Vp8Encoder
from av import VideoFrame

from appliance.sfu.keyframes import KeyframeRequester, SubscriberKeyframeBudget, is_keyframe_start


def _vp8_frames(count: int) -> list[list[bytes]]:
    """RTP payloads of ``count`` consecutive VP8 frames from aiortc's own encoder."""
    encoder = Vp8Encoder()
    frames = []
    for i in range(count):
        frame = VideoFrame(width=320, height=240)
        for plane in frame.planes:
            plane.update(bytes([i * 7 % 256]) * plane.buffer_size)
        frame.pts = i * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame)
        frames.append(payloads)
    return frames


def test_vp8_keyframe_is_recognised_at_its_first_packet_only() -> None:
    keyframe, delta = _vp8_frames(2)
    assert is_keyframe_start("VP8", keyframe[0]) is True
    assert not any(is_keyframe_start("VP8", p) for p in keyframe[1:])
    assert is_keyframe_start("VP8", delta[0]) is False
    assert is_keyframe_start("VP8", b"") is False
    assert is_keyframe_start("VP8", b"\x80") is False  # truncated descriptor


def test_h264_keyframes_in_single_stap_a_and_fu_a_packets() -> None:
    sps, pps, idr, slice_ = b"\x67\x42\x00\x1f", b"\x68\xce\x3c\x80", b"\x65\x88\x84", b"\x41\x9a\x02"
    stap_a = b"\x18" + len(sps).to_bytes(2, "big") + sps + len(pps).to_bytes(2, "big") + pps
    assert is_keyframe_start("H264", idr) is True
    assert is_keyframe_start("H264", sps) is True
    assert is_keyframe_start("H264", stap_a) is True
    assert is_keyframe_start("H264", b"\x7c\x85" + idr[1:]) is True  # FU-A, start bit, IDR
    assert is_keyframe_start("H264", b"\x7c\x05" + idr[1:]) is False  # FU-A continuation
    assert is_keyframe_start("H264", slice_) is False
    assert is_keyframe_start("opus", idr) is False


class PliLog:
    def __init__(self, ready: bool = True) -> None:
        self.times: list[float] = []
        self.ready = ready

    async def send(self) -> bool:
        if self.ready:
            self.times.append(time.monotonic())
        return self.ready


async def test_requests_are_coalesced_but_a_later_one_is_not_dropped() -> None:
    plis = PliLog()
    requester = KeyframeRequester(plis.send, min_interval=0.1, retry_after=5.0)
    for _ in range(10):
        requester.request()
    await asyncio.sleep(0.03)
    requester.request()  # the keyframe asked for is on its way: it serves this request too
    await asyncio.sleep(0.03)
    assert len(plis.times) == 1
    requester.keyframe_received()
    requester.request()  # after that keyframe, within the interval: deferred, not dropped
    await asyncio.sleep(0.01)
    assert len(plis.times) == 1
    await asyncio.sleep(0.1)
    assert len(plis.times) == 2
    assert plis.times[1] - plis.times[0] >= 0.099
    requester.keyframe_received()
    await asyncio.sleep(0.02)
    assert requester.wanted is False
    requester.close()


async def test_a_wanted_keyframe_is_asked_for_again_until_it_arrives() -> None:
    plis = PliLog()
    requester = KeyframeRequester(plis.send, min_interval=0.02, retry_after=0.1)
    requester.request()
    await asyncio.sleep(0.35)
    assert 3 <= len(plis.times) <= 5
    requester.keyframe_received()
    await asyncio.sleep(0.12)
    count = len(plis.times)
    await asyncio.sleep(0.15)
    assert len(plis.times) == count and requester.sent == count
    requester.close()


async def test_a_request_made_after_a_keyframe_arrived_is_served() -> None:
    plis = PliLog()
    requester = KeyframeRequester(plis.send, min_interval=0.02, retry_after=5.0)
    requester.request()
    await asyncio.sleep(0.01)
    requester.keyframe_received()
    requester.request()  # e.g. a subscriber that was not attached yet when the keyframe passed
    await asyncio.sleep(0.06)
    assert len(plis.times) == 2
    requester.close()


async def test_the_pli_waits_for_the_publishers_ssrc() -> None:
    plis = PliLog(ready=False)
    requester = KeyframeRequester(plis.send, min_interval=0.02, retry_after=5.0)
    requester.request()
    await asyncio.sleep(0.05)
    assert plis.times == []
    plis.ready = True
    await asyncio.sleep(0.05)
    assert len(plis.times) == 1
    requester.close()
    assert requester.wanted is False


async def test_an_urgent_request_is_not_held_to_the_repair_interval() -> None:
    plis = PliLog()
    requester = KeyframeRequester(plis.send, min_interval=0.5, urgent_interval=0.05, retry_after=5.0)
    requester.request()
    await asyncio.sleep(0.01)
    requester.keyframe_received()
    requester.request()  # a repair: waits for the 0.5 s interval
    await asyncio.sleep(0.05)
    assert len(plis.times) == 1
    requester.request(urgent=True)  # a newcomer: wakes the wait, 50 ms after the last PLI is enough
    await asyncio.sleep(0.02)
    assert len(plis.times) == 2 and plis.times[1] - plis.times[0] < 0.2
    requester.keyframe_received()
    requester.request()  # urgency ended with the keyframe: this one waits the repair interval again
    await asyncio.sleep(0.2)
    assert len(plis.times) == 2
    requester.close()


async def test_a_subscribers_budget_passes_the_first_request_and_holds_the_next() -> None:
    forwarded: list[float] = []
    budget = SubscriberKeyframeBudget(lambda: forwarded.append(time.monotonic()), interval=0.2)
    start = time.monotonic()
    assert budget.request() is True
    assert budget.request() is False and budget.request() is False  # held: one goes on later
    await asyncio.sleep(0.1)
    assert len(forwarded) == 1
    await asyncio.sleep(0.15)
    assert len(forwarded) == 2 and forwarded[1] - start >= 0.19  # released when the interval ended
    assert budget.request() is False
    budget.keyframe_forwarded()  # a keyframe for someone else reached this subscriber: nothing held
    await asyncio.sleep(0.3)
    assert len(forwarded) == 2
    assert budget.request() is True and len(forwarded) == 3
    budget.close()
