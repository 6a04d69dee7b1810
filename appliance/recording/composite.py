"""The composite export: a recording's per-track files decoded, laid out on one picture (a grid,
or the active speaker large with the others below), all audio mixed, and encoded once — MP4
(H.264 + AAC) or WebM (VP8 + Opus).

It runs as its own process, ``python -m appliance.recording.composite`` with the job as JSON on
stdin, at a lower CPU priority, printing ``progress F`` lines (F from 0 to 1), so that the SFU's
event loop never waits on it. The files' timestamps are the recording's clock (see writer.py):
every track is placed by them, including tracks that start, pause or stop mid-recording.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

FPS = 25
RATE = 48000
SAMPLES_PER_FRAME = RATE // FPS
BACKGROUND_Y, TILE_Y, NEUTRAL = 16, 40, 128
GAP = 4  # pixels between tiles
FORMATS = {"mp4": ("mp4", "libx264", "aac"), "webm": ("webm", "libvpx", "libopus")}
LAYOUTS = ("grid", "speaker")
# A camera that sent nothing for this long shows as an empty tile (turned off, or held); a screen
# share keeps its last picture (static screens send few frames).
CAMERA_STALE_S = 1.0
# Active speaker: levels smoothed over ~0.2 s; another person takes over when louder than the
# current speaker by 6 dB and above -50 dBFS, at most once a second.
SPEAKER_SMOOTHING = 0.8
SPEAKER_MARGIN = 2.0
SPEAKER_FLOOR = 10 ** (-50 / 20)
SPEAKER_HOLD_S = 1.0


class ExportError(Exception):
    """The job cannot be made; the message says why."""


@dataclass
class Job:
    tracks: list[dict[str, Any]]  # the recording's tracks, each with the local "path" of its file
    duration_s: float
    format: str = "mp4"
    layout: str = "grid"
    width: int = 1280
    height: int = 720
    output: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        job = cls(**data)
        if job.format not in FORMATS or job.layout not in LAYOUTS:
            raise ExportError(f"format must be one of {', '.join(FORMATS)} and layout one of {', '.join(LAYOUTS)}")
        if job.width % 8 or job.height % 8 or not (64 <= job.width <= 3840 and 64 <= job.height <= 2160):
            raise ExportError("width and height must be multiples of 8, up to 3840x2160")
        if not job.output:
            raise ExportError("the job names no output file")
        return job


# ---------------------------------------------------------------------------- decoding
def decoded(path: str, kind: str) -> Iterator[Any]:
    """The frames of a file's first stream of ``kind``; a packet that does not decode is skipped
    (a frame lost on the network)."""
    with av.open(path) as container:
        streams = container.streams.video if kind == "video" else container.streams.audio
        if not streams:
            return
        stream = streams[0]
        stream.thread_type = "AUTO"
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except av.error.FFmpegError:
                continue


@dataclass
class VideoSource:
    """One tile: a participant's camera (or screen), as a picture at any time of the recording."""

    participant: str
    source: str
    segments: list[dict[str, Any]]  # tracks, by start time
    current: Any = None
    pending: Any = None
    frames: Iterator[Any] | None = None
    index: int = -1

    def frame_at(self, t: float) -> Any:
        """The latest picture at ``t``, or None when the source shows nothing then."""
        while self.index + 1 < len(self.segments) and self.segments[self.index + 1]["start_s"] <= t:
            self._open(self.index + 1)
        if self.frames is None:
            return None
        while self.pending is not None and self.pending.time <= t:
            self.current = self.pending
            self.pending = next(self.frames, None)
        if self.current is None or t > self.segments[self.index]["end_s"] + 0.1:
            return None
        if self.source == "camera" and t - self.current.time > CAMERA_STALE_S:
            return None
        return self.current

    def _open(self, index: int) -> None:
        if self.frames is not None:
            with contextlib.suppress(Exception):
                self.frames.close()  # type: ignore[attr-defined]
        self.index = index
        self.frames = decoded(self.segments[index]["path"], "video")
        self.current = None
        self.pending = next(self.frames, None)


