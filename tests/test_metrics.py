"""The metrics that explain a meeting (docs/operations.md lists them): how the SFU's plain
counters become Prometheus histograms and sums over its worker processes, the inference requests
counted where they run, and a real meeting on the real appliance moving its series — read with
prometheus_client's parser and linted by Debian's ``promtool check metrics``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiortc import RTCSessionDescription
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance import process_metrics
from appliance.inference import InferenceUnavailable
from appliance.inference.local import LocalInference
from appliance.inference.models import import_models
from appliance.sfu import IceSettings, RoomHost
from appliance.sfu.stats import WAIT_BUCKETS, Durations, SfuStats
from appliance.sfu.workers import SfuWorkers
from appliance_server import Appliance, serving
from captions.test_sink import SlowRecogniser, said, sink_with
from cli.client.participant import Participant
from sfu.participants import LOOPBACK, ColourTrack, Meeting, ToneTrack
from sfu.participants import Participant as SfuParticipant

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PROMTOOL = "/usr/bin/promtool"
USERS = {"ada": ("ada@example.com", "ada password 1"), "grace": ("grace@example.com", "grace password 1")}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


class _Families:
    """A collector yielding given families (to expose merged ones the way /metrics does)."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


def exposed(families) -> Samples:
    registry = CollectorRegistry()
    registry.register(_Families(list(families)))
    return parse(generate_latest(registry).decode())


# ---------------------------------------------------------------- the SFU's plain numbers
def test_durations_bucket_as_a_prometheus_histogram_does() -> None:
    observed = [0.0, 0.05, 0.0500001, 0.3, 1.0, 2.9, 29.0, 31.0, 500.0]
    durations = Durations()
    registry = CollectorRegistry()
    reference = Histogram("reference_seconds", "the same observations", buckets=WAIT_BUCKETS, registry=registry)
    for seconds in observed:
        durations.observe(seconds)
        reference.observe(seconds)
    expected = {s.labels["le"]: s.value for s in registry.collect().__next__().samples if s.name.endswith("_bucket")}
    assert {float(le): count for le, count in durations.cumulative()} == {float(le): c for le, c in expected.items()}
    assert durations.sum == pytest.approx(sum(observed))


def test_sfu_stats_add_up_over_workers_and_a_dead_one_keeps_only_its_counters() -> None:
    one, two = SfuStats(), SfuStats()
    one.count_received("video", 1000)
    two.count_received("video", 500)
    two.count_received("audio", 80)
    one.published_tracks["video"] += 1
    two.subscribed_tracks["audio"] += 2
    one.feedback_received["nack"] += 3
    two.connection_failures["ice"] += 1
    one.keyframe_wait.observe(0.2)
    two.keyframe_wait.observe(4.0)
    two.first_media.observe(1.2)
    total = SfuStats.total([one.snapshot(), two.snapshot()])
    assert total.received_packets == {"audio": 1, "video": 2} and total.received_bytes == {"audio": 80, "video": 1500}
    assert total.published_tracks["video"] == 1 and total.subscribed_tracks["audio"] == 2
    assert total.feedback_received["nack"] == 3 and total.connection_failures["ice"] == 1
    assert sum(total.keyframe_wait.counts) == 2 and total.keyframe_wait.sum == pytest.approx(4.2)
    assert total.first_media.cumulative()[-1] == ("+Inf", 1)
    dead = SfuStats.total([two.snapshot()], gauges=False)
    assert dead.subscribed_tracks == {"audio": 0, "video": 0} and dead.received_bytes["video"] == 500
    assert json.loads(json.dumps(total.snapshot())) == total.snapshot()  # what a worker's report carries


async def offer_with_a_forged_certificate(client: SfuParticipant) -> None:
    """Join and offer a fingerprint of no certificate: ICE connects, the SFU's DTLS refuses it."""
    assert (await client.join())["type"] == "joined"
    client.publish(ToneTrack())
    offer = await client.pc.createOffer()
    LOOPBACK.prepare(client.pc)
    await client.pc.setLocalDescription(offer)
    forged = re.sub(r"(a=fingerprint:sha-256 )(\S+)",
                    lambda m: m.group(1) + ":".join(["00"] * 32), client.pc.localDescription.sdp)
    reply = await client.request({"type": "offer", "sdp": forged, "tracks": []})
    assert reply["type"] == "answer"
    await client.pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))


