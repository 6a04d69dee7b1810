"""Signaling fuzzing against the running appliance (issue 12, finding 9).

Hypothesis sends random and mutated messages of every signaling type (wrong types, huge fields,
unknown types, binary frames, sequences in any order) from a participant, a guest and someone
waiting in a lobby. Whatever they send: the server never logs a traceback, answers with typed
errors (never ``internal``), closes no connection but the sender's own (and that only when it
says ``leave``), and the meeting goes on for the two people in it who send nothing odd.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from appliance_server import Appliance, start_appliance
from conftest import stop
from cli.client.participant import Participant

USERS = {"host": ("host@example.com", "host password 1"), "bob": ("bob@example.com", "bob password 1"),
         "pat": ("pat@example.com", "pat password 1"), "sam": ("sam@example.com", "sam password 1")}
TYPES = ["join", "offer", "answer", "candidate", "leave", "ping", "admit", "deny", "set_role", "lock", "mute",
         "ask_unmute", "stop_camera", "remove", "update_state", "raise_hand", "lower_hand", "reaction", "chat",
         "set_captions", "show_captions", "recording_start", "recording_stop"]
FIELDS = ["meeting", "name", "password", "resume", "sdp", "tracks", "candidate", "knock_id", "participant_id",
          "role", "locked", "all", "muted", "camera_off", "emoji", "text", "to", "enabled", "language"]
SENDERS = ("participant", "guest", "waiting")
# close codes a fuzzed connection may get: its own leave (1000), or over the WebSocket frame limit
OWN_CLOSES = {None, 1000, 1009}

# What broke the server once, always tried first: nesting deeper than the JSON parser's recursion,
# text no column stores (a lone surrogate, NUL), and messages sent after "leave".
KNOWN_TROUBLE = [
    ("participant", "[" * 100_000 + "]" * 100_000),
    ("guest", json.dumps({"type": "chat", "text": "\ud800"})),
    ("waiting", json.dumps({"type": "join", "meeting": "abc-defg-hij", "name": "nul\x00"})),
    ("participant", json.dumps({"type": "update_state", "muted": True, "id": "\udfff"})),
    ("participant", json.dumps({"type": "leave"})),
    *[("participant", json.dumps({"type": "chat", "text": f"after leave {i}"})) for i in range(5)],
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.sampled_from(["x" * 300_000, "é" * 70_000, "p-" + "0" * 16, "k-000000000000",
                                              "v=0\r\n", "🎉", "", "\ud800 lone surrogate", "nul\x00"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=8)


@st.composite
def messages(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.sampled_from(["typed", "typed", "typed", "unknown", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=200) | st.text(max_size=200) | json_values.map(json.dumps)
                    | st.sampled_from(["[]", "null", "{}", '{"type":', "[" * 100_000 + "]" * 100_000,
                                       '{"type": "chat", "text": ' + "[" * 50_000 + "]" * 50_000 + "}"]))
    message: dict[str, Any] = {"type": draw(st.sampled_from(TYPES)) if kind == "typed" else draw(st.text(max_size=20))}
    for name in draw(st.lists(st.sampled_from(FIELDS) | st.text(max_size=8), max_size=4)):
        message[name] = draw(json_values)
    if draw(st.booleans()):  # (never a small integer: those are the test client's own request ids)
        message["id"] = draw(st.integers(10**7, 10**12) | st.text(max_size=10) | st.floats() | st.booleans()
                             | st.lists(st.integers(), max_size=2))
    if draw(st.integers(0, 9)) == 0:
        message["type"] = draw(json_values)  # even the type may be wrong
    return json.dumps(message)


@dataclass
class World:
    app: Appliance
    meeting: dict
    lobby: dict
    host: Participant
    bob: Participant


def token(app: Appliance, who: str) -> str:
    return app.login(*USERS[who])["access_token"]


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    app = start_appliance(tmp_path_factory.mktemp("fuzz"), guest_tokens_per_address="100000",
                          chat_messages_per_10s="1000", max_waiting_per_meeting="1000")
    for i, (email, password) in enumerate(USERS.values()):
        app.add_user(email, password, admin=i == 0)
    yield app
    stop(app.proc)


async def connected(app: Appliance, bearer: str, meeting: dict, name: str, expect: str) -> Participant:
    c = Participant(app.url, bearer)
    await c.connect()
    reply = await c.join(meeting["code"], name)
    assert reply["type"] == expect, reply
    return c


async def world(app: Appliance) -> World:
    api = httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {token(app, 'host')}"})
    meeting = api.post("/api/v1/meetings", json={"title": "fuzzed", "allow_guests": True}).json()
    lobby = api.post("/api/v1/meetings", json={"title": "lobby", "lobby": True}).json()
    host = await connected(app, token(app, "host"), meeting, "Host", "joined")
    bob = await connected(app, token(app, "bob"), meeting, "Bob", "joined")
    return World(app, meeting, lobby, host, bob)


async def one_example(w: World, steps: list[tuple[str, str | bytes]]) -> None:
    guest_pass = httpx.post(f"{w.app.url}/api/v1/meetings/by-code/{w.meeting['code']}/guest",
                            json={"name": "Guest"}).json()["guest_token"]
    senders = {"participant": await connected(w.app, token(w.app, "pat"), w.meeting, "Pat", "joined"),
               "guest": await connected(w.app, guest_pass, w.meeting, "Guest", "joined"),
               "waiting": await connected(w.app, token(w.app, "sam"), w.lobby, "Sam", "waiting")}
    try:
        for who, raw in steps:
            c = senders[who]
            if c.closed_with is None:
                await c.send_raw(raw)
        for c in senders.values():
            await still_answers(c)
        for who, c in senders.items():
            assert c.closed_with in OWN_CLOSES, (who, c.closed_with, c.arrived[-3:])
            for error in (m for m in c.arrived if m["type"] == "error"):
                assert isinstance(error["code"], str) and isinstance(error["message"], str), error
                assert error["code"] != "internal", (who, error)
        for bystander in (w.host, w.bob):
            assert bystander.closed_with is None
            assert (await bystander.request({"type": "ping"}))["type"] == "pong"
            assert not bystander.events_of("error"), bystander.events_of("error")
        log = w.app.output()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    finally:
        for c in senders.values():
            await c.close()


async def still_answers(c: Participant) -> None:
    """A connection still open answers a ping; one that said ``leave`` is closed by the server,
    which reads nothing after it."""
    ping = asyncio.ensure_future(c.request({"type": "ping"}))
    await c.wait_until(lambda: ping.done() or c.closed_with is not None, 10)
    if ping.done() and ping.exception() is None:
        assert ping.result()["type"] == "pong"
        return
    ping.cancel()
    await c.wait_until(lambda: c.closed_with is not None, 5)
    assert any(m["type"] == "left" for m in c.arrived) or c.closed_with == 1009, c.arrived[-3:]


def test_random_signaling_never_breaks_the_server_or_the_meeting(appliance: Appliance) -> None:
    loop = asyncio.new_event_loop()
    w = loop.run_until_complete(world(appliance))

    @settings(max_examples=20, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(st.lists(st.tuples(st.sampled_from(SENDERS), messages()), min_size=1, max_size=12))
    @example(KNOWN_TROUBLE)
    def fuzzed(steps: list[tuple[str, str | bytes]]) -> None:
        loop.run_until_complete(one_example(w, steps))

    try:
        fuzzed()
        # the meeting went on: the two who took no part still talk to each other
        sent = loop.run_until_complete(w.host.request({"type": "chat", "text": "still here?"}))
        assert sent["type"] == "ok"
        loop.run_until_complete(w.bob.wait_until(
            lambda: any(e["message"]["text"] == "still here?" for e in w.bob.events_of("chat"))))
    finally:
        loop.run_until_complete(w.host.close())
        loop.run_until_complete(w.bob.close())
        loop.close()
