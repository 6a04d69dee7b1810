"""Several nodes on a LAN of the test's own, with real Chromium: each of three ``confmeet serve``
runs in a network namespace of its own (loopback plus one cable to a bridge), as on its own
machine; PostgreSQL, Redis, the nginx gateway and Chromium run in the namespace that holds the
bridge. Nothing reaches another namespace over loopback, so what tests/e2e/test_cluster_ui.py
shows on one loopback must hold here over real addresses: the relay to a meeting's node, media
straight to that node's own address (media_loopback off), and seats taken back on another node
when the meeting's node is killed."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Playwright, expect

from appliance.machine.gateway import nginx_config
from appliance_server import CONFMEET, Appliance, start_appliance
from conftest import stop
from netns import Namespace

from .conftest import chromium_behind
from .fake_camera import write_y4m
from .meeting_page import PEOPLE, MeetingPage, mark_connections, media_back_after, media_flows, poll

pytestmark = pytest.mark.browser

# Every server has a namespace to itself, so each listens on its usual port.
LAN_ADDRESS = "10.77.0.1"  # the bridge's: the stores, the gateway and the browser
DATABASE = f"postgresql://postgres@{LAN_ADDRESS}:5432/postgres"
BUS = f"redis://{LAN_ADDRESS}:6379/0"
GATEWAY = f"http://{LAN_ADDRESS}:8080"

# The remote address of the page's selected candidate pair (where its media goes) and the bytes
# received on that pair.
SELECTED_PAIR = """async () => {
  const stats = new Map();
  (await window.confmeet.pc.getStats()).forEach((s) => stats.set(s.id, s));
  const transport = [...stats.values()].find((s) => s.type === "transport" && s.selectedCandidatePairId);
  const pair = transport && stats.get(transport.selectedCandidatePairId);
  const remote = pair && stats.get(pair.remoteCandidateId);
  return {address: remote?.address ?? null, received: pair?.bytesReceived ?? 0};
}"""


@dataclass
class Node:
    network: Namespace
    app: Appliance

    @property
    def name(self) -> str:
        return self.app.env["CONFMEET_NODE_NAME"]

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        """The CLI on this node's machine (the stores are reachable only from the LAN)."""
        return subprocess.run(self.network.command([*CONFMEET, *args]), env=self.app.env, input=input,
                              capture_output=True, text=True, timeout=60)


@dataclass
class Lan:
    network: Namespace  # the bridge's
    nodes: list[Node]
    browser: Browser

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def owner(self, meeting_id: str) -> str:
        return self.network.run(lambda: redis.Redis.from_url(BUS).get(f"confmeet:meeting:{meeting_id}").decode())

    def new_meeting(self, title: str) -> dict:
        def post() -> dict:
            person = PEOPLE["ada"]
            r = httpx.post(f"{GATEWAY}/api/v1/auth/login", json={"email": person.email, "password": person.password})
            assert r.status_code == 200, r.text
            r = httpx.post(f"{GATEWAY}/api/v1/meetings", json={"title": title},
                           headers={"Authorization": f"Bearer {r.json()['access_token']}"})
            assert r.status_code == 201, r.text
            return r.json()
        return self.network.run(post)