async def test_a_failed_dtls_handshake_is_counted_by_its_cause() -> None:
    meeting = Meeting(RoomHost(IceSettings(loopback=True)))
    try:
        mallory = meeting.participant("mallory")
        await offer_with_a_forged_certificate(mallory)
        for _ in range(150):
            if meeting.host.stats.connection_failures["dtls"]:
                break
            await asyncio.sleep(0.1)
        assert meeting.host.stats.connection_failures == {"ice": 0, "dtls": 1}
        await mallory.wait_until(lambda: any(e["type"] == "participant_left" for e in meeting.events), 10)
    finally:
        await meeting.close()


async def test_a_workers_failure_reaches_the_parent_and_its_log_names_the_meeting_and_participant(
        capfd: pytest.CaptureFixture[str]) -> None:
    """The same failure in an SFU worker process: counted in the parent's totals (the worker's
    report), logged by the worker as a JSON line (its stdout is not a terminal) with the ids."""
    pool = SfuWorkers(IceSettings(loopback=True), workers=1)
    await pool.start()
    meeting = Meeting(pool)  # type: ignore[arg-type]
    try:
        await offer_with_a_forged_certificate(meeting.participant("mallory", room="meeting-42"))
        for _ in range(150):
            if pool.stats.connection_failures["dtls"]:
                break
            await asyncio.sleep(0.1)
        assert pool.stats.connection_failures == {"ice": 0, "dtls": 1}
    finally:
        await meeting.close()
    events = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    left = [e for e in events if e["logger"] == "confmeet.sfu" and "left: connection_failed" in e["message"]]
    assert [(e["meeting_id"], e["participant_id"], e["level"]) for e in left] == [("meeting-42", "mallory", "info")]


def test_process_metrics_are_summed_and_a_dead_process_keeps_its_counters() -> None:
    snapshots = []
    for n in (1, 2):
        registry = CollectorRegistry()
        Counter("demo_requests", "requests", ["model"], registry=registry).labels("asr").inc(n)
        Gauge("demo_queue", "queued", registry=registry).set(10 * n)
        Histogram("demo_seconds", "durations", buckets=(1.0,), registry=registry).observe(0.6 * n)
        snapshots.append(json.loads(json.dumps(process_metrics.snapshot(registry))))
    samples = exposed(process_metrics.merged(snapshots))
    assert value(samples, "demo_requests_total", model="asr") == 3
    assert value(samples, "demo_queue") == 30
    assert value(samples, "demo_seconds_bucket", le="1.0") == 1 and value(samples, "demo_seconds_count") == 2
    assert not any(name.endswith("_created") for name, _ in samples)
    dead = exposed(process_metrics.merged([process_metrics.monotonic_only(snapshots[1])]))
    assert value(dead, "demo_requests_total", model="asr") == 2 and value(dead, "demo_queue") is None