class AudioSource:
    """A participant's microphone as 48 kHz mono samples on the recording's clock."""

    def __init__(self, participant: str, segments: list[dict[str, Any]]) -> None:
        self.participant = participant
        self._chunks = self._positioned(segments)
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0
        self._done = False

    @staticmethod
    def _positioned(segments: list[dict[str, Any]]) -> Iterator[tuple[int, np.ndarray]]:
        """(first sample's position, samples) of every decoded frame: placed by its timestamp
        where it does not follow on from the frame before (the first, or after a gap)."""
        for segment in segments:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
            expected: int | None = None
            for frame in decoded(segment["path"], "audio"):
                position = round((frame.time or 0.0) * RATE)
                if expected is not None and abs(position - expected) < RATE // 100:
                    position = expected
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    yield position, samples
                    position += len(samples)
                expected = position

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples ``start`` to ``start + count``: silence where the track has none."""
        end = start + count
        while not self._done and self._buffer_start + len(self._buffer) < end:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._done = True
                break
            position, samples = chunk
            buffer_end = self._buffer_start + len(self._buffer)
            if not len(self._buffer):
                self._buffer_start, self._buffer = position, samples
                continue
            if position > buffer_end:
                samples = np.concatenate([np.zeros(position - buffer_end, np.float32), samples])
            elif position < buffer_end:
                samples = samples[buffer_end - position:]
            self._buffer = np.concatenate([self._buffer, samples])
        out = np.zeros(count, np.float32)
        lo, hi = max(start, self._buffer_start), min(end, self._buffer_start + len(self._buffer))
        if hi > lo:
            out[lo - start:hi - start] = self._buffer[lo - self._buffer_start:hi - self._buffer_start]
        keep = max(0, end - self._buffer_start)
        if keep:
            self._buffer = self._buffer[keep:]
            self._buffer_start += keep
        return out


# ---------------------------------------------------------------------------- layout
Rect = tuple[int, int, int, int]  # x, y, width, height; all even


def _even(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def grid_rects(count: int, width: int, height: int) -> list[Rect]:
    """``count`` equal tiles filling the picture, in rows."""
    if count == 0:
        return []
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    tile_w, tile_h = (width - GAP * (columns + 1)) / columns, (height - GAP * (rows + 1)) / rows
    rects = []
    for i in range(count):
        row, column = divmod(i, columns)
        in_row = min(columns, count - row * columns)  # centre a shorter last row
        offset = (width - in_row * tile_w - GAP * (in_row - 1)) / 2
        rects.append((_even(offset + column * (tile_w + GAP)), _even(GAP + row * (tile_h + GAP)),
                      _even(tile_w), _even(tile_h)))
    return rects


def speaker_rects(count: int, width: int, height: int) -> list[Rect]:
    """The first tile large; the others as a strip of thumbnails below it."""
    if count <= 1:
        return grid_rects(count, width, height)
    strip = height // 5
    main = (GAP, GAP, _even(width - 2 * GAP), _even(height - strip - 2 * GAP))
    thumb_w = min(_even((width - GAP * count) / (count - 1)), _even(strip * 16 / 9))
    left = (width - (count - 1) * (thumb_w + GAP) + GAP) / 2
    thumbs = [(_even(left + i * (thumb_w + GAP)), _even(height - strip), thumb_w, _even(strip - GAP))
              for i in range(count - 1)]
    return [main, *thumbs]


@dataclass
class Canvas:
    """One picture in YUV 4:2:0, drawn tile by tile."""

    width: int
    height: int
    y: np.ndarray = field(init=False)
    u: np.ndarray = field(init=False)
    v: np.ndarray = field(init=False)
    _scaled: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    _seen: set[tuple[int, int, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.y = np.empty((self.height, self.width), np.uint8)
        self.u = np.empty((self.height // 2, self.width // 2), np.uint8)
        self.v = np.empty((self.height // 2, self.width // 2), np.uint8)

    def clear(self) -> None:
        self.y.fill(BACKGROUND_Y)
        self.u.fill(NEUTRAL)
        self.v.fill(NEUTRAL)
        self._seen = set()

    def empty_tile(self, rect: Rect) -> None:
        x, y, w, h = rect
        self.y[y:y + h, x:x + w] = TILE_Y

    def draw(self, frame: Any, rect: Rect) -> None:
        """The frame scaled to fit the tile, keeping its shape, centred."""
        x, y, w, h = rect
        scale = min(w / frame.width, h / frame.height)
        fw, fh = min(w, _even(frame.width * scale)), min(h, _even(frame.height * scale))
        key = (id(frame), fw, fh)
        planes = self._scaled.get(key)
        if planes is None:
            data = frame.reformat(width=fw, height=fh, format="yuv420p").to_ndarray()
            quarter = fh // 4 if fh % 4 == 0 else None
            if quarter is not None:
                u = data[fh:fh + quarter].reshape(fh // 2, fw // 2)
                v = data[fh + quarter:].reshape(fh // 2, fw // 2)
            else:
                chroma = data[fh:].reshape(-1)
                u = chroma[:fh * fw // 4].reshape(fh // 2, fw // 2)
                v = chroma[fh * fw // 4:].reshape(fh // 2, fw // 2)
            planes = (data[:fh], u, v)
            self._scaled[key] = planes
        self._seen.add(key)
        px, py = _even(x + (w - fw) / 2), _even(y + (h - fh) / 2)
        self.y[py:py + fh, px:px + fw] = planes[0]
        self.u[py // 2:py // 2 + fh // 2, px // 2:px // 2 + fw // 2] = planes[1]
        self.v[py // 2:py // 2 + fh // 2, px // 2:px // 2 + fw // 2] = planes[2]

    def frame(self) -> av.VideoFrame:
        for key in [k for k in self._scaled if k not in self._seen]:  # frames no tile shows now
            del self._scaled[key]
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        for plane, data in zip(frame.planes, (self.y, self.u, self.v)):
            if plane.line_size == data.shape[1]:
                plane.update(data)
            else:
                padded = np.zeros((data.shape[0], plane.line_size), np.uint8)
                padded[:, :data.shape[1]] = data
                plane.update(padded)
        return frame


class SpeakerTracker:
    """Who the active speaker is, from each participant's audio level over time."""

    def __init__(self) -> None:
        self.levels: dict[str, float] = {}
        self.speaker: str | None = None
        self.since = -SPEAKER_HOLD_S

    def update(self, t: float, levels: dict[str, float]) -> str | None:
        for who, level in levels.items():
            self.levels[who] = SPEAKER_SMOOTHING * self.levels.get(who, 0.0) + (1 - SPEAKER_SMOOTHING) * level
        if not self.levels:
            return self.speaker
        loudest = max(self.levels, key=self.levels.__getitem__)
        current = self.levels.get(self.speaker or "", 0.0)
        if (loudest != self.speaker and self.levels[loudest] > max(SPEAKER_FLOOR, current * SPEAKER_MARGIN)
                and t - self.since >= SPEAKER_HOLD_S):
            self.speaker, self.since = loudest, t
        return self.speaker


