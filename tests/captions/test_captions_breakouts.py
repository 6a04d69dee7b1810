"""Captions in breakout rooms, in a real appliance with local:// inference (Silero VAD and Whisper
on the CPU, in the SFU worker): each open room is captioned by a sink of its own, its captions
reach only the viewers in that room, and its transcript lines carry the room's name. The host
turns captions on from a breakout room while the main room is empty; the main room's sink starts
when the rooms close and people arrive there."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiortc.contrib.media import MediaPlayer

from appliance_server import Appliance, serving
from cli.client.participant import Participant

from .conftest import SCRIPT, words

USERS = {"ada": ("ada@example.com", "ada password 1", "Ada"), "grace": ("grace@example.com", "grace password 1", "Grace"),
         "linus": ("linus@example.com", "linus password 1", "Linus"),
         "hopper": ("hopper@example.com", "hopper password 1", "Hopper")}
VOCABULARY = set(words(" ".join(SCRIPT)))


@pytest.fixture(scope="module")
def appliance(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    yield from serving(tmp_path_factory.mktemp("captions-breakouts"), USERS, media_loopback="true",
                       inference="local://", model_repository=str(model_repository))


def token(app: Appliance, who: str) -> str:
    return app.login(*USERS[who][:2])["access_token"]


async def seated(app: Appliance, who: str, meeting: dict) -> Participant:
    client = Participant(app.url, token(app, who))
    await client.connect()
    assert (await client.join(meeting["code"], USERS[who][2]))["type"] == "joined"
    return client


async def ok(client: Participant, message: dict) -> None:
    reply = await client.request(message)
    assert reply["type"] == "ok", (message, reply)


def finals(client: Participant) -> list[dict]:
    return [c for c in client.events_of("caption") if c["final"] and c["text"] and not c.get("gap")]


def familiar(text: str) -> float:
    """The share of the words that the script has (the speech loops, so captions start anywhere in it)."""
    said = words(text)
    return sum(w in VOCABULARY for w in said) / max(1, len(said))


async def test_a_breakout_room_is_captioned_for_its_own_people_and_in_the_transcript(
        appliance: Appliance, script_wav: Path) -> None:
    meeting = httpx.post(f"{appliance.url}/api/v1/meetings", json={"title": "captions in rooms"},
                         headers={"Authorization": f"Bearer {token(appliance, 'ada')}"}).json()
    people = {who: await seated(appliance, who, meeting) for who in USERS}
    ada, grace, linus, hopper = people.values()
    ids = {who: c.joined["participant"]["id"] for who, c in people.items()}
    try:
        for viewer in (ada, linus, hopper):
            assert (await viewer.request({"type": "show_captions", "enabled": True}))["showing"] is True
        grace.publish(MediaPlayer(str(script_wav), loop=True).audio)  # speaks on, wherever she is
        assert (await grace.offer())["type"] == "answer"
        await ok(ada, {"type": "breakout_create", "rooms": ["Room 1", "Room 2"]})
        await ok(ada, {"type": "breakout_assign", "assignments": {ids["grace"]: "r1", ids["linus"]: "r1",
                                                                  ids["hopper"]: "r2"}})
        await ok(ada, {"type": "breakout_open"})
        await ok(ada, {"type": "breakout_join", "room": "r2"})
        # The host turns captions on from a breakout room (the main room is empty now).
        await ok(ada, {"type": "set_captions", "enabled": True, "language": "en"})

        await linus.wait_until(lambda: len(finals(linus)) >= 3, timeout=90)
        heard = finals(linus)
        assert {c["participant_id"] for c in heard} == {ids["grace"]}
        assert {(c["name"], c["room"]) for c in heard} == {("Grace", "Room 1")}
        assert familiar(" ".join(c["text"] for c in heard)) >= 0.8, [c["text"] for c in heard]
        # Room 2 hears nothing of Room 1, nor gets its captions, though it shows captions.
        assert not ada.events_of("caption") and not hopper.events_of("caption")

        with httpx.Client(base_url=appliance.url, headers={"Authorization": f"Bearer {token(appliance, 'linus')}"},
                          timeout=10) as api:
            segments = api.get(f"/api/v1/meetings/{meeting['id']}/transcript").json()["segments"]
            assert segments and {(s["name"], s["room"]) for s in segments} == {("Grace", "Room 1")}
            assert [s["text"] for s in segments][:3] == [c["text"] for c in heard][:3]
            text = api.get(f"/api/v1/meetings/{meeting['id']}/transcript", params={"format": "txt"}).text
            assert len(re.findall(r"^\[[0-9:]{8}\] Grace \(Room 1\): ", text, re.M)) == len(segments), text

        # Closed: everyone is back in the main room, whose sink starts with them there; its
        # captions reach the main room's viewers, without a room.
        await ok(ada, {"type": "breakout_close"})
        await ada.wait_until(lambda: len(finals(ada)) >= 1, timeout=60)
        assert all("room" not in c for c in finals(ada)) and {c["name"] for c in finals(ada)} == {"Grace"}
        await hopper.wait_until(lambda: len(finals(hopper)) >= 1, timeout=30)
    finally:
        for client in people.values():
            await client.close()
