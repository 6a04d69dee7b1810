"""Several nodes behind one gateway, with real Chromium: three ``confmeet serve`` sharing PostgreSQL,
Redis and their secrets, and a real nginx in front configured by appliance/machine/gateway.py.
People who open the gateway's address are in one meeting whichever node their socket reaches;
when the meeting's node is killed, their pages get their seats back on another node and media
flows again within 15 s, while a meeting on another node goes on untouched."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
from playwright.sync_api import Browser, expect

from appliance.machine.gateway import nginx_config
from appliance_server import Appliance, start_nodes
from cli.client.participant import Participant
from conftest import drop_pg_database, free_port, make_pg_database, stop
from sfu.participants import ColourTrack, ToneTrack

from .meeting_page import PEOPLE, MeetingPage, media_back_after, media_flows, poll

pytestmark = pytest.mark.browser

BUS = "redis://127.0.0.1:6379/14"  # this module's own Redis database, emptied before and after


@dataclass
class Cluster:
    url: str  # the gateway's
    nodes: list[Appliance]

    def node(self, name: str) -> Appliance:
        return next(a for a in self.nodes if a.env["CONFMEET_NODE_NAME"] == name)

    def owner(self, meeting_id: str) -> str:
        return redis.Redis.from_url(BUS).get(f"confmeet:meeting:{meeting_id}").decode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster-ui")
    redis.Redis.from_url(BUS).flushdb()
    db_name, db_url = make_pg_database()
    apps: list[Appliance] = []
    gateway = None
    try:
        apps = start_nodes(base, 3, database=db_url, bus=BUS, media_loopback="true", sfu_workers="1")
        for i, person in enumerate(PEOPLE.values()):
            apps[0].add_user(person.email, person.password, admin=i == 0)
        port = free_port()
        prefix = base / "gateway"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(nginx_config([a.url.removeprefix("http://") for a in apps],
                                                        f"127.0.0.1:{port}", prefix=prefix, user="root"))
        gateway = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        poll(lambda: _ready(url), "the gateway serves", timeout=10)
        yield Cluster(url, apps)
    finally:
        if gateway is not None:
            stop(gateway)
        for app in apps:
            stop(app.proc)
        drop_pg_database(db_name)
        redis.Redis.from_url(BUS).flushdb()
    for app in apps:
        assert "Traceback" not in app.output(), app.output()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def login(url: str, who: str) -> str:
    person = PEOPLE[who]
    r = httpx.post(f"{url}/api/v1/auth/login", json={"email": person.email, "password": person.password})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def new_meeting(url: str, title: str) -> dict:
    r = httpx.post(f"{url}/api/v1/meetings", json={"title": title},
                   headers={"Authorization": f"Bearer {login(url, 'ada')}"})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread of its own, for aiortc participants beside the sync browser API."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_two_pages_on_two_nodes_are_in_one_meeting(browser: Browser, cluster: Cluster) -> None:
    """Each page opens a different node's own address: at least one is relayed to the meeting's
    node, and both see and hear each other."""
    meeting = new_meeting(cluster.url, "two doors")
    ada = MeetingPage(browser, cluster.nodes[0].url, PEOPLE["ada"])
    grace = MeetingPage(browser, cluster.nodes[1].url, PEOPLE["grace"])
    try:
        ada.join(meeting["code"])
        grace.join(meeting["code"])
        assert cluster.owner(meeting["id"]) in ("n1", "n2", "n3")
        media_flows(ada, grace)
        media_flows(grace, ada)
        assert not ada.errors and not grace.errors, ada.errors + grace.errors
    finally:
        ada.close()
        grace.close()


def test_a_killed_node_costs_its_meeting_seconds_not_its_seats(browser: Browser, cluster: Cluster,
                                                               loop: asyncio.AbstractEventLoop) -> None:
    def run(work, timeout: float = 60):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(work, loop).result(timeout)

    async def participant(who: str, code: str, rgb: tuple[int, int, int], url: str) -> Participant:
        client = Participant(url, login(url, who))
        await client.connect()
        assert (await client.join(code, who.title()))["type"] == "joined"
        client.publish(ToneTrack(amplitude=0.3))
        client.publish(ColourTrack(rgb))
        assert (await client.offer())["type"] == "answer"
        return client

    gone, other = new_meeting(cluster.url, "on the node killed"), new_meeting(cluster.url, "on another node")
    ada = MeetingPage(browser, cluster.url, PEOPLE["ada"])
    grace = MeetingPage(browser, cluster.url, PEOPLE["grace"])
    bystanders: list[Participant] = []
    try:
        ada.join(gone["code"])
        grace.join(gone["code"])
        media_flows(ada, grace)
        media_flows(grace, ada)
        victim = cluster.owner(gone["id"])
        # Two people in a meeting the placement puts on another node (the victim holds two seats),
        # their sockets on a node that lives on (one relayed through the victim would drop and
        # resume, as pages do; these test clients do not resume).
        entry = next(a for a in cluster.nodes if a.env["CONFMEET_NODE_NAME"] != victim)
        for who, rgb in (("linus", (0, 0, 200)), ("ada", (200, 0, 0))):
            bystanders.append(run(participant(who, other["code"], rgb, entry.url)))
        assert cluster.owner(other["id"]) != victim
        linus, ada_elsewhere = bystanders
        from_ada = ada_elsewhere.joined["participant"]["id"]
        run(linus.wait_until(lambda: linus.frames_from(from_ada, "video") > 10, 30))

        seats = (ada.participant_id, grace.participant_id)
        killed = cluster.node(victim)
        before = linus.frames_from(from_ada, "video")

        def kill() -> None:
            killed.proc.kill()
            killed.proc.wait()

        took = media_back_after(kill, [ada, grace], within=15)  # the pages reconnect through the gateway
        print(f"\nmedia back {took:.1f} s after node {victim} was killed")
        assert (ada.participant_id, grace.participant_id) == seats  # the same seats, on another node
        assert cluster.owner(gone["id"]) != victim
        for page in (ada, grace):
            expect(page.page.get_by_role("button", name="Leave")).to_be_visible()
        assert not ada.errors and not grace.errors, ada.errors + grace.errors
        # The other meeting never noticed.
        run(linus.wait_until(lambda: linus.frames_from(from_ada, "video") > before + 30, 10))
        assert not linus.failures and not ada_elsewhere.failures, linus.failures + ada_elsewhere.failures
        alive = next(a for a in cluster.nodes if a is not killed)
        listed = {n["name"]: n for n in json.loads(alive.cli("node", "list", "--json").stdout)}
        assert listed[victim]["alive"] is False
    finally:
        for client in bystanders:
            run(client.close())
        ada.close()
        grace.close()
