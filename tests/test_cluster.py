"""Several nodes (appliance/cluster.py, appliance/signaling/relay.py): three real ``confmeet serve``
processes sharing one PostgreSQL database, one Redis and their secrets, as three machines of one
install would. Meetings are placed on the least-loaded node; a participant who reaches another
node is relayed to the meeting's, with media both ways; a drained node gets no new meeting and
keeps the one it has; a killed node's lease lapses, its meeting is placed anew, its seats are
taken over only with their own signed session, and its restart repairs only its own. (On
loopback, one machine; the gateway and Chromium: tests/e2e/test_cluster_ui.py.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest
import redis

from appliance.signaling.relay import relayed_client, relayed_for
from appliance_server import CONFMEET, Appliance, appliance_env, serving_nodes, start_appliance
from cli.client.participant import Participant
from sfu.participants import ColourTrack, ToneTrack

USERS = {"ada": ("ada@example.com", "ada password 1"), "grace": ("grace@example.com", "grace password 1"),
         "linus": ("linus@example.com", "linus password 1")}
BUS = "redis://127.0.0.1:6379/13"  # this module's own Redis database, emptied before and after


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Appliance]]:
    yield from serving_nodes(tmp_path_factory.mktemp("cluster"), 3, BUS, list(USERS.values()),
                             media_loopback="true", sfu_workers="1")


def node_list(app: Appliance) -> dict[str, dict]:
    done = app.cli("node", "list", "--json")
    assert done.returncode == 0, done.stderr
    return {n["name"]: n for n in json.loads(done.stdout)}


def new_meeting(app: Appliance, title: str) -> dict:
    token = app.login(*USERS["ada"])["access_token"]
    r = httpx.post(f"{app.url}/api/v1/meetings", json={"title": title}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    return r.json()


async def joined(app: Appliance, who: str, code: str, rgb: tuple[int, int, int]) -> Participant:
    client = Participant(app.url, app.login(*USERS[who])["access_token"])
    await client.connect()
    reply = await client.join(code, who.title())
    assert reply["type"] == "joined", reply
    client.publish(ToneTrack(amplitude=0.3))
    client.publish(ColourTrack(rgb))
    assert (await client.offer())["type"] == "answer"
    return client


def restarted(node: Appliance) -> Appliance:
    """A node that stopped, started again on its data directory with its settings (on a new port)."""
    return start_appliance(node.data_dir, node_name=node.env["CONFMEET_NODE_NAME"], **{
        k.removeprefix("CONFMEET_").lower(): v for k, v in node.env.items()
        if k.startswith("CONFMEET_") and k not in ("CONFMEET_DATA_DIR", "CONFMEET_PORT", "CONFMEET_CONFIG",
                                                   "CONFMEET_NODE_NAME")})


def owner(meeting_id: str) -> str:
    return redis.Redis.from_url(BUS).get(f"confmeet:meeting:{meeting_id}").decode()


async def test_meetings_spread_over_the_nodes_and_a_participant_of_another_node_is_relayed(
        nodes: list[Appliance]) -> None:
    assert {n: (v["alive"], v["drained"]) for n, v in node_list(nodes[0]).items()} == {
        "n1": (True, False), "n2": (True, False), "n3": (True, False)}
    meetings = [new_meeting(nodes[0], f"room {i}") for i in range(3)]
    clients: list[Participant] = []
    try:
        # The first person of each meeting comes in through node 1: the three land on three nodes.
        for meeting, rgb in zip(meetings, ((200, 0, 0), (0, 200, 0), (0, 0, 200))):
            clients.append(await joined(nodes[0], "ada", meeting["code"], rgb))
        placed = [owner(m["id"]) for m in meetings]
        assert sorted(placed) == ["n1", "n2", "n3"], placed
        # Someone joins the meeting that lives on node 3 through node 2: relayed, same meeting, media both ways.
        target = placed.index("n3")
        ada = clients[target]
        grace = await joined(nodes[1], "grace", meetings[target]["code"], (200, 200, 0))
        clients.append(grace)
        ada_id, grace_id = ada.joined["participant"]["id"], grace.joined["participant"]["id"]
        assert {p["id"] for p in grace.joined["participants"]} >= {ada_id}
        await ada.wait_until(lambda: ada.frames_from(grace_id, "video") > 10, 30)
        await grace.wait_until(lambda: grace.frames_from(ada_id, "video") > 10, 30)
        await grace.wait_until(lambda: grace.frames_from(ada_id, "audio") > 10, 30)
        # A chat message crosses the relay both ways.
        assert (await grace.request({"type": "chat", "text": "through node 2"}))["type"] == "ok"
        await ada.wait_until(lambda: any(e["message"]["text"] == "through node 2" for e in ada.events_of("chat")))
        loads = node_list(nodes[2])
        assert loads["n3"]["participants"] == 2 and loads["n3"]["meetings"] == 1, loads
        assert loads["n2"]["participants"] == 1, loads  # its own meeting; grace is counted where her seat is
        # `confmeet status` has a row for every node.
        status = json.loads(nodes[0].cli("status", "--json").stdout)
        rows = {c["component"]: c for c in status["components"] if c["component"].startswith("node ")}
        assert set(rows) == {"node n1", "node n2", "node n3"} and {r["state"] for r in rows.values()} == {"up"}
        assert "1 meeting(s), 2 participant(s)" in rows["node n3"]["detail"], rows
    finally:
        for client in clients:
            await client.close()


async def test_a_drained_node_gets_no_new_meeting_and_keeps_its_own(nodes: list[Appliance]) -> None:
    kept = new_meeting(nodes[0], "kept")
    ada = await joined(nodes[0], "ada", kept["code"], (10, 10, 200))
    clients = [ada]
    try:
        node = owner(kept["id"])
        done = nodes[0].cli("node", "drain", node)
        assert done.returncode == 0 and "drained" in done.stdout, done.stderr
        assert node_list(nodes[0])[node]["drained"] is True
        # New meetings go to the other two nodes, whichever node they come in through.
        fresh = [new_meeting(nodes[0], f"after drain {i}") for i in range(4)]
        for i, meeting in enumerate(fresh):
            clients.append(await joined(nodes[i % 3], "ada", meeting["code"], (0, 100, 0)))
        assert node not in {owner(m["id"]) for m in fresh}
        # The drained node's meeting goes on there: a newcomer joins it and sees and hears its host.
        grace = await joined(nodes[1], "grace", kept["code"], (100, 0, 100))
        clients.append(grace)
        assert owner(kept["id"]) == node
        await grace.wait_until(lambda: grace.frames_from(ada.joined["participant"]["id"], "video") > 10, 30)
        undone = nodes[0].cli("node", "undrain", node)
        assert undone.returncode == 0, undone.stderr
        assert node_list(nodes[0])[node]["drained"] is False
        missing = nodes[0].cli("node", "drain", "nobody")
        assert missing.returncode != 0 and "no node named 'nobody'" in missing.stderr
    finally:
        for client in clients:
            await client.close()


async def test_a_killed_node_drops_out_its_meetings_go_elsewhere_and_its_restart_repairs_only_its_own(
        nodes: list[Appliance]) -> None:
    lost = new_meeting(nodes[0], "on the node killed")
    clients = [await joined(nodes[0], "ada", lost["code"], (200, 0, 0)),
               await joined(nodes[0], "linus", lost["code"], (200, 0, 200))]
    try:
        victim = owner(lost["id"])
        for attempt in range(3):  # a meeting on another node (seats of earlier tests weigh for 30 s)
            kept = new_meeting(nodes[0], f"elsewhere {attempt}")
            clients.append(await joined(nodes[0], "grace", kept["code"], (0, 200, 0)))
            if (survivor := owner(kept["id"])) != victim:
                break
        assert survivor != victim
        index = next(i for i, a in enumerate(nodes) if a.env["CONFMEET_NODE_NAME"] == victim)
        killed = nodes[index]
        killed.proc.kill()
        killed.proc.wait()
        live = next(a for a in nodes if a is not killed)
        deadline = time.monotonic() + 10
        while node_list(live)[victim]["alive"]:
            assert time.monotonic() < deadline, "the killed node's lease did not lapse"
            time.sleep(0.3)
        status = live.cli("status", "--json")
        assert status.returncode == 2, status.stdout  # a node is down
        assert [c["state"] for c in json.loads(status.stdout)["components"] if c["component"] == f"node {victim}"] == [
            "down"]
        # Its meeting is placed anew on a live node at the next join.
        clients.append(await joined(live, "grace", lost["code"], (0, 0, 200)))
        assert owner(lost["id"]) not in (victim,)
        # A seat of the dead node is taken over by its own person with the session given for it,
        # and by nobody else: a tampered session, or someone else's, is refused.
        session, seat = clients[0].joined["session"], clients[0].joined["participant"]["id"]

        async def resume_as(who: str, resume: str) -> dict:
            client = Participant(live.url, live.login(*USERS[who])["access_token"])
            await client.connect()
            clients.append(client)
            return await client.request({"type": "join", "meeting": lost["code"], "resume": resume})

        tampered = session[:-2] + ("AA" if not session.endswith("AA") else "BB")
        assert (await resume_as("ada", tampered)).get("code") == "session_expired"
        assert (await resume_as("grace", session)).get("code") == "session_expired"
        back = await resume_as("ada", session)
        assert back["type"] == "joined" and back["resumed"] and back["media_reset"], back
        assert back["participant"]["id"] == seat and back["participant"]["role"] == "host"
        # Restarted, it closes the seats it held and leaves the other nodes' alone.
        nodes[index] = start_appliance(killed.data_dir, node_name=victim, **{
            k.removeprefix("CONFMEET_").lower(): v for k, v in killed.env.items()
            if k in ("CONFMEET_DATABASE", "CONFMEET_BUS", "CONFMEET_MEDIA_LOOPBACK", "CONFMEET_SFU_WORKERS")})
        conn = psycopg2.connect(killed.env["CONFMEET_DATABASE"])
        with conn, conn.cursor() as cur:
            cur.execute("SELECT node, left_at IS NULL FROM participant WHERE meeting_id IN (%s, %s)",
                        (lost["id"], kept["id"]))
            seats = cur.fetchall()
        conn.close()
        # Linus's seat (not taken over) closed by its node; ada's (taken over) and grace's open.
        assert sorted(seats) == sorted([(victim, False), (owner(lost["id"]), True), (survivor, True),
                                        (owner(lost["id"]), True)]), seats
    finally:
        for client in clients:
            await client.close()


async def test_a_node_stopped_on_purpose_hands_its_seats_over(nodes: list[Appliance]) -> None:
    """A stop (systemctl stop, a rolling upgrade) with other nodes live does not end the meetings
    on the node: their clients are told to resume (4016) and another node takes the seats over."""
    meeting = new_meeting(nodes[0], "handed over")
    ada = await joined(nodes[0], "ada", meeting["code"], (0, 150, 150))
    clients = [ada]
    try:
        node = owner(meeting["id"])
        index = next(i for i, a in enumerate(nodes) if a.env["CONFMEET_NODE_NAME"] == node)
        stopping = nodes[index]
        stopping.proc.terminate()
        assert await asyncio.to_thread(stopping.proc.wait, 30) == 0
        assert "handing 1 seat(s) over" in stopping.output()
        await ada.wait_until(lambda: ada.signaling.close_code is not None, 10)
        assert ada.signaling.close_code == 4016, ada.signaling.closed  # resume: not "the seat ended"
        assert node not in node_list(nodes[index - 1])  # it left the registry, not "down"
        live = nodes[index - 1]
        back = Participant(live.url, live.login(*USERS["ada"])["access_token"])
        await back.connect()
        clients.append(back)
        again = await back.request({"type": "join", "meeting": meeting["code"], "resume": ada.joined["session"]})
        assert again["type"] == "joined" and again["resumed"] and again["media_reset"], again
        assert again["participant"]["id"] == ada.joined["participant"]["id"]
        assert owner(meeting["id"]) != node
    finally:
        for client in clients:
            await client.close()
        if nodes[index].proc.poll() is not None:  # back for the tests after this one
            nodes[index] = restarted(stopping)


async def test_a_seat_of_a_dead_node_is_not_taken_over_once_its_meeting_ended(nodes: list[Appliance]) -> None:
    """The host ends the meeting while its node is dead: the seat's resume on another node is
    refused as a join would be (meeting_ended, the socket closed with 4010), not taken over."""
    meeting = new_meeting(nodes[0], "ended while its node was dead")
    ada = await joined(nodes[0], "ada", meeting["code"], (90, 90, 0))
    clients = [ada]
    try:
        node = owner(meeting["id"])
        index = next(i for i, a in enumerate(nodes) if a.env["CONFMEET_NODE_NAME"] == node)
        dead = nodes[index]
        dead.proc.kill()
        dead.proc.wait()
        live = nodes[index - 1]
        deadline = time.monotonic() + 10
        while node_list(live)[node]["alive"]:
            assert time.monotonic() < deadline, "the killed node's lease did not lapse"
            time.sleep(0.3)
        token = live.login(*USERS["ada"])["access_token"]
        ended = httpx.post(f"{live.url}/api/v1/meetings/{meeting['id']}/end", headers={"Authorization": f"Bearer {token}"})
        assert ended.status_code == 200, ended.text
        back = Participant(live.url, token)
        await back.connect()
        clients.append(back)
        reply = await back.request({"type": "join", "meeting": meeting["code"], "resume": ada.joined["session"]})
        assert reply.get("code") == "meeting_ended", reply
        await back.wait_until(lambda: back.signaling.close_code is not None, 5)
        assert back.signaling.close_code == 4010
    finally:
        for client in clients:
            await client.close()
        if nodes[index].proc.poll() is not None:  # back for the tests after this one
            nodes[index] = restarted(dead)


async def test_a_meeting_with_only_its_lobby_keeps_its_node(nodes: list[Appliance]) -> None:
    """Someone knocks before the host comes: the meeting is placed with the knock, and its node
    keeps the placement alive with its heartbeat (else it would lapse after 30 s and the host be
    seated on another node than the one holding the knock)."""
    token = nodes[0].login(*USERS["ada"])["access_token"]
    r = httpx.post(f"{nodes[0].url}/api/v1/meetings", json={"title": "lobby first", "lobby": True},
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    meeting = r.json()
    grace = Participant(nodes[0].url, nodes[0].login(*USERS["grace"])["access_token"])
    await grace.connect()
    try:
        assert (await grace.join(meeting["code"], "Grace"))["type"] == "waiting"
        key = f"confmeet:meeting:{meeting['id']}"
        bus = redis.Redis.from_url(BUS)
        before = bus.pttl(key)
        assert before > 0, before
        await asyncio.sleep(2.5)  # over two heartbeats
        assert bus.pttl(key) > before - 1000, (before, bus.pttl(key))  # renewed, not running down
    finally:
        await grace.close()


def test_the_gateway_configuration_is_one_nginx_accepts_and_bad_input_is_refused(tmp_path: Path) -> None:
    env = appliance_env(tmp_path, 8800)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CONFMEET, *args], env=env, capture_output=True, text=True, timeout=60)

    done = cli("node", "gateway", "127.0.0.1:8801", "127.0.0.1:8802", "--listen", "127.0.0.1:8080")
    assert done.returncode == 0, done.stderr
    assert "server 127.0.0.1:8801" in done.stdout and "proxy_set_header Upgrade $http_upgrade;" in done.stdout
    (tmp_path / "nginx.conf").write_text(done.stdout)
    checked = subprocess.run(["nginx", "-t", "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    bad = cli("node", "gateway", "somewhere")
    assert bad.returncode != 0 and "host:port" in bad.stderr and "Traceback" not in bad.stderr
    half = cli("node", "gateway", "127.0.0.1:8801", "--tls-cert", "/x.pem")
    assert half.returncode != 0 and "--tls-key" in half.stderr
    one = cli("node", "list")  # an install on the in-memory bus is one node
    assert one.returncode != 0 and "is one node" in one.stderr


def test_a_relayed_clients_address_is_believed_only_when_signed_by_the_install() -> None:
    """The owner counts a relayed client by the address the relaying node vouches for (per-address
    limits would otherwise lump every client of that node together), and only when the header is
    signed with the install's secret for that client's token."""
    header = relayed_for("install secret", "198.51.100.7", "token-a")
    assert relayed_client("install secret", header, "token-a") == "198.51.100.7"
    assert relayed_client("another install", header, "token-a") is None  # not signed by this install
    assert relayed_client("install secret", header, "token-b") is None  # another client's token
    forged = header.replace("198.51.100.7", "198.51.100.8")
    assert relayed_client("install secret", forged, "token-a") is None
    assert relayed_client("install secret", "198.51.100.7", "token-a") is None  # no signature
    assert relayed_client("install secret", "", "token-a") is None


async def test_a_node_restarting_resumes_its_own_jobs_and_dead_nodes_not_live_ones(tmp_path: Path) -> None:
    """Transcription jobs carry the node that runs them: a node's start-up repairs take its own
    and those of nodes that died, and leave a live node's job and the input it is storing alone."""
    from appliance.captions.files import INPUTS, JOBS, FileJobs
    from appliance.stores.documents import open_documents
    from appliance.stores.objects import open_objects

    documents, objects = open_documents(f"sqlite:///{tmp_path / 'docs.db'}"), open_objects(f"file://{tmp_path / 'o'}")
    await documents.open()
    await objects.open()
    try:
        for job_id, node in (("mine", "n1"), ("dead", "n3"), ("live", "n2"), ("old", "")):
            await documents.insert(JOBS, {"_id": job_id, "status": "running", "node": node, "attempts": 1,
                                          "created_at": time.time()})
        await objects.put(INPUTS + "being-stored", b"a job's input stored just before its job")
        jobs = FileJobs(None, documents, objects, node="n1")  # type: ignore[arg-type]  (no job gets to run)
        counts = await jobs.resume(alive={"n1", "n2"}, stored_before=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        status = {job_id: (await documents.get(JOBS, job_id))["status"] for job_id in ("mine", "dead", "live", "old")}
        # Their inputs are gone (never stored here): taken, they fail saying so; the live node's is untouched.
        assert status == {"mine": "failed", "dead": "failed", "live": "running", "old": "failed"}, status
        assert counts["transcriptions failed"] == 3
        assert [i.key async for i in objects.list(INPUTS)] == [INPUTS + "being-stored"]
        await jobs.resume()  # one node: every input no job needs goes
        assert [i.key async for i in objects.list(INPUTS)] == []
    finally:
        await documents.close()
        await objects.close()


async def test_nodes_sharing_a_bucket_leave_a_recent_upload_alone(s3_url: str) -> None:
    """S3 does not say which node began a multipart upload: a node's start-up aborts only those
    begun before the time it is given (an hour ago with several nodes), a lone node's all."""
    from appliance.stores.objects import open_objects

    store = open_objects(s3_url)
    await store.open()
    try:
        store._client._create_multipart_upload(store.bucket, store.prefix + "meetings/m/f", {})
        hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        assert await store.remove_partial_writes("meetings/", begun_before=hour_ago) == 0
        assert await store.remove_partial_writes("meetings/") == 1
    finally:
        await store.close()
