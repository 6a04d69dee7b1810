"""The VAD cutter and the bounded ASR queue, on made-up probabilities (no model)."""

from __future__ import annotations

import numpy as np

from appliance.captions.transcripts import to_srt, to_text, to_vtt
from appliance.captions.utterances import CHUNK_SECONDS, CutSettings, Utterance, UtteranceCutter, UtteranceQueue
from appliance.inference.base import SAMPLE_RATE, VAD_CHUNK


def feed(cutter: UtteranceCutter, probs: list[float], first: float = 100.0) -> list[Utterance]:
    audio = np.arange(len(probs) * VAD_CHUNK, dtype=np.float32)
    return cutter.feed(audio, np.array(probs, np.float32), [first + i * CHUNK_SECONDS for i in range(len(probs))])


def test_silence_ends_an_utterance_with_padding_around_the_speech() -> None:
    cutter = UtteranceCutter("p", CutSettings(min_silence=0.3, pad=0.1, min_speech=0.25))
    speech = [0.0] * 10 + [0.9] * 30 + [0.1] * 5
    assert feed(cutter, speech) == [] and cutter.speaking
    [utterance] = feed(cutter, [0.1] * 10)
    assert not cutter.speaking and utterance.participant == "p"
    pad = round(0.1 / CHUNK_SECONDS)
    assert utterance.audio.size == (pad + 30 + pad) * VAD_CHUNK
    assert utterance.start == 100.0 + (10 - pad) * CHUNK_SECONDS
    assert abs(utterance.end - (100.0 + 40 * CHUNK_SECONDS)) < 1e-9


def test_long_speech_is_cut_and_short_noise_dropped() -> None:
    cutter = UtteranceCutter("p", CutSettings(max_utterance=2.0, min_speech=0.25))
    cuts = feed(cutter, [0.9] * 200)  # 6.4 s of speech without a pause
    assert [round(u.seconds, 1) for u in cuts] == [2.0, 2.0, 2.0] and cutter.speaking
    assert [round(u.seconds, 1) for u in cutter.flush()] == [0.4]
    assert feed(UtteranceCutter("p", CutSettings()), [0.9] * 3 + [0.0] * 20) == []  # 96 ms: a click


def utterance(who: str, seconds: float, start: float = 0.0) -> Utterance:
    return Utterance(who, np.zeros(int(seconds * SAMPLE_RATE), np.float32), start, start + seconds)


def test_a_full_queue_merges_or_drops_never_grows() -> None:
    queue = UtteranceQueue(limit=2, max_seconds=10)
    assert [queue.put(utterance(w, 3)) for w in ("ann", "bob")] == ["queued", "queued"]
    assert queue.put(utterance("bob", 4, start=5)) == "merged"  # into bob's waiting one
    assert len(queue) == 2 and queue.counters.merged == 1
    assert queue.put(utterance("bob", 4, start=9)) == "dropped"  # too long to merge: ann's goes
    assert len(queue) == 2 and queue.counters.dropped == 1
    first = queue.get()
    assert first.participant == "bob" and first.merged == 2 and first.end == 9 and round(first.seconds, 1) == 7.2
    assert queue.get().start == 9 and queue.get() is None


def test_transcript_exports() -> None:
    segments = [{"participant": "p1", "name": "Ada", "text": "Hello  there.", "start": 1010.5, "end": 1012.25},
                {"participant": "p2", "name": "Bob", "text": "Hi --> you", "start": 4610.0, "end": 4611.0}]
    assert to_vtt(1000.0, segments) == ("WEBVTT\n\n00:00:10.500 --> 00:00:12.250\nAda: Hello there.\n\n"
                                        "01:00:10.000 --> 01:00:11.000\nBob: Hi -> you\n")
    assert to_srt(1000.0, segments).startswith("1\n00:00:10,500 --> 00:00:12,250\nAda: Hello there.\n\n2\n")
    assert to_text(1000.0, segments) == "[00:00:10] Ada: Hello there.\n[01:00:10] Bob: Hi --> you\n"
