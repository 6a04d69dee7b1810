"""Caption latency and how many simultaneous speakers one machine captions in real time.

Usage: python benchmarks/captions_bench.py [--inference local|triton|both] [--speakers 1,2,3,4]
       [--seconds 40]

Each speaker is espeak-ng reading sentences with pauses, Opus-encoded into 20 ms RTP packets
(with their RFC 6464 audio level, as browsers send them) and fed in real time, all speakers at
once, to the captions sink through the SFU's tap interface: the same code path as a meeting,
without the WebRTC transport (whose cost per packet is in the SFU benchmarks). The latency of a
caption is the time from the moment the last packet of an utterance's speech was fed to the
moment its caption event is emitted. A run counts as real time when nothing is merged or dropped
and p95 stays under 3 s. With triton, a tritonserver (nvidia-pytriton's, on CPU) serves the
models; the models are imported from their PyPI packages into a temporary repository.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.rtp import RtpPacket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from captions.conftest import speak  # noqa: E402
from triton_server import start_triton  # noqa: E402

from appliance.captions.sink import CaptionSink  # noqa: E402
from appliance.inference import open_inference  # noqa: E402
from appliance.inference.models import import_models  # noqa: E402

SENTENCES = [
    "Good morning everyone, thank you for joining the weekly planning meeting.",
    "Today we will review the budget for the new office and the hiring plan.",
    "Please send your comments to the project manager before Friday afternoon.",
    "The next meeting will take place on Tuesday morning in the large room.",
]
FRAME = 960  # 20 ms at 48 kHz


@dataclass
class Packet:
    payload: bytes
    level: int  # -dBov
    speech_ends: bool  # the last packet with speech before a pause


def encode(wav: Path) -> list[Packet]:
    container = av.open(str(wav))
    resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                          for f in resampler.resample(frame)])
    pcm = np.concatenate([pcm, np.zeros(-pcm.size % FRAME, np.int16)])
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format, encoder.bit_rate = 48000, "mono", "s16", 32000
    packets: list[Packet] = []
    loud = []
    for i in range(0, pcm.size, FRAME):
        chunk = pcm[i:i + FRAME]
        rms = float(np.sqrt(np.mean((chunk.astype(np.float64) / 32768) ** 2))) or 1e-9
        level = int(min(127, max(0, -20 * np.log10(rms))))
        loud.append(level < 50)
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i, fractions.Fraction(1, 48000)
        for packet in encoder.encode(frame):
            packets.append(Packet(bytes(packet), level, False))
    # The end of an utterance: a loud packet followed by at least 300 ms of quiet.
    for i in range(len(packets) - 15):
        if loud[i] and not any(loud[i + 1:i + 16]):
            packets[i].speech_ends = True
    return packets


class FakeTrack:
    """What the sink uses of an UpTrack: who publishes it, its kind, and its taps."""

    def __init__(self, publisher: str) -> None:
        self.publisher, self.kind, self.taps = publisher, "audio", []

    def add_tap(self, tap: Any) -> None:
        self.taps.append(tap)

    def remove_tap(self, tap: Any) -> None:
        self.taps.remove(tap)


async def speaker(track: FakeTrack, packets: list[Packet], seconds: float, offset: int,
                  ends: list[tuple[str, float]]) -> None:
    start = time.monotonic()
    seq, i = 0, offset
    while (now := time.monotonic()) - start < seconds:
        p = packets[i % len(packets)]
        rtp = RtpPacket(payload_type=111, sequence_number=seq & 0xFFFF, timestamp=(seq * FRAME) & 0xFFFFFFFF,
                        ssrc=1234, payload=p.payload)
        rtp.extensions.audio_level = (False, p.level)
        for tap in track.taps:
            tap(track, rtp)
        if p.speech_ends:
            ends.append((track.publisher, time.time()))
        seq, i = seq + 1, i + 1
        await asyncio.sleep(max(0.0, start + seq * 0.02 - time.monotonic()))


async def run(url: str, repository: Path, packets: list[Packet], speakers: int, seconds: float) -> dict[str, Any]:
    inference = open_inference(url, repository)
    await inference.transcribe(np.zeros(16000, np.float32), "en")  # load / warm up
    events: list[tuple[float, dict[str, Any]]] = []
    sink = CaptionSink("bench", "en", inference, lambda _, e: events.append((time.time(), e)))
    tracks = [FakeTrack(f"speaker-{n}") for n in range(speakers)]
    for track in tracks:
        sink.track_added(track)  # type: ignore[arg-type]
    ends: list[tuple[str, float]] = []
    stagger = len(packets) // max(1, speakers)
    await asyncio.gather(*(speaker(t, packets, seconds, n * stagger, ends) for n, t in enumerate(tracks)))
    await asyncio.sleep(4)  # the last captions
    result = await sink.stop()
    await inference.close()
    latencies = []
    for at, event in events:
        if event["type"] != "caption":
            continue
        candidates = [t for who, t in ends if who == event["subject"] and t <= at and abs(t - event["end"]) < 1.5]
        if candidates:
            latencies.append(at - max(candidates))
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    return {"speakers": speakers, "captions": len(latencies), "p50": pick(0.5), "p95": pick(0.95),
            "merged": result["merged"], "dropped": result["dropped"],
            "real_time": bool(latencies) and result["merged"] == 0 and result["dropped"] == 0 and pick(0.95) < 3.0}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inference", choices=["local", "triton", "both"], default="both")
    parser.add_argument("--speakers", default="1,2,3,4")
    parser.add_argument("--seconds", type=float, default=40.0)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="captions-bench-") as tmp:
        scratch = Path(tmp)
        repository = scratch / "model_repository"
        import_models("packages", repository)
        packets = encode(speak(SENTENCES, scratch / "speech.wav", pause_ms=1200))
        backends = ["local", "triton"] if options.inference == "both" else [options.inference]
        for backend in backends:
            triton = start_triton(repository, scratch) if backend == "triton" else None
            url = triton.url if triton else "local://"
            try:
                for n in (int(x) for x in options.speakers.split(",")):
                    r = await run(url, repository, packets, n, options.seconds)
                    print(f"{backend:7} speakers={r['speakers']} captions={r['captions']:3d} "
                          f"p50={r['p50']:.2f}s p95={r['p95']:.2f}s merged={r['merged']} dropped={r['dropped']} "
                          f"real-time={'yes' if r['real_time'] else 'no'}", flush=True)
            finally:
                if triton:
                    triton.stop()


if __name__ == "__main__":
    asyncio.run(main())
