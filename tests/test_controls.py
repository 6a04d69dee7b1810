"""Meeting controls enforced by the server, driven with raw signaling clients (aiortc, no browser)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from appliance_server import Appliance, serving
from cli.client.participant import Participant
from sfu.participants import ColourTrack, ToneTrack

USERS = {"host": ("host@example.com", "host password 1"), "pat": ("pat@example.com", "pat password 1"),
         "mod": ("mod@example.com", "mod password 1"), "outsider": ("out@example.com", "outsider password 1")}
HOST_ONLY = [
    {"type": "admit", "knock_id": "k-x"}, {"type": "deny", "knock_id": "k-x"},
    {"type": "set_role", "participant_id": "P", "role": "moderator"}, {"type": "lock", "locked": True},
    {"type": "mute", "participant_id": "P"}, {"type": "mute", "all": True},
    {"type": "ask_unmute", "participant_id": "P"}, {"type": "stop_camera", "participant_id": "P"},
    {"type": "remove", "participant_id": "P"}, {"type": "lower_hand", "participant_id": "P"},
]


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    yield from serving(tmp_path_factory.mktemp("controls"), USERS, media_loopback="true", max_upload_bytes="200000")


def token(app: Appliance, who: str) -> str:
    return app.login(*USERS[who])["access_token"]


def api(app: Appliance, who: str | None = None, bearer: str | None = None) -> httpx.Client:
    bearer = bearer or (token(app, who) if who else None)
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return httpx.Client(base_url=app.url, headers=headers)


def meeting(app: Appliance, **fields) -> dict:
    r = api(app, "host").post("/api/v1/meetings", json={"title": "controls", **fields})
    assert r.status_code == 201, r.text
    return r.json()


def guest_token(app: Appliance, code: str, name: str = "Gus", **extra) -> httpx.Response:
    return httpx.post(f"{app.url}/api/v1/meetings/by-code/{code}/guest", json={"name": name, **extra})


async def joined(app: Appliance, who: str, m: dict, bearer: str | None = None, **extra) -> Participant:
    c = Participant(app.url, bearer or token(app, who))
    await c.connect()
    reply = await c.join(m["code"], who.title(), **extra)
    assert reply["type"] == "joined", reply
    return c


async def close_all(*clients: Participant) -> None:
    for c in clients:
        await c.close()


async def test_participants_and_guests_cannot_moderate(appliance: Appliance) -> None:
    m = meeting(appliance, allow_guests=True)
    host = await joined(appliance, "host", m)
    pat = await joined(appliance, "pat", m)
    gus = await joined(appliance, "gus", m, bearer=guest_token(appliance, m["code"]).json()["guest_token"])
    try:
        assert gus.joined["participant"]["role"] == "guest"
        host_id = host.joined["participant"]["id"]
        before = [p for p in host.joined["participants"]]
        for client in (pat, gus):
            for message in HOST_ONLY:
                message = {**message, **({"participant_id": host_id} if message.get("participant_id") else {})}
                reply = await client.request(message)
                assert (reply["type"], reply.get("code")) == ("error", "forbidden"), (message, reply)
        # nothing changed: nobody muted, nobody removed, the meeting not locked
        await asyncio.sleep(0.3)
        for c in (host, pat, gus):
            assert not c.events_of("muted") and not c.events_of("removed") and not c.events_of("meeting_updated")
        assert not [e for e in host.events_of("participant_updated") if e["participant"]["id"] == host_id]
        assert host.closed_with is None and before == host.joined["participants"]
        events = api(appliance, "host").get("/api/v1/audit", params={"meeting_id": m["id"]}).json()["events"]
        assert not [e for e in events if e["action"].startswith("moderation.")]
    finally:
        await close_all(host, pat, gus)


async def test_guest_access_never_reveals_a_meeting(appliance: Appliance) -> None:
    open_m = meeting(appliance, allow_guests=True, password="s3cret pass")
    closed_m = meeting(appliance)
    answers = [guest_token(appliance, open_m["code"]),  # wrong (missing) password
               guest_token(appliance, open_m["code"], password="nope"),
               guest_token(appliance, closed_m["code"]),  # guests not allowed
               guest_token(appliance, "zzz-zzzz-zzz")]  # no such meeting
    assert {r.status_code for r in answers} == {404}
    assert len({r.text for r in answers}) == 1
    ok = guest_token(appliance, open_m["code"], password="s3cret pass")
    assert ok.status_code == 200 and ok.json()["meeting"]["id"] == open_m["id"]
    guest = ok.json()["guest_token"]
    # the guest token opens that meeting only, and no account endpoints
    assert api(appliance, bearer=guest).get(f"/api/v1/meetings/{open_m['id']}").status_code == 200
    assert api(appliance, bearer=guest).get(f"/api/v1/meetings/{closed_m['id']}").status_code == 404
    assert api(appliance, bearer=guest).get("/api/v1/users/me").status_code == 403
    assert api(appliance, bearer=guest).post("/api/v1/meetings", json={"title": "x"}).status_code == 403
    c = Participant(appliance.url, guest)
    await c.connect()
    try:
        assert (await c.join(closed_m["code"]))["code"] == "not_found"
        assert (await c.join(open_m["code"], password="wrong"))["code"] == "not_found"
        assert (await c.join(open_m["code"], password="s3cret pass"))["type"] == "joined"
    finally:
        await c.close()


async def test_lobby_gets_no_media_or_roster_until_admitted(appliance: Appliance) -> None:
    m = meeting(appliance, lobby=True)
    host = await joined(appliance, "host", m)
    host.publish(ColourTrack())
    await host.offer()
    pat = Participant(appliance.url, token(appliance, "pat"))
    await pat.connect()
    try:
        waiting = await pat.join(m["code"], "Pat")
        assert waiting["type"] == "waiting"
        assert "participants" not in waiting and "tracks" not in waiting and "ice_servers" not in waiting
        await host.wait_until(lambda: host.events_of("lobby"), 5)
        knock = host.events_of("lobby")[-1]["knocked"]
        assert knock["name"] == "Pat" and [k["id"] for k in host.events_of("lobby")[-1]["waiting"]] == [knock["id"]]
        # waiting: no roster, no media, no negotiation
        assert (await pat.request({"type": "offer", "sdp": "v=0"}))["code"] == "not_joined"
        assert (await pat.request({"type": "chat", "text": "let me in"}))["code"] == "not_joined"
        await asyncio.sleep(0.5)
        assert not [e for e in pat.events if e["type"] in ("participant_joined", "track_published", "offer", "chat")]
        assert [p["id"] for p in host.joined["participants"]] == []

        assert (await host.request({"type": "admit", "knock_id": knock["id"]}))["type"] == "ok"
        await pat.wait_until(lambda: pat.events_of("joined"), 5)
        pat.joined = pat.events_of("joined")[0]
        assert [p["id"] for p in pat.joined["participants"]] == [host.joined["participant"]["id"]]
        assert [t["kind"] for t in pat.joined["tracks"]] == ["video"]
        await pat.offer()
        host_id = host.joined["participant"]["id"]
        await pat.wait_until(lambda: pat.frames_from(host_id, "video") >= 3, 15)
        assert host.events_of("lobby")[-1]["waiting"] == []
    finally:
        await close_all(host, pat)


async def test_denied_and_removed_people_stay_out(appliance: Appliance) -> None:
    m = meeting(appliance, lobby=True)
    host = await joined(appliance, "host", m)
    out = Participant(appliance.url, token(appliance, "outsider"))
    await out.connect()
    try:
        assert (await out.join(m["code"]))["type"] == "waiting"
        await host.wait_until(lambda: host.events_of("lobby"), 5)
        knock = host.events_of("lobby")[-1]["knocked"]["id"]
        assert (await host.request({"type": "deny", "knock_id": knock}))["type"] == "ok"
        await out.wait_until(lambda: out.closed_with is not None, 5)
        assert out.closed_with == 4014 and out.events_of("error")[-1]["code"] == "denied"

        # remove: the participant is out and cannot come back until re-admitted
        await host.request({"type": "lock", "locked": False})
        plain = meeting(appliance)
        host2 = await joined(appliance, "host", plain)
        pat = await joined(appliance, "pat", plain)
        pat_id = pat.joined["participant"]["id"]
        assert (await host2.request({"type": "remove", "participant_id": pat_id}))["type"] == "ok"
        await pat.wait_until(lambda: pat.closed_with is not None, 5)
        assert pat.closed_with == 4013 and pat.events_of("removed")
        await host2.wait_until(lambda: host2.events_of("participant_left"), 5)
        assert host2.events_of("participant_left")[0]["reason"] == "removed"
        back = Participant(appliance.url, token(appliance, "pat"))
        await back.connect()
        rejoin = await back.join(plain["code"], "Pat")
        assert rejoin["type"] == "waiting" and rejoin["knock"]["removed"] is True
        await host2.wait_until(lambda: host2.events_of("lobby"), 5)
        knock = host2.events_of("lobby")[-1]["knocked"]["id"]
        await host2.request({"type": "admit", "knock_id": knock})
        await back.wait_until(lambda: back.events_of("joined"), 5)
        events = api(appliance, "host").get("/api/v1/audit", params={"meeting_id": plain["id"]}).json()["events"]
        assert {"moderation.remove", "moderation.admit"} <= {e["action"] for e in events}
        await close_all(host2, pat, back)
    finally:
        await close_all(host, out)


async def test_mute_roles_hands_reactions_and_lock(appliance: Appliance) -> None:
    m = meeting(appliance)
    host = await joined(appliance, "host", m)
    pat = await joined(appliance, "pat", m)
    mod = await joined(appliance, "mod", m)
    try:
        pat.publish(ToneTrack())
        await pat.offer()
        await host.offer()
        pat_id, mod_id = pat.joined["participant"]["id"], mod.joined["participant"]["id"]
        await host.wait_until(lambda: host.frames_from(pat_id, "audio") >= 10, 15)

        # the host mutes pat: pat is told, everyone sees it, and the SFU stops forwarding pat's audio
        assert (await host.request({"type": "mute", "participant_id": pat_id}))["type"] == "ok"
        await pat.wait_until(lambda: pat.events_of("muted"), 5)
        await mod.wait_until(lambda: any(e["participant"]["id"] == pat_id and e["participant"]["muted"]
                                         for e in mod.events_of("participant_updated")), 5)
        await asyncio.sleep(0.5)
        frozen = host.frames_from(pat_id, "audio")
        await asyncio.sleep(1.0)
        assert host.frames_from(pat_id, "audio") == frozen
        # asking to unmute never unmutes; pat unmuting itself lifts the hold
        assert (await host.request({"type": "ask_unmute", "participant_id": pat_id}))["type"] == "ok"
        await pat.wait_until(lambda: pat.events_of("unmute_request"), 5)
        assert (await pat.request({"type": "update_state", "muted": False}))["type"] == "ok"
        await host.wait_until(lambda: host.frames_from(pat_id, "audio") > frozen + 10, 10)

        # roles: a participant cannot mute; promoted to moderator, it can
        assert (await mod.request({"type": "mute", "participant_id": pat_id}))["code"] == "forbidden"
        assert (await host.request({"type": "set_role", "participant_id": mod_id, "role": "moderator"}))["type"] == "ok"
        await mod.wait_until(lambda: any(e["participant"]["id"] == mod_id and e["participant"]["role"] == "moderator"
                                         for e in mod.events_of("participant_updated")), 5)
        assert (await mod.request({"type": "mute", "all": True}))["type"] == "ok"
        assert (await mod.request({"type": "set_role", "participant_id": pat_id, "role": "moderator"}))["code"] == "forbidden"
        assert (await host.request({"type": "set_role", "participant_id": mod_id, "role": "participant"}))["type"] == "ok"
        assert (await mod.request({"type": "mute", "participant_id": pat_id}))["code"] == "forbidden"

        # hands, in the order they went up; reactions
        assert (await mod.request({"type": "raise_hand"}))["type"] == "ok"
        await asyncio.sleep(0.02)
        assert (await pat.request({"type": "raise_hand"}))["type"] == "ok"
        await host.wait_until(lambda: len([e for e in host.events_of("participant_updated")
                                           if e["participant"]["hand_raised_at"]]) >= 2, 5)
        raised = {e["participant"]["id"]: e["participant"]["hand_raised_at"] for e in host.events_of("participant_updated")
                  if e["participant"]["hand_raised_at"]}
        assert sorted(raised, key=raised.get) == [mod_id, pat_id]
        assert (await host.request({"type": "lower_hand", "participant_id": mod_id}))["type"] == "ok"
        assert (await pat.request({"type": "reaction", "emoji": "🎉"}))["type"] == "ok"
        assert (await pat.request({"type": "reaction", "emoji": "🎉"}))["code"] == "too_fast"
        assert (await pat.request({"type": "reaction", "emoji": "<b>"}))["code"] == "bad_message"
        await host.wait_until(lambda: host.events_of("reaction"), 5)
        assert host.events_of("reaction")[0] == {"type": "reaction", "participant_id": pat_id, "emoji": "🎉"}

        # lock: nobody new gets in
        assert (await host.request({"type": "lock", "locked": True}))["type"] == "ok"
        late = Participant(appliance.url, token(appliance, "outsider"))
        await late.connect()
        assert (await late.join(m["code"]))["code"] == "locked"
        await late.close()
        actions = {e["action"] for e in api(appliance, "host").get(
            "/api/v1/audit", params={"meeting_id": m["id"], "limit": 100}).json()["events"]}
        assert {"moderation.mute", "moderation.ask_unmute", "moderation.set_role", "moderation.lock"} <= actions
    finally:
        await close_all(host, pat, mod)


async def test_chat_history_private_messages_and_files(appliance: Appliance) -> None:
    m = meeting(appliance)
    host = await joined(appliance, "host", m)
    pat = await joined(appliance, "pat", m)
    try:
        pat_id, host_id = pat.joined["participant"]["id"], host.joined["participant"]["id"]
        assert (await host.request({"type": "chat", "text": "<script>alert(1)</script> see https://example.org"}))["type"] == "ok"
        assert (await host.request({"type": "chat", "text": "psst", "to": pat_id}))["message"]["private"] is True
        assert (await pat.request({"type": "chat", "text": "x" * 4001}))["code"] == "bad_message"
        assert (await pat.request({"type": "chat", "text": "hi", "to": "p-nobody"}))["code"] == "not_found"
        await pat.wait_until(lambda: len(pat.events_of("chat")) == 2, 5)
        assert pat.events_of("chat")[0]["message"]["text"] == "<script>alert(1)</script> see https://example.org"

        # a shared file: members download it through a signed link, others cannot
        host_api = api(appliance, "host")
        up = host_api.post(f"/api/v1/meetings/{m['id']}/files", params={"name": "notes.txt"},
                           content=b"agenda\n" * 100, headers={"Content-Type": "text/plain"})
        assert up.status_code == 201, up.text
        shared = up.json()
        await pat.wait_until(lambda: any(e["message"].get("file") for e in pat.events_of("chat")), 5)
        pat_api = api(appliance, "pat")
        link = pat_api.get(f"/api/v1/meetings/{m['id']}/files/{shared['id']}")
        assert link.status_code == 200
        body = httpx.get(link.json()["url"])
        assert body.status_code == 200 and body.content == b"agenda\n" * 100
        assert "attachment" in body.headers["content-disposition"]
        outsider = api(appliance, "outsider")
        assert outsider.get(f"/api/v1/meetings/{m['id']}/files/{shared['id']}").status_code == 403
        assert outsider.get(f"/api/v1/meetings/{m['id']}/files").status_code == 403
        assert httpx.get(link.json()["url"] + "x").status_code == 403
        big = host_api.post(f"/api/v1/meetings/{m['id']}/files", params={"name": "big.bin"}, content=b"0" * 300_000)
        assert big.status_code == 413
        assert big.json()["error"]["message"] == "files are limited to 195 KiB"
        assert [f["name"] for f in pat_api.get(f"/api/v1/meetings/{m['id']}/files").json()["files"]] == ["notes.txt"]

        # a late joiner gets the public history and nobody else's private messages
        late = await joined(appliance, "mod", m)
        texts = [c["text"] for c in late.joined["chat"]]
        assert texts == ["<script>alert(1)</script> see https://example.org", "notes.txt"]
        assert late.joined["chat"][1]["file"]["id"] == shared["id"]
        await late.close()
        # private messages belong to the seat they were sent to: a new seat does not see them
        second = await joined(appliance, "pat", m)
        assert "psst" not in [c["text"] for c in second.joined["chat"]]
        assert host_id not in [c["to"] for c in second.joined["chat"]]
        await second.close()
    finally:
        await close_all(host, pat)
