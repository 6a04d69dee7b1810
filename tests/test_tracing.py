"""Traces (appliance/tracing.py) received the way Jaeger receives them.

What is real: the appliance (``confmeet serve`` in a subprocess, SFU in a worker process), its
OpenTelemetry SDK and OTLP/HTTP exporter, the participants (aiortc clients negotiating real
media over loopback), a recording uploaded to the embedded object store, the ``confmeet backup``
command, and the receiver: an HTTP server on loopback that accepts ``POST /v1/traces`` and
decodes each body with opentelemetry-proto's ``ExportTraceServiceRequest`` (the protobuf
Jaeger's OTLP port reads; tests/otlp_receiver.py). Nothing is mocked; Jaeger itself has no
package that runs here, so this receiver stands where it would. Captions' traces:
tests/captions/test_captions_tracing.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.settings import SettingsError, load_settings
from appliance.tracing import exporter_url
from appliance_server import CONFMEET, Appliance, appliance_env, start_appliance
from cli.client.participant import Participant
from conftest import free_port, stop
from otlp_receiver import ERROR, SERVER, OtlpReceiver, ReceivedSpan
from sfu.participants import ColourTrack, ToneTrack

USERS = {"ada": ("ada@example.com", "ada password 1"), "grace": ("grace@example.com", "grace password 1")}
JOIN_STEPS = {"signaling.token_check", "signaling.entry", "signaling.lobby", "sfu.join", "sfu.answer"}
# Spans are sent every 200 ms instead of every 5 s (the SDK's own setting), so tests wait less.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "200"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


def _start(tmp: Any, env: dict[str, str], **settings: str) -> Appliance:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        app = start_appliance(tmp, media_loopback="true", sfu_workers="1", **settings)
    for i, (email, password) in enumerate(USERS.values()):
        app.add_user(email, password, admin=i == 0)
    return app


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[Appliance]:
    app = _start(tmp_path_factory.mktemp("tracing"), FAST_EXPORT, trace_endpoint=receiver.url)
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


def token(app: Appliance, who: str) -> str:
    return app.login(*USERS[who])["access_token"]


def new_meeting(app: Appliance, **fields: Any) -> dict:
    r = httpx.post(f"{app.url}/api/v1/meetings", json={"title": "tracing test", **fields},
                   headers={"Authorization": f"Bearer {token(app, 'ada')}"})
    assert r.status_code == 201, r.text
    return r.json()


async def join_and_offer(app: Appliance, who: str, meeting: dict) -> Participant:
    c = Participant(app.url, token(app, who))
    await c.connect()
    assert (await c.join(meeting["code"], who.title()))["type"] == "joined"
    c.publish(ToneTrack())
    assert (await c.offer())["type"] == "answer"
    return c


def join_trace(receiver: OtlpReceiver, participant_id: str) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """The root ``signaling.join`` of this participant, and the rest of its trace."""
    def root() -> ReceivedSpan | None:
        return next((s for s in receiver.named("signaling.join")
                     if s.attributes.get("confmeet.participant_id") == participant_id), None)

    receiver.wait_for(lambda: root() is not None and JOIN_STEPS <= {s.name for s in receiver.trace(root().trace_id)})
    join = root()
    assert join is not None
    return join, [s for s in receiver.trace(join.trace_id) if s is not join]


async def test_a_join_is_one_trace_with_its_steps(appliance: Appliance, receiver: OtlpReceiver) -> None:
    meeting = new_meeting(appliance)
    ada = await join_and_offer(appliance, "ada", meeting)
    try:
        me = ada.joined["participant"]["id"]
        join, steps = join_trace(receiver, me)
        assert join.service == "confmeet" and join.parent_id == ""  # a trace of its own
        assert join.attributes["confmeet.meeting_id"] == meeting["id"]
        assert join.attributes["confmeet.role"] == "host"
        assert join.attributes["confmeet.outcome"] == "answered"
        assert join.status != ERROR  # not ERROR
        by_name = {s.name: s for s in steps}
        assert set(by_name) == JOIN_STEPS, [s.name for s in steps]
        assert all(s.parent_id == join.span_id for s in steps)
        assert all(s.status != ERROR for s in steps)
        assert by_name["signaling.lobby"].attributes["confmeet.waited"] is False
        # Exactly one join trace for this participant: nothing of it landed in another trace.
        assert len([s for s in receiver.named("signaling.join")
                    if s.attributes.get("confmeet.participant_id") == me]) == 1
        for span in steps + [join]:
            assert not any(isinstance(v, str) and token(appliance, "ada")[:20] in v for v in span.attributes.values())
    finally:
        await ada.leave()


async def test_a_lobby_wait_stays_in_the_knocking_participants_trace(appliance: Appliance,
                                                                     receiver: OtlpReceiver) -> None:
    """The admission happens in the host's message, yet the lobby and SFU join spans belong to
    the trace of the one who knocked."""
    meeting = new_meeting(appliance, lobby=True)
    host = await join_and_offer(appliance, "ada", meeting)
    grace = Participant(appliance.url, token(appliance, "grace"))
    await grace.connect()
    try:
        assert (await grace.join(meeting["code"], "Grace"))["type"] == "waiting"
        await host.wait_until(lambda: host.events_of("lobby"), 5)
        knock = host.events_of("lobby")[-1]["knocked"]["id"]
        assert (await host.request({"type": "admit", "knock_id": knock}))["type"] == "ok"
        await grace.wait_until(lambda: grace.events_of("joined"), 5)
        grace.joined = grace.events_of("joined")[0]
        grace.publish(ToneTrack())
        assert (await grace.offer())["type"] == "answer"

        join, steps = join_trace(receiver, grace.joined["participant"]["id"])
        by_name = {s.name: s for s in steps}
        assert set(by_name) == JOIN_STEPS and all(s.parent_id == join.span_id for s in steps)
        lobby = by_name["signaling.lobby"]
        assert lobby.attributes["confmeet.waited"] is True and lobby.attributes["confmeet.outcome"] == "admitted"
        assert join.attributes["confmeet.role"] == "participant"
        host_join, _ = join_trace(receiver, host.joined["participant"]["id"])
        assert host_join.trace_id != join.trace_id
    finally:
        await grace.leave()
        await host.leave()


async def test_a_refused_token_ends_the_join_trace_failed(appliance: Appliance, receiver: OtlpReceiver) -> None:
    before = len(receiver.named("signaling.join"))
    c = Participant(appliance.url, "not-a-token")
    with pytest.raises(Exception):
        await c.connect()
        await c.join("whatever")
    receiver.wait_for(lambda: len(receiver.named("signaling.join")) > before)
    join = [s for s in receiver.named("signaling.join") if s.attributes.get("confmeet.outcome") == "unauthorized"][-1]
    check = [s for s in receiver.trace(join.trace_id) if s.name == "signaling.token_check"]
    assert join.status == ERROR and len(check) == 1 and check[0].status == ERROR and check[0].parent_id == join.span_id
    assert not any("not-a-token" in str(v) for v in check[0].attributes.values())


def test_api_requests_are_server_spans_named_by_route(appliance: Appliance, receiver: OtlpReceiver) -> None:
    meeting = new_meeting(appliance)
    headers = {"Authorization": f"Bearer {token(appliance, 'ada')}"}
    assert httpx.get(f"{appliance.url}/api/v1/meetings/{meeting['id']}", headers=headers).status_code == 200
    assert httpx.get(f"{appliance.url}/api/v1/meetings/nosuchmeeting", headers=headers).status_code == 404
    name = "GET /api/v1/meetings/<meeting_id:str>"
    receiver.wait_for(lambda: len(receiver.named(name)) >= 2)
    found, missing = receiver.named(name)[-2:]
    for span in (found, missing):
        assert span.kind == SERVER
        assert span.parent_id == ""
        assert span.attributes["http.route"] == "/api/v1/meetings/<meeting_id:str>"
        assert span.attributes["http.request.method"] == "GET"
        # the route, never the raw path or a header
        assert not any(meeting["id"] in str(v) or "Bearer" in str(v) for v in span.attributes.values())
    assert found.attributes["http.response.status_code"] == 200
    assert missing.attributes["http.response.status_code"] == 404
    assert found.trace_id != missing.trace_id
    # Not traced: the probes monitoring polls (the test polled /readyz until the appliance was
    # ready, long before), and the WebSocket.
    assert not receiver.named("GET /readyz") and not receiver.named("GET /ws/signaling")


async def test_a_recording_upload_is_a_trace_with_a_span_per_object(appliance: Appliance,
                                                                    receiver: OtlpReceiver) -> None:
    meeting = new_meeting(appliance)
    ada = Participant(appliance.url, token(appliance, "ada"))
    await ada.connect()
    try:
        assert (await ada.join(meeting["code"], "Ada"))["type"] == "joined"
        ada.publish(ToneTrack())
        ada.publish(ColourTrack((200, 30, 30)))
        assert (await ada.offer())["type"] == "answer"
        await ada.connected()
        started = await ada.request({"type": "recording_start"})
        assert started["type"] == "ok", started
        await asyncio.sleep(2.0)
        assert (await ada.request({"type": "recording_stop"}))["type"] == "ok"
    finally:
        await ada.leave()
    recording_id = started["recording"]["id"]
    headers = {"Authorization": f"Bearer {token(appliance, 'ada')}"}
    deadline = time.monotonic() + 30
    while (row := httpx.get(f"{appliance.url}/api/v1/recordings/{recording_id}", headers=headers).json())["status"] \
            != "ready" and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert row["status"] == "ready", row

    def upload() -> ReceivedSpan | None:
        return next((s for s in receiver.named("recording.upload")
                     if s.attributes.get("confmeet.recording_id") == recording_id), None)

    receiver.wait_for(lambda: upload() is not None and len(receiver.children(upload())) == len(row["tracks"]))
    root = upload()
    assert root.parent_id == "" and root.status != ERROR and root.service == "confmeet"
    objects = receiver.children(root)
    assert len(row["tracks"]) >= 2 and {s.name for s in objects} == {"recording.upload.object"}
    assert all(s.attributes["confmeet.bytes"] > 0 for s in objects)


def test_backup_create_and_restore_are_traced(appliance: Appliance, receiver: OtlpReceiver, tmp_path: Path) -> None:
    """``confmeet backup`` (the command, a process of its own) reads trace_endpoint like the appliance."""
    made = appliance.cli("backup", "create", "--to", str(tmp_path / "archives"), "--json")
    assert made.returncode == 0, made.stderr
    archive = json.loads(made.stdout)["archive"]
    (tmp_path / "restored").mkdir()
    env = {**appliance_env(tmp_path / "restored", free_port(), trace_endpoint=receiver.url), **FAST_EXPORT}
    restored = subprocess.run([*CONFMEET, "backup", "restore", str(tmp_path / "archives" / archive), "--json"],
                              env=env, capture_output=True, text=True, timeout=120)
    assert restored.returncode == 0, restored.stderr
    # Both commands have exited: their spans were sent before they did.
    create = [s for s in receiver.named("backup.create") if s.attributes.get("confmeet.archive") == archive]
    restore = [s for s in receiver.named("backup.restore") if s.attributes.get("confmeet.archive") == archive]
    assert len(create) == 1 and len(restore) == 1
    assert create[0].service == restore[0].service == "confmeet-backup"
    assert {s.name for s in receiver.children(create[0])} == {"backup.objects", "backup.database",
                                                              "backup.documents", "backup.config"}
    assert {s.name for s in receiver.children(restore[0])} == {"backup.verify", "backup.restore.copy",
                                                               "backup.restore.switch"}
    assert all(s.status != ERROR for s in [*create, *restore])


def test_no_trace_endpoint_sends_nothing(tmp_path: Any, receiver: OtlpReceiver) -> None:
    """With trace_endpoint empty nothing is sent, even where OpenTelemetry's own variables name
    an endpoint (they would, were an exporter made)."""
    before = receiver.requests
    app = _start(tmp_path, {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": exporter_url(receiver.url)})
    try:
        headers = {"Authorization": f"Bearer {token(app, 'ada')}"}
        assert httpx.get(f"{app.url}/api/v1/meetings", headers=headers).status_code == 200
        time.sleep(1.0)  # five export intervals
    finally:
        stop(app.proc)  # a stop would send what was queued
    assert receiver.requests == before
    assert "Traceback" not in app.output(), app.output()


def test_trace_settings_are_checked() -> None:
    assert load_settings(env={}, overrides={"trace_sample_ratio": "0.25"}).trace_sample_ratio == 0.25
    for bad in ({"trace_sample_ratio": "1.5"}, {"trace_sample_ratio": "-0.1"}, {"trace_sample_ratio": "most"},
                {"trace_endpoint": "jaeger:4318"}, {"trace_endpoint": "grpc://jaeger:4317"}):
        with pytest.raises(SettingsError, match="trace_"):
            load_settings(env={}, overrides=bad)
    assert exporter_url("http://jaeger:4318/") == "http://jaeger:4318/v1/traces"
    assert exporter_url("http://jaeger:4318/v1/traces") == "http://jaeger:4318/v1/traces"
