"""The captions sink: consumes a meeting's audio tracks in the SFU and emits caption events.

Per audio track, the SFU's tap hands over each RTP packet (synchronously: it is only queued). A
packet is decoded only while its speaker makes sound (the RFC 6464 level the browser puts in each
packet, with a hang-over and a few packets of pre-roll), so silent participants cost nothing. A
task per speaker decodes Opus, resamples to 16 kHz mono, asks the VAD for speech probabilities and
cuts utterances; one task per meeting transcribes them in order.

Everything that waits is bounded: the packets of a speaker (``packet_queue``), the utterance
being spoken (``max_utterance`` seconds), the utterances waiting for ASR (``asr_queue``, merged or
dropped when full, see UtteranceQueue). When inference is unreachable the sink stops decoding,
says ``captions_status: unavailable``, probes the backend's health, and resumes when it is back.

Events (room-wide): ``caption`` (subject, text, start, end, final, language, merged) and
``captions_status`` (state: available | degraded | unavailable, detail, counters and queue sizes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from aiortc.rtp import RtpPacket

from ..inference import Inference, InferenceError, InferenceUnavailable
from ..inference.base import SAMPLE_RATE, VAD_CHUNK, VAD_STATE
from ..sfu.errors import SfuError
from ..sfu.forwarder import UpTrack
from .audio import OPUS_RATE, OpusTo16k
from .utterances import CHUNK_SECONDS, CutSettings, Utterance, UtteranceCutter, UtteranceQueue

log = logging.getLogger("confmeet.captions")

Emit = Callable[[str | None, dict[str, Any]], None]
LANGUAGES = ("af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he "
             "hi hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne "
             "nl nn no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk "
             "ur uz vi yi yo zh yue").split()


@dataclass(frozen=True)
class CaptionSettings:
    cut: CutSettings = field(default_factory=CutSettings)
    vad_batch: int = 4  # chunks of 32 ms per VAD request, at least
    packet_queue: int = 150  # RTP packets (20 ms each) waiting to be decoded, per speaker
    asr_queue: int = 3  # utterances waiting for ASR, per meeting
    max_wait: float = 10.0  # an utterance that waited longer for ASR is dropped
    speaking_dbov: int = 55  # packets at or above -55 dBov are sound
    hangover: float = 1.0  # seconds decoding goes on after the last sound
    preroll_packets: int = 15  # packets of silence kept (encoded) to decode when sound starts
    idle_flush: float = 0.5  # seconds without audio that end an utterance
    probe_interval: float = 2.0  # seconds between health probes while inference is unavailable
    status_interval: float = 2.0  # seconds between status events carrying the counters


@dataclass
class Counters:
    captions: int = 0
    utterances: int = 0
    merged: int = 0
    dropped: int = 0
    packets_decoded: int = 0
    packets_skipped: int = 0  # silent, or while inference was unavailable
    packets_overflowed: int = 0  # the speaker's queue was full
    speech_seconds: float = 0.0


class SpeakerStream:
    """One audio track: the tap, the decoder, the VAD state and the utterance cutter."""

    def __init__(self, sink: CaptionSink, up: UpTrack) -> None:
        self.sink = sink
        self.participant = up.publisher
        self.packets: deque[tuple[bytes, int, float]] = deque()
        self._preroll: deque[tuple[bytes, int, float]] = deque(maxlen=sink.settings.preroll_packets)
        self._wakeup = asyncio.Event()
        self._last_sound = -1e9
        self._reset_media()
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"captions-{up.publisher}")

    def _reset_media(self) -> None:
        self._decoder = OpusTo16k()
        self._cutter = UtteranceCutter(self.participant, self.sink.settings.cut)
        self._vad_state = np.zeros(VAD_STATE, np.float32)
        self._pcm = np.zeros(0, np.float32)
        self._pcm_time = 0.0  # wall-clock time of _pcm[0]
        self._anchor: tuple[int, float] | None = None  # (RTP timestamp, wall-clock time)

    def reset(self) -> None:
        """Forget everything queued and half-heard (inference went away)."""
        self.packets.clear()
        self._preroll.clear()
        self._reset_media()

    # ------------------------------------------------------------------ in the SFU's receive path
    def tap(self, up: UpTrack, packet: RtpPacket) -> None:
        now = time.time()
        level = packet.extensions.audio_level
        if level is None or level[1] <= self.sink.settings.speaking_dbov:
            self._last_sound = now
        counters = self.sink.counters
        if not self.sink.available:
            counters.packets_skipped += 1
            return
        item = (packet.payload, packet.timestamp, now)
        if now - self._last_sound > self.sink.settings.hangover:
            if len(self._preroll) == self._preroll.maxlen:
                counters.packets_skipped += 1
            self._preroll.append(item)
            return
        while self._preroll:
            self._enqueue(self._preroll.popleft())
        self._enqueue(item)

    def _enqueue(self, item: tuple[bytes, int, float]) -> None:
        if len(self.packets) >= self.sink.settings.packet_queue:
            self.sink.counters.packets_overflowed += 1
            return
        self.packets.append(item)
        self._wakeup.set()

    # ------------------------------------------------------------------ the speaker's task
    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.sink.settings.idle_flush)
            except asyncio.TimeoutError:
                self._submit(self._cutter.flush())
                continue
            self._wakeup.clear()
            try:
                await self._process()
            except InferenceUnavailable as exc:
                self.sink.unavailable(str(exc))
            except InferenceError as exc:
                log.warning("captions: voice activity for %s failed: %s", self.participant, exc)
                self.reset()

    def _time_of(self, rtp_timestamp: int, arrived: float) -> float:
        if self._anchor is not None:
            at = self._anchor[1] + ((rtp_timestamp - self._anchor[0]) & 0xFFFFFFFF) / OPUS_RATE
            if abs(at - arrived) < 1.0:
                return at
        self._anchor = (rtp_timestamp, arrived)
        return arrived

    async def _process(self) -> None:
        while self.packets:
            payload, rtp_timestamp, arrived = self.packets.popleft()
            pcm = self._decoder.decode(payload)
            self.sink.counters.packets_decoded += 1
            if not pcm.size:
                continue
            at = self._time_of(rtp_timestamp, arrived)
            expected = self._pcm_time + self._pcm.size / SAMPLE_RATE
            if not self._pcm.size or abs(at - expected) > 0.1:  # first audio, or after a gap
                if self._pcm.size:
                    self._submit(self._cutter.flush())
                self._pcm, self._pcm_time = pcm, at
            else:
                self._pcm = np.concatenate([self._pcm, pcm])
            whole = self._pcm.size // VAD_CHUNK
            if whole >= self.sink.settings.vad_batch:
                audio, self._pcm = self._pcm[:whole * VAD_CHUNK], self._pcm[whole * VAD_CHUNK:]
                start, self._pcm_time = self._pcm_time, self._pcm_time + whole * CHUNK_SECONDS
                probs, self._vad_state = await self.sink.inference.vad(audio, self._vad_state)
                if not self.sink.available:
                    return
                self._submit(self._cutter.feed(audio, probs, [start + i * CHUNK_SECONDS for i in range(whole)]))

    def _submit(self, utterances: list[Utterance]) -> None:
        for utterance in utterances:
            self.sink.submit(utterance)

    def close(self) -> None:
        """The track ended: what was being said is still transcribed."""
        self.task.cancel()
        if self.sink.available:
            self._submit(self._cutter.flush())

    def queued(self) -> int:
        return len(self.packets)


class CaptionSink:
    def __init__(self, room: str, language: str, inference: Inference, emit: Emit,
                 settings: CaptionSettings | None = None) -> None:
        self.room = room
        self.language = language
        self.inference = inference
        self.emit = emit
        self.settings = settings or CaptionSettings()
        self.counters = Counters()
        self.streams: dict[UpTrack, SpeakerStream] = {}
        self.queue = UtteranceQueue(self.settings.asr_queue, self.settings.cut.max_utterance)
        self.state = "available"
        self.detail = ""
        self.available = True
        self._ready = asyncio.Event()
        self._probe: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._transcribe(), name=f"captions-asr-{room}"),
                       loop.create_task(self._report(), name=f"captions-status-{room}")]

    # ------------------------------------------------------------------ TrackSink
    def track_added(self, up: UpTrack) -> None:
        if up.kind != "audio" or up in self.streams:
            return
        stream = SpeakerStream(self, up)
        self.streams[up] = stream
        up.add_tap(stream.tap)

    def track_removed(self, up: UpTrack) -> None:
        stream = self.streams.pop(up, None)
        if stream is not None:
            up.remove_tap(stream.tap)
            stream.close()

    async def stop(self) -> dict[str, Any]:
        for up in list(self.streams):
            self.track_removed(up)
        tasks = [*self._tasks, *([self._probe] if self._probe else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"language": self.language, **asdict(self.counters)}

    # ------------------------------------------------------------------ utterances → captions
    def submit(self, utterance: Utterance) -> None:
        if not self.available:
            return
        utterance.queued_at = time.monotonic()
        self.counters.utterances += 1
        self.counters.speech_seconds += utterance.seconds
        outcome = self.queue.put(utterance)
        if outcome != "queued":
            self.counters.merged, self.counters.dropped = self.queue.counters.merged, self.queue.counters.dropped
            self._set_state("degraded", "captions fall behind the speech: "
                            f"{'utterances are merged' if outcome == 'merged' else 'some speech is skipped'}")
        self._ready.set()

    async def _transcribe(self) -> None:
        while True:
            utterance = self.queue.get()
            if utterance is None:
                self._ready.clear()
                if self.state == "degraded":
                    self._set_state("available")
                await self._ready.wait()
                continue
            if time.monotonic() - utterance.queued_at > self.settings.max_wait:
                self.counters.dropped += 1
                self._set_state("degraded", "captions fall behind the speech: some speech is skipped")
                continue
            try:
                result = await self.inference.transcribe(utterance.audio, self.language)
            except InferenceUnavailable as exc:
                self.unavailable(str(exc))
                continue
            except InferenceError as exc:
                log.warning("captions: an utterance of %s was refused: %s", utterance.participant, exc)
                continue
            text = result.text.strip()
            if text:
                self.counters.captions += 1
                self.emit(None, {"type": "caption", "subject": utterance.participant, "text": text,
                                 "start": round(utterance.start, 3), "end": round(utterance.end, 3),
                                 "final": True, "language": result.language, "merged": utterance.merged})

    # ------------------------------------------------------------------ state
    def status(self) -> dict[str, Any]:
        return {"type": "captions_status", "state": self.state, "detail": self.detail,
                "language": self.language, **asdict(self.counters),
                "speech_seconds": round(self.counters.speech_seconds, 1),
                "queues": {"asr": len(self.queue), "asr_limit": self.queue.limit,
                           "packets": max((s.queued() for s in self.streams.values()), default=0),
                           "packets_limit": self.settings.packet_queue,
                           "utterance_seconds": round(max((s._cutter.buffered_seconds for s in self.streams.values()),
                                                          default=0.0), 2),
                           "utterance_seconds_limit": self.settings.cut.max_utterance}}

    def _set_state(self, state: str, detail: str = "") -> None:
        if (state, detail) != (self.state, self.detail):
            self.state, self.detail = state, detail
            self.emit(None, self.status())

    def unavailable(self, detail: str) -> None:
        """Inference is gone: stop decoding, drop what waits, and probe until it is back."""
        if not self.available:
            return
        log.warning("captions in %s are unavailable: %s", self.room, detail)
        self.available = False
        self.counters.dropped += self.queue.clear()
        for stream in self.streams.values():
            stream.reset()
        self._set_state("unavailable", detail)
        self._probe = asyncio.get_running_loop().create_task(self._wait_for_inference())

    async def _wait_for_inference(self) -> None:
        while True:
            await asyncio.sleep(self.settings.probe_interval)
            health = await self.inference.health()
            if health.ready:
                log.info("captions in %s resume: inference is back", self.room)
                for stream in self.streams.values():
                    stream.reset()
                self.available = True
                self._set_state("available")
                return

    async def _report(self) -> None:
        self.emit(None, self.status())
        while True:
            await asyncio.sleep(self.settings.status_interval)
            self.emit(None, self.status())


def caption_sink_factory(inference: Inference, settings: CaptionSettings | None = None
                         ) -> Callable[[str, dict[str, Any], Emit], CaptionSink]:
    """The SFU's ``captions`` sink; its options: ``{"language": "en"}`` (an ISO 639-1 code
    Whisper knows, or "" to detect the language of each utterance)."""

    def make(room: str, options: dict[str, Any], emit: Emit) -> CaptionSink:
        language = options.get("language", "en")
        if not isinstance(language, str) or (language and language not in LANGUAGES):
            raise SfuError("bad_message", "'language' must be an ISO 639-1 code Whisper knows, or \"\"")
        return CaptionSink(room, language, inference, emit, settings)

    return make
