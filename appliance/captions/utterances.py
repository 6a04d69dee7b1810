"""Cutting a speaker's audio into utterances with the VAD, and what waits for speech recognition
in a meeting: final utterances first, then drafts of speech still going on (at a pause, the
final-to-be; while someone talks, interim text). When ASR falls behind, captions come later
(merging a speaker's consecutive utterances saves calls); an utterance is dropped only past
the bounds, and the caller marks the gap."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..inference.base import SAMPLE_RATE, VAD_CHUNK

CHUNK_SECONDS = VAD_CHUNK / SAMPLE_RATE


@dataclass(frozen=True)
class CutSettings:
    start_threshold: float = 0.5  # a chunk this likely to be speech starts an utterance
    end_threshold: float = 0.35  # chunks below this count as silence
    min_silence: float = 0.4  # seconds of silence that end an utterance
    min_speech: float = 0.25  # shorter utterances are dropped (coughs, clicks)
    max_utterance: float = 15.0  # longer speech is cut here (and goes on in a new utterance)
    pad: float = 0.1  # seconds kept before the start and after the end of speech


@dataclass
class Utterance:
    participant: str
    audio: np.ndarray
    start: float  # wall-clock seconds (epoch) of the first sample
    end: float  # of the end of speech
    merged: int = 1  # how many utterances this one stands for
    queued_at: float = 0.0  # monotonic
    cut_at: float = 0.0  # wall clock: when the cutter ended it (or took this draft of it)

    @property
    def seconds(self) -> float:
        return self.audio.size / SAMPLE_RATE

    @property
    def id(self) -> str:
        """Names the utterance across its interim drafts and its final text."""
        return f"{self.participant}-{round(self.start * 1000)}"

    @property
    def key(self) -> tuple[str, float, int]:
        """Equal for a draft and a final of the very same audio."""
        return self.participant, self.start, self.audio.size


class UtteranceCutter:
    """Feeds on 512-sample chunks with their speech probability; returns finished utterances.
    Times are given per chunk (the wall-clock time of the chunk's first sample)."""

    def __init__(self, participant: str, settings: CutSettings) -> None:
        self.participant = participant
        self.settings = settings
        self._pad = max(1, round(settings.pad / CHUNK_SECONDS))
        self._silence_chunks = max(1, round(settings.min_silence / CHUNK_SECONDS))
        self._max_chunks = round(settings.max_utterance / CHUNK_SECONDS)
        self._min_chunks = round(settings.min_speech / CHUNK_SECONDS)
        self._before: deque[tuple[np.ndarray, float]] = deque(maxlen=self._pad)
        self._chunks: list[np.ndarray] = []
        self._start = 0.0
        self._last_speech = 0  # index in _chunks after the last speech chunk
        self._last_speech_end = 0.0
        self.speaking = False

    @property
    def buffered_seconds(self) -> float:
        return len(self._chunks) * CHUNK_SECONDS

    @property
    def silence_seconds(self) -> float:
        """How long the speaker has been silent within the utterance going on."""
        return (len(self._chunks) - self._last_speech) * CHUNK_SECONDS if self.speaking else 0.0

    def feed(self, audio: np.ndarray, probs: np.ndarray, times: list[float]) -> list[Utterance]:
        done = []
        s = self.settings
        for i, prob in enumerate(probs):
            chunk, at = audio[i * VAD_CHUNK:(i + 1) * VAD_CHUNK], times[i]
            if not self.speaking:
                if prob >= s.start_threshold:
                    self.speaking = True
                    self._chunks = [c for c, _ in self._before] + [chunk]
                    self._start = self._before[0][1] if self._before else at
                    self._before.clear()
                    self._last_speech, self._last_speech_end = len(self._chunks), at + CHUNK_SECONDS
                else:
                    self._before.append((chunk, at))
                continue
            self._chunks.append(chunk)
            if prob >= s.end_threshold:
                self._last_speech, self._last_speech_end = len(self._chunks), at + CHUNK_SECONDS
            if len(self._chunks) - self._last_speech >= self._silence_chunks:
                done += self._finish(keep_speaking=False)
            elif len(self._chunks) >= self._max_chunks:
                done += self._finish(keep_speaking=True, next_start=at + CHUNK_SECONDS)
        return done

    def draft(self, at_pause: bool) -> Utterance | None:
        """The utterance going on, as it is now, without ending it. ``at_pause``: cut as the
        final would be if the silence now begun lasts (the same audio, so the same ``key``);
        otherwise everything heard so far (for interim text)."""
        if not self.speaking:
            return None
        cut = min(len(self._chunks), self._last_speech + self._pad) if at_pause else len(self._chunks)
        if cut < self._min_chunks + self._pad:
            return None
        return Utterance(self.participant, np.concatenate(self._chunks[:cut]), self._start, self._last_speech_end)

    def flush(self) -> list[Utterance]:
        """The stream stopped (silence, mute, a gap): end what is being said."""
        self._before.clear()
        return self._finish(keep_speaking=False) if self.speaking else []

    def _finish(self, keep_speaking: bool, next_start: float = 0.0) -> list[Utterance]:
        cut = len(self._chunks) if keep_speaking else min(len(self._chunks), self._last_speech + self._pad)
        chunks, start, end = self._chunks[:cut], self._start, self._last_speech_end
        self._chunks, self.speaking = [], keep_speaking
        self._start, self._last_speech = next_start, 0
        if len(chunks) < self._min_chunks + self._pad or not chunks:
            return []
        return [Utterance(self.participant, np.concatenate(chunks), start, end)]


@dataclass
class Draft:
    """A request for text of speech still going on: ``pause`` (the speaker paused: the final
    text if the pause lasts) or ``interim``."""

    utterance: Utterance
    kind: str


@dataclass
class QueueCounters:
    merged: int = 0
    dropped: int = 0
    dropped_seconds: float = 0.0


@dataclass
class AsrQueue:
    """What waits for ASR in one meeting. ``take`` gives final utterances first, oldest first,
    then drafts at a pause, then interim drafts; a speaker has one draft at most (a newer one
    replaces it, and a final of that speaker supersedes it).

    Finals never wait silently forever: a final joins the one before it when both are the same
    speaker's and fit in ``max_utterance`` seconds (one call instead of two, nothing lost); past
    ``max_seconds`` of audio waiting, the oldest is dropped, and so is one that waited over
    ``max_wait`` seconds (``stale``). Dropped utterances are returned for the gap to be marked."""

    max_seconds: float = 60.0
    max_utterance: float = 15.0
    max_wait: float = 30.0
    finals: deque[Utterance] = field(default_factory=deque)
    drafts: dict[str, Draft] = field(default_factory=dict)
    counters: QueueCounters = field(default_factory=QueueCounters)

    def __len__(self) -> int:
        return len(self.finals)

    @property
    def waiting_seconds(self) -> float:
        return sum(u.seconds for u in self.finals)

    def put_final(self, utterance: Utterance) -> list[Utterance]:
        """Queue a final utterance; returns those dropped to keep within ``max_seconds``."""
        self.drafts.pop(utterance.participant, None)
        last = self.finals[-1] if self.finals else None
        if last is not None and last.participant == utterance.participant \
                and last.seconds + 0.2 + utterance.seconds <= self.max_utterance:
            gap = np.zeros(int(0.2 * SAMPLE_RATE), np.float32)
            last.audio = np.concatenate([last.audio, gap, utterance.audio])
            last.end, last.merged, last.cut_at = utterance.end, last.merged + utterance.merged, utterance.cut_at
            self.counters.merged += 1
        else:
            self.finals.append(utterance)
        dropped = []
        while self.waiting_seconds > self.max_seconds and len(self.finals) > 1:
            dropped.append(self._drop(self.finals.popleft()))
        return dropped

    def put_draft(self, draft: Draft) -> None:
        self.drafts[draft.utterance.participant] = draft

    def take(self) -> Utterance | Draft | None:
        if self.finals:
            return self.finals.popleft()
        for kind in ("pause", "interim"):
            waiting = [d for d in self.drafts.values() if d.kind == kind]
            if waiting:
                draft = min(waiting, key=lambda d: d.utterance.cut_at)
                del self.drafts[draft.utterance.participant]
                return draft
        return None

    def stale(self, now: float) -> list[Utterance]:
        """Finals that waited over ``max_wait`` (monotonic ``now``): dropped."""
        dropped = []
        while self.finals and now - self.finals[0].queued_at > self.max_wait:
            dropped.append(self._drop(self.finals.popleft()))
        return dropped

    def clear(self) -> list[Utterance]:
        self.drafts.clear()
        dropped = [self._drop(u) for u in self.finals]
        self.finals.clear()
        return dropped

    def _drop(self, utterance: Utterance) -> Utterance:
        self.counters.dropped += utterance.merged
        self.counters.dropped_seconds += utterance.seconds
        return utterance
