"""Hostile participants and guests in a meeting, against the running appliance (issue 12,
findings 3 and 7): removal that holds, and limits on what one seat may cost the others."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from aiortc import RTCPeerConnection

from appliance_server import Appliance, serving
from cli.client.participant import Participant

USERS = {"host": ("host@example.com", "host password 1"), "pat": ("pat@example.com", "pat password 1"),
         "sam": ("sam@example.com", "sam password 1")}


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    yield from serving(tmp_path_factory.mktemp("meetings"), USERS, media_loopback="true", chat_messages_per_10s="5", max_tracks_per_participant="2", max_waiting_per_meeting="2")


def api(app: Appliance, who: str | None = None, bearer: str | None = None) -> httpx.Client:
    bearer = bearer or app.login(*USERS[who])["access_token"]
    return httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {bearer}"})


def meeting(app: Appliance, **fields) -> dict:
    r = api(app, "sam").post("/api/v1/meetings", json={"title": "security", **fields})
    assert r.status_code == 201, r.text
    return r.json()


async def connect(app: Appliance, bearer: str) -> Participant:
    c = Participant(app.url, bearer)
    await c.connect()
    return c


async def joined(app: Appliance, bearer: str, m: dict, name: str) -> Participant:
    c = await connect(app, bearer)
    reply = await c.join(m["code"], name)
    assert reply["type"] == "joined", reply
    return c


async def close_all(*clients: Participant) -> None:
    for c in clients:
        await c.close()


def meeting_paths(m: dict) -> list[str]:
    """The REST paths of a meeting that need one to belong to it."""
    return [f"/api/v1/meetings/{m['id']}/files", f"/api/v1/meetings/{m['id']}/recordings",
            f"/api/v1/meetings/{m['id']}/transcript/search?q=x", f"/api/v1/meetings/{m['id']}/captions"]


async def test_a_removed_account_loses_the_meeting_until_let_back(appliance: Appliance) -> None:
    m = meeting(appliance)
    host_token, pat_api = appliance.login(*USERS["sam"])["access_token"], api(appliance, "pat")
    pat_token = pat_api.headers["authorization"].split()[1]
    host = await joined(appliance, host_token, m, "Sam")
    pat = await joined(appliance, pat_token, m, "Pat")
    pat_tab = await joined(appliance, pat_token, m, "Pat")  # the same person in a second tab
    back = None
    try:
        shared = pat_api.post(f"/api/v1/meetings/{m['id']}/files", params={"name": "a.txt"}, content=b"agenda")
        assert shared.status_code == 201, shared.text
        link = pat_api.get(f"/api/v1/meetings/{m['id']}/files/{shared.json()['id']}").json()["url"]
        # pat is a moderator: a role that opens host paths too
        promoted = await host.request({"type": "set_role", "participant_id": pat.joined["participant"]["id"],
                                       "role": "moderator"})
        assert promoted["type"] == "ok"
        for path in meeting_paths(m) + [f"/api/v1/meetings/{m['id']}/live"]:
            assert pat_api.get(path).status_code == 200, path

        reply = await host.request({"type": "remove", "participant_id": pat.joined["participant"]["id"]})
        assert reply["type"] == "ok"
        await pat.wait_until(lambda: pat.closed_with is not None and pat_tab.closed_with is not None, 5)
        assert (pat.closed_with, pat_tab.closed_with) == (4013, 4013)

        # every REST path of the meeting, the download link given before, and the chat by upload
        for path in meeting_paths(m) + [f"/api/v1/meetings/{m['id']}/files/{shared.json()['id']}",
                                        f"/api/v1/meetings/{m['id']}/live"]:
            r = pat_api.get(path)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (path, r.text)
        assert pat_api.post(f"/api/v1/meetings/{m['id']}/end").status_code == 403
        assert httpx.get(link).status_code == 403
        chat_before = len(host.events_of("chat"))
        r = pat_api.post(f"/api/v1/meetings/{m['id']}/files", params={"name": "spam.txt"}, content=b"spam")
        assert r.status_code == 403
        # back on the socket: the lobby, marked as removed, until a moderator lets them in
        back = await connect(appliance, pat_token)
        waiting = await back.join(m["code"], "Pat")
        assert waiting["type"] == "waiting" and waiting["knock"]["removed"] is True
        await asyncio.sleep(0.3)
        assert len(host.events_of("chat")) == chat_before
        await host.wait_until(lambda: host.events_of("lobby"))
        assert (await host.request({"type": "admit", "knock_id": waiting["knock"]["id"]}))["type"] == "ok"
        await back.wait_until(lambda: back.events_of("joined"))
        assert pat_api.get(meeting_paths(m)[0]).status_code == 200
        assert httpx.get(pat_api.get(f"/api/v1/meetings/{m['id']}/files/{shared.json()['id']}").json()["url"]).content == b"agenda"
    finally:
        await close_all(host, pat, pat_tab, *([back] if back else []))


async def test_a_removed_guest_cannot_come_back_with_a_new_pass(appliance: Appliance) -> None:
    m = meeting(appliance, allow_guests=True)
    host = await joined(appliance, appliance.login(*USERS["sam"])["access_token"], m, "Sam")
    browser = httpx.Client(base_url=appliance.url)  # keeps its cookies, as a browser does
    guest_url = f"/api/v1/meetings/by-code/{m['code']}/guest"
    first_pass = browser.post(guest_url, json={"name": "Gus"}).json()["guest_token"]
    gus = await joined(appliance, first_pass, m, "Gus")
    others: list[Participant] = []
    try:
        reply = await host.request({"type": "remove", "participant_id": gus.joined["participant"]["id"]})
        assert reply["type"] == "ok"
        await gus.wait_until(lambda: gus.closed_with == 4013)
        # the old pass opens none of the meeting's REST paths
        for path in meeting_paths(m)[0:1] + meeting_paths(m)[2:]:
            assert api(appliance, bearer=first_pass).get(path).status_code == 403, path
        # a new pass from the same browser: still removed
        second_pass = browser.post(guest_url, json={"name": "Gus Again"}).json()["guest_token"]
        again = await connect(appliance, second_pass)
        others.append(again)
        reply = await again.join(m["code"], "Gus Again")
        assert reply["type"] == "waiting" and reply["knock"]["removed"] is True
        # another browser: a new guest, but through the lobby now that someone was removed
        stranger_pass = httpx.post(f"{appliance.url}{guest_url}", json={"name": "Stranger"}).json()["guest_token"]
        stranger = await connect(appliance, stranger_pass)
        others.append(stranger)
        reply = await stranger.join(m["code"], "Stranger")
        assert reply["type"] == "waiting" and reply["knock"]["removed"] is False
        # people with accounts walk in as before
        others.append(await joined(appliance, appliance.login(*USERS["pat"])["access_token"], m, "Pat"))
    finally:
        await close_all(host, gus, *others)


async def test_only_a_seated_participant_posts_files_to_the_chat(appliance: Appliance) -> None:
    m = meeting(appliance)
    host = await joined(appliance, appliance.login(*USERS["sam"])["access_token"], m, "Sam")
    pat_api = api(appliance, "pat")
    pat = await joined(appliance, pat_api.headers["authorization"].split()[1], m, "Pat")
    try:
        assert (await pat.request({"type": "leave"}))["type"] == "left"
        # pat belongs to the meeting (joined it once) but has no seat: nothing reaches the chat
        r = pat_api.post(f"/api/v1/meetings/{m['id']}/files", params={"name": "late.txt"}, content=b"hello")
        assert r.status_code == 403 and "join the meeting" in r.json()["error"]["message"]
        await asyncio.sleep(0.3)
        assert not host.events_of("chat")
        assert pat_api.get(f"/api/v1/meetings/{m['id']}/files").json()["files"] == []
    finally:
        await close_all(host, pat)


# ---------------------------------------------------------------------------- finding 7: limits
async def test_chat_is_limited_per_seat(appliance: Appliance) -> None:
    m = meeting(appliance)
    host = await joined(appliance, appliance.login(*USERS["sam"])["access_token"], m, "Sam")
    pat = await joined(appliance, appliance.login(*USERS["pat"])["access_token"], m, "Pat")
    try:
        replies = [await pat.request({"type": "chat", "text": f"message {i}"}) for i in range(6)]
        assert [r["type"] for r in replies[:5]] == ["ok"] * 5
        assert replies[5]["type"] == "error" and replies[5]["code"] == "too_fast" and replies[5]["retry_after"] >= 1
        assert (await host.request({"type": "chat", "text": "the host still talks"}))["type"] == "ok"
        await host.wait_until(lambda: len(host.events_of("chat")) == 6)
        assert pat.closed_with is None
    finally:
        await close_all(host, pat)


async def test_one_participant_publishes_a_bounded_number_of_tracks(appliance: Appliance) -> None:
    m = meeting(appliance)
    pat = await joined(appliance, appliance.login(*USERS["pat"])["access_token"], m, "Pat")
    pc = RTCPeerConnection()
    try:
        for _ in range(3):
            pc.addTransceiver("audio", direction="sendonly")
        offer = await pc.createOffer()
        refused = await pat.request({"type": "offer", "sdp": offer.sdp})
        assert refused["type"] == "error" and refused["code"] == "too_many_tracks"
        assert pat.closed_with is None
        fine = RTCPeerConnection()
        for _ in range(2):
            fine.addTransceiver("audio", direction="sendonly")
        reply = await pat.request({"type": "offer", "sdp": (await fine.createOffer()).sdp})
        assert reply["type"] == "answer"
        await fine.close()
    finally:
        await pc.close()
        await pat.close()


async def test_the_lobby_holds_a_bounded_number_of_knocks(appliance: Appliance) -> None:
    m = meeting(appliance, lobby=True, allow_guests=True)
    knocks = []
    try:
        for i in range(3):
            token = httpx.post(f"{appliance.url}/api/v1/meetings/by-code/{m['code']}/guest",
                               json={"name": f"Visitor {i}"}).json()["guest_token"]
            c = await connect(appliance, token)
            knocks.append(c)
            reply = await c.join(m["code"], f"Visitor {i}")
            if i < 2:
                assert reply["type"] == "waiting"
            else:
                assert reply["type"] == "error" and reply["code"] == "lobby_full"
        host = await joined(appliance, appliance.login(*USERS["sam"])["access_token"], m, "Sam")
        knocks.append(host)
        assert len(host.joined["waiting"]) == 2
    finally:
        await close_all(*knocks)


async def test_names_cannot_impersonate_and_guests_are_marked(appliance: Appliance) -> None:
    m = meeting(appliance, allow_guests=True)
    host = await joined(appliance, appliance.login(*USERS["sam"])["access_token"], m, "Sam")
    clients = [host]
    try:
        guest_url = f"{appliance.url}/api/v1/meetings/by-code/{m['code']}/guest"
        for name in ("Sam (host)", "Eve [Moderator]", "Ｍａｌ（ｈｏｓｔ）"):
            r = httpx.post(guest_url, json={"name": name})
            assert r.status_code == 422 and r.json()["error"]["field"] == "name", (name, r.text)
        token = httpx.post(guest_url, json={"name": "Gus"}).json()["guest_token"]
        gus = await connect(appliance, token)
        clients.append(gus)
        for name in ("Sam", " sam ", "S\u200bam", "Gus (Host)"):  # someone else's name, or a role
            reply = await gus.join(m["code"], name)
            assert reply["type"] == "error" and reply["code"] == "bad_name", (name, reply)
        assert (await gus.join(m["code"], "Gus"))["type"] == "joined"
        await host.wait_until(lambda: host.events_of("participant_joined"))
        shown = host.events_of("participant_joined")[0]["participant"]
        assert shown["name"] == "Gus" and shown["role"] == "guest" and shown["guest"] is True
        assert gus.joined["participants"][0]["guest"] is False
        pat = await connect(appliance, appliance.login(*USERS["pat"])["access_token"])
        clients.append(pat)
        assert (await pat.join(m["code"], "gus"))["code"] == "bad_name"
    finally:
        await close_all(*clients)
