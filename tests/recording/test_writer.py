"""The track writer alone: bitstream headers, timestamps across a source restart, a full disk."""

from __future__ import annotations

import errno
import fractions
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from appliance.recording.writer import TrackInfo, TrackWriter, h264_dimensions, vp8_dimensions

from .media import video_frames

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)


def rtp_frames(codec: RTCRtpCodecParameters, count: int, size: tuple[int, int] = (320, 240)) -> list[list[bytes]]:
    """``count`` frames of 15 fps video, each as its RTP payloads (aiortc's encoder and packetiser)."""
    encoder = get_encoder(codec)
    frames = []
    for i in range(count):
        image = np.full((size[1], size[0], 3), (i * 7) % 255, np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i * 6000, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=i == 0)
        frames.append(payloads)
    return frames


def test_dimensions_come_from_the_keyframe_headers() -> None:
    vp8 = rtp_frames(VP8, 2, (352, 288))
    from aiortc.codecs import depayload
    first = b"".join(depayload(VP8, p) for p in vp8[0])
    assert vp8_dimensions(first) == (352, 288)
    assert vp8_dimensions(b"".join(depayload(VP8, p) for p in vp8[1])) is None  # not a keyframe
    h264 = rtp_frames(H264, 1, (352, 288))
    assert h264_dimensions(b"".join(depayload(H264, p) for p in h264[0])) == (352, 288)
    assert h264_dimensions(b"\x00\x00\x00\x01\x67\x42") is None  # a truncated SPS


def feed(writer: TrackWriter, frames: list[list[bytes]], ssrc: int, seq: int, ts: int, arrival: float) -> None:
    for i, payloads in enumerate(frames):
        for payload in payloads:
            writer.write(arrival + i / 15, ssrc, seq & 0xFFFF, (ts + i * 6000) & 0xFFFFFFFF, payload)
            seq += 1


def test_a_restarted_source_continues_on_the_recording_clock(tmp_path: Path) -> None:
    requests = []
    writer = TrackWriter(tmp_path / "cam", TrackInfo("p", "t", "video", "camera", VP8), lambda: requests.append(1))
    feed(writer, rtp_frames(VP8, 15), ssrc=1, seq=65530, ts=(1 << 32) - 30000, arrival=0.5)  # both wrap
    # The publisher restarts (new SSRC, unrelated numbers, a keyframe first) two seconds in.
    feed(writer, rtp_frames(VP8, 15), ssrc=2, seq=100, ts=12345, arrival=2.0)
    writer.close()
    times = [t for t, _ in video_frames(writer.path)]
    # Each run keeps its RTP spacing from its anchor; the last frame of each run waits in the
    # jitter buffer for a next one that never comes.
    assert times[:14] == pytest.approx([0.5 + i / 15 for i in range(14)], abs=0.002)
    assert times[14:] == pytest.approx([2.0 + i / 15 for i in range(14)], abs=0.002)
    assert requests  # a keyframe was asked for at each start
    assert writer.describe()["start_s"] == 0.5


def test_frames_wait_for_a_keyframe(tmp_path: Path) -> None:
    requests = []
    writer = TrackWriter(tmp_path / "cam", TrackInfo("p", "t", "video", "camera", VP8), lambda: requests.append(1))
    frames = rtp_frames(VP8, 10)
    feed(writer, frames[1:], ssrc=1, seq=0, ts=0, arrival=0.0)  # joined after the keyframe went by
    assert writer.frames == 0 and requests and not writer.path.exists()


def test_a_full_disk_raises_enospc(tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.symlink_to("/dev/full")
    writer = TrackWriter(full, TrackInfo("p", "t", "video", "camera", VP8), lambda: None)
    writer.path = Path("/dev/full")
    with pytest.raises(OSError) as caught:
        feed(writer, rtp_frames(VP8, 60, (640, 480)), ssrc=1, seq=0, ts=0, arrival=0.0)
        writer.close()
    assert caught.value.errno == errno.ENOSPC
