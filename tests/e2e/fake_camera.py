"""A calm synthetic camera picture for Chromium's fake capture device (--use-file-for-fake-video-
capture): a softly lit backdrop and the silhouette of someone swaying a little. It costs less CPU
than the default test pattern and makes screenshots look like a meeting."""

from __future__ import annotations

import math
from pathlib import Path

BACKDROP_TOP, BACKDROP_BOTTOM = (72, 84, 104), (150, 156, 164)  # RGB
PERSON = (40, 44, 54)
SHIRT = (46, 92, 120)


def ycbcr(rgb: tuple[float, float, float]) -> tuple[int, int, int]:
    """Full-range BT.601, as the y4m colour space C420jpeg says."""
    r, g, b = rgb
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return (round(y), round(128 - 0.168736 * r - 0.331264 * g + 0.5 * b),
            round(128 + 0.5 * r - 0.418688 * g - 0.081312 * b))


def _spans(y: float, cx: float, w: int, h: int) -> list[tuple[int, int, tuple[int, int, int]]]:
    """The person's horizontal spans on row ``y``: (start, end, RGB)."""
    head_cy, head_r = 0.40 * h, 0.145 * h
    neck_bottom, shoulders = 0.68 * h, 0.64 * h
    spans = []
    if head_cy < y < neck_bottom:
        spans.append((int(cx - 0.065 * h), int(cx + 0.065 * h), PERSON))
    if abs(y - head_cy) < head_r:
        half = math.sqrt(head_r ** 2 - (y - head_cy) ** 2)
        spans.append((int(cx - half), int(cx + half), PERSON))
    if y >= shoulders:  # shoulders: rounded, widening downwards
        t = min(1.0, (y - shoulders) / (0.2 * h))
        half = (0.1 + 0.22 * math.sqrt(t)) * h
        spans.append((int(cx - half), int(cx + half), SHIRT))
    return [(max(0, a), min(w, b), c) for a, b, c in spans if b > 0 and a < w]


def _plane(w: int, h: int, scale: int, cx: float, channel: int) -> bytes:
    rows = []
    for row in range(h // scale):
        y = (row + 0.5) * scale
        t = y / h
        backdrop = ycbcr(tuple(a + (b - a) * t for a, b in zip(BACKDROP_TOP, BACKDROP_BOTTOM)))[channel]
        line = bytearray([backdrop]) * (w // scale)
        for start, end, rgb in _spans(y, cx, w, h):
            line[start // scale:end // scale] = bytes([ycbcr(rgb)[channel]]) * (end // scale - start // scale)
        rows.append(bytes(line))
    return b"".join(rows)


def write_y4m(path: Path, width: int = 640, height: int = 360, fps: int = 15, seconds: int = 4) -> Path:
    frames = fps * seconds
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            cx = width / 2 + 0.025 * width * math.sin(2 * math.pi * i / frames)  # one sway per loop
            out.write(b"FRAME\n")
            out.write(_plane(width, height, 1, cx, 0))
            out.write(_plane(width, height, 2, cx, 1))
            out.write(_plane(width, height, 2, cx, 2))
    return path
