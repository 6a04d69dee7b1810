"""One published track written to one Matroska/WebM file as its RTP arrives: the payloads are
reassembled into the encoded frames the publisher sent (aiortc's depayloaders and jitter buffer)
and muxed with PyAV. Nothing is decoded.

Crash safety: the muxer closes a Matroska cluster after at most ``CLUSTER_MS`` of media and writes
each one through to the file as it closes, so the file on disk is a valid (if unfinished) WebM or
Matroska at every cluster boundary; ``sync`` forces it to the disk (the sink calls it on a
cadence). A file the process left unfinished is made whole by ``finish_interrupted``: its
clusters are remuxed into a file with an index and a duration, up to the last complete frame.

Timing: a file's clock is the recording's. Each run of packets from one SSRC is anchored at the
arrival of its first packet (seconds since the recording started) and follows the publisher's RTP
clock from there, so network jitter never reaches the timestamps, and tracks that start late,
pause or restart line up with the others.
"""

from __future__ import annotations

import fractions
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from aiortc.codecs import depayload
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from ..sfu.keyframes import is_keyframe_start

# codec name -> (container format, PyAV codec, file suffix)
FORMATS = {"VP8": ("webm", "vp8", ".webm"), "H264": ("matroska", "h264", ".mkv"),
           "opus": ("webm", "opus", ".webm")}
# Jitter buffer capacities in packets: an unrecovered loss holds a track this long, then it skips on.
AUDIO_PACKETS = 16
VIDEO_PACKETS = 128
KEYFRAME_MEMORY = 64  # timestamps of keyframe starts remembered while their frames assemble
# A cluster holds at most this much media; each is written to the file when it closes.
CLUSTER_MS = 500
MUXER_OPTIONS = {"cluster_time_limit": str(CLUSTER_MS), "flush_packets": "1"}
CODEC_NAMES = {"vp8": "VP8", "h264": "H264", "opus": "opus"}  # PyAV's names -> RTP's
SUFFIX_FORMATS = {suffix: container for container, _, suffix in FORMATS.values()}


class UnsupportedCodec(ValueError):
    """A track in a codec that cannot be stored without transcoding."""


@dataclass(frozen=True)
class TrackInfo:
    participant: str
    track_id: str
    kind: str
    source: str
    codec: RTCRtpCodecParameters

    @property
    def codec_name(self) -> str:
        return self.codec.name

    @property
    def clock_rate(self) -> int:
        return self.codec.clockRate


def container_for(codec_name: str) -> tuple[str, str, str]:
    try:
        return FORMATS[codec_name]
    except KeyError:
        raise UnsupportedCodec(f"{codec_name} cannot be recorded; the recorder stores "
                               f"{', '.join(FORMATS)}") from None


class Fragment:
    """One depayloaded RTP packet, as aiortc's JitterBuffer takes it."""

    __slots__ = ("sequence_number", "timestamp", "_data")

    def __init__(self, sequence_number: int, timestamp: int, data: bytes) -> None:
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self._data = data


