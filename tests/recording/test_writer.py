"""The track writer alone: bitstream headers, timestamps across a source restart, a full disk, and
what a process killed while writing leaves on disk."""

from __future__ import annotations

import errno
import fractions
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from appliance.recording.writer import TrackInfo, TrackWriter, finish_interrupted, h264_dimensions, vp8_dimensions

from .media import decode_all, ffprobe, video_frames

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
TESTS = Path(__file__).parents[1]


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


def rtp_audio(count: int) -> list[list[bytes]]:
    """``count`` 20 ms Opus frames of a tone, each as its RTP payloads."""
    encoder = get_encoder(OPUS)
    frames = []
    for i in range(count):
        t = (np.arange(960) + i * 960) / 48000
        samples = (np.sin(2 * np.pi * 440 * t) * 10000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        payloads, _ = encoder.encode(frame)
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


KILLED_WRITER = """
import os, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from pathlib import Path
from appliance.recording.writer import TrackInfo, TrackWriter
from recording.test_writer import OPUS, VP8, rtp_audio, rtp_frames
kind, seconds, stem = sys.argv[3], float(sys.argv[4]), Path(sys.argv[5])
rate, codec = (15, VP8) if kind == "video" else (50, OPUS)
frames = rtp_frames(VP8, int(seconds * rate)) if kind == "video" else rtp_audio(int(seconds * rate))
source = "camera" if kind == "video" else "microphone"
writer = TrackWriter(stem, TrackInfo("p", "t", kind, source, codec), lambda: None)
seq = 0
for i, payloads in enumerate(frames):
    for payload in payloads:
        writer.write(i / rate, 1, seq & 0xFFFF, i * (codec.clockRate // rate), payload)
        seq += 1
os._exit(0)  # dies with the file open, as under kill -9
"""


@pytest.mark.parametrize("kind", ["video", "audio"])
def test_a_writer_killed_mid_file_leaves_all_but_its_last_second_playable(tmp_path: Path, kind: str) -> None:
    seconds = 10.0
    stem = tmp_path / kind
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(TESTS), str(TESTS.parent), kind, str(seconds), str(stem)],
                   check=True, timeout=120)
    [path] = tmp_path.iterdir()
    assert ffprobe(path)["streams"][0]["codec_type"] == kind  # readable as the killed process left it

    track = finish_interrupted(path)
    assert track is not None and track["kind"] == kind and track["start_s"] == 0.0
    assert seconds - 1.2 <= track["end_s"] <= seconds  # the cluster under way (at most a second) is lost
    assert float(ffprobe(path)["format"]["duration"]) == pytest.approx(track["end_s"], abs=0.1)
    assert decode_all(path)[kind] == track["frames"]
    assert track["size"] == path.stat().st_size and not list(tmp_path.glob(".*"))


def test_finishing_a_file_without_a_frame_keeps_nothing(tmp_path: Path) -> None:
    header_only = tmp_path / "p-camera-1.webm"
    header_only.write_bytes(b"\x1aE\xdf\xa3")  # cut inside the EBML header
    assert finish_interrupted(header_only) is None
    assert finish_interrupted(tmp_path / "missing.webm") is None
