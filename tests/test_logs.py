"""The appliance's logs (appliance/logs.py): JSON lines with the ids of the meeting, participant
and request, secrets redacted, text on a terminal; and the real ``confmeet serve`` writing them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml

from appliance import logs
from appliance.settings import SettingsError, load_settings
from appliance_server import start_appliance
from conftest import stop

ROOT = Path(__file__).resolve().parent.parent
# What the Promtail json stage reads of a line (bundles/observability/promtail.yml.in when present).
PROMTAIL_FIELDS = ("level", "logger", "message", "meeting_id", "participant_id", "request_id")
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJlLW9mLWFkYQ"
SECRET = "Zr8uR3-hunter2-kX9"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger writing JSON to a buffer (restored afterwards)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    assert logs.configure(SimpleNamespace(log_format="json", log_level="DEBUG"), stream) == "json"
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_event_is_one_json_object_a_line(captured: io.StringIO) -> None:
    log = logging.getLogger("confmeet.test")
    log.info("first %s", "event")
    log.warning("a message\nover two lines")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    events = lines(captured)
    assert len(events) == 3  # the newline and the traceback stay inside their events
    first, second, third = events
    assert first["message"] == "first event" and first["level"] == "info" and first["logger"] == "confmeet.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert second["level"] == "warning" and second["message"] == "a message\nover two lines"
    assert third["level"] == "error" and "ValueError: boom" in third["exception"]
    assert "meeting_id" not in first  # nothing bound


def test_the_promtail_json_stage_finds_its_fields(captured: io.StringIO) -> None:
    template = ROOT / "bundles/observability/promtail.yml.in"
    fields = PROMTAIL_FIELDS
    if template.exists():  # the stage as the installer deploys it: every field it reads
        rendered = re.sub(r"\{(\w+)\}", "x", template.read_text())  # the placeholders filled in
        stages = yaml.safe_load(rendered)["scrape_configs"][0]["pipeline_stages"]
        fields = tuple(next(stage["json"] for stage in stages if "json" in stage)["expressions"].values())
    with logs.bound(meeting_id="m-1", participant_id="p-1", request_id="r-1"):
        logging.getLogger("confmeet.signaling").info("joined")
    event = lines(captured)[0]
    for name in fields:
        assert isinstance(event[name], str) and event[name], name
    assert event["level"] in ("debug", "info", "warning", "error", "critical")


async def test_context_ids_follow_each_task(captured: io.StringIO) -> None:
    log = logging.getLogger("confmeet.signaling")

    async def participant(meeting: str, who: str) -> None:
        logs.bind(meeting_id=meeting, participant_id=who)
        await asyncio.sleep(0)
        log.info("speaking")
        await asyncio.create_task(asyncio.sleep(0))
        async def started_later() -> None:
            log.info("from a task it started")
        await asyncio.create_task(started_later())

    logs.bind(request_id="req-42")
    await asyncio.gather(participant("m-a", "p-a"), participant("m-b", "p-b"))
    log.info("after")
    events = [e for e in lines(captured) if e["logger"] == "confmeet.signaling"]
    assert len(events) == 5
    for event in events[:4]:
        assert event["request_id"] == "req-42"
        assert (event["meeting_id"], event["participant_id"]) in (("m-a", "p-a"), ("m-b", "p-b"))
    assert sorted(e["participant_id"] for e in events[:4]) == ["p-a", "p-a", "p-b", "p-b"]
    assert "meeting_id" not in events[4] and events[4]["request_id"] == "req-42"
    logs.bind(request_id=None)


def test_tokens_and_secrets_never_reach_a_line(captured: io.StringIO) -> None:
    log = logging.getLogger("confmeet.test")
    log.info("websocket /ws/signaling?token=%s&x=1", TOKEN)
    log.info("headers: %s", {"Authorization": f"Bearer {TOKEN}", "Accept": "*/*"})
    log.info("login %s", json.dumps({"email": "ada@example.com", "password": SECRET}))
    log.info("database postgresql://confmeet:%s@db/confmeet", SECRET)
    log.info("a bare %s", TOKEN)
    log.info("settings", extra={"turn_secret": SECRET, "nested": {"refresh_token": SECRET, "ok": "kept"},
                                "headers": [f"authorization: Basic {SECRET}"]})
    try:
        raise RuntimeError(f"refused: secret_key={SECRET}")
    except RuntimeError:
        log.exception("failed")
    text = captured.getvalue()
    assert TOKEN not in text and SECRET not in text and "hunter2" not in text
    events = lines(captured)
    assert events[0]["message"] == "websocket /ws/signaling?token=[redacted]&x=1"
    assert "ada@example.com" in events[2]["message"]  # only the secret goes
    assert events[5]["turn_secret"] == "[redacted]" and events[5]["nested"]["ok"] == "kept"
    assert "[redacted]" in events[6]["exception"]


def test_text_format_on_a_terminal_and_json_elsewhere() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    leader, follower = os.openpty()
    try:
        with open(follower, "w") as terminal:
            assert logs.configure(SimpleNamespace(log_format="auto", log_level="INFO"), terminal) == "text"
        read, write = os.pipe()
        with open(write, "w") as pipe:
            assert logs.configure(SimpleNamespace(log_format="auto", log_level="INFO"), pipe) == "json"
        os.close(read)
        stream = io.StringIO()
        assert logs.configure(SimpleNamespace(log_format="text", log_level="INFO"), stream) == "text"
        with logs.bound(meeting_id="m-7"):
            logging.getLogger("confmeet.test").info("token=%s joined", TOKEN)
        logging.getLogger("confmeet.test").debug("below the level")
        line = stream.getvalue()
        assert re.fullmatch(r"\S+ \S+ INFO confmeet\.test: token=\[redacted\] joined \[meeting_id=m-7\]\n", line)
        with pytest.raises(ValueError, match="log_format 'yaml'"):
            logs.configure(SimpleNamespace(log_format="yaml", log_level="INFO"), stream)
    finally:
        os.close(leader)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def test_log_format_setting_is_checked(tmp_path: Path) -> None:
    assert load_settings(env={"CONFMEET_DATA_DIR": str(tmp_path)}).log_format == "auto"
    with pytest.raises(SettingsError, match="log_format"):
        load_settings(env={"CONFMEET_DATA_DIR": str(tmp_path), "CONFMEET_LOG_FORMAT": "xml"})


def test_serve_logs_json_lines_with_request_ids(tmp_path: Path) -> None:
    """The real ``confmeet serve``, its stdout a file (as under systemd): JSON lines, each request
    named by the X-Request-ID it came with (if sane) or a new one, echoed in the response."""
    app = start_appliance(tmp_path / "app", media_loopback="true", sfu_workers="1")
    try:
        given = httpx.get(f"{app.url}/healthz", headers={"X-Request-ID": "lb-7f3a.42"})
        assert given.headers["x-request-id"] == "lb-7f3a.42"
        made = httpx.get(f"{app.url}/healthz", headers={"X-Request-ID": "x" * 300})
        assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
        assert httpx.get(f"{app.url}/healthz").headers["x-request-id"] != made.headers["x-request-id"]
        assert httpx.get(f"{app.url}/api/v1/nothing-here").headers["x-request-id"]
    finally:
        stop(app.proc)
    events = [json.loads(line) for line in app.output().splitlines() if line.startswith("{")]
    assert events, app.output()
    for event in events:
        assert {"time", "level", "logger", "message"} <= set(event)
    assert any(e["logger"] == "confmeet.sfu" and "SFU worker 0 started" in e["message"] for e in events)
    assert "Traceback" not in app.output()