def _serves(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _postgres(stack: ExitStack, lan: Namespace) -> None:
    """A throwaway PostgreSQL cluster in ``lan``, listening on the bridge, trusting the LAN."""
    data = Path(tempfile.mkdtemp(prefix="cm-pg-"))  # under /tmp: the postgres user must reach it
    stack.callback(shutil.rmtree, data, True)
    shutil.chown(data, "postgres", "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    done = subprocess.run([*as_postgres, "initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {LAN_ADDRESS.rsplit('.', 1)[0]}.0/24 trust\n")
    with (data / "postgresql.conf").open("a") as conf:  # its socket in its own directory, not the host's
        conf.write(f"listen_addresses = '{LAN_ADDRESS}'\nport = 5432\nunix_socket_directories = '{data}'\n"
                   "fsync = off\n")
    done = subprocess.run(lan.command([*as_postgres, "pg_ctl", "-D", str(data), "-l", str(data / "server.log"),
                                       "-w", "start"]), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr + (data / "server.log").read_text()
    stack.callback(subprocess.run, [*as_postgres, "pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"],
                   capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory, playwright: Playwright) -> Iterator[Lan]:
    base = tmp_path_factory.mktemp("cluster-netns")
    nodes: list[Node] = []
    with ExitStack() as stack:  # undone in reverse on every way out: processes, then namespaces
        network = Namespace("cm-lan", None)
        stack.callback(network.delete)
        network.add_bridge("br0", f"{LAN_ADDRESS}/24")
        machines = []
        for i in (1, 2, 3):
            machine = Namespace(f"cm-n{i}", None)
            stack.callback(machine.delete)
            machine.plug_into(network, "br0", f"10.77.0.1{i}/24")
            machines.append(machine)

        _postgres(stack, network)
        with (base / "redis.log").open("w") as log:
            store = subprocess.Popen(network.command(
                ["redis-server", "--bind", LAN_ADDRESS, "--port", "6379", "--save", "", "--appendonly", "no",
                 "--protected-mode", "no", "--dir", str(base)]), stdout=log, stderr=subprocess.STDOUT)
        stack.callback(stop, store)
        network.run(lambda: poll(lambda: _answers(BUS), "Redis answers on the LAN", timeout=10))

        for i, machine in enumerate(machines, 1):
            data = base / f"n{i}"
            if nodes:  # the install's secrets, as `confmeet install --join` brings them
                data.mkdir()
                shutil.copy(nodes[0].app.data_dir / "secrets.toml", data / "secrets.toml")
            # node_url is left to the node: 'host' being one address, it is http://<host>:<port>,
            # checked below in the node list.
            app = network.run(lambda data=data, machine=machine: start_appliance(
                data, timeout=60, prefix=machine.command([]), host=machine.address, node_name=f"n{i}",
                database=DATABASE, bus=BUS, media_loopback="false", sfu_workers="1"))
            stack.callback(stop, app.proc)
            nodes.append(Node(machine, app))
        for i, person in enumerate(PEOPLE.values()):
            done = nodes[0].cli("user", "add", person.email, "--name", person.name, "--password-stdin",
                                *(["--admin"] if i == 0 else []), input=person.password + "\n")
            assert done.returncode == 0, done.stderr

        prefix = base / "gateway"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(nginx_config(
            [n.app.url.removeprefix("http://") for n in nodes], GATEWAY.removeprefix("http://"), prefix=prefix,
            user="root"))
        gateway = subprocess.Popen(network.command(
            ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(stop, gateway)
        network.run(lambda: poll(lambda: _serves(GATEWAY), "the gateway serves", timeout=10))

        camera = write_y4m(Path(tempfile.mkdtemp(prefix="cam-")) / "camera.y4m")  # short: the camera's name
        stack.callback(shutil.rmtree, camera.parent, True)
        # Niced: on two cores a busy browser reaches the SFU as receive delay (field notes).
        browser = stack.enter_context(chromium_behind(playwright, network.command(["nice", "-n", "10"]), base,
                                                      camera, GATEWAY))
        yield Lan(network, nodes, browser)
    for node in nodes:
        assert "Traceback" not in node.app.output(), node.app.output()


def selected_pair(page: MeetingPage) -> dict:
    return poll(lambda: (p := page.page.evaluate(SELECTED_PAIR))["address"] and p,
                f"{page.person.name}'s selected candidate pair", timeout=10)


def test_nodes_on_their_own_addresses_give_seats_back_after_a_kill(lan: Lan) -> None:
    gone, other = lan.new_meeting("on the node killed"), lan.new_meeting("on another node")
    pages = {who: MeetingPage(lan.browser, GATEWAY, PEOPLE[who]) for who in ("ada", "grace", "linus")}
    ada, grace, linus = pages.values()
    try:
        ada.join(gone["code"])
        grace.join(gone["code"])
        media_flows(ada, grace)
        media_flows(grace, ada)
        victim = lan.node(lan.owner(gone["id"]))
        for page in (ada, grace):  # media goes to the meeting's node itself, not the gateway
            assert selected_pair(page)["address"] == victim.network.address
        # A meeting the placement puts on another node: its page must never notice the kill.
        linus.join(other["code"])
        bystander = lan.node(lan.owner(other["id"]))
        assert bystander is not victim
        assert selected_pair(linus)["address"] == bystander.network.address

        seats = (ada.participant_id, grace.participant_id)
        mark_connections([linus])  # his meeting's node lives on: his connection stays

        def kill() -> None:
            victim.app.proc.kill()
            victim.app.proc.wait()

        took = media_back_after(kill, [ada, grace], within=15)  # the pages reconnect through the gateway
        print(f"\nmedia back {took:.1f} s after node {victim.name} was killed")
        assert (ada.participant_id, grace.participant_id) == seats  # the same seats, on another node
        heir = lan.node(lan.owner(gone["id"]))
        assert heir is not victim
        for page in (ada, grace):
            assert selected_pair(page)["address"] == heir.network.address
            expect(page.page.get_by_role("button", name="Leave")).to_be_visible()
        # The other meeting never noticed: the same peer connection, its node still answering.
        assert linus.page.evaluate("() => window.confmeet.pc === window.before")
        received = selected_pair(linus)["received"]
        poll(lambda: selected_pair(linus)["received"] > received, "Linus's node still sends to him", timeout=5)
        assert not any(page.errors for page in pages.values()), [page.errors for page in pages.values()]

        alive = next(n for n in lan.nodes if n is not victim)
        listed = {n["name"]: n for n in json.loads(alive.cli("node", "list", "--json").stdout)}
        assert listed[victim.name]["alive"] is False
        for node in lan.nodes:  # each live node registered at its own address, where the relay reaches it
            if node is not victim:
                assert listed[node.name]["url"] == node.app.url, listed
    finally:
        for page in pages.values():
            page.close()
