"""Captions traced: each final caption is one trace, ``captions.utterance`` with its VAD and ASR
spans, sent by the SFU worker that hosts the room.

What is real: the appliance (``confmeet serve``, one SFU worker), its local:// inference (Silero
VAD and Whisper base from their packages, in the worker), espeak-ng speech played by an aiortc
participant, the OpenTelemetry SDK and OTLP/HTTP exporter, and an OTLP receiver decoding the real
protobuf (tests/otlp_receiver.py). Nothing is mocked, except in the last test, where a
recogniser whose speed the test sets (test_sink.py's) makes ASR fall behind on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiortc.contrib.media import MediaPlayer

from appliance import tracing
from appliance.captions.sink import CaptionSettings, CaptionSink
from appliance.settings import Settings
from appliance_server import Appliance, start_appliance
from cli.client.participant import Participant
from conftest import stop
from otlp_receiver import ERROR, OtlpReceiver

from .conftest import SCRIPT
from .test_sink import SlowRecogniser, said

USERS = {"ada": ("ada@example.com", "ada password 1"), "grace": ("grace@example.com", "grace password 1")}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def appliance(model_repository: Path, receiver: OtlpReceiver,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        app = start_appliance(tmp_path_factory.mktemp("captions-tracing"), media_loopback="true", sfu_workers="1",
                              inference="local://", model_repository=str(model_repository),
                              trace_endpoint=receiver.url)
    for i, (email, password) in enumerate(USERS.values()):
        app.add_user(email, password, admin=i == 0)
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


async def seated(app: Appliance, who: str, meeting: dict) -> Participant:
    client = Participant(app.url, app.login(*USERS[who])["access_token"])
    await client.connect()
    assert (await client.join(meeting["code"], who.title()))["type"] == "joined"
    return client


async def test_each_final_caption_is_a_trace_of_vad_then_asr(appliance: Appliance, receiver: OtlpReceiver,
                                                             script_wav: Path) -> None:
    token = appliance.login(*USERS["ada"])["access_token"]
    meeting = httpx.post(f"{appliance.url}/api/v1/meetings", json={"title": "captions traced"},
                         headers={"Authorization": f"Bearer {token}"}).json()
    ada = await seated(appliance, "ada", meeting)
    grace = await seated(appliance, "grace", meeting)
    try:
        assert (await ada.request({"type": "show_captions", "enabled": True}))["type"] == "captions_state"
        assert (await ada.request({"type": "set_captions", "enabled": True, "language": "en"}))["type"] == "ok"
        grace.publish(MediaPlayer(str(script_wav)).audio)
        assert (await grace.offer())["type"] == "answer"

        def finals() -> list[dict]:
            return [c for c in ada.events_of("caption") if c["final"] and not c.get("gap")]

        await ada.wait_until(lambda: len([c for c in finals() if c["text"]]) >= len(SCRIPT), timeout=90)
    finally:
        await grace.leave()
        await ada.leave()
    speaker = grace.joined["participant"]["id"]

    def utterances() -> list:
        return [s for s in receiver.named("captions.utterance") if s.attributes.get("confmeet.participant_id") == speaker]

    receiver.wait_for(lambda: len(utterances()) >= len(finals()))
    traced = utterances()
    assert len(traced) == len(finals())  # one trace per final caption, none for interim text
    assert len({s.trace_id for s in traced}) == len(traced)
    for root in traced:
        assert root.service == "confmeet-sfu" and root.parent_id == "" and root.status != ERROR
        assert root.attributes["confmeet.room"] == meeting["id"] and root.attributes["confmeet.speech_seconds"] > 0
        steps = {s.name: s for s in receiver.children(root)}
        assert set(steps) == {"captions.vad", "captions.asr"}, steps
        vad, asr = steps["captions.vad"], steps["captions.asr"]
        assert vad.start == pytest.approx(root.start, abs=1e-6) and vad.end <= root.end
        assert asr.start <= asr.end <= root.end and asr.attributes["confmeet.language"] == "en"
    # The trace of a caption starts where its speech does.
    assert sorted(root.start for root in traced) == pytest.approx(sorted(c["start"] for c in finals()), abs=0.002)


async def test_speech_left_out_is_a_failed_trace(receiver: OtlpReceiver) -> None:
    """An utterance dropped because ASR fell behind (a gap caption) is traced too, as failed."""
    tracing.configure(Settings(trace_endpoint=receiver.url), "confmeet-sfu")
    try:
        events: list[dict] = []
        sink = CaptionSink("gap-room", "en", SlowRecogniser(0.25), lambda _, e: events.append(e),
                           CaptionSettings(max_backlog=8.0))
        for i in range(12):
            sink.submit(said("ann" if i % 3 else "bob", 1000.0 + 3 * i, 2.0))
            await asyncio.sleep(0.05)
        while len(sink.queue):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the last recognition (0.25 s) done: the stop interrupts none
        await sink.stop()
    finally:
        tracing.shutdown()  # sends what is queued
    gaps = [e for e in events if e["type"] == "caption" and e.get("gap")]
    traced = [s for s in receiver.named("captions.utterance") if s.attributes["confmeet.room"] == "gap-room"]
    failed = [s for s in traced if s.status == ERROR]
    assert gaps and len(failed) == len(gaps)
    assert sorted(s.start for s in failed) == pytest.approx(sorted(g["start"] for g in gaps), abs=0.002)
    for root in traced:
        assert {s.name for s in receiver.children(root)} == (
            {"captions.vad"} if root.status == ERROR else {"captions.vad", "captions.asr"})
