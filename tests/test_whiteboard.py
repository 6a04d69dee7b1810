"""The shared whiteboard over signaling (appliance/signaling/whiteboard.py), against the real
appliance with the project's signaling client; the Yjs updates are made with pycrdt, shaped as
appliance/web/whiteboard.js makes them (docs/protocol.md, "Whiteboard")."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pycrdt import Array, Doc, Map

from appliance_server import Appliance, start_appliance
from cli.client.signaling import SignalingClient, signaling_url
from conftest import stop

USERS = {"ada": ("ada@example.com", "ada password 1"), "grace": ("grace@example.com", "grace password 1"),
         "linus": ("linus@example.com", "linus password 1")}
MAX_UPDATE = 128 * 1024  # appliance/signaling/whiteboard.py
MAX_BOARD = 2 * 1024 * 1024


class Board:
    """A client's copy of a board: items drawn on pages, as whiteboard.js keeps them."""

    def __init__(self) -> None:
        self.doc = Doc()

    def draw(self, item_id: str, page: str = "main", **fields: object) -> bytes:
        """Add a stroke; the update that says so."""
        before = self.doc.get_state()
        items = self.doc.get(f"page:{page}", type=Array)
        items.append(Map({"id": item_id, "kind": "pen", "colour": "#1d4ed8", "width": 4,
                          "points": Array([10, 10, 200, 120]), **fields}))
        return self.doc.get_update(before)

    def erase_all(self, page: str = "main") -> bytes:
        before = self.doc.get_state()
        items = self.doc.get(f"page:{page}", type=Array)
        del items[0:len(items)]
        return self.doc.get_update(before)


def ids(update: str, page: str = "main") -> list[str]:
    """The items on a page of the board a (base64) update describes."""
    doc = Doc()
    doc.apply_update(base64.b64decode(update))
    return [item["id"] for item in doc.get(f"page:{page}", type=Array).to_py()]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("whiteboard")


@pytest.fixture(scope="module")
def appliance(data_dir: Path) -> Iterator[Appliance]:
    app = start_appliance(data_dir)
    for i, (email, password) in enumerate(USERS.values()):
        app.add_user(email, password, admin=i == 0)
    yield app
    if app.proc.poll() is None:
        stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


def token(app: Appliance, who: str) -> str:
    return app.login(*USERS[who])["access_token"]


def new_meeting(app: Appliance) -> dict:
    r = httpx.post(f"{app.url}/api/v1/meetings", json={"title": "whiteboard test"},
                   headers={"Authorization": f"Bearer {token(app, 'ada')}"})
    assert r.status_code == 201
    return r.json()


class Person:
    """Someone in the meeting with no media: a signaling connection and what it heard."""

    def __init__(self, client: SignalingClient, joined: dict) -> None:
        self.client = client
        self.joined = joined
        self.events: list[dict] = []

    async def send(self, update: bytes | str) -> dict:
        text = update if isinstance(update, str) else b64(update)
        return await self.client.request({"type": "whiteboard_update", "update": text})

    async def heard(self, kind: str, count: int = 1) -> list[dict]:
        for _ in range(200):
            got = [e for e in self.events if e.get("type") == kind]
            if len(got) >= count:
                return got
            await asyncio.sleep(0.05)
        raise AssertionError(f"{count} {kind} events did not arrive: {self.events}")


async def join(app: Appliance, who: str, meeting: dict) -> Person:
    events: list[dict] = []
    client = await SignalingClient.connect(signaling_url(app.url, token(app, who)), events.append, lambda _: None)
    joined = await client.request({"type": "join", "meeting": meeting["code"], "name": who.title()})
    assert joined["type"] == "joined", joined
    person = Person(client, joined)
    person.events = events
    return person


@pytest.fixture
async def meeting(appliance: Appliance) -> AsyncIterator[tuple[dict, Person, Person]]:
    """A new meeting with Ada (its host) and Grace (a participant) in it."""
    meeting = new_meeting(appliance)
    ada, grace = await join(appliance, "ada", meeting), await join(appliance, "grace", meeting)
    yield meeting, ada, grace
    for person in (ada, grace):
        await person.client.close()