# ---------------------------------------------------------------- inference
def process_sample(name: str, **labels: str) -> float:
    """A sample of this process's own process metrics (inference, captions' queues; not of the
    default registry)."""
    return process_metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_inference_requests_are_timed_by_model_and_backend_and_failures_counted(tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    import_models("packages", repository, only=("vad",))
    answered = process_sample("confmeet_inference_request_duration_seconds_count", backend="local", model="vad")
    failed = process_sample("confmeet_inference_errors_total", backend="local", model="asr", kind="unavailable")
    inference = LocalInference(repository)
    try:
        probabilities, _ = await inference.vad(np.zeros(1024, np.float32), np.zeros(320, np.float32))
        assert probabilities.shape == (2,)
        with pytest.raises(InferenceUnavailable):  # no asr weights in this repository
            await inference.transcribe(np.zeros(16000, np.float32))
    finally:
        await inference.close()
    assert process_sample("confmeet_inference_request_duration_seconds_count",
                            backend="local", model="vad") == answered + 1
    assert process_sample("confmeet_inference_errors_total",
                            backend="local", model="asr", kind="unavailable") == failed + 1


async def test_caption_queues_and_merged_utterances_are_counted_where_the_sink_runs() -> None:
    recogniser = SlowRecogniser(0.3)  # slower than the speech: utterances wait, a speaker's merge
    sink, _ = sink_with(recogniser, max_backlog=30.0, max_wait=30.0)
    merged = process_sample("confmeet_captions_utterances_merged_total")
    await asyncio.sleep(0.1)  # warmed up
    for i in range(6):
        sink.submit(said("ann" if i < 4 else "bob", 1000.0 + 3 * i, 2.0))
    assert len(sink.queue) > 0
    assert process_sample("confmeet_captions_asr_queue_utterances") == len(sink.queue)
    assert process_sample("confmeet_captions_asr_queue_seconds") == pytest.approx(sink.queue.waiting_seconds)
    result = await sink.stop()
    assert result["merged"] > 0
    assert process_sample("confmeet_captions_utterances_merged_total") == merged + result["merged"]
    assert process_sample("confmeet_captions_asr_queue_utterances") == 0  # a stopped sink is not counted


@pytest.fixture
def worker_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker processes import tests/metrics_host.py (and this tree's appliance)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))


async def test_metrics_counted_in_sfu_workers_reach_the_parent_and_outlive_a_dead_worker(
        worker_imports: None, tmp_path: Path) -> None:
    pool = SfuWorkers(IceSettings(loopback=True), workers=2, host_factory="metrics_host:host_asking_inference",
                      factory_argument=str(tmp_path / "no-models"))
    await pool.start()
    labels = {"backend": "local", "model": "vad", "kind": "unavailable"}
    own = process_sample("confmeet_inference_errors_total", **labels)

    def total() -> float | None:
        return value(exposed(process_metrics.merged([process_metrics.snapshot(), *pool.worker_metrics()])),
                     "confmeet_inference_errors_total", **labels)

    async def until(expected: float) -> None:
        for _ in range(100):
            if total() == expected:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the sum stayed {total()}, not {expected}")

    try:
        await until(own + 2)  # one failed request in each worker
        first = pool.workers[0]
        first.process.kill()
        while pool.restarts < 1:
            await asyncio.sleep(0.1)
        await until(own + 3)  # the dead worker's count stays; its replacement counts its own
    finally:
        await pool.close()


# ---------------------------------------------------------------- a meeting on the real appliance
@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    yield from serving(tmp_path_factory.mktemp("metrics"), USERS, media_loopback="true", sfu_workers="2")


def scrape(app: Appliance) -> Samples:
    r = httpx.get(f"{app.url}/metrics")
    assert r.status_code == 200
    return parse(r.text)


async def test_a_meeting_moves_its_metrics(appliance: Appliance, tmp_path: Path) -> None:
    app = appliance
    tokens = {who: app.login(*USERS[who])["access_token"] for who in USERS}
    meeting = httpx.post(f"{app.url}/api/v1/meetings", json={"title": "metrics"},
                         headers={"Authorization": f"Bearer {tokens['ada']}"}).json()
    before = scrape(app)
    assert value(before, "confmeet_signaling_connections") == 0
    assert value(before, "confmeet_sfu_published_tracks", kind="video") == 0
    assert value(before, "confmeet_store_errors_total", store="database") == 0
    assert value(before, "confmeet_recordings_active") == 0 and value(before, "confmeet_recording_spool_bytes") == 0
    assert value(before, "confmeet_recording_upload_failures_total", outcome="retried") == 0

    def counted(samples: Samples, name: str, **labels: str) -> float:
        return (value(samples, name, **labels) or 0.0) - (value(before, name, **labels) or 0.0)

    ada = Participant(app.url, tokens["ada"], headers={"X-Request-ID": "ada-joins-1"})
    grace = Participant(app.url, tokens["grace"])
    try:
        for client, name in ((ada, "Ada"), (grace, "Grace")):
            await client.connect()
            assert (await client.join(meeting["code"], name))["type"] == "joined"
            client.publish(ToneTrack())
            client.publish(ColourTrack())
            assert (await client.offer())["type"] == "answer"
        await grace.send_raw("{not json")
        assert (await grace.request({"type": "dance"}))["code"] == "unknown_type"
        ada_id, grace_id = ada.joined["participant"]["id"], grace.joined["participant"]["id"]
        for me, other in ((ada, grace_id), (grace, ada_id)):
            await me.wait_until(lambda: me.frames_from(other, "video") >= 10 and me.frames_from(other, "audio") >= 20,
                                timeout=20)
        await asyncio.sleep(1.5)  # a report from the SFU worker
        during = scrape(app)
        exposition = httpx.get(f"{app.url}/metrics").text

        assert value(during, "confmeet_signaling_connections") == 2
        assert counted(during, "confmeet_signaling_messages_total", type="join") == 2
        assert counted(during, "confmeet_signaling_messages_total", type="offer") >= 2
        assert counted(during, "confmeet_signaling_messages_total", type="unknown") == 1
        assert counted(during, "confmeet_signaling_errors_total", code="bad_message") == 1
        assert counted(during, "confmeet_signaling_errors_total", code="unknown_type") == 1
        for kind in ("audio", "video"):
            assert value(during, "confmeet_sfu_published_tracks", kind=kind) == 2
            assert value(during, "confmeet_sfu_subscribed_tracks", kind=kind) == 2  # each gets the other's
            assert counted(during, "confmeet_sfu_received_packets_total", kind=kind) > 0
            assert counted(during, "confmeet_sfu_received_bytes_total", kind=kind) > 0
            assert counted(during, "confmeet_sfu_forwarded_packets_total", kind=kind) > 0
        assert counted(during, "confmeet_sfu_keyframe_wait_seconds_count") == 2  # one per video subscription
        assert counted(during, "confmeet_sfu_join_to_first_media_seconds_count") == 2  # one per participant
        assert 0 < counted(during, "confmeet_sfu_join_to_first_media_seconds_sum") < 2 * 20
        for cause in ("ice", "dtls"):
            assert counted(during, "confmeet_sfu_connection_failures_total", cause=cause) == 0
        for kind in ("nack", "pli", "fir"):
            assert value(during, "confmeet_sfu_rtcp_feedback_total", type=kind) is not None
        assert value(during, "confmeet_room_participants", room=meeting["id"]) == 2
    finally:
        await ada.close()
        await grace.close()

    documented = (ROOT / "docs/operations.md").read_text()
    families = {family.name for family in text_string_to_metric_families(exposition)
                if not family.name.endswith("_created")}  # prometheus_client's creation times
    assert len([f for f in families if f.startswith("confmeet_")]) > 40
    assert [f for f in families if f.startswith("confmeet_") and f"`{f}" not in documented] == []

    lint = tmp_path / "metrics.txt"
    lint.write_text(exposition)
    checked = subprocess.run([PROMTOOL, "check", "metrics"], stdin=lint.open(), capture_output=True, text=True)
    ours = [line for line in (checked.stdout + checked.stderr).splitlines() if "confmeet_" in line]
    assert not ours, ours

    for _ in range(50):
        after = scrape(app)
        if value(after, "confmeet_signaling_connections") == 0 and \
                value(after, "confmeet_sfu_published_tracks", kind="video") == 0:
            break
        await asyncio.sleep(0.2)
    assert value(after, "confmeet_signaling_connections") == 0
    for kind in ("audio", "video"):
        assert value(after, "confmeet_sfu_published_tracks", kind=kind) == 0
        assert value(after, "confmeet_sfu_subscribed_tracks", kind=kind) == 0

    # The log of that meeting: JSON lines naming it, its participants and the WebSocket's request.
    events = [json.loads(line) for line in app.output().splitlines() if line.startswith("{")]
    joined = [e for e in events if e["message"].startswith("joined the meeting")]
    assert {(e["meeting_id"], e["participant_id"]) for e in joined} == {(meeting["id"], ada_id),
                                                                       (meeting["id"], grace_id)}
    assert next(e for e in joined if e["participant_id"] == ada_id)["request_id"] == "ada-joins-1"
    left = [e for e in events if e["message"].startswith("left the meeting")]
    assert {e["participant_id"] for e in left} == {ada_id, grace_id}
    assert tokens["ada"] not in app.output() and tokens["grace"] not in app.output()
    assert not re.search(r"token=(?!\[redacted\])", app.output())