# ---------------------------------------------------------------------------- the export
def _by_source(tracks: list[dict[str, Any]], kind: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Each participant's tracks of one source, by start time; the sources in the order the
    recording lists them (the order they were published)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for track in tracks:
        if track["kind"] == kind:
            groups.setdefault((track["participant"], track["source"]), []).append(track)
    for segments in groups.values():
        segments.sort(key=lambda t: t["start_s"])
    return groups


def _open_output(job: Job) -> tuple[Any, Any, Any]:
    container_format, video_codec, audio_codec = FORMATS[job.format]
    output = av.open(job.output, "w", format=container_format)
    video = output.add_stream(video_codec, rate=FPS)
    video.width, video.height, video.pix_fmt = job.width, job.height, "yuv420p"
    if video_codec == "libx264":
        video.options = {"preset": "veryfast", "crf": "23"}
    else:
        video.bit_rate = 2500 * job.width * job.height // (1280 * 720) * 1000
        video.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    audio = output.add_stream(audio_codec, rate=RATE)
    audio.layout = "mono"
    audio.bit_rate = 96000
    return output, video, audio


def compose(job: Job, progress: Callable[[float], None] = lambda fraction: None) -> None:
    """Write the composite of ``job`` to ``job.output``."""
    tiles = [VideoSource(who, source, segments) for (who, source), segments in _by_source(job.tracks, "video").items()]
    voices = [AudioSource(who, segments) for (who, _), segments in _by_source(job.tracks, "audio").items()]
    frames = max(1, math.ceil(job.duration_s * FPS))
    canvas = Canvas(job.width, job.height)
    speakers = SpeakerTracker()
    output, video, audio = _open_output(job)
    reported = -1
    try:
        for n in range(frames):
            t = n / FPS
            mix = np.zeros(SAMPLES_PER_FRAME, np.float32)
            levels: dict[str, float] = {}
            for voice in voices:
                samples = voice.read(n * SAMPLES_PER_FRAME, SAMPLES_PER_FRAME)
                mix += samples
                level = float(np.sqrt(np.mean(np.square(samples))))
                levels[voice.participant] = max(level, levels.get(voice.participant, 0.0))
            speaker = speakers.update(t, levels)
            pictures = [(tile, tile.frame_at(t)) for tile in tiles]
            if job.layout == "speaker":
                pictures.sort(key=lambda p: _speaker_rank(p[0], p[1], speaker))
                rects = speaker_rects(len(pictures), job.width, job.height)
            else:
                rects = grid_rects(len(pictures), job.width, job.height)
            canvas.clear()
            for (tile, picture), rect in zip(pictures, rects):
                if picture is None:
                    canvas.empty_tile(rect)
                else:
                    canvas.draw(picture, rect)
            picture = canvas.frame()
            picture.pts = n
            for packet in video.encode(picture):
                output.mux(packet)
            sound = av.AudioFrame.from_ndarray(np.clip(mix, -1.0, 1.0).reshape(1, -1), format="flt", layout="mono")
            sound.sample_rate = RATE
            sound.pts = n * SAMPLES_PER_FRAME
            for packet in audio.encode(sound):
                output.mux(packet)
            percent = (n + 1) * 100 // frames
            if percent != reported:
                reported = percent
                progress((n + 1) / frames)
        for stream in (video, audio):
            for packet in stream.encode(None):
                output.mux(packet)
    finally:
        output.close()


def _speaker_rank(tile: VideoSource, picture: Any, speaker: str | None) -> int:
    """The main tile first: a screen being shared, else the active speaker's camera (the sort
    is stable: the others keep their order)."""
    if tile.source == "screen" and picture is not None:
        return 0
    if tile.participant == speaker and tile.source == "camera":
        return 1
    return 2


def main() -> int:
    with contextlib.suppress(OSError):
        os.nice(10)
    try:
        job = Job.from_dict(json.load(sys.stdin))
    except (ValueError, TypeError, ExportError) as exc:
        print(f"bad export job: {exc}", file=sys.stderr)
        return 2
    compose(job, lambda fraction: print(f"progress {fraction:.3f}", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