class TrackWriter:
    """Writes one track; ``write`` takes its packets in arrival order (from one thread)."""

    def __init__(self, stem: Path, info: TrackInfo, request_keyframe: Callable[[], None]) -> None:
        self.format, self.codec_name, suffix = container_for(info.codec_name)
        self.path = stem.with_suffix(suffix)
        self.info = info
        self.video = info.kind == "video"
        self.time_base = fractions.Fraction(1, info.clock_rate)
        self.frames = 0
        self.bytes = 0
        self.first_pts: int | None = None
        self.last_pts: int | None = None
        self.size: tuple[int, int] | None = None
        self.closed = False
        self._request_keyframe = request_keyframe
        self._container: Any = None
        self._stream: Any = None
        self._ssrc: int | None = None
        self._buffer = JitterBuffer(AUDIO_PACKETS)
        self._keyframe_starts: set[int] = set()
        self._need_keyframe = self.video
        self._anchor = 0  # pts = anchor + extended RTP timestamp
        self._last_ts = 0
        self._extended_ts = 0

    # ------------------------------------------------------------------ packets in
    def write(self, arrival: float, ssrc: int, sequence_number: int, timestamp: int, payload: bytes) -> None:
        """One RTP packet that arrived ``arrival`` seconds after the recording started."""
        if self.closed:
            return
        if ssrc != self._ssrc:
            self._restart(ssrc, timestamp, arrival)
        if self.video and is_keyframe_start(self.info.codec_name, payload):
            if len(self._keyframe_starts) >= KEYFRAME_MEMORY:
                self._keyframe_starts.clear()
            self._keyframe_starts.add(timestamp)
        try:
            data = depayload(self.info.codec, payload)
        except ValueError:  # a malformed payload descriptor: the packet is lost
            return
        lost, frame = self._buffer.add(Fragment(sequence_number, timestamp, data))  # type: ignore[arg-type]
        if lost and self.video:
            self._want_keyframe()
        if frame is not None:
            self._frame(frame.data, frame.timestamp)

    def _restart(self, ssrc: int, timestamp: int, arrival: float) -> None:
        """A new source (the first packets, or the publisher restarted its stream)."""
        self._ssrc = ssrc
        self._buffer = JitterBuffer(VIDEO_PACKETS if self.video else AUDIO_PACKETS, is_video=self.video)
        self._keyframe_starts.clear()
        pts = round(arrival * self.info.clock_rate)
        if self.last_pts is not None:
            pts = max(pts, self.last_pts + 1)
        self._last_ts = timestamp
        self._extended_ts = timestamp
        self._anchor = pts - timestamp
        if self.video:
            self._want_keyframe()

    def _want_keyframe(self) -> None:
        self._need_keyframe = True
        self._request_keyframe()

    def _extend(self, timestamp: int) -> int:
        step = (timestamp - self._last_ts) & 0xFFFFFFFF
        if step >= 1 << 31:
            step -= 1 << 32
        self._last_ts = timestamp
        self._extended_ts += step
        return self._extended_ts

    # ------------------------------------------------------------------ frames out
    def _is_keyframe(self, data: bytes, timestamp: int) -> bool:
        if self.info.codec_name == "VP8":
            return vp8_dimensions(data) is not None
        # H.264: the frame must begin with its first NAL unit (no leading packet lost).
        return timestamp in self._keyframe_starts and data.startswith(b"\x00\x00\x00\x01")

    def _frame(self, data: bytes, timestamp: int) -> None:
        pts = self._anchor + self._extend(timestamp)
        keyframe = not self.video or self._is_keyframe(data, timestamp)
        self._keyframe_starts.discard(timestamp)
        if self._need_keyframe:
            if not keyframe:
                return
            self._need_keyframe = False
        if self._container is None and not self._open(data):
            self._want_keyframe()
            return
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1
        packet = av.Packet(data)
        packet.stream = self._stream
        packet.time_base = self.time_base
        packet.pts = packet.dts = pts
        packet.is_keyframe = keyframe
        self._container.mux(packet)
        self.frames += 1
        self.bytes += len(data)
        if self.first_pts is None:
            self.first_pts = pts
        self.last_pts = pts

    def _open(self, first: bytes) -> bool:
        options: dict[str, Any] = {}
        if self.video:
            size = vp8_dimensions(first) if self.info.codec_name == "VP8" else h264_dimensions(first)
            if size is None:
                return False
            self.size = size
            options = {"width": size[0], "height": size[1]}
        else:
            options = {"rate": self.info.clock_rate}
        container = av.open(str(self.path), "w", format=self.format, options=MUXER_OPTIONS)
        try:
            self._stream = container.add_mux_stream(self.codec_name, **options)
            self._stream.time_base = self.time_base
        except BaseException:
            container.close()
            raise
        self._container = container
        return True

    # ------------------------------------------------------------------ the end
    def sync(self) -> None:
        """Force what was written so far to the disk (fsync)."""
        if self._container is not None:
            sync_file(self.path)

    def close(self) -> None:
        """Finish the file (its index and duration) and sync it; raises OSError when the disk refuses."""
        if self.closed:
            return
        self.closed = True
        if self._container is not None:
            container, self._container = self._container, None
            container.close()
            sync_file(self.path)

    def describe(self) -> dict[str, Any] | None:
        """The track as the recording's manifest lists it; None when nothing was written."""
        if not self.frames or self.first_pts is None or self.last_pts is None:
            return None
        rate = self.info.clock_rate
        step = (self.last_pts - self.first_pts) / (self.frames - 1) if self.frames > 1 else 0
        track = {"file": self.path.name, "participant": self.info.participant, "track_id": self.info.track_id,
                 "kind": self.info.kind, "source": self.info.source, "codec": self.info.codec_name,
                 "start_s": round(self.first_pts / rate, 3), "end_s": round((self.last_pts + step) / rate, 3),
                 "frames": self.frames, "size": self.path.stat().st_size if self.path.exists() else 0}
        if self.size is not None:
            track["width"], track["height"] = self.size
        return track


def sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finish_interrupted(path: Path) -> dict[str, Any] | None:
    """Make a track file a process left unfinished whole: its frames, up to the last complete one,
    remuxed into a file with an index and a duration that replaces it. Returns what the manifest
    lists of a track's file (kind, codec, start_s, end_s, frames, size, and a video's width and
    height), or None when no frame of it can be read."""
    scratch = path.with_name(f".{path.name}.finishing")
    try:
        source = av.open(str(path))
    except (av.error.FFmpegError, OSError):
        return None
    try:
        with source:
            if not source.streams:
                return None
            stream = source.streams[0]
            pts = _remux(source, stream, scratch, SUFFIX_FORMATS.get(path.suffix, "matroska"))
            time_base, kind, codec = stream.time_base, stream.type, CODEC_NAMES.get(stream.codec_context.name, "")
            size = (stream.codec_context.width, stream.codec_context.height) if kind == "video" else None
        if not pts:
            return None
        sync_file(scratch)
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    step = (pts[-1] - pts[0]) / (len(pts) - 1) if len(pts) > 1 else 0
    track: dict[str, Any] = {"kind": kind, "codec": codec, "start_s": round(float(pts[0] * time_base), 3),
                             "end_s": round(float((pts[-1] + step) * time_base), 3),
                             "frames": len(pts), "size": path.stat().st_size}
    if size is not None:
        track["width"], track["height"] = size
    return track


def _remux(source: Any, stream: Any, target: Path, format: str) -> list[int]:
    """Copy the stream's frames into ``target`` until the first that cannot be read; their pts."""
    pts: list[int] = []
    with av.open(str(target), "w", format=format) as out:
        copy = out.add_stream_from_template(stream)
        try:
            for packet in source.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue
                pts.append(packet.pts)
                packet.stream = copy
                out.mux(packet)
        except av.error.FFmpegError:
            pass  # a cluster cut short by the crash: the frames before it are kept
    return pts


# ---------------------------------------------------------------------------- bitstream headers
def vp8_dimensions(frame: bytes) -> tuple[int, int] | None:
    """(width, height) of a VP8 keyframe (RFC 6386 9.1); None for any other frame."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None


class _Bits:
    """An H.264 RBSP read bit by bit, Exp-Golomb codes included."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.data[self.pos >> 3]  # IndexError past the end: a truncated SPS
        value = (byte >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def _nal_units(annexb: bytes) -> list[bytes]:
    return [unit.lstrip(b"\x00") for unit in annexb.split(b"\x00\x00\x01") if unit.strip(b"\x00")]


def h264_dimensions(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from the SPS in an Annex B H.264 access unit (ITU-T H.264 7.3.2.1.1);
    None when it carries no SPS or a malformed one."""
    sps = next((unit for unit in _nal_units(frame) if unit[0] & 0x1F == 7), None)
    if sps is None:
        return None
    try:
        return _sps_dimensions(sps[1:].replace(b"\x00\x00\x03", b"\x00\x00"))
    except (IndexError, ValueError):
        return None


def _sps_dimensions(rbsp: bytes) -> tuple[int, int]:
    bits = _Bits(rbsp)
    profile = bits.bits(8)
    bits.bits(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    chroma_format = 1
    if profile in HIGH_PROFILES:
        chroma_format = bits.ue()
        if chroma_format == 3:
            bits.bit()  # separate_colour_plane_flag
        bits.ue()
        bits.ue()  # bit depths
        bits.bit()  # qpprime_y_zero_transform_bypass_flag
        if bits.bit():  # seq_scaling_matrix_present_flag
            for i in range(12 if chroma_format == 3 else 8):
                if bits.bit():
                    last = next_scale = 8
                    for _ in range(16 if i < 6 else 64):
                        if next_scale:
                            next_scale = (last + bits.se()) % 256
                        last = next_scale or last
    bits.ue()  # log2_max_frame_num_minus4
    order_type = bits.ue()
    if order_type == 0:
        bits.ue()
    elif order_type == 1:
        bits.bit()
        bits.se()
        bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_units = bits.ue() + 1
    frame_mbs_only = bits.bit()
    if not frame_mbs_only:
        bits.bit()  # mb_adaptive_frame_field_flag
    bits.bit()  # direct_8x8_inference_flag
    left = right = top = bottom = 0
    if bits.bit():  # frame_cropping_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
    crop_x = 2 if chroma_format in (1, 2) else 1
    crop_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - (left + right) * crop_x
    height = (2 - frame_mbs_only) * height_units * 16 - (top + bottom) * crop_y
    if width <= 0 or height <= 0:
        raise ValueError("bad SPS dimensions")
    return width, height
