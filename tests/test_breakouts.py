"""Breakout rooms over signaling (appliance/signaling/breakouts.py), driven with the project's own
client against the real appliance: who may run them, what is refused, random assignment, whose
media a seat gets in a room, chat per room, the timer, and a plan that outlives a restart."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance_server import Appliance, start_appliance
from cli.client.participant import Participant
from conftest import stop
from sfu.participants import ColourTrack, ToneTrack

USERS = {"host": ("host@example.com", "host password 1"), "pat": ("pat@example.com", "pat password 1"),
         "ana": ("ana@example.com", "ana password 1")}
MODERATORS_ONLY = [
    {"type": "breakout_create", "rooms": ["One"]}, {"type": "breakout_assign", "assignments": {}},
    {"type": "breakout_shuffle"}, {"type": "breakout_open"}, {"type": "breakout_close"},
    {"type": "breakout_broadcast", "text": "hello"},
]


def start(data_dir: Path, users: bool) -> Appliance:
    app = start_appliance(data_dir, media_loopback="true")
    if users:
        for i, (email, password) in enumerate(USERS.values()):
            app.add_user(email, password, admin=i == 0)
    return app


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    app = start(tmp_path_factory.mktemp("breakouts"), users=True)
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


def token(app: Appliance, who: str) -> str:
    return app.login(*USERS[who])["access_token"]


def meeting(app: Appliance) -> dict:
    r = httpx.post(f"{app.url}/api/v1/meetings", json={"title": "breakouts", "allow_guests": True},
                   headers={"Authorization": f"Bearer {token(app, 'host')}"})
    assert r.status_code == 201, r.text
    return r.json()


def audit(app: Appliance, meeting_id: str) -> list[str]:
    r = httpx.get(f"{app.url}/api/v1/audit", params={"meeting_id": meeting_id},
                  headers={"Authorization": f"Bearer {token(app, 'host')}"})
    return [e["action"] for e in r.json()["events"]]


async def seated(app: Appliance, m: dict, who: str, bearer: str | None = None) -> Participant:
    c = Participant(app.url, bearer or token(app, who), name=who.title())
    await c.connect()
    reply = await c.join(m["code"])
    assert reply["type"] == "joined", reply
    return c


async def guest(app: Appliance, m: dict, name: str) -> Participant:
    r = httpx.post(f"{app.url}/api/v1/meetings/by-code/{m['code']}/guest", json={"name": name})
    return await seated(app, m, name, bearer=r.json()["guest_token"])


def me(c: Participant) -> str:
    return c.joined["participant"]["id"]


async def ok(c: Participant, message: dict) -> dict:
    reply = await c.request(message)
    assert reply["type"] == "ok", (message, reply)
    return reply


async def refused(c: Participant, message: dict) -> str:
    reply = await c.request(message)
    assert reply["type"] == "error", (message, reply)
    return reply["code"]


def room_of(c: Participant) -> str | None:
    """Where the client was last told it is (``breakout`` events)."""
    moves = c.events_of("breakout")
    return moves[-1]["room"] if moves else None


async def close_all(*clients: Participant) -> None:
    for c in clients:
        await c.close()


async def test_only_moderators_run_breakouts_and_bad_requests_are_refused(appliance: Appliance) -> None:
    m = meeting(appliance)
    host, pat = await seated(appliance, m, "host"), await seated(appliance, m, "pat")
    try:
        for message in MODERATORS_ONLY:
            assert await refused(pat, message) == "forbidden", message
        assert await refused(host, {"type": "breakout_assign", "assignments": {me(pat): "r1"}}) == "no_breakouts"
        for rooms in ([], ["x"] * 51, [""], ["A", "a"], "A", [7], ["x" * 61]):
            assert await refused(host, {"type": "breakout_create", "rooms": rooms}) == "bad_message", rooms
        await ok(host, {"type": "breakout_create", "rooms": ["Red", "Blue"]})
        assert await refused(host, {"type": "breakout_assign", "assignments": {"p-nobody": "r1"}}) == "not_found"
        assert await refused(host, {"type": "breakout_assign", "assignments": {me(pat): "r9"}}) == "not_found"
        assert await refused(host, {"type": "breakout_assign", "assignments": []}) == "bad_message"
        for minutes in (0, -1, "5", True, 24 * 60 + 1):
            assert await refused(host, {"type": "breakout_open", "minutes": minutes}) == "bad_message", minutes
        assert await refused(host, {"type": "breakout_open", "allow_choose": "yes"}) == "bad_message"
        assert await refused(host, {"type": "breakout_close"}) == "breakouts_closed"
        assert await refused(host, {"type": "breakout_broadcast", "text": "hi"}) == "breakouts_closed"
        assert await refused(pat, {"type": "breakout_join", "room": "r1"}) == "breakouts_closed"
        assert await refused(pat, {"type": "breakout_help"}) == "not_in_breakout"
        await ok(host, {"type": "breakout_open"})
        assert await refused(pat, {"type": "breakout_join", "room": "r1"}) == "forbidden"  # not assigned there
        assert await refused(pat, {"type": "breakout_join", "room": 5}) == "bad_message"
        assert await refused(host, {"type": "breakout_create", "rooms": ["New"]}) == "breakouts_open"
        assert await refused(host, {"type": "breakout_broadcast", "text": ""}) == "bad_message"
        assert room_of(pat) is None and not pat.events_of("media_reset")  # nothing moved anyone
        await ok(host, {"type": "breakout_join", "room": "r2"})  # a moderator visits any room
        assert room_of(host) == "r2"
        # recording is the main room's: started from there only (captions may be turned on from a
        # breakout room: tests/captions/test_captions_breakouts.py)
        assert await refused(host, {"type": "recording_start"}) == "in_breakout"
        await ok(host, {"type": "breakout_close"})
        assert audit(appliance, m["id"]).count("breakout.created") == 1
        assert {"breakout.opened", "breakout.closed"} <= set(audit(appliance, m["id"]))
    finally:
        await close_all(host, pat)


async def test_random_assignment_is_even_and_leaves_moderators_free(appliance: Appliance) -> None:
    m = meeting(appliance)
    host = await seated(appliance, m, "host")
    guests = [await guest(appliance, m, f"Guest {i}") for i in range(7)]
    try:
        await ok(host, {"type": "breakout_create", "rooms": ["A", "B", "C"]})
        for _ in range(3):
            await ok(host, {"type": "breakout_shuffle"})
            await host.wait_until(lambda: len(host.events_of("breakouts")) >= 2)
            assignments = host.events_of("breakouts")[-1]["assignments"]
            assert me(host) not in assignments
            assert set(assignments) == {me(g) for g in guests}
            assert sorted(Counter(assignments.values()).values()) == [2, 2, 3]
        # the plan reaches everyone, each seeing the same assignments
        last = host.events_of("breakouts")[-1]
        await guests[0].wait_until(lambda: guests[0].events_of("breakouts")[-1:] == [last])
    finally:
        await close_all(host, *guests)


async def test_a_breakout_room_has_its_own_media(appliance: Appliance) -> None:
    m = meeting(appliance)
    people = {who: await seated(appliance, m, who) for who in ("host", "pat", "ana")}
    host, pat, ana = people.values()
    ids = {who: me(c) for who, c in people.items()}
    try:
        for c in people.values():
            c.publish(ColourTrack())
            c.publish(ToneTrack())
            await c.offer()
        for c in people.values():  # everyone gets everyone in the main room
            await c.wait_until(lambda c=c: all(c.frames_from(ids[o], "video") >= 3 and c.frames_from(ids[o], "audio") >= 10
                                               for o in ids if o != c.name.lower()), 20)
        await ok(host, {"type": "breakout_create", "rooms": ["Room 1", "Room 2"]})
        await ok(host, {"type": "breakout_assign", "assignments": {ids["pat"]: "r1", ids["ana"]: "r1"}})
        await ok(host, {"type": "breakout_open"})
        for c in (pat, ana):
            assert room_of(c) == "r1" and c.events_of("breakout")[-1]["name"] == "Room 1"
            reset = c.events_of("media_reset")[-1]
            assert {t["participant"] for t in reset["tracks"]} <= {ids["pat"], ids["ana"]}  # never the host's
        # the roster stays the meeting's, each seat's view saying where it is
        await host.wait_until(lambda: {e["participant"]["id"]: e["participant"]["breakout"]
                                       for e in host.events_of("participant_updated")}.get(ids["ana"]) == "r1")
        before = {who: (pat.frames_from(ids[who], "video"), ana.frames_from(ids[who], "video")) for who in ids}
        await pat.wait_until(lambda: pat.frames_from(ids["ana"], "video") > before["ana"][0] + 5
                             and pat.frames_from(ids["ana"], "audio") > 10, 20)
        await ana.wait_until(lambda: ana.frames_from(ids["pat"], "video") > before["pat"][1] + 5, 20)
        # the host, in the main room, gets nothing more of theirs, and they nothing of the host's
        await host.wait_until(lambda: {e["track"]["participant"] for e in host.events_of("track_unpublished")}
                              >= {ids["pat"], ids["ana"]}, 10)
        frozen = {(who, kind): host.frames_from(ids[who], kind) for who in ("pat", "ana") for kind in ("video", "audio")}
        of_host = (pat.frames_from(ids["host"], "video"), ana.frames_from(ids["host"], "video"))
        await asyncio.sleep(1.5)
        assert {(who, kind): host.frames_from(ids[who], kind) for who in ("pat", "ana")
                for kind in ("video", "audio")} == frozen
        assert (pat.frames_from(ids["host"], "video"), ana.frames_from(ids["host"], "video")) == of_host
        # closing brings them back: their new media has the host's tracks, and the host theirs again
        await ok(host, {"type": "breakout_close"})
        for c in (pat, ana):
            await c.wait_until(lambda c=c: room_of(c) is None and len(c.events_of("media_reset")) == 2)
            assert ids["host"] in {t["participant"] for t in c.events_of("media_reset")[-1]["tracks"]}
        await host.wait_until(lambda: host.frames_from(ids["pat"], "video") > frozen["pat", "video"] + 5, 20)
        assert not any(c.failures for c in people.values()), [c.failures for c in people.values()]
    finally:
        await close_all(*people.values())


async def test_chat_stays_in_its_room_and_a_broadcast_reaches_every_room(appliance: Appliance) -> None:
    m = meeting(appliance)
    host, pat, ana = [await seated(appliance, m, who) for who in ("host", "pat", "ana")]
    try:
        await ok(host, {"type": "chat", "text": "main room, before"})
        await ok(host, {"type": "breakout_create", "rooms": ["One"]})
        await ok(host, {"type": "breakout_assign", "assignments": {me(pat): "r1"}})
        await ok(host, {"type": "breakout_open"})
        # moving in, pat's chat is the room's (empty); ana stays in the main room
        assert pat.events_of("breakout")[-1]["chat"] == []
        seen = {c: len(c.events_of("chat")) for c in (host, pat, ana)}  # what arrives from now on
        await ok(pat, {"type": "chat", "text": "in room one"})
        await ok(ana, {"type": "chat", "text": "main room, during"})
        await ok(host, {"type": "breakout_broadcast", "text": "five minutes left"})
        texts = {c: lambda c=c: [e["message"]["text"] for e in c.events_of("chat")[seen[c]:]] for c in (host, pat, ana)}
        await pat.wait_until(lambda: "five minutes left" in texts[pat]())
        await ana.wait_until(lambda: "five minutes left" in texts[ana]())
        assert texts[pat]() == ["in room one", "five minutes left"]
        assert "in room one" not in texts[host]() + texts[ana]()
        assert [e["message"].get("broadcast") for e in pat.events_of("chat")[seen[pat]:]] == [None, True]
        # someone joining now sees the main room's chat, not the breakout room's
        late = await guest(appliance, m, "Late")
        try:
            assert [e["text"] for e in late.joined["chat"]] == ["main room, before", "main room, during",
                                                                 "five minutes left"]
        finally:
            await late.close()
        # back in the main room, pat's chat is the main room's again
        await ok(pat, {"type": "breakout_join", "room": None})
        assert [e["text"] for e in pat.events_of("breakout")[-1]["chat"]] == [
            "main room, before", "main room, during", "five minutes left"]
    finally:
        await close_all(host, pat, ana)


async def test_the_timer_warns_then_brings_everyone_back(appliance: Appliance) -> None:
    m = meeting(appliance)
    host, pat = await seated(appliance, m, "host"), await seated(appliance, m, "pat")
    try:
        await ok(host, {"type": "breakout_create", "rooms": ["One", "Two"]})
        await ok(host, {"type": "breakout_assign", "assignments": {me(pat): "r2"}})
        await ok(host, {"type": "breakout_open", "minutes": 0.05})  # 3 s: shorter than the warning
        assert room_of(pat) == "r2"
        opened = host.events_of("breakouts")[-1]
        assert opened["open"] and 0 < opened["seconds_left"] <= 3 and opened["ends_at"]
        await pat.wait_until(lambda: pat.events_of("breakouts_closing"), 5)
        assert pat.events_of("breakouts_closing")[0]["seconds_left"] <= 3
        await pat.wait_until(lambda: room_of(pat) is None, 10)
        await host.wait_until(lambda: not host.events_of("breakouts")[-1]["open"])
        assert host.events_of("breakouts")[-1]["assignments"] == {me(pat): "r2"}  # kept for next time
        assert [e["participant"]["breakout"] for e in host.events_of("participant_updated")
                if e["participant"]["id"] == me(pat)] == ["r2", None]
        await host.wait_until(lambda: "breakout.closed" in audit(appliance, m["id"]))
    finally:
        await close_all(host, pat)


async def test_the_plan_outlives_a_restart(tmp_path: Path) -> None:
    app = start(tmp_path, users=True)
    try:
        m = meeting(app)
        host, pat = await seated(app, m, "host"), await seated(app, m, "pat")
        await ok(host, {"type": "breakout_create", "rooms": ["Alpha", "Beta"]})
        await ok(host, {"type": "breakout_assign", "assignments": {me(pat): "r2"}})
        await ok(host, {"type": "breakout_open", "minutes": 30})
        ends_at = host.events_of("breakouts")[-1]["ends_at"]
        await close_all(host, pat)
    finally:
        stop(app.proc)
    app = start(tmp_path, users=False)
    try:
        host, pat = await seated(app, m, "host"), await seated(app, m, "pat")
        plan = pat.joined["breakouts"]
        assert [r["name"] for r in plan["rooms"]] == ["Alpha", "Beta"]
        assert plan["open"] and plan["ends_at"] == ends_at and plan["assignments"] == {me(pat): "r2"}
        assert pat.joined["participant"]["breakout"] is None  # back in the main room, one click from Beta
        await ok(pat, {"type": "breakout_join", "room": "r2"})
        assert room_of(pat) == "r2"
        help_reply = await ok(pat, {"type": "breakout_help"})
        assert help_reply["told"] == 1
        await host.wait_until(lambda: host.events_of("breakout_help"))
        asked = host.events_of("breakout_help")[0]
        assert (asked["participant_id"], asked["room"], asked["room_name"]) == (me(pat), "r2", "Beta")
        assert await refused(pat, {"type": "breakout_help"}) == "too_fast"
        await close_all(host, pat)
    finally:
        stop(app.proc)
    assert "Traceback" not in app.output(), app.output()
