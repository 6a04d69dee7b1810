"""The captions sink's scheduling against a made-up recogniser whose speed the test sets: finals
before drafts, a draft at a pause reused as the final, gaps marked when ASR falls too far behind
(nothing lost silently), interim captions turning themselves off on a busy CPU and back on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from appliance.captions.sink import GAP, CaptionSettings, CaptionSink
from appliance.captions.utterances import Draft, Utterance
from appliance.inference import Health, Inference, Transcript
from appliance.inference.base import SAMPLE_RATE


class SlowRecogniser(Inference):
    """Says how long each utterance was; takes ``seconds`` per call (``interim_seconds`` for drafts)."""

    def __init__(self, seconds: float, interim_seconds: float | None = None) -> None:
        self.url = "fake://"
        self.seconds, self.interim_seconds = seconds, seconds if interim_seconds is None else interim_seconds
        self.calls: list[tuple[float, bool]] = []

    async def vad(self, audio: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("not used")

    async def recognise(self, audio: np.ndarray, language: str, interim: bool) -> Transcript:
        self.calls.append((audio.size / SAMPLE_RATE, interim))
        await asyncio.sleep(self.interim_seconds if interim else self.seconds)
        return Transcript(f"{audio.size / SAMPLE_RATE:.1f} seconds", language or "en")

    async def health(self) -> Health:
        return Health(True, "fake")

    async def close(self) -> None:
        pass


def said(who: str, start: float, seconds: float) -> Utterance:
    return Utterance(who, np.full(int(seconds * SAMPLE_RATE), 0.1, np.float32), start, start + seconds,
                     cut_at=time.time())


def sink_with(recogniser: SlowRecogniser, **settings: Any) -> tuple[CaptionSink, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    sink = CaptionSink("room", "en", recogniser, lambda _, e: events.append(e), CaptionSettings(**settings))
    return sink, events


async def test_a_draft_at_a_pause_becomes_the_final_without_a_second_recognition() -> None:
    recogniser = SlowRecogniser(0.05)
    sink, events = sink_with(recogniser)
    await asyncio.sleep(0.1)  # warmed up
    recogniser.calls.clear()
    utterance = said("ann", 1000.0, 2.0)
    sink.draft(Draft(utterance, "pause"))
    await asyncio.sleep(0.2)
    sink.submit(Utterance("ann", utterance.audio.copy(), 1000.0, 1002.0, cut_at=time.time()))
    await asyncio.sleep(0.2)
    await sink.stop()
    captions = [e for e in events if e["type"] == "caption"]
    assert [(c["final"], c["text"]) for c in captions] == [(False, "2.0 seconds"), (True, "2.0 seconds")]
    assert captions[0]["id"] == captions[1]["id"] == "ann-1000000"
    assert recogniser.calls == [(2.0, False)]  # once, with the final's window
    timing = captions[1]["timing"]
    assert timing["asr_start"] <= timing["asr_end"] <= timing["cut"] <= timing["emitted"]


async def test_behind_the_speech_captions_come_later_then_gaps_mark_what_is_skipped() -> None:
    recogniser = SlowRecogniser(0.25)  # one utterance of 2 s every 0.05 s: ASR cannot keep up
    sink, events = sink_with(recogniser, max_backlog=8.0, max_wait=30.0)
    starts = [1000.0 + 3 * i for i in range(12)]
    for i, start in enumerate(starts):
        sink.submit(said("ann" if i % 3 else "bob", start, 2.0))
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)
    result = await sink.stop()
    finals = [e for e in events if e["type"] == "caption" and e["final"]]
    gaps = [c for c in finals if c.get("gap")]
    assert gaps and all(g["text"] == GAP and g["dropped_seconds"] > 0 for g in gaps)
    assert result["gaps"] == len(gaps) and result["dropped"] >= len(gaps)
    for start in starts:  # every utterance is in a caption or in a gap: none lost silently
        assert any(c["start"] <= start < c["end"] for c in finals), start
    statuses = [e for e in events if e["type"] == "captions_status"]
    assert any(s["state"] == "degraded" and "skipped" in s["detail"] for s in statuses)
    assert max(s["queues"]["asr_seconds"] for s in statuses) <= 8.0 + 2.0


async def test_interim_captions_turn_themselves_off_when_asr_is_busy_and_come_back() -> None:
    recogniser = SlowRecogniser(0.05, interim_seconds=0.3)
    sink, events = sink_with(recogniser, load_window=2.0, interim_rest=1.0)
    await asyncio.sleep(0.1)
    for i in range(12):  # a draft every 0.2 s, each taking 0.3 s of ASR: busy all the time
        sink.draft(Draft(said("ann", 1000.0, 0.5 + 0.2 * i), "interim"))
        await asyncio.sleep(0.2)
    assert not sink.interim
    off = next(e for e in events if e["type"] == "captions_status" and e["interim"] is False)
    assert "busy" in off["interim_detail"]
    sink.submit(said("ann", 1000.0, 3.0))  # finals go on
    await asyncio.sleep(0.5)
    assert [e["final"] for e in events if e["type"] == "caption"][-1] is True
    recogniser.interim_seconds = 0.02  # the machine has room again
    for i in range(15):
        sink.submit(said("bob", 2000.0 + i, 0.5))
        await asyncio.sleep(0.1)
    assert sink.interim
    await sink.stop()


async def test_interim_text_that_arrives_after_its_final_is_not_shown() -> None:
    recogniser = SlowRecogniser(0.05, interim_seconds=0.3)
    sink, events = sink_with(recogniser)
    await asyncio.sleep(0.1)
    sink.draft(Draft(said("ann", 1000.0, 1.0), "interim"))
    await asyncio.sleep(0.05)  # the interim is being recognised ...
    sink.submit(said("ann", 1000.0, 1.5))  # ... when the utterance ends
    await asyncio.sleep(0.6)
    await sink.stop()
    assert [(e["final"], e["text"]) for e in events if e["type"] == "caption"] == [(True, "1.5 seconds")]
