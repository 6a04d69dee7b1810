"""Recording per breakout room, through the real appliance (aiortc clients over signaling): while
the main room is recorded, each open breakout room is a recording of its own, started as the
rooms open or with the first person to arrive in one, stopped when the rooms close; its
``recording`` events reach its own people, and the REST view names its room."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from appliance_server import Appliance, serving
from cli.client.participant import Participant
from sfu.participants import ColourTrack, ToneTrack

USERS = {"ada": ("ada@example.com", "ada password 1"), "grace": ("grace@example.com", "grace password 1"),
         "linus": ("linus@example.com", "linus password 1")}


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    yield from serving(tmp_path_factory.mktemp("recording-breakouts"), USERS, media_loopback="true")


def token(app: Appliance, who: str) -> str:
    return app.login(*USERS[who])["access_token"]


async def joined(app: Appliance, who: str, code: str, rgb: tuple[int, int, int]) -> Participant:
    client = Participant(app.url, token(app, who))
    await client.connect()
    assert (await client.join(code, who.title()))["type"] == "joined"
    client.publish(ToneTrack(amplitude=0.3))
    client.publish(ColourTrack(rgb))
    assert (await client.offer())["type"] == "answer"
    return client


async def ok(client: Participant, message: dict) -> dict:
    reply = await client.request(message)
    assert reply["type"] == "ok", (message, reply)
    return reply


def active_in(client: Participant, room: str) -> list[dict]:
    """The recordings of a breakout room this client was told are running."""
    running = {e["recording"]["id"]: e["recording"] for e in client.events_of("recording")
               if e["active"] and e["recording"].get("room") == room}
    return list(running.values())


async def test_each_open_breakout_room_is_recorded_on_its_own(appliance: Appliance) -> None:
    headers = {"Authorization": f"Bearer {token(appliance, 'ada')}"}
    meeting = httpx.post(f"{appliance.url}/api/v1/meetings", json={"title": "rooms recorded"}, headers=headers).json()
    people = {who: await joined(appliance, who, meeting["code"], rgb)
              for who, rgb in (("ada", (200, 30, 30)), ("grace", (30, 200, 30)), ("linus", (30, 30, 200)))}
    ada, grace, linus = people.values()
    ids = {who: c.joined["participant"]["id"] for who, c in people.items()}
    try:
        await ok(ada, {"type": "breakout_create", "rooms": ["Room 1", "Room 2"]})
        await ok(ada, {"type": "breakout_assign", "assignments": {ids["grace"]: "r1", ids["linus"]: "r1"}})
        main = (await ok(ada, {"type": "recording_start"}))["recording"]
        assert "room" not in main
        await ok(ada, {"type": "breakout_open"})  # Room 1 is recorded from now; Room 2 is empty
        for c in (grace, linus):
            await c.wait_until(lambda c=c: len(active_in(c, "Room 1")) == 1)
        room1 = active_in(grace, "Room 1")[0]
        assert room1["id"] != main["id"] and active_in(linus, "Room 1") == [room1]
        before = grace.frames_from(ids["linus"], "video")
        await grace.wait_until(lambda: grace.frames_from(ids["linus"], "video") > before + 5, 20)  # his media in Room 1
        # Linus moves to Room 2, empty until now: its recording starts with him there.
        await ok(ada, {"type": "breakout_assign", "assignments": {ids["linus"]: "r2"}})
        await linus.wait_until(lambda: len(active_in(linus, "Room 2")) == 1)
        room2 = active_in(linus, "Room 2")[0]
        assert not active_in(grace, "Room 2")
        assert not [e for e in ada.events_of("recording") if (e["recording"] or {}).get("room")]  # the host stayed
        await asyncio.sleep(2)  # some media in each room
        await ok(ada, {"type": "breakout_close"})
        # Back in the main room, each is told its recording (the main room's, still running).
        for c in (grace, linus):
            await c.wait_until(lambda c=c: any(e.get("moved") and (e["recording"] or {}).get("id") == main["id"]
                                               for e in c.events_of("recording")))
        await ok(ada, {"type": "recording_stop"})

        def stored() -> dict[str, dict]:
            r = httpx.get(f"{appliance.url}/api/v1/meetings/{meeting['id']}/recordings", headers=headers)
            return {rec["id"]: rec for rec in r.json()["recordings"]}

        deadline = time.monotonic() + 30
        while any(r["status"] in ("recording", "uploading") for r in stored().values()) or len(stored()) < 3:
            assert time.monotonic() < deadline, stored()
            time.sleep(0.3)
        recordings = stored()
        assert set(recordings) == {main["id"], room1["id"], room2["id"]}
        assert [recordings[i]["room"] for i in (main["id"], room1["id"], room2["id"])] == [None, "Room 1", "Room 2"]
        assert all(r["status"] == "ready" for r in recordings.values()), recordings
        # Each room's recording has its own people's tracks only.
        assert {t["participant_id"] for t in recordings[room1["id"]]["tracks"]} == {ids["grace"], ids["linus"]}
        assert {t["participant_id"] for t in recordings[room2["id"]]["tracks"]} == {ids["linus"]}
        assert recordings[room1["id"]]["stop_reason"] == "the breakout rooms closed"
        assert recordings[room2["id"]]["stop_reason"] == "the breakout rooms closed"
        overview = httpx.get(f"{appliance.url}/api/v1/admin/recordings", headers=headers).json()["recordings"]
        assert {r["id"]: r["room"] for r in overview if r["meeting_id"] == meeting["id"]} == {
            main["id"]: None, room1["id"]: "Room 1", room2["id"]: "Room 2"}
    finally:
        for client in people.values():
            await client.close()


async def test_the_main_rooms_recording_goes_on_while_everyone_is_in_breakout_rooms(appliance: Appliance) -> None:
    """The host visits a breakout room while everyone else is in one: the main room is empty for a
    while, and its recording goes on (one recording, no 'stopped' event); it stops, ready, once
    the last person leaves the meeting."""
    headers = {"Authorization": f"Bearer {token(appliance, 'ada')}"}
    meeting = httpx.post(f"{appliance.url}/api/v1/meetings", json={"title": "host visits"}, headers=headers).json()
    people = {who: await joined(appliance, who, meeting["code"], rgb)
              for who, rgb in (("ada", (200, 30, 30)), ("grace", (30, 200, 30)))}
    ada, grace = people.values()
    grace_id = grace.joined["participant"]["id"]
    try:
        await ok(ada, {"type": "breakout_create", "rooms": ["Room 1"]})
        await ok(ada, {"type": "breakout_assign", "assignments": {grace_id: "r1"}})
        main = (await ok(ada, {"type": "recording_start"}))["recording"]
        await ada.wait_until(lambda: ada.frames_from(grace_id, "video") > 5, 20)  # media while recorded
        await ok(ada, {"type": "breakout_open"})
        await grace.wait_until(lambda: len(active_in(grace, "Room 1")) == 1)
        await ok(ada, {"type": "breakout_join", "room": "r1"})  # the main room is empty now
        before = ada.frames_from(grace_id, "video")
        await ada.wait_until(lambda: ada.frames_from(grace_id, "video") > before + 5, 20)
        await asyncio.sleep(1.5)
        await ok(ada, {"type": "breakout_join", "room": None})
        await ada.wait_until(lambda: any(e.get("moved") and (e["recording"] or {}).get("id") == main["id"]
                                         for e in ada.events_of("recording")))
        assert not [e for e in ada.events_of("recording") if not e["active"] and e["recording"]["id"] == main["id"]]
        row = httpx.get(f"{appliance.url}/api/v1/recordings/{main['id']}", headers=headers).json()
        assert row["status"] == "recording", row
    finally:
        for client in people.values():
            await client.close()
    deadline = time.monotonic() + 30
    while (row := httpx.get(f"{appliance.url}/api/v1/recordings/{main['id']}", headers=headers).json())["status"] in (
            "recording", "uploading"):
        assert time.monotonic() < deadline, row
        time.sleep(0.3)
    assert row["status"] == "ready" and row["stop_reason"] == "everyone left the meeting", row
    assert {t["participant_id"] for t in row["tracks"]} == {ada.joined["participant"]["id"], grace_id}