async def test_strokes_reach_the_others_and_a_late_joiner(appliance: Appliance, meeting) -> None:
    meeting, ada, grace = meeting
    assert ids(ada.joined["whiteboard"]["update"]) == [] and ada.joined["whiteboard"]["locked"] is False
    boards = {"ada": Board(), "grace": Board()}
    # Both draw at once; each change is acknowledged and relayed to the other.
    replies = await asyncio.gather(*(person.send(boards[name].draw(f"{name}-{i}"))
                                     for i in range(3) for name, person in (("ada", ada), ("grace", grace))))
    assert [r["type"] for r in replies] == ["ok"] * 6
    for name, person, other in (("ada", ada, grace), ("grace", grace, ada)):
        for event in await person.heard("whiteboard_update", 3):
            boards[name].doc.apply_update(base64.b64decode(event["update"]))
            assert event["from"] == other.joined["participant"]["id"]
    drawn = sorted(f"{name}-{i}" for name in boards for i in range(3))
    assert sorted(ids(b64(boards["ada"].doc.get_update()))) == drawn
    assert ids(b64(boards["ada"].doc.get_update())) == ids(b64(boards["grace"].doc.get_update()))

    linus = await join(appliance, "linus", meeting)
    try:
        assert ids(linus.joined["whiteboard"]["update"]) == ids(b64(boards["ada"].doc.get_update()))
        # A client that has part of the board asks for the rest only.
        partial = Doc()
        partial.apply_update(base64.b64decode(ada.joined["whiteboard"]["update"]))
        reply = await linus.client.request({"type": "whiteboard_state",
                                            "state_vector": b64(boards["ada"].doc.get_state())})
        assert reply["type"] == "whiteboard_state" and reply["locked"] is False
        assert ids(reply["update"]) == []  # Ada's board has it all: nothing new in it
    finally:
        await linus.client.close()


# Updates found by mutating real ones that pycrdt 0.14 (yrs 0.28) decodes, then fails on half-way
# through applying them: with a RuntimeError after adding an item, and with a Rust panic.
HALF_APPLIED = ("AQbh2o/26fmLCgAHAQlwYWdlOm1haW4BKADh2o/26fmLCgACaWQBdwJ4MCgA4dqP9un5iwoBBGtpbmQBdwNwZW4nAOHaj/bp+YsKAAZw"
                "b2ludF8ACADh2o/26fkKAwR8P4AAAHxAAAAAfEBAAAB8QJAAACgA4dqP9un5iwoABHRleHQBdwAA")
PANICKING = ("AQbh2o/26fmLCvaH4dqP9un5CgABKADh2o/26fmLCgkCaWQBdwJ4MSgA4dqP9un5iwoJBGtpbmQBdwNwZW4nAOHaj/bp+YsKCQZwb2lu"
             "dHMACADh2o/26fmLCgwEfD+AAAB8QAAAAHxAQAAAfECQAAAoAOHaj/bpiwoJBHRleHQBdwZow6lsbG8A")


async def test_garbage_and_oversized_updates_are_refused(meeting) -> None:
    _, ada, grace = meeting
    for bad in (HALF_APPLIED, PANICKING):  # refused, and the board keeps nothing of them
        assert (await ada.send(bad))["code"] == "bad_update"
        assert ids((await ada.client.request({"type": "whiteboard_state"}))["update"]) == []
    for bad, code in (("not base64!", "bad_update"), (b64(b"\xff" * 100), "bad_update"),
                      (b64(secrets.token_bytes(64)), "bad_update"), (123, "bad_message"),
                      ("", "bad_message"), (b64(b"x" * (MAX_UPDATE + 1)), "bad_message")):
        reply = await ada.client.request({"type": "whiteboard_update", "update": bad})
        assert (reply["type"], reply["code"]) == ("error", code), (bad if isinstance(bad, int) else bad[:20], reply)
    # An update that builds on a change the board never got is refused, and the board stays as it was.
    board = Board()
    first = board.draw("first")
    assert (await ada.send(board.draw("second")))["code"] == "out_of_sync"
    assert (await ada.send(first))["type"] == "ok"
    state = await ada.client.request({"type": "whiteboard_state"})
    assert ids(state["update"]) == ["first"]
    assert not [e for e in grace.events if e.get("type") == "whiteboard_update" and "second" in ids(e["update"])]
    bad_vector = await ada.client.request({"type": "whiteboard_state", "state_vector": b64(b"\xff\xff\xff")})
    assert bad_vector["code"] == "bad_update"


async def test_a_seat_that_sends_too_fast_is_slowed_down(meeting) -> None:
    _, ada, _ = meeting
    board = Board()
    replies = await asyncio.gather(*(ada.send(board.draw(f"fast-{i}")) for i in range(70)))
    refused = [r for r in replies if r["type"] == "error"]
    assert refused and {r["code"] for r in refused} == {"too_fast"} and all(r["retry_after"] >= 1 for r in refused)
    assert len(replies) - len(refused) <= 60


