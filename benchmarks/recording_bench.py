"""Recording cost per track and composite export speed.

Usage: python benchmarks/recording_bench.py [--seconds 60] [--width 1280 --height 720] [--json]

1. Recording CPU per track. The media of ``confmeet loadtest``'s publishers (640x480 VP8 at 30 fps
   and ~800 kbps, Opus at ~32 kbps; encoded once, looped) is packetised into RTP as a browser
   sends it and handed, packet by packet, to the recording sink's tap: exactly what the SFU calls
   for every packet it forwards. The sink reassembles and muxes it into WebM files on disk, its
   queue drained every 0.2 s of media as the running sink does. The figure is all the process's
   CPU time (the tap, the worker thread, the file writes) over the seconds of media recorded:
   the share of one core a recorded track costs while it plays in real time. The packets are fed
   as fast as the sink takes them, so the work is the same as in real time, without waiting.
2. Composite export speed. The recorded files, as two participants (the same camera and
   microphone each), are exported at the chosen resolution as a grid: MP4 (H.264 + AAC) and WebM
   (VP8 + Opus), in this process. Speed is seconds of recording per second of wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aiortc.codecs.vpx import Vp8Encoder  # noqa: E402
from aiortc.rtcrtpparameters import RTCRtpCodecParameters  # noqa: E402
from aiortc.rtp import RtpPacket  # noqa: E402

from appliance.recording.composite import Job, compose  # noqa: E402
from appliance.recording.sink import RecordingSink  # noqa: E402
from cli.client.clips import encode_audio_clip, encode_video_clip  # noqa: E402

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
DRAIN_S = 0.2


class PublishedTrack:
    """What the sink sees of a track the SFU receives (forwarder.UpTrack's face to sinks)."""

    def __init__(self, publisher: str, kind: str, codec: RTCRtpCodecParameters) -> None:
        self.publisher, self.kind, self.codec = publisher, kind, codec
        self.track_id = f"{publisher}-{kind}"
        self.source = "camera" if kind == "video" else "microphone"
        self.taps: list[Any] = []

    @property
    def key(self) -> tuple[str, str]:
        return self.publisher, self.track_id

    def add_tap(self, tap: Any) -> None:
        self.taps.append(tap)

    def remove_tap(self, tap: Any) -> None:
        self.taps = [t for t in self.taps if t != tap]

    def request_keyframe(self) -> None:
        """The clip restarts at its keyframe; nothing to ask."""


def rtp_stream(kind: str, seconds: float) -> tuple[list[tuple[float, RtpPacket]], float]:
    """(media time, packet) for ``seconds`` of the looped clip, and its bitrate in bit/s."""
    clip = encode_video_clip() if kind == "video" else encode_audio_clip()
    packets, seq, ssrc = [], 0, 0x1234 if kind == "video" else 0x5678
    for index in range(int(seconds / clip.frame_seconds)):
        frame = clip.frames[index % len(clip.frames)]
        payloads = Vp8Encoder._packetize(frame, index & 0x7FFF) if kind == "video" else [frame]
        timestamp = (index * clip.ticks_per_frame) & 0xFFFFFFFF
        for i, payload in enumerate(payloads):
            packet = RtpPacket(payload_type=96, marker=int(i == len(payloads) - 1), sequence_number=seq & 0xFFFF,
                               timestamp=timestamp, ssrc=ssrc, payload=payload)
            packets.append((index * clip.frame_seconds, packet))
            seq += 1
    return packets, clip.bitrate


async def record(kind: str, seconds: float, directory: Path) -> dict[str, Any]:
    packets, bitrate = rtp_stream(kind, seconds)
    track = PublishedTrack("p-bench", kind, VP8 if kind == "video" else OPUS)
    sink = RecordingSink("bench" + kind, directory, lambda who, event: None)
    cpu, wall = time.process_time(), time.perf_counter()
    sink.track_added(track)  # type: ignore[arg-type]
    [tap] = track.taps
    next_drain = DRAIN_S
    for at, packet in packets:
        if at >= next_drain:
            sink._drain()
            next_drain += DRAIN_S
        tap(track, packet)
    sink.track_removed(track)  # type: ignore[arg-type]
    result = await sink.stop()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    [written] = result["tracks"]
    return {"kind": kind, "media_seconds": seconds, "bitrate_kbps": round(bitrate / 1000),
            "packets": len(packets), "packets_per_second": round(len(packets) / seconds),
            "cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
            "core_percent": round(100 * cpu / seconds, 2), "cpu_us_per_packet": round(1e6 * cpu / len(packets), 1),
            "file_bytes": written["size"], "track": written}


def export(tracks: list[dict[str, Any]], seconds: float, fmt: str, width: int, height: int,
           directory: Path) -> dict[str, Any]:
    out = directory / f"composite.{fmt}"
    cpu, wall = time.process_time(), time.perf_counter()
    compose(Job(tracks=tracks, duration_s=seconds, format=fmt, layout="grid", width=width, height=height,
                output=str(out)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"format": fmt, "layout": "grid", "size": f"{width}x{height}", "participants": 2,
            "media_seconds": seconds, "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "speed_x_real_time": round(seconds / wall, 2), "file_bytes": out.stat().st_size}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of media recorded and exported")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="recording-bench-"))
    try:
        recorded = [await record(kind, args.seconds, folder / kind) for kind in ("video", "audio")]
        tracks = []
        for who in ("p-alice", "p-bob"):  # two participants, each with the recorded camera and microphone
            for result in recorded:
                source = folder / result["kind"] / result["track"]["file"]
                copy = folder / f"{who}-{result['kind']}{source.suffix}"
                shutil.copy(source, copy)
                tracks.append({**result["track"], "participant": who, "path": str(copy)})
        exports = [export(tracks, args.seconds, fmt, args.width, args.height, folder) for fmt in ("mp4", "webm")]
    finally:
        shutil.rmtree(folder)
    report = {"recording": [{k: v for k, v in r.items() if k != "track"} for r in recorded], "export": exports}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"Recording, {args.seconds:.0f} s of media per track:")
    for r in report["recording"]:
        print(f"  {r['kind']:5}  {r['bitrate_kbps']:4} kbps  {r['packets_per_second']:3} packets/s  "
              f"CPU {r['core_percent']:5.2f} % of one core  ({r['cpu_us_per_packet']} µs per packet)")
    print(f"Composite export, {args.seconds:.0f} s, two participants, grid:")
    for e in exports:
        print(f"  {e['format']:4} {e['size']}  {e['wall_seconds']:6.1f} s  {e['speed_x_real_time']:5.2f}x real time  "
              f"(CPU {e['cpu_seconds']:.1f} s, {e['file_bytes'] / 1e6:.1f} MB)")


if __name__ == "__main__":
    asyncio.run(main())
