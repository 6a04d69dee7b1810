"""Cutting a speaker's audio into utterances with the VAD, and the bounded queue of utterances
waiting for speech recognition (which merges or drops rather than grow when ASR falls behind)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ..inference.base import SAMPLE_RATE, VAD_CHUNK

CHUNK_SECONDS = VAD_CHUNK / SAMPLE_RATE


@dataclass(frozen=True)
class CutSettings:
    start_threshold: float = 0.5  # a chunk this likely to be speech starts an utterance
    end_threshold: float = 0.35  # chunks below this count as silence
    min_silence: float = 0.3  # seconds of silence that end an utterance
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

    @property
    def seconds(self) -> float:
        return self.audio.size / SAMPLE_RATE


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
class QueueCounters:
    merged: int = 0
    dropped: int = 0


class UtteranceQueue:
    """Utterances waiting for ASR, at most ``limit`` of them. When full, a new utterance joins
    the newest waiting one of the same speaker if the two fit in ``max_seconds`` (one ASR call
    instead of two), else the oldest waiting utterance is dropped. Either way the counters say so."""

    def __init__(self, limit: int, max_seconds: float) -> None:
        self.limit = limit
        self.max_seconds = max_seconds
        self._items: deque[Utterance] = deque()
        self.counters = QueueCounters()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, utterance: Utterance) -> str:
        """Queue it; returns "queued", "merged" or "dropped" (an older one made room)."""
        if len(self._items) < self.limit:
            self._items.append(utterance)
            return "queued"
        for waiting in reversed(self._items):
            if waiting.participant == utterance.participant:
                if waiting.seconds + utterance.seconds <= self.max_seconds:
                    gap = np.zeros(int(0.2 * SAMPLE_RATE), np.float32)
                    waiting.audio = np.concatenate([waiting.audio, gap, utterance.audio])
                    waiting.end = utterance.end
                    waiting.merged += utterance.merged
                    self.counters.merged += 1
                    return "merged"
                break
        self._items.popleft()
        self._items.append(utterance)
        self.counters.dropped += 1
        return "dropped"

    def get(self) -> Utterance | None:
        return self._items.popleft() if self._items else None

    def clear(self) -> int:
        count = len(self._items)
        self._items.clear()
        return count
