"""End-to-end encrypted meetings at the protocol level (docs/protocol.md, "End-to-end encryption"):
public keys and wrapped frame keys are relayed only among the seats of one encrypted meeting, in
bounds, and what would need the server to see or hear the media (recording, live captions) is
refused. The browsers' encryption itself: tests/e2e/test_e2ee.py."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import httpx
import pytest

from appliance.stores.relational import Meeting, Relational, SchemaVersion, User
from appliance_server import Appliance, serving
from cli.client.participant import Participant

USERS = {"ada": ("ada@example.com", "ada password 1"), "grace": ("grace@example.com", "grace password 1"),
         "linus": ("linus@example.com", "linus password 1")}
PUBLIC_KEY = base64.b64encode(b"\x04" + os.urandom(64)).decode()  # the shape of a raw P-256 public key
WRAPPED = base64.b64encode(os.urandom(60)).decode()  # IV, a 32-byte key and the tag


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    yield from serving(tmp_path_factory.mktemp("e2ee"), USERS, media_loopback="true")


def headers(app: Appliance, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.login(*USERS[who])['access_token']}"}


def new_meeting(app: Appliance, **fields) -> dict:
    r = httpx.post(f"{app.url}/api/v1/meetings", json={"title": "e2ee test", **fields}, headers=headers(app, "ada"))
    assert r.status_code == 201, r.text
    return r.json()


async def seated(app: Appliance, who: str, meeting: dict) -> Participant:
    c = Participant(app.url, app.login(*USERS[who])["access_token"], name=who.title())
    await c.connect()
    assert (await c.join(meeting["code"]))["type"] == "joined"
    return c


def keys_to(c: Participant) -> list[dict]:
    return c.events_of("e2ee_key")


async def test_keys_are_relayed_only_within_the_encrypted_meeting_and_in_bounds(appliance: Appliance) -> None:
    meeting = new_meeting(appliance, e2ee=True)
    assert meeting["e2ee"] is True
    other = new_meeting(appliance, e2ee=True)
    ada = await seated(appliance, "ada", meeting)
    grace = await seated(appliance, "grace", meeting)
    linus = await seated(appliance, "linus", other)
    try:
        assert ada.joined["e2ee"] == {"enabled": True, "public_keys": {}}
        ada_id, grace_id = ada.joined["participant"]["id"], grace.joined["participant"]["id"]
        linus_id = linus.joined["participant"]["id"]

        # A public key goes to everyone else in the meeting, and to those who join later.
        assert (await ada.request({"type": "e2ee_key", "public_key": PUBLIC_KEY}))["type"] == "ok"
        await grace.wait_until(lambda: keys_to(grace))
        assert keys_to(grace) == [{"type": "e2ee_key", "from": ada_id, "public_key": PUBLIC_KEY}]
        late = await seated(appliance, "ada", meeting)  # a second seat of the same account
        assert late.joined["e2ee"]["public_keys"] == {ada_id: PUBLIC_KEY}
        await late.leave()

        # A wrapped key goes to the one participant it names, and only within the meeting.
        wrapped = {"type": "e2ee_key", "to": grace_id, "key_id": 257, "wrapped": WRAPPED}
        assert (await ada.request(wrapped))["type"] == "ok"
        await grace.wait_until(lambda: len(keys_to(grace)) == 2)
        assert keys_to(grace)[1] == {"type": "e2ee_key", "from": ada_id, "key_id": 257, "wrapped": WRAPPED}
        across = await linus.request({**wrapped, "to": ada_id})
        assert across["code"] == "not_found"
        assert (await ada.request({**wrapped, "to": linus_id}))["code"] == "not_found"
        assert (await ada.request({**wrapped, "to": ada_id}))["code"] == "bad_message"

        # Shapes and sizes.
        for bad in ({"public_key": base64.b64encode(b"\x04" + bytes(63)).decode()},  # too short
                    {"public_key": base64.b64encode(b"\x03" + bytes(64)).decode()},  # compressed
                    {"public_key": base64.b64encode(b"\x04" * 1000).decode()},  # far too long
                    {"public_key": "not base64!"}, {"public_key": 7},
                    {**wrapped, "wrapped": base64.b64encode(bytes(129)).decode()},
                    {**wrapped, "wrapped": ""}, {**wrapped, "key_id": -1}, {**wrapped, "key_id": 2**32},
                    {**wrapped, "key_id": "1"}, {**wrapped, "key_id": True}):
            reply = await ada.request({"type": "e2ee_key", **{k: v for k, v in bad.items() if k != "type"}})
            assert reply["code"] == "bad_message", (bad, reply)
        await grace.request({"type": "ping"})  # whatever was relayed to her has arrived before its pong
        assert len(keys_to(grace)) == 2 and not keys_to(ada)  # nothing refused was relayed

        # No more than the rule allows in 10 s.
        replies = [await grace.request({**wrapped, "to": ada_id}) for _ in range(301)]
        assert {r["type"] for r in replies[:300]} == {"ok"}
        assert replies[300]["code"] == "too_fast"
        assert not any(keys_to(linus))
    finally:
        for c in (ada, grace, linus):
            await c.close()


async def test_keys_only_in_an_encrypted_meeting_and_only_when_seated(appliance: Appliance) -> None:
    plain = new_meeting(appliance)
    assert plain["e2ee"] is False
    ada = await seated(appliance, "ada", plain)
    outsider = Participant(appliance.url, appliance.login(*USERS["linus"])["access_token"])
    await outsider.connect()
    try:
        assert ada.joined["e2ee"] == {"enabled": False}
        assert (await ada.request({"type": "e2ee_key", "public_key": PUBLIC_KEY}))["code"] == "e2ee_off"
        assert (await outsider.request({"type": "e2ee_key", "public_key": PUBLIC_KEY}))["code"] == "not_joined"
    finally:
        await ada.close()
        await outsider.close()


async def test_recording_and_captions_are_refused_in_an_encrypted_meeting(appliance: Appliance) -> None:
    meeting = new_meeting(appliance, e2ee=True)
    ada = await seated(appliance, "ada", meeting)
    try:
        for message in ({"type": "recording_start"}, {"type": "set_captions", "enabled": True}):
            reply = await ada.request(message)
            assert reply["type"] == "error" and reply["code"] == "e2ee", reply
            assert "end-to-end encrypted" in reply["message"]
        assert (await ada.request({"type": "set_captions", "enabled": False}))["type"] == "ok"  # off is off
        assert ada.joined["recording"] is None and ada.joined["captions"]["enabled"] is False

        # The setting changes only while nobody is in the meeting.
        host = headers(appliance, "ada")
        r = httpx.patch(f"{appliance.url}/api/v1/meetings/{meeting['id']}", json={"e2ee": False}, headers=host)
        assert r.status_code == 409 and r.json()["error"]["code"] == "meeting_in_progress", r.text
        r = httpx.patch(f"{appliance.url}/api/v1/meetings/{meeting['id']}", json={"e2ee": False},
                        headers=headers(appliance, "grace"))
        assert r.status_code == 403, r.text  # not her meeting: that comes first
    finally:
        await ada.leave()
    r = httpx.patch(f"{appliance.url}/api/v1/meetings/{meeting['id']}", json={"e2ee": False}, headers=host)
    assert r.status_code == 200 and r.json()["e2ee"] is False, r.text
    again = await seated(appliance, "ada", meeting)
    try:
        assert again.joined["e2ee"] == {"enabled": False}
        reply = await again.request({"type": "set_captions", "enabled": True})
        assert reply.get("code") != "e2ee", reply
    finally:
        await again.close()


async def test_migration_5_adds_the_setting_to_a_meeting_table_without_it(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    db = Relational(url)
    await db.open()

    def back_to_version_4() -> None:  # as a database made before meetings could be encrypted
        db.db.execute_sql("ALTER TABLE meeting DROP COLUMN e2ee")
        SchemaVersion.delete().where(SchemaVersion.version == 5).execute()
        owner = User.create(email="o@example.org", password_hash="x")
        db.db.execute_sql("INSERT INTO meeting (id, code, title, owner_id, lobby, allow_guests, locked, status, "
                          "created_at) VALUES ('m1', 'old-meet-ing', 'old', ?, 0, 0, 0, 'scheduled', "
                          "'2026-01-01 00:00:00')", (owner.id,))

    await db.run(back_to_version_4)
    await db.close()
    again = Relational(url)
    await again.open()
    try:
        assert again.migrations_run == 1
        assert (await again.run(Meeting.get_by_id, "m1")).e2ee is False
    finally:
        await again.close()
