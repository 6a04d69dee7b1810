"""The signaling protocol against the real appliance, with aiortc clients (no browser)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import jwt
import psycopg2
import pytest

from appliance_server import Appliance, serving, start_appliance
from cli.client.participant import Participant
from conftest import stop
from sfu.participants import ColourTrack, ToneTrack

USERS = {"ada": ("ada@example.com", "ada password 1"), "grace": ("grace@example.com", "grace password 1"),
         "linus": ("linus@example.com", "linus password 1")}


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    yield from serving(tmp_path_factory.mktemp("signaling"), USERS, media_loopback="true", sfu_workers="2")


def token(app: Appliance, who: str) -> str:
    return app.login(*USERS[who])["access_token"]


def new_meeting(app: Appliance, **fields) -> dict:
    r = httpx.post(f"{app.url}/api/v1/meetings", json={"title": "signaling test", **fields},
                   headers={"Authorization": f"Bearer {token(app, 'ada')}"})
    assert r.status_code == 201
    return r.json()


def live(app: Appliance, meeting: dict) -> list[dict]:
    r = httpx.get(f"{app.url}/api/v1/meetings/{meeting['id']}/live",
                  headers={"Authorization": f"Bearer {token(app, 'ada')}"})
    assert r.status_code == 200
    return r.json()["participants"]


async def client(app: Appliance, who: str) -> Participant:
    c = Participant(app.url, token(app, who))
    await c.connect()
    return c


async def publishing(app: Appliance, who: str, meeting: dict, rgb=(200, 30, 30)) -> Participant:
    c = await client(app, who)
    assert (await c.join(meeting["code"], who.title()))["type"] == "joined"
    c.publish(ToneTrack())
    c.publish(ColourTrack(rgb))
    assert (await c.offer())["type"] == "answer"
    return c


async def test_two_participants_see_and_hear_each_other(appliance: Appliance) -> None:
    meeting = new_meeting(appliance)
    ada = await publishing(appliance, "ada", meeting)
    grace = await publishing(appliance, "grace", meeting, rgb=(30, 30, 200))
    try:
        ada_id, grace_id = ada.joined["participant"]["id"], grace.joined["participant"]["id"]
        assert ada.joined["participant"]["role"] == "host" and grace.joined["participant"]["role"] == "participant"
        assert [p["id"] for p in grace.joined["participants"]] == [ada_id]
        await ada.wait_until(lambda: ada.events_of("participant_joined"))
        assert ada.events_of("participant_joined")[0]["participant"] == grace.joined["participant"]

        for me, other in ((ada, grace_id), (grace, ada_id)):
            await me.wait_until(lambda: me.frames_from(other, "video") >= 10 and me.frames_from(other, "audio") >= 20,
                                timeout=15)
            video = next(r for r in me.received if r.stream_id == other and r.track.kind == "video")
            audio = next(r for r in me.received if r.stream_id == other and r.track.kind == "audio")
            assert video.sizes == {(640, 480)}
            assert audio.peak > 5000  # the tone, not silence
        assert not ada.failures and not grace.failures

        people = {p["id"]: p for p in live(appliance, meeting)}
        assert set(people) == {ada_id, grace_id}
        for person in people.values():
            kinds = {t["kind"]: t for t in person["published"]}
            assert kinds["audio"]["packets"] > 0 and kinds["video"]["packets"] > 0
        metrics = httpx.get(f"{appliance.url}/metrics").text
        assert 'confmeet_sfu_forwarded_packets_total{kind="video"}' in metrics
    finally:
        await ada.close()
        await grace.close()


@pytest.mark.postgres
async def test_no_event_reaches_a_client_before_its_own_joined(tmp_path, postgres_url: str) -> None:
    """Ada's join waits on the database (a table lock held by the test) after her seat exists;
    Grace joins meanwhile. Ada must get her ``joined`` first and learn of Grace once, by name."""
    app = start_appliance(tmp_path, media_loopback="true", database=postgres_url)
    lock = psycopg2.connect(postgres_url)
    try:
        for i, who in enumerate(("ada", "grace")):
            app.add_user(*USERS[who], admin=i == 0)
        meeting = new_meeting(app)
        ada, grace = await client(app, "ada"), await client(app, "grace")
        watcher = psycopg2.connect(postgres_url)
        watcher.autocommit = True

        def joins_waiting() -> int:  # joins whose seat exists and whose database record waits
            with watcher.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND wait_event_type = 'Lock'")
                return cur.fetchone()[0]

        with lock.cursor() as cur:
            cur.execute("LOCK TABLE participant IN EXCLUSIVE MODE")  # reads pass, the join's insert waits
        ada_joins = asyncio.create_task(ada.join(meeting["code"], "Ada"))
        await wait_for(lambda: joins_waiting() == 1)
        grace_joins = asyncio.create_task(grace.join(meeting["code"], "Grace"))
        await wait_for(lambda: joins_waiting() == 2)  # Grace's arrival was sent to Ada meanwhile
        lock.rollback()
        assert (await ada_joins)["type"] == "joined" and (await grace_joins)["type"] == "joined"
        await ada.wait_until(lambda: len(ada.arrived) >= 2)
        assert ada.arrived[0]["type"] == "joined", [m["type"] for m in ada.arrived]
        grace_id = grace.joined["participant"]["id"]
        seen = [p for p in ada.joined["participants"] if p["id"] == grace_id]
        seen += [e["participant"] for e in ada.events_of("participant_joined") if e["participant"]["id"] == grace_id]
        assert [p["name"] for p in seen] == ["Grace"]
        assert grace.arrived[0]["type"] == "joined"
        await ada.close()
        await grace.close()
        watcher.close()
    finally:
        lock.close()
        stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


async def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_publishing_a_track_mid_call_renegotiates(appliance: Appliance) -> None:
    meeting = new_meeting(appliance)
    ada = await client(appliance, "ada")
    await ada.join(meeting["code"])
    ada.publish(ColourTrack())
    await ada.offer()
    grace = await client(appliance, "grace")
    await grace.join(meeting["code"])
    await grace.offer()  # receives only
    try:
        ada_id = ada.joined["participant"]["id"]
        await grace.wait_until(lambda: grace.frames_from(ada_id, "video") >= 5, timeout=15)
        assert grace.frames_from(ada_id, "audio") == 0
        ada.publish(ToneTrack())  # the microphone comes on later
        assert (await ada.offer())["type"] == "answer"
        await grace.wait_until(lambda: grace.frames_from(ada_id, "audio") >= 10, timeout=15)
        # the camera was there when grace joined; the microphone came as an event
        assert [t["kind"] for t in grace.joined["tracks"]] == ["video"]
        published = [e["track"] for e in grace.events_of("track_published")]
        assert [t["kind"] for t in published] == ["audio"]
        assert all(t["participant"] == ada_id for t in published + grace.joined["tracks"])
    finally:
        await ada.close()
        await grace.close()


async def test_reconnect_resumes_the_seat_unseen(appliance: Appliance) -> None:
    meeting = new_meeting(appliance)
    ada = await publishing(appliance, "ada", meeting)
    grace = await publishing(appliance, "grace", meeting)
    try:
        ada_id = ada.joined["participant"]["id"]
        await grace.wait_until(lambda: grace.frames_from(ada_id, "video") >= 5, timeout=15)
        await ada.drop()
        await asyncio.sleep(1.5)
        assert not grace.events_of("participant_left")
        resumed = await ada.resume()
        assert resumed["type"] == "joined" and resumed["resumed"] is True
        assert resumed["participant"]["id"] == ada_id
        assert resumed["last_n"] is None  # two in the meeting: everyone's camera (tests/sfu/test_last_n.py)
        before = grace.frames_from(ada_id, "video")
        await grace.wait_until(lambda: grace.frames_from(ada_id, "video") >= before + 10, timeout=10)
        assert (await ada.request({"type": "ping"}))["type"] == "pong"
        assert not grace.events_of("participant_left")
        # the session is personal: someone else cannot take the seat
        linus = await client(appliance, "linus")
        stolen = await linus.request({"type": "join", "resume": ada.joined["session"]})
        assert stolen["type"] == "error" and stolen["code"] == "session_expired"
        await linus.close()
    finally:
        await ada.close()
        await grace.close()


async def test_leave_and_closed_peer_free_the_seat(appliance: Appliance) -> None:
    meeting = new_meeting(appliance)
    ada = await publishing(appliance, "ada", meeting)
    grace = await publishing(appliance, "grace", meeting)
    linus = await publishing(appliance, "linus", meeting)
    try:
        grace_id, linus_id = grace.joined["participant"]["id"], linus.joined["participant"]["id"]
        assert (await grace.request({"type": "leave"}))["type"] == "left"
        await ada.wait_until(lambda: any(e["participant_id"] == grace_id for e in ada.events_of("participant_left")), 2)
        assert ada.events_of("participant_left")[0]["reason"] == "left"
        await grace.wait_until(lambda: grace.closed_with is not None, 2)
        assert grace.closed_with == 1000

        # A closed tab: socket and peer connection vanish without 'leave'.
        started = time.monotonic()
        await linus.close()
        await ada.wait_until(lambda: any(e["participant_id"] == linus_id for e in ada.events_of("participant_left")), 5)
        assert time.monotonic() - started < 5
        assert [p["id"] for p in live(appliance, meeting)] == [ada.joined["participant"]["id"]]
    finally:
        await ada.close()
        await grace.close()


async def test_unauthorised_connections_are_refused(appliance: Appliance) -> None:
    claims = jwt.decode(token(appliance, "grace"), options={"verify_signature": False})
    expired = jwt.encode({**claims, "exp": int(time.time()) - 5}, appliance.secret_key, "HS256")
    for bad in ("", "nonsense", expired, jwt.encode(claims, "wrong-secret-wrong-secret-wrong-secret", "HS256")):
        c = Participant(appliance.url, bad)
        await c.connect()
        await c.wait_until(lambda: c.closed_with is not None, 5)
        assert c.closed_with == 4001
        assert c.events[0]["type"] == "error" and c.events[0]["code"] == "unauthorized"
        await c.close()


async def test_malformed_and_out_of_order_messages_get_typed_errors(appliance: Appliance) -> None:
    meeting = new_meeting(appliance, password="let me in")
    c = await client(appliance, "grace")
    try:
        await c.send_raw("{not json")
        await c.wait_until(lambda: c.events_of("error"), 5)
        assert c.events_of("error")[0]["code"] == "bad_message"
        cases = [
            ({"type": 42}, "bad_message"),
            ({"type": "dance"}, "unknown_type"),
            ({"type": "offer", "sdp": "v=0"}, "not_joined"),
            ({"type": "candidate", "candidate": None}, "not_joined"),
            ({"type": "leave"}, "not_joined"),
            ({"type": "join"}, "bad_message"),
            ({"type": "join", "meeting": "zzz-zzzz-zzz"}, "not_found"),
            ({"type": "join", "meeting": meeting["code"], "name": "x" * 101}, "bad_message"),
            ({"type": "join", "meeting": meeting["code"]}, "wrong_password"),
            ({"type": "join", "meeting": meeting["code"], "password": "guess"}, "wrong_password"),
            ({"type": "join", "resume": "not-a-session"}, "session_expired"),
        ]
        for message, code in cases:
            reply = await c.request(message)
            assert (reply["type"], reply.get("code")) == ("error", code), (message, reply)
        assert (await c.join(meeting["code"], password="let me in"))["type"] == "joined"
        assert (await c.request({"type": "join", "meeting": meeting["code"]}))["code"] == "already_joined"
        assert (await c.request({"type": "offer", "sdp": "nonsense"}))["code"] == "invalid_sdp"
        assert (await c.request({"type": "answer", "sdp": "v=0\r\n"}))["type"] == "error"
        big = json.dumps({"type": "ping", "id": 999, "pad": "x" * 300_000})
        await c.send_raw(big)
        await c.wait_until(lambda: any("KiB" in e["message"] for e in c.events_of("error")), 5)
        # the connection is still good, and so is the server
        assert (await c.request({"type": "ping"}))["type"] == "pong"
        assert c.closed_with is None
        c.publish(ColourTrack())
        assert (await c.offer())["type"] == "answer"
    finally:
        await c.close()


async def test_ending_the_meeting_closes_everyone(appliance: Appliance) -> None:
    meeting = new_meeting(appliance)
    grace = await client(appliance, "grace")
    await grace.join(meeting["code"])
    r = httpx.post(f"{appliance.url}/api/v1/meetings/{meeting['id']}/end",
                   headers={"Authorization": f"Bearer {token(appliance, 'ada')}"})
    assert r.status_code == 200
    await grace.wait_until(lambda: grace.closed_with is not None, 5)
    assert grace.closed_with == 4010 and grace.events_of("meeting_ended")
    late = await client(appliance, "linus")
    reply = await late.join(meeting["code"])
    assert reply["code"] == "meeting_ended"
    await late.wait_until(lambda: late.closed_with == 4010, 5)
    await grace.close()
    await late.close()


async def test_leave_then_closing_at_once_still_tells_the_others(appliance: Appliance) -> None:
    """A closing tab sends 'leave' and drops the socket in the same breath."""
    meeting = new_meeting(appliance)
    ada = await client(appliance, "ada")
    await ada.join(meeting["code"])
    try:
        for _ in range(5):
            grace = await client(appliance, "grace")
            grace_id = (await grace.join(meeting["code"]))["participant"]["id"]
            await grace.send_raw(json.dumps({"type": "leave", "id": 99}))
            await grace.close()
            await ada.wait_until(lambda: any(e["participant_id"] == grace_id
                                             for e in ada.events_of("participant_left")), 3)
        assert [p["id"] for p in live(appliance, meeting)] == [ada.joined["participant"]["id"]]
    finally:
        await ada.close()


async def test_an_offer_sent_during_a_blip_arrives_after_resume(appliance: Appliance) -> None:
    meeting = new_meeting(appliance)
    ada = await client(appliance, "ada")
    await ada.join(meeting["code"])
    await ada.offer()
    grace = await client(appliance, "grace")
    await grace.join(meeting["code"])
    await grace.offer()
    try:
        await grace.drop()
        grace_id = grace.joined["participant"]["id"]
        ada.publish(ColourTrack())  # published while grace's socket is down
        assert (await ada.offer())["type"] == "answer"
        await asyncio.sleep(0.5)
        resumed = await grace.resume()
        assert resumed["resumed"] is True and resumed["participant"]["id"] == grace_id
        ada_id = ada.joined["participant"]["id"]
        await grace.wait_until(lambda: grace.frames_from(ada_id, "video") >= 5, 15)
        assert not grace.failures
    finally:
        await ada.close()
        await grace.close()


async def test_a_dead_sfu_worker_takes_only_its_meeting_and_its_people_get_their_media_back(
        appliance: Appliance) -> None:
    """Two meetings on the appliance's two SFU worker processes; the worker of the red one is
    killed: its people keep their seats and have media again within 10 s (media_reset); the green
    meeting never notices."""
    red, green = new_meeting(appliance), new_meeting(appliance)
    ada = await publishing(appliance, "ada", red)
    grace = await publishing(appliance, "grace", red, rgb=(30, 30, 200))
    linus = await publishing(appliance, "linus", green, rgb=(30, 200, 30))
    ada_green = await publishing(appliance, "ada", green, rgb=(200, 200, 30))
    people = {"red": (ada, grace), "green": (linus, ada_green)}
    try:
        ids = {c: c.joined["participant"]["id"] for pair in people.values() for c in pair}
        for a, b in people.values():
            for me, other in ((a, b), (b, a)):
                await me.wait_until(lambda me=me, other=other: me.frames_from(ids[other], "video") >= 5, timeout=20)
        red_worker = {p["sfu_worker"]["pid"] for p in live(appliance, red)}
        green_worker = {p["sfu_worker"]["pid"] for p in live(appliance, green)}
        assert len(red_worker) == len(green_worker) == 1 and red_worker != green_worker  # one meeting each

        killed = red_worker.pop()
        os.kill(killed, signal.SIGKILL)
        killed_at = time.monotonic()
        await ada.wait_until(lambda: bool(ada.events_of("media_reset")) and bool(grace.events_of("media_reset")))
        green_before = {c: c.frames_from(ids[o], "video") for c, o in ((linus, ada_green), (ada_green, linus))}
        red_before = {c: c.frames_from(ids[o], "video") for c, o in ((ada, grace), (grace, ada))}
        for me, other in ((ada, grace), (grace, ada)):  # back, on the same seats
            await me.wait_until(lambda me=me, other=other: me.frames_from(ids[other], "video") >= red_before[me] + 10
                                and me.frames_from(ids[other], "audio") > 0, timeout=10)
        took = time.monotonic() - killed_at
        assert took < 10, f"media back {took:.1f} s after the kill"
        assert not ada.events_of("participant_left") and not grace.events_of("participant_left")
        assert {p["id"] for p in live(appliance, red)} == {ids[ada], ids[grace]}
        [now_on] = {p["sfu_worker"]["pid"] for p in live(appliance, red)}
        assert now_on != killed
        os.kill(now_on, 0)  # a live worker process
        for me, other in ((linus, ada_green), (ada_green, linus)):  # the green meeting went on throughout
            assert me.frames_from(ids[other], "video") >= green_before[me] + 10
            assert not me.events_of("media_reset") and not me.failures, me.failures
    finally:
        for c in (ada, grace, linus, ada_green):
            await c.close()
    metrics = httpx.get(f"{appliance.url}/metrics").text
    assert "confmeet_sfu_worker_restarts_total 1.0" in metrics
