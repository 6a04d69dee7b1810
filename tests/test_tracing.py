"""Traces (appliance/tracing.py) received the way Jaeger receives them.

What is real: the appliance (``confmeet serve`` in a subprocess, SFU in a worker process), its
OpenTelemetry SDK and OTLP/HTTP exporter, the participants (aiortc clients negotiating real
media over loopback), and the receiver: an HTTP server on loopback that accepts ``POST
/v1/traces`` and decodes each body with opentelemetry-proto's ``ExportTraceServiceRequest``
(the protobuf Jaeger's OTLP port reads). Nothing is mocked; Jaeger itself has no package that
runs here, so this receiver stands where it would.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from appliance.settings import SettingsError, load_settings
from appliance.tracing import exporter_url
from appliance_server import Appliance, start_appliance
from cli.client.participant import Participant
from conftest import stop
from sfu.participants import ToneTrack

USERS = {"ada": ("ada@example.com", "ada password 1"), "grace": ("grace@example.com", "grace password 1")}
JOIN_STEPS = {"signaling.token_check", "signaling.entry", "signaling.lobby", "sfu.join", "sfu.answer"}
# Spans are sent every 200 ms instead of every 5 s (the SDK's own setting), so tests wait less.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "200"}


@dataclass
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    status: int


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint: decodes what it is sent with the real protobuf schema."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404)
                    return
                receiver.take(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            self.requests += 1
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(ReceivedSpan(
                            resource["service.name"], span.trace_id.hex(), span.span_id.hex(),
                            span.parent_span_id.hex(), span.name, span.kind,
                            {a.key: _value(a.value) for a in span.attributes}, span.status.code))

    def named(self, name: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.name == name]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, condition: Any, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        raise AssertionError(f"not received in {timeout} s; spans: {[s.name for s in self.spans]}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
        assert join.status != 2  # not ERROR
        by_name = {s.name: s for s in steps}
        assert set(by_name) == JOIN_STEPS, [s.name for s in steps]
        assert all(s.parent_id == join.span_id for s in steps)
        assert all(s.status != 2 for s in steps)
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
    assert join.status == 2 and len(check) == 1 and check[0].status == 2 and check[0].parent_id == join.span_id
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
        assert span.kind == 2  # SPAN_KIND_SERVER
        assert span.parent_id == ""
        assert span.attributes["http.route"] == "/api/v1/meetings/<meeting_id:str>"
        assert span.attributes["http.request.method"] == "GET"
        # the route, never the raw path or a header
        assert not any(meeting["id"] in str(v) or "Bearer" in str(v) for v in span.attributes.values())
    assert found.attributes["http.response.status_code"] == 200
    assert missing.attributes["http.response.status_code"] == 404
    assert found.trace_id != missing.trace_id


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