async def test_a_locked_board_takes_only_the_moderators_strokes(appliance: Appliance, meeting) -> None:
    meeting, ada, grace = meeting
    board = Board()
    refused = await grace.client.request({"type": "whiteboard_lock", "locked": True})
    assert refused["code"] == "forbidden"
    assert (await ada.client.request({"type": "whiteboard_lock", "locked": "yes"}))["code"] == "bad_message"
    assert (await ada.client.request({"type": "whiteboard_lock", "locked": True}))["locked"] is True
    [event] = await grace.heard("whiteboard_locked")
    assert event == {"type": "whiteboard_locked", "locked": True, "by": "Ada"}

    assert (await grace.send(board.draw("grace-while-locked")))["code"] == "forbidden"
    board = Board()  # Grace's refused stroke is not part of the board
    assert (await ada.send(board.draw("ada-while-locked")))["type"] == "ok"
    linus = await join(appliance, "linus", meeting)
    await linus.client.close()
    assert linus.joined["whiteboard"]["locked"] is True

    assert (await ada.client.request({"type": "whiteboard_lock", "locked": False}))["locked"] is False
    assert (await grace.send(board.draw("grace-after")))["type"] == "ok"
    assert ids((await ada.client.request({"type": "whiteboard_state"}))["update"]) == ["ada-while-locked",
                                                                                       "grace-after"]
    admin = {"Authorization": f"Bearer {token(appliance, 'ada')}"}
    audit = httpx.get(f"{appliance.url}/api/v1/audit", params={"meeting_id": meeting["id"]}, headers=admin).json()
    assert [e["action"] for e in audit["events"]][:2] == ["whiteboard.unlocked", "whiteboard.locked"]


async def test_a_full_board_takes_no_more_but_can_be_erased(meeting) -> None:
    _, ada, grace = meeting
    board = Board()
    chunk = MAX_UPDATE - 2048  # each update just under the limit, of text that does not compress
    sent, refused = 0, None
    while refused is None:
        person = (ada, grace)[sent % 2]  # two people: neither reaches the rate limit
        update = board.draw(f"big-{sent}", note=secrets.token_urlsafe(chunk)[:chunk])
        assert len(update) <= MAX_UPDATE
        reply = await person.send(update)
        if reply["type"] == "error":
            refused = reply
        else:
            sent += 1
    assert refused["code"] == "board_full"
    assert MAX_BOARD - 2 * MAX_UPDATE < sent * chunk <= MAX_BOARD  # nearly 2 MiB taken, the next one not
    # The refused stroke is not on the board; erasing everything still is allowed.
    state = await ada.client.request({"type": "whiteboard_state"})
    shown = Board()
    shown.doc.apply_update(base64.b64decode(state["update"]))
    assert len(ids(state["update"])) == sent
    assert (await grace.send(shown.erase_all()))["type"] == "ok"
    assert ids((await grace.client.request({"type": "whiteboard_state"}))["update"]) == []
    # What was erased takes no room: the board takes as much again.
    for i in range(sent):
        update = shown.draw(f"again-{i}", note=secrets.token_urlsafe(chunk)[:chunk])
        assert (await (ada, grace)[i % 2].send(update))["type"] == "ok"


async def test_an_acknowledged_board_survives_a_crash(appliance: Appliance, data_dir: Path) -> None:
    """Past a merge of the stored updates (every 64) and some after it; the appliance is killed
    (no shutdown at all) right after the last acknowledgement."""
    meeting = new_meeting(appliance)
    ada, grace = await join(appliance, "ada", meeting), await join(appliance, "grace", meeting)
    board = Board()
    for i in range(70):
        assert (await (ada, grace)[i % 2].send(board.draw(f"s-{i}")))["type"] == "ok"
    assert (await ada.client.request({"type": "whiteboard_lock", "locked": True}))["type"] == "ok"
    appliance.proc.kill()
    appliance.proc.wait()
    for person in (ada, grace):
        await person.client.close()

    again = start_appliance(data_dir)
    appliance.proc, appliance.url = again.proc, again.url  # the module's fixture stops it
    grace = await join(appliance, "grace", meeting)
    try:
        assert ids(grace.joined["whiteboard"]["update"]) == [f"s-{i}" for i in range(70)]
        assert grace.joined["whiteboard"]["locked"] is True
    finally:
        await grace.client.close()

