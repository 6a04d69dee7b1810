"""The captions sink: consumes a meeting's audio tracks in the SFU and emits caption events.

Per audio track, the SFU's tap hands over each RTP packet (synchronously: it is only queued). A
packet is decoded only while its speaker makes sound (the RFC 6464 level the browser puts in each
packet, with a hang-over and a few packets of pre-roll), so silent participants cost nothing. A
task per speaker decodes Opus, resamples to 16 kHz mono, asks the VAD for speech probabilities
(every 64 ms) and cuts utterances. One task per meeting runs speech recognition, in this order:
final utterances, then the draft of an utterance whose speaker just paused (the final text if the
pause lasts: recognition overlaps the wait for the end of the utterance), then interim drafts
of speech going on (every ``interim_interval`` seconds, the first after ``first_interim``).

Latency is spent in stages, each timed in the events (``timing``, wall-clock seconds): the end
of the sound (the arrival of the last packet the browser marked as sound) → the end of the
utterance (``cut``: ``min_silence`` of silence) → queued for ASR → ASR start → ASR end →
emitted; signaling adds the fan-out to the seats and exports the stages as metrics (metrics.py).

Everything that waits is bounded (AsrQueue): when ASR falls behind, captions come later
(``degraded``, saying how far behind), a speaker's consecutive utterances are merged, and only
past the bounds is an utterance dropped, with a gap caption (``gap``: text "[…]") in its place,
as when packets overflow or inference goes away: nothing is lost silently. Interim captions turn
themselves off (``interim: false`` in the status) when ASR is busy for most of the time, before
final captions suffer, and on again when it has room. When inference is unreachable the sink
stops decoding, says ``captions_status: unavailable``, probes the backend's health, and resumes
when it is back.

Events (room-wide): ``caption`` (id, participant_id, text, start, end, final, language, merged, gap,
timing) and ``captions_status`` (state: available | degraded | unavailable, detail, interim,
counters and queue sizes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from aiortc.rtp import RtpPacket

from .. import tracing
from ..inference import Inference, InferenceError, InferenceUnavailable
from ..inference.base import SAMPLE_RATE, VAD_CHUNK, VAD_STATE
from ..inference.languages import canonical, is_tag
from ..sfu.errors import SfuError
from ..sfu.forwarder import UpTrack
from . import metrics
from .audio import OPUS_RATE, OpusTo16k
from .utterances import CHUNK_SECONDS, AsrQueue, CutSettings, Draft, Utterance, UtteranceCutter

log = logging.getLogger("confmeet.captions")

Emit = Callable[[str | None, dict[str, Any]], None]
GAP = "[…]"


@dataclass(frozen=True)
class CaptionSettings:
    cut: CutSettings = field(default_factory=CutSettings)
    vad_batch: int = 2  # chunks of 32 ms per VAD request, at least
    packet_queue: int = 150  # RTP packets (20 ms each) waiting to be decoded, per speaker
    max_backlog: float = 60.0  # seconds of final utterances waiting for ASR, at most
    max_wait: float = 30.0  # a final utterance that waited longer for ASR is dropped (a gap)
    pause_draft: float = 0.16  # seconds of silence after which the utterance so far is recognised
    first_interim: float = 0.5  # seconds of utterance before its first interim text
    interim_interval: float = 0.5  # seconds of more speech between interim texts
    interim_off_load: float = 0.8  # interim captions stop when ASR is busy this share of the time
    interim_on_load: float = 0.5  # and are tried again when final captions alone keep it under this
    interim_rest: float = 10.0  # seconds they stay off, at least (doubled after a failed try)
    load_window: float = 6.0  # seconds over which ASR's busy share is measured
    speaking_dbov: int = 55  # packets at or above -55 dBov are sound
    hangover: float = 1.0  # seconds decoding goes on after the last sound
    preroll_packets: int = 15  # packets of silence kept (encoded) to decode when sound starts
    idle_flush: float = 0.5  # seconds without audio that end an utterance
    probe_interval: float = 2.0  # seconds between health probes while inference is unavailable
    status_interval: float = 2.0  # seconds between status events carrying the counters


@dataclass
class Counters:
    captions: int = 0
    interim_captions: int = 0
    utterances: int = 0
    merged: int = 0
    dropped: int = 0
    gaps: int = 0
    packets_decoded: int = 0
    packets_skipped: int = 0  # silent, or while inference was unavailable
    packets_overflowed: int = 0  # the speaker's queue was full
    speech_seconds: float = 0.0


class SpeakerStream:
    """One audio track: the tap, the decoder, the VAD state and the utterance cutter."""

    def __init__(self, sink: CaptionSink, up: UpTrack) -> None:
        self.sink = sink
        self.participant = up.publisher
        self.packets: deque[tuple[bytes, int, float, bool]] = deque()
        self._preroll: deque[tuple[bytes, int, float, bool]] = deque(maxlen=sink.settings.preroll_packets)
        self._wakeup = asyncio.Event()
        self._last_sound = -1e9
        self._overflow: tuple[float, float] | None = None  # arrival of the first and last packet lost
        self._reset_media()
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"captions-{up.publisher}")

    def _reset_media(self) -> None:
        self._decoder = OpusTo16k()
        self._cutter = UtteranceCutter(self.participant, self.sink.settings.cut)
        self._vad_state = np.zeros(VAD_STATE, np.float32)
        self._pcm = np.zeros(0, np.float32)
        self._pcm_time = 0.0  # wall-clock time of _pcm[0]
        self._anchor: tuple[int, float] | None = None  # (RTP timestamp, wall-clock time)
        self._sound = (0.0, 0.0)  # arrivals of the first and the last packet of the sound going on
        self._sound_start = 0.0  # of the sound in which the utterance going on began
        self._drafted = 0.0  # seconds of the utterance going on when its last draft was asked for
        self._paused = False  # the pause going on has its draft

    def reset(self) -> None:
        """Forget everything queued and half-heard (inference went away)."""
        self.packets.clear()
        self._preroll.clear()
        self._reset_media()

    # ------------------------------------------------------------------ in the SFU's receive path
    def tap(self, up: UpTrack, packet: RtpPacket) -> None:
        now = time.time()
        level = packet.extensions.audio_level
        loud = level is None or level[1] <= self.sink.settings.speaking_dbov
        if loud:
            self._last_sound = now
        counters = self.sink.counters
        if not self.sink.available:
            counters.packets_skipped += 1
            return
        item = (packet.payload, packet.timestamp, now, loud)
        if now - self._last_sound > self.sink.settings.hangover:
            if len(self._preroll) == self._preroll.maxlen:
                counters.packets_skipped += 1
            self._preroll.append(item)
            return
        while self._preroll:
            self._enqueue(self._preroll.popleft())
        self._enqueue(item)

    def _enqueue(self, item: tuple[bytes, int, float, bool]) -> None:
        if len(self.packets) >= self.sink.settings.packet_queue:
            self.sink.counters.packets_overflowed += 1
            self._overflow = (self._overflow[0] if self._overflow else item[2], item[2] + 0.02)
            return
        if self._overflow is not None:  # the decoder kept up again: say what it lost
            self.sink.gap(self.participant, *self._overflow, "the decoder fell behind")
            self._overflow = None
        self.packets.append(item)
        self._wakeup.set()

    # ------------------------------------------------------------------ the speaker's task
    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.sink.settings.idle_flush)
            except asyncio.TimeoutError:
                self._finals(self._cutter.flush())
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
        settings = self.sink.settings
        while self.packets:
            payload, rtp_timestamp, arrived, loud = self.packets.popleft()
            if loud:  # the sound as the browser measured it: a new sound after a 250 ms pause
                self._sound = (arrived if arrived - self._sound[1] > 0.25 else self._sound[0], arrived)
            pcm = self._decoder.decode(payload)
            self.sink.counters.packets_decoded += 1
            if not pcm.size:
                continue
            at = self._time_of(rtp_timestamp, arrived)
            expected = self._pcm_time + self._pcm.size / SAMPLE_RATE
            if not self._pcm.size or abs(at - expected) > 0.1:  # first audio, or after a gap
                if self._pcm.size:
                    self._finals(self._cutter.flush())
                self._pcm, self._pcm_time = pcm, at
            else:
                self._pcm = np.concatenate([self._pcm, pcm])
            whole = self._pcm.size // VAD_CHUNK
            if whole >= settings.vad_batch:
                audio, self._pcm = self._pcm[:whole * VAD_CHUNK], self._pcm[whole * VAD_CHUNK:]
                start, self._pcm_time = self._pcm_time, self._pcm_time + whole * CHUNK_SECONDS
                probs, self._vad_state = await self.sink.inference.vad(audio, self._vad_state)
                if not self.sink.available:
                    return
                was_speaking = self._cutter.speaking
                self._finals(self._cutter.feed(audio, probs, [start + i * CHUNK_SECONDS for i in range(whole)]))
                if self._cutter.speaking and not was_speaking:
                    self._sound_start = self._sound[0]
                self._drafts()

    def _drafts(self) -> None:
        """Ask for the text of the utterance going on: at a pause, and every so often while it grows."""
        cutter, settings = self._cutter, self.sink.settings
        if not cutter.speaking:
            return
        if cutter.silence_seconds >= settings.pause_draft:
            if not self._paused:
                self._paused = True
                self._draft(cutter.draft(at_pause=True), "pause")
            return
        self._paused = False
        due = settings.first_interim if not self._drafted else self._drafted + settings.interim_interval
        if cutter.buffered_seconds >= due and self.sink.interim:
            self._drafted = cutter.buffered_seconds
            self._draft(cutter.draft(at_pause=False), "interim")

    def _draft(self, utterance: Utterance | None, kind: str) -> None:
        if utterance is not None:
            utterance.cut_at = time.time()
            self.sink.draft(Draft(utterance, kind), self._sound_start)

    def _finals(self, utterances: list[Utterance]) -> None:
        for utterance in utterances:
            utterance.cut_at = time.time()
            self.sink.submit(utterance, self._sound_start, self._sound[1])
        if utterances:
            self._drafted, self._paused = 0.0, False

    def close(self) -> None:
        """The track ended: what was being said is still transcribed."""
        self.task.cancel()
        if self.sink.available:
            self._finals(self._cutter.flush())

    def queued(self) -> int:
        return len(self.packets)


@dataclass
class Heard:
    """A recognised draft, kept until its final comes (the same audio is not recognised twice)."""

    text: str
    language: str
    timing: dict[str, float]


class CaptionSink:
    def __init__(self, room: str, language: str, inference: Inference, emit: Emit,
                 settings: CaptionSettings | None = None, speakers: dict[str, str] | None = None,
                 run: int = 0) -> None:
        self.room = room
        self.run = run  # which start of the captions this sink is (signaling's count)
        self.language = language
        self.speakers = dict(speakers or {})  # participant → language, where it is not the meeting's
        self.inference = inference
        self.emit = emit
        self.settings = settings or CaptionSettings()
        self.counters = Counters()
        self.streams: dict[UpTrack, SpeakerStream] = {}
        self.queue = AsrQueue(self.settings.max_backlog, self.settings.cut.max_utterance, self.settings.max_wait)
        metrics.SINKS.add(self)
        self.state = "available"
        self.detail = ""
        self.available = True
        self.interim = True
        self.interim_detail = ""
        self._interim_changed = -1e9  # monotonic
        self._rest = self.settings.interim_rest  # seconds interim captions stay off before they are tried again
        self._busy: deque[tuple[float, float, bool]] = deque()  # (start, end, interim) of ASR calls, monotonic
        self._heard: dict[tuple[str, float, int], Heard] = {}  # drafts at a pause, by Utterance.key
        self._sound: dict[str, tuple[float, float]] = {}  # Utterance.id → (sound start, sound end)
        self._finalised: dict[str, float] = {}  # participant → end of their last final caption
        self._ready = asyncio.Event()
        self._probe: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._transcribe(), name=f"captions-asr-{room}"),
                       loop.create_task(self._report(), name=f"captions-status-{room}")]

    def language_of(self, participant: str) -> str:
        return self.speakers.get(participant, self.language)

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
        metrics.SINKS.discard(self)
        for up in list(self.streams):
            self.track_removed(up)
        for utterance in self.queue.clear():  # what was still waiting: marked, not lost silently
            self._gap_for(utterance, "captions stopped before it was transcribed")
        tasks = [*self._tasks, *([self._probe] if self._probe else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"language": self.language, "run": self.run, **asdict(self.counters),
                "dropped_seconds": round(self.queue.counters.dropped_seconds, 1)}

    # ------------------------------------------------------------------ utterances → captions
    def submit(self, utterance: Utterance, sound_start: float = 0.0, sound_end: float = 0.0) -> None:
        if not self.available:
            return
        utterance.queued_at = time.monotonic()
        self._sound[utterance.id] = (sound_start, sound_end)
        self.counters.utterances += 1
        self.counters.speech_seconds += utterance.seconds
        for dropped in self.queue.put_final(utterance):
            self._gap_for(dropped, "speech recognition fell too far behind")
        metrics.MERGED.inc(self.queue.counters.merged - self.counters.merged)
        self.counters.merged = self.queue.counters.merged
        self._ready.set()

    def draft(self, draft: Draft, sound_start: float = 0.0) -> None:
        if not self.available:
            return
        self._sound.setdefault(draft.utterance.id, (sound_start, 0.0))
        while len(self._sound) > 64:  # ids of drafts whose utterance was merged into another
            del self._sound[next(iter(self._sound))]
        self.queue.put_draft(draft)
        self._ready.set()

    def gap(self, participant: str, start: float, end: float, reason: str) -> None:
        """Speech that will never be transcribed: a gap caption marks it in the transcript."""
        self.counters.gaps += 1
        log.info("captions in %s: %.1f s of %s's speech skipped: %s", self.room, end - start, participant, reason)
        self.emit(None, {"type": "caption", "id": f"{participant}-{round(start * 1000)}", "participant_id": participant,
                         "text": GAP, "start": round(start, 3), "end": round(end, 3), "final": True,
                         "language": self.language_of(participant), "merged": 0, "gap": True,
                         "dropped_seconds": round(end - start, 2), "reason": reason})
        self._set_state("degraded", f"captions fall behind the speech: some speech was skipped ({reason})")

    def _gap_for(self, utterance: Utterance, reason: str) -> None:
        dropped = self._utterance_span(utterance)
        tracing.failed(dropped, f"not transcribed: {reason}")
        dropped.end()
        self._sound.pop(utterance.id, None)
        self.counters.dropped = self.queue.counters.dropped
        self.gap(utterance.participant, utterance.start, utterance.end, reason)

    async def _transcribe(self) -> None:
        await self._warm_up()
        while True:
            for utterance in self.queue.stale(time.monotonic()):
                self._gap_for(utterance, "it waited too long for speech recognition")
            item = self.queue.take()
            if item is None:
                self._ready.clear()
                if self.state == "degraded":
                    self._set_state("available")
                await self._ready.wait()
                continue
            if self.queue.finals:
                behind = time.monotonic() - self.queue.finals[0].queued_at
                if behind > 2.0:
                    self._set_state("degraded", f"captions are {behind:.0f} s behind the speech")
            try:
                if isinstance(item, Draft):
                    await self._recognise_draft(item)
                else:
                    await self._recognise_final(item)
            except InferenceUnavailable as exc:
                self.unavailable(str(exc))
            except InferenceError as exc:
                who = item.utterance.participant if isinstance(item, Draft) else item.participant
                log.warning("captions: an utterance of %s was refused: %s", who, exc)
            except Exception:  # a bug must not silence the meeting's captions for good
                log.exception("captions in %s: transcribing failed", self.room)

    async def _warm_up(self) -> None:
        """The model loaded and its first call made before anyone waits for a caption."""
        try:
            await self.inference.transcribe(np.zeros(SAMPLE_RATE // 2, np.float32), self.language, interim=True)
        except InferenceUnavailable as exc:
            self.unavailable(str(exc))
        except InferenceError:
            pass

    async def _recognise(self, utterance: Utterance, interim: bool) -> Heard:
        started, wall = time.monotonic(), time.time()
        try:
            result = await self.inference.transcribe(utterance.audio, self.language_of(utterance.participant),
                                                     interim=interim)
        finally:
            self._account(started, time.monotonic(), interim)
        return Heard(result.text.strip(), result.language, {"asr_start": wall, "asr_end": time.time()})

    async def _recognise_draft(self, draft: Draft) -> None:
        utterance = draft.utterance
        if draft.kind == "interim" and not self.interim:
            return
        heard = await self._recognise(utterance, interim=draft.kind == "interim")
        heard.timing["queued"] = utterance.cut_at
        if draft.kind == "pause":
            self._heard = {k: v for k, v in self._heard.items() if k[0] != utterance.participant}
            self._heard[utterance.key] = heard
        if heard.text and utterance.start >= self._finalised.get(utterance.participant, 0.0):
            self.counters.interim_captions += 1
            sound_start = self._sound.get(utterance.id, (0.0, 0.0))[0]
            self._caption(utterance, heard, final=False,
                          timing={**heard.timing, "sound_start": sound_start,
                                  "audio_end": utterance.start + utterance.seconds})

    def _utterance_span(self, utterance: Utterance) -> tracing.Span:
        """The trace of one final utterance: from its first sample, with the VAD's part (until it
        cut the utterance) recorded; the caller adds the ASR's and ends it."""
        span = tracing.root("captions.utterance", start=utterance.start, room=self.room,
                            participant_id=utterance.participant, speech_seconds=round(utterance.seconds, 2),
                            merged=utterance.merged)
        tracing.record("captions.vad", utterance.start, max(utterance.start, utterance.cut_at), parent=span)
        return span

    async def _recognise_final(self, utterance: Utterance) -> None:
        span = self._utterance_span(utterance)
        try:
            await self._caption_final(utterance, span)
        except asyncio.CancelledError:
            tracing.failed(span, "captions stopped before it was transcribed")
            raise
        except BaseException as exc:
            tracing.failed(span, f"speech recognition failed: {type(exc).__name__}")
            raise
        finally:
            span.end()

    async def _caption_final(self, utterance: Utterance, span: tracing.Span) -> None:
        heard = self._heard.pop(utterance.key, None)
        reused = heard is not None  # recognised at the pause, while the VAD waited for the end
        if heard is None:
            heard = await self._recognise(utterance, interim=False)
            heard.timing["queued"] = utterance.cut_at
        tracing.record("captions.asr", heard.timing["asr_start"], heard.timing["asr_end"], parent=span,
                       language=heard.language, reused_draft=reused)
        sound_start, sound_end = self._sound.pop(utterance.id, (0.0, 0.0))
        self._finalised[utterance.participant] = utterance.end
        if heard.text:
            self.counters.captions += 1
        # An empty final still goes out: it takes the speaker's interim text off the screens.
        self._caption(utterance, heard, final=True,
                      timing={**heard.timing, "cut": utterance.cut_at, "end": utterance.end,
                              "sound_start": sound_start, "sound_end": sound_end})

    def _caption(self, utterance: Utterance, heard: Heard, final: bool, timing: dict[str, float]) -> None:
        self.emit(None, {"type": "caption", "id": utterance.id, "participant_id": utterance.participant, "text": heard.text,
                         "start": round(utterance.start, 3), "end": round(utterance.end, 3), "final": final,
                         "language": heard.language, "merged": utterance.merged,
                         "timing": {stage: round(at, 3) for stage, at in {**timing, "emitted": time.time()}.items()}})

    # ------------------------------------------------------------------ interim captions and the CPU
    def _account(self, start: float, end: float, interim: bool) -> None:
        """Interim captions go off when ASR is busy most of the time; after a rest they are tried
        again if the final captions alone leave room, and a try that fails at once doubles the
        rest (up to 8 times), so that a busy machine is not asked again and again."""
        settings = self.settings
        self._busy.append((start, end, interim))
        horizon = end - settings.load_window
        while self._busy and self._busy[0][1] < horizon:
            self._busy.popleft()
        busy = {kind: sum(e - max(s, horizon) for s, e, i in self._busy if i == kind) / settings.load_window
                for kind in (False, True)}
        if self.interim:
            if busy[False] + busy[True] > settings.interim_off_load:
                failed_try = end - self._interim_changed < 2 * settings.load_window
                self._rest = min(8 * settings.interim_rest, 2 * self._rest) if failed_try else settings.interim_rest
                self._set_interim(False, "the server is too busy for interim captions; final captions go on")
        elif end - self._interim_changed > self._rest and busy[False] < settings.interim_on_load:
            self._set_interim(True)

    def _set_interim(self, on: bool, detail: str = "") -> None:
        self.interim, self.interim_detail, self._interim_changed = on, detail, time.monotonic()
        if not on:
            self.queue.drafts = {p: d for p, d in self.queue.drafts.items() if d.kind != "interim"}
        log.info("captions in %s: interim captions %s %s", self.room, "on" if on else "off", detail)
        self.emit(None, self.status())

    # ------------------------------------------------------------------ state
    def status(self) -> dict[str, Any]:
        return {"type": "captions_status", "state": self.state, "detail": self.detail,
                "language": self.language, "interim": self.interim, "interim_detail": self.interim_detail,
                **asdict(self.counters), "speech_seconds": round(self.counters.speech_seconds, 1),
                "dropped_seconds": round(self.queue.counters.dropped_seconds, 1),
                "queues": {"asr": len(self.queue), "asr_seconds": round(self.queue.waiting_seconds, 1),
                           "asr_seconds_limit": self.queue.max_seconds,
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
        """Inference is gone: stop decoding, mark what waits as gaps, and probe until it is back."""
        if not self.available:
            return
        log.warning("captions in %s are unavailable: %s", self.room, detail)
        self.available = False
        for utterance in self.queue.clear():
            self._gap_for(utterance, "speech recognition was unavailable")
        self._heard.clear()
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


def sink_options(options: dict[str, Any]) -> tuple[str, dict[str, str], int]:
    """The meeting's language, the speakers' own and the run, from ``sink_start`` options."""
    language = options.get("language", "en")
    if not is_tag(language):
        raise SfuError("bad_message", "'language' must be a caption language (\"en\", \"zh-CN\", \"zh-TW\", ...) "
                                      "or \"\" to detect it")
    speakers = options.get("speakers", {})
    if not isinstance(speakers, dict) or not all(isinstance(p, str) and is_tag(t) for p, t in speakers.items()):
        raise SfuError("bad_message", "'speakers' must map participants to caption languages")
    run = options.get("run", 0)
    if not isinstance(run, int):
        raise SfuError("bad_message", "'run' must be an integer")
    return canonical(language) if language else "", {p: canonical(t) if t else "" for p, t in speakers.items()}, run


def caption_sink_factory(inference: Inference, settings: CaptionSettings | None = None
                         ) -> Callable[[str, dict[str, Any], Emit], CaptionSink]:
    """The SFU's ``captions`` sink; its options: ``{"language": "en", "speakers": {participant:
    "zh-CN"}, "run": 1}`` (caption language tags, see inference/languages.py, "" detects the
    language of each utterance; ``run`` comes back in the result)."""

    def make(room: str, options: dict[str, Any], emit: Emit) -> CaptionSink:
        language, speakers, run = sink_options(options)
        return CaptionSink(room, language, inference, emit, settings, speakers, run)

    return make
