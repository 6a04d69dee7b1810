"""Polls over signaling against the real appliance (signaling clients, no browser): who may run a
poll, what a poll and a vote may hold, changing a vote, results hidden from participants until
published, anonymity in the stored data, a restart, and the polls in the transcript's export."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from appliance_server import Appliance, serving, start_appliance
from cli.client.participant import Participant
from conftest import stop

USERS = {"host": ("host@example.com", "host password 1"), "pat": ("pat@example.com", "pat password 1"),
         "mod": ("mod@example.com", "mod password 1")}
RUNS_A_POLL = [{"type": "poll_create", "question": "Lunch?", "options": ["Yes", "No"]},
               {"type": "poll_close", "poll_id": "P"}, {"type": "poll_publish", "poll_id": "P"}]


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    yield from serving(tmp_path_factory.mktemp("polls"), USERS, media_loopback="true")


def token(app: Appliance, who: str) -> str:
    return app.login(*USERS[who])["access_token"]


def api(app: Appliance, bearer: str) -> httpx.Client:
    return httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {bearer}"})


def meeting(app: Appliance) -> dict:
    r = api(app, token(app, "host")).post("/api/v1/meetings", json={"title": "polls", "allow_guests": True})
    assert r.status_code == 201, r.text
    return r.json()


def guest_pass(app: Appliance, m: dict, name: str = "Gus") -> str:
    r = httpx.post(f"{app.url}/api/v1/meetings/by-code/{m['code']}/guest", json={"name": name})
    assert r.status_code == 200, r.text
    return r.json()["guest_token"]


async def joined(app: Appliance, bearer: str, m: dict, name: str) -> Participant:
    c = Participant(app.url, bearer, receive=False)
    await c.connect()
    reply = await c.join(m["code"], name)
    assert reply["type"] == "joined", reply
    return c


async def ok(c: Participant, message: dict) -> dict:
    reply = await c.request(message)
    assert reply["type"] == "ok", reply
    return reply


def stored_polls(app: Appliance, meeting_id: str) -> dict[str, tuple[str, dict]]:
    """The poll documents as the document store holds them: raw JSON text and parsed, by id."""
    with sqlite3.connect(Path(app.data_dir) / "documents.db") as db:
        rows = db.execute("SELECT id, body FROM documents WHERE collection = 'polls'").fetchall()
    return {i: (body, json.loads(body)) for i, body in rows if json.loads(body)["meeting_id"] == meeting_id}


def poll_events(c: Participant, poll_id: str) -> list[dict]:
    return [e for e in c.events_of("poll") if e["poll"]["id"] == poll_id]


async def test_only_hosts_and_moderators_run_polls(appliance: Appliance) -> None:
    m = meeting(appliance)
    host = await joined(appliance, token(appliance, "host"), m, "Hana Host")
    pat = await joined(appliance, token(appliance, "pat"), m, "Pat Doe")
    gus = await joined(appliance, guest_pass(appliance, m), m, "Gus")
    mod = await joined(appliance, token(appliance, "mod"), m, "Moe Mod")
    try:
        for c in (pat, gus, mod):
            for message in RUNS_A_POLL:
                reply = await c.request(message)
                assert reply["type"] == "error" and reply["code"] == "forbidden", (message, reply)
        assert stored_polls(appliance, m["id"]) == {}
        assert not any(c.events_of("poll") for c in (host, pat, gus, mod))

        await ok(host, {"type": "set_role", "participant_id": mod.joined["participant"]["id"], "role": "moderator"})
        await mod.wait_until(lambda: any(e["participant"]["role"] == "moderator"
                                         for e in mod.events_of("participant_updated")))
        poll = (await ok(mod, {"type": "poll_create", "question": "Lunch?", "options": ["Yes", "No"]}))["poll"]
        for c in (pat, gus):
            reply = await c.request({"type": "poll_publish", "poll_id": poll["id"]})
            assert reply["code"] == "forbidden"
        await ok(host, {"type": "poll_close", "poll_id": poll["id"]})
        for c in (host, pat, gus, mod):
            await c.wait_until(lambda c=c: [e["change"] for e in poll_events(c, poll["id"])] == ["opened", "closed"])

        audit = api(appliance, token(appliance, "host")).get("/api/v1/audit", params={"meeting_id": m["id"]}).json()
        actions = [(e["action"], e["detail"].get("poll")) for e in audit["events"] if e["action"].startswith("poll.")]
        assert actions == [("poll.closed", poll["id"]), ("poll.created", poll["id"])]
    finally:
        for c in (host, pat, gus, mod):
            await c.close()


async def test_what_a_poll_and_a_vote_may_hold(appliance: Appliance) -> None:
    m = meeting(appliance)
    host = await joined(appliance, token(appliance, "host"), m, "Hana Host")
    try:
        bad_polls = [
            {"question": "", "options": ["a", "b"]}, {"question": "q" * 301, "options": ["a", "b"]},
            {"question": 7, "options": ["a", "b"]}, {"question": "q", "options": ["a"]},
            {"question": "q", "options": [str(i) for i in range(11)]}, {"question": "q", "options": "a,b"},
            {"question": "q", "options": ["a", "o" * 201]}, {"question": "q", "options": ["a", " "]},
            {"question": "q", "options": ["Yes", "yes"]}, {"question": "q", "options": ["a", 2]},
            {"question": "q", "options": ["a", "b"], "multiple": "yes"},
            {"question": "q", "options": ["a", "b"], "anonymous": 1},
        ]
        for fields in bad_polls:
            reply = await host.request({"type": "poll_create", **fields})
            assert reply["type"] == "error" and reply["code"] == "bad_message", (fields, reply)
        assert stored_polls(appliance, m["id"]) == {}

        longest = await ok(host, {"type": "poll_create", "question": "q" * 300,
                                  "options": [f"{i}" + "o" * 199 for i in range(10)]})
        assert len(longest["poll"]["options"]) == 10
        single = (await ok(host, {"type": "poll_create", "question": " Which day? ",
                                  "options": ["Mon", "Tue", "Wed"]}))["poll"]
        assert single["question"] == "Which day?" and single["multiple"] is False and single["anonymous"] is False
        for choice in ([], [0, 1], [3], [-1], [True], ["0"], 0, [0, 0], list(range(11))):
            reply = await host.request({"type": "poll_vote", "poll_id": single["id"], "choice": choice})
            assert reply["type"] == "error" and reply["code"] == "bad_message", (choice, reply)
        reply = await host.request({"type": "poll_vote", "poll_id": "no-such-poll", "choice": [0]})
        assert reply["code"] == "not_found"

        await ok(host, {"type": "poll_close", "poll_id": single["id"]})
        reply = await host.request({"type": "poll_vote", "poll_id": single["id"], "choice": [0]})
        assert reply["code"] == "poll_closed"
        assert (await host.request({"type": "poll_close", "poll_id": single["id"]}))["code"] == "poll_closed"
        await ok(host, {"type": "poll_publish", "poll_id": single["id"]})
        assert (await host.request({"type": "poll_publish", "poll_id": single["id"]}))["code"] == "poll_published"

        for i in range(18):
            await ok(host, {"type": "poll_create", "question": f"q{i}", "options": ["a", "b"]})
        reply = await host.request({"type": "poll_create", "question": "one too many", "options": ["a", "b"]})
        assert reply["code"] == "too_many_polls"
        assert len(stored_polls(appliance, m["id"])) == 20
    finally:
        await host.close()


async def test_votes_change_and_results_stay_with_moderators_until_published(appliance: Appliance) -> None:
    m = meeting(appliance)
    host = await joined(appliance, token(appliance, "host"), m, "Hana Host")
    pat_token = token(appliance, "pat")
    pat = await joined(appliance, pat_token, m, "Pat Doe")
    gus = await joined(appliance, guest_pass(appliance, m), m, "Gus")
    late = None
    try:
        day = (await ok(host, {"type": "poll_create", "question": "Which day?", "options": ["Mon", "Tue", "Wed"]}))["poll"]
        food = (await ok(host, {"type": "poll_create", "question": "What food?", "options": ["Rice", "Noodles", "Bread"],
                                "multiple": True}))["poll"]
        await pat.wait_until(lambda: len(pat.events_of("poll")) == 2)
        assert all(e["poll"]["results"] is None for e in pat.events_of("poll"))

        first = await ok(pat, {"type": "poll_vote", "poll_id": day["id"], "choice": [0]})
        changed = await ok(pat, {"type": "poll_vote", "poll_id": day["id"], "choice": [2]})
        assert first["poll"]["my_choice"] == [0] and changed["poll"]["my_choice"] == [2]
        assert changed["poll"]["results"] is None
        await ok(gus, {"type": "poll_vote", "poll_id": day["id"], "choice": [2]})
        await ok(gus, {"type": "poll_vote", "poll_id": food["id"], "choice": [2, 0]})
        both = await ok(pat, {"type": "poll_vote", "poll_id": food["id"], "choice": [0, 1]})
        assert both["poll"]["my_choice"] == [0, 1]

        # The host sees each vote as it comes: counts, and who chose what (named polls).
        await host.wait_until(lambda: len(poll_events(host, day["id"])) == 4 and len(poll_events(host, food["id"])) == 3)
        live = poll_events(host, day["id"])[-1]["poll"]["results"]
        assert live == {"ballots": 2, "counts": [0, 0, 2], "voters": [[], [], ["Gus", "Pat Doe"]]}
        assert poll_events(host, food["id"])[-1]["poll"]["results"] == {
            "ballots": 2, "counts": [2, 1, 1], "voters": [["Gus", "Pat Doe"], ["Pat Doe"], ["Gus"]]}
        # Pat's own second seat (another tab) learns of Pat's vote; nobody else's vote reaches Pat.
        assert not any(e["change"] == "voted" for e in pat.events_of("poll"))
        assert all(e["poll"]["results"] is None for c in (pat, gus) for e in c.events_of("poll"))

        late = await joined(appliance, pat_token, m, "Pat Doe")  # Pat again: the same person, one ballot
        mine = {p["id"]: p for p in late.joined["polls"]}
        assert mine[day["id"]]["my_choice"] == [2] and mine[day["id"]]["results"] is None
        await ok(late, {"type": "poll_vote", "poll_id": day["id"], "choice": [1]})
        await pat.wait_until(lambda: any(e["change"] == "voted" for e in poll_events(pat, day["id"])))
        assert poll_events(pat, day["id"])[-1]["poll"]["my_choice"] == [1]

        published = await ok(host, {"type": "poll_publish", "poll_id": day["id"]})
        assert published["poll"]["state"] == "published" and published["poll"]["closed_at"]
        for c in (pat, gus, late):  # the counts; who chose what stays with those who run the meeting
            await c.wait_until(lambda c=c: any(e["change"] == "published" for e in poll_events(c, day["id"])))
            shown = poll_events(c, day["id"])[-1]["poll"]
            assert shown["results"] == {"ballots": 2, "counts": [0, 1, 1], "voters": None}
        assert published["poll"]["results"]["voters"] == [[], ["Pat Doe"], ["Gus"]]
        listed = {p["id"]: p for p in (await ok(gus, {"type": "poll_list"}))["polls"]}
        assert listed[day["id"]]["results"]["counts"] == [0, 1, 1] and listed[food["id"]]["results"] is None

        # The transcript's export: everything for the host, the published poll for the others.
        host_view = api(appliance, token(appliance, "host")).get(f"/api/v1/meetings/{m['id']}/transcript")
        assert host_view.status_code == 200, host_view.text
        assert [p["question"] for p in host_view.json()["polls"]] == ["Which day?", "What food?"]
        assert host_view.json()["polls"][0]["options"][1] == {"text": "Tue", "votes": 1, "voters": ["Pat Doe"]}
        pat_view = api(appliance, pat_token).get(f"/api/v1/meetings/{m['id']}/transcript").json()
        assert [p["question"] for p in pat_view["polls"]] == ["Which day?"]
        text = api(appliance, pat_token).get(f"/api/v1/meetings/{m['id']}/transcript", params={"format": "txt"}).text
        assert "Poll: Which day?" in text and "  Tue — 1\n" in text and "Pat Doe" not in text
        assert "What food?" not in text
        vtt = api(appliance, token(appliance, "host")).get(f"/api/v1/meetings/{m['id']}/transcript",
                                                           params={"format": "vtt"}).text
        assert vtt.startswith("WEBVTT\n\nNOTE\nPoll: Which day?") and "NOTE\nPoll: What food?" in vtt
        assert "  Tue — 1: Pat Doe\n" in vtt
    finally:
        for c in (host, pat, gus, late):
            if c is not None:
                await c.close()


async def test_anonymous_polls_store_no_one_s_identity(appliance: Appliance) -> None:
    m = meeting(appliance)
    host_token, pat_token, gus_token = token(appliance, "host"), token(appliance, "pat"), guest_pass(appliance, m)
    host = await joined(appliance, host_token, m, "Hana Host")
    pat = await joined(appliance, pat_token, m, "Pat Doe")
    gus = await joined(appliance, gus_token, m, "Gus Guest")
    try:
        secret = (await ok(host, {"type": "poll_create", "question": "Rate the plan", "options": ["Good", "Bad"],
                                  "anonymous": True}))["poll"]
        named = (await ok(host, {"type": "poll_create", "question": "Who comes?", "options": ["Me", "Not me"]}))["poll"]
        for c, choice in ((pat, 1), (gus, 1), (host, 0)):
            await ok(c, {"type": "poll_vote", "poll_id": secret["id"], "choice": [choice]})
            await ok(c, {"type": "poll_vote", "poll_id": named["id"], "choice": [choice]})
        changed = await ok(pat, {"type": "poll_vote", "poll_id": secret["id"], "choice": [0]})
        assert changed["poll"]["my_choice"] == [0]  # the server still knows Pat's ballot, to change it
        await host.wait_until(lambda: len(poll_events(host, secret["id"])) == 4)
        assert poll_events(host, secret["id"])[-1]["poll"]["results"] == {"ballots": 3, "counts": [2, 1], "voters": None}

        identities = {"Pat Doe", "Gus Guest", "Hana Host", "pat@example.com", "host@example.com"}
        for bearer, c in ((pat_token, pat), (gus_token, gus), (host_token, host)):
            identities |= {jwt.decode(bearer, options={"verify_signature": False})["sub"], c.joined["participant"]["id"]}
        stored = stored_polls(appliance, m["id"])
        raw, doc = stored[secret["id"]]
        assert [k for k in identities if k in raw] == []
        assert doc["counts"] == [2, 1] and doc["ballot_count"] == 3 and len(doc["ballots"]) == 3
        assert all(set(b) == {"token", "choice"} for b in doc["ballots"])
        assert [b["token"] for b in doc["ballots"]] == sorted(b["token"] for b in doc["ballots"])
        named_raw, named_doc = stored[named["id"]]
        pat_id = jwt.decode(pat_token, options={"verify_signature": False})["sub"]
        assert {"voter": pat_id, "name": "Pat Doe", "choice": [1]} in named_doc["ballots"]
        assert "Gus Guest" in named_raw

        # Closed: the anonymous ballots are gone, the counts stay; the named poll keeps its ballots.
        await ok(host, {"type": "poll_close", "poll_id": secret["id"]})
        await ok(host, {"type": "poll_close", "poll_id": named["id"]})
        stored = stored_polls(appliance, m["id"])
        assert stored[secret["id"]][1]["ballots"] == [] and stored[secret["id"]][1]["counts"] == [2, 1]
        assert stored[secret["id"]][1]["ballot_count"] == 3
        assert len(stored[named["id"]][1]["ballots"]) == 3
        export = api(appliance, host_token).get(f"/api/v1/meetings/{m['id']}/transcript").json()["polls"]
        assert export[0]["options"] == [{"text": "Good", "votes": 2, "voters": None},
                                        {"text": "Bad", "votes": 1, "voters": None}]
    finally:
        for c in (host, pat, gus):
            await c.close()


async def test_polls_and_ballots_survive_a_restart(tmp_path: Path) -> None:
    app = start_appliance(tmp_path, media_loopback="true")
    try:
        for email, password in USERS.values():
            app.add_user(email, password, admin=email.startswith("host"))
        m = meeting(app)
        host = await joined(app, token(app, "host"), m, "Hana Host")
        pat = await joined(app, token(app, "pat"), m, "Pat Doe")
        poll = (await ok(host, {"type": "poll_create", "question": "Keep going?", "options": ["Yes", "No"],
                                "anonymous": True}))["poll"]
        await ok(pat, {"type": "poll_vote", "poll_id": poll["id"], "choice": [1]})
        await host.close()
        await pat.close()
        stop(app.proc)

        app = start_appliance(tmp_path, media_loopback="true")
        pat = await joined(app, token(app, "pat"), m, "Pat Doe")
        host = await joined(app, token(app, "host"), m, "Hana Host")
        assert pat.joined["polls"][0]["my_choice"] == [1] and pat.joined["polls"][0]["state"] == "open"
        assert host.joined["polls"][0]["results"] == {"ballots": 1, "counts": [0, 1], "voters": None}
        again = await ok(pat, {"type": "poll_vote", "poll_id": poll["id"], "choice": [0]})
        assert again["poll"]["my_choice"] == [0]
        await host.wait_until(lambda: bool(poll_events(host, poll["id"])))
        assert poll_events(host, poll["id"])[-1]["poll"]["results"]["counts"] == [1, 0]  # changed, not added
        await host.close()
        await pat.close()
    finally:
        stop(app.proc)
    assert "Traceback" not in app.output(), app.output()
