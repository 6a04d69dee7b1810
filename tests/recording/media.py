"""What the recording tests read back from files: ffprobe's view, decoded audio loudness, and the
colour of a region of decoded video."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import av
import numpy as np


def ffprobe(path: Path) -> dict:
    """ffprobe's streams and format of a file; the test fails when ffprobe cannot read it."""
    done = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
                           str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def decode_all(path: Path) -> dict[str, int]:
    """Every packet of every stream decodes (ffmpeg stops at the first error with -xerror, PyAV
    raises); the frames decoded, by stream type."""
    done = subprocess.run(["ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    frames: dict[str, int] = {}
    with av.open(str(path)) as container:
        for packet in container.demux():
            for _ in packet.decode():
                frames[packet.stream.type] = frames.get(packet.stream.type, 0) + 1
    return frames


def audio_samples(path: Path) -> tuple[np.ndarray, float]:
    """The file's audio, mono float at 48 kHz, and the time of its first sample."""
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=48000)
        chunks, start = [], None
        for frame in container.decode(audio=0):
            if start is None:
                start = float(frame.time or 0.0)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), start or 0.0


def rms_dbfs(samples: np.ndarray) -> float:
    if not len(samples):
        return -200.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20 * np.log10(max(rms, 1e-10))


def video_frames(path: Path) -> list[tuple[float, np.ndarray]]:
    """Every decoded frame of the first video stream as (time, RGB array)."""
    with av.open(str(path)) as container:
        return [(float(frame.time), frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]


def mean_colour(image: np.ndarray, box: tuple[float, float, float, float]) -> tuple[int, int, int]:
    """The mean RGB of a box given as fractions of the picture (left, top, right, bottom)."""
    h, w = image.shape[:2]
    left, top, right, bottom = box
    region = image[int(top * h):int(bottom * h), int(left * w):int(right * w)].reshape(-1, 3)
    return tuple(int(v) for v in np.median(region, axis=0))


def close_to(colour: tuple[int, int, int], expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected))
